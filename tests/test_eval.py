"""`imp eval` on a short run's checkpoint: the table and eval.json against an independent
computation, another mesh, another resolution, and its errors; periodic evaluation with the
best checkpoint kept across a resume."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import configure_run, experiment_of, with_devices

from imp import cli
from imp.training import loop


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, world_dir):
    out = tmp_path_factory.mktemp("eval_run")
    # Every task in every step: one graph to compile for all five. Per-pair heads: a modality's
    # embedding differs per target, so the evaluator must read the right direction.
    summed = ("train.evaluate_at_end = False", "Schedule.name = 'summed'")
    heads = ("ImpModel.contrastive_head = 'mlp'", "ImpModel.temperature = 'per_pair'")
    loop.train(*configure_run(world_dir, out, 10, *summed, *heads, mixture="demo_all"))
    return out


@pytest.fixture(scope="module")
def evaluated(run_dir):
    """`imp eval` of the run on this process's one device: (printed table, eval.json)."""
    import io
    from contextlib import redirect_stdout

    before = _snapshot(run_dir / "checkpoints")
    printed = io.StringIO()
    with redirect_stdout(printed):
        assert cli.main(["eval", f"--checkpoint_dir={run_dir / 'checkpoints'}"]) == 0
    assert _snapshot(run_dir / "checkpoints") == before  # read-only
    return printed.getvalue(), json.loads((run_dir / "eval" / "step_10" / "eval.json").read_text())


def _snapshot(path):
    return {p: p.stat().st_mtime_ns for p in path.rglob("*")}


def test_eval_prints_every_metric_with_chance(evaluated, run_dir):
    table, summary = evaluated
    assert "step 10 on 1 device(s)" in table
    tasks = summary["tasks"]
    assert {"top1", "top5", "linear_probe_top1/vision"} <= set(tasks["digit_videos_cls"])
    assert {"zero_shot_top1/vision", "zero_shot_top5/vision"} <= set(tasks["digit_images_text"])
    assert {
        "retrieval/text_to_vision/R@1",
        "retrieval/vision_to_text/median_rank",
        "retrieval/waveform_to_text/R@5",
    } <= set(tasks["digit_videos_audio_text"])
    for task_metrics in tasks.values():
        for m in task_metrics.values():
            assert 0 <= m["chance"] and np.isfinite(m["value"])
    assert tasks["digit_videos_cls"]["top1"]["chance"] == pytest.approx(1 / 40)
    assert list((run_dir / "eval" / "step_10" / "tensorboard").iterdir())
    from imp.evaluation.evaluator import EVALUATIONS, metric_names

    for name, spec in experiment_of(run_dir).specs.items():
        if name in tasks:  # the metrics reported are the ones predicted up front
            assert sorted(tasks[name]) == sorted(metric_names(spec, EVALUATIONS)), name


def _restored(run_dir):
    from imp.training.checkpoint import Checkpointer

    experiment = experiment_of(run_dir)
    state, _ = Checkpointer(run_dir / "checkpoints", read_only=True).restore(
        10, experiment.abstract_state
    )
    return experiment, state["params"]


def _held_out(spec, **kwargs):
    from imp.data import feeding

    batches = list(feeding.batches(spec, spec.eval_split, 0, train=False, batch_size=7, **kwargs))
    return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


def _prompt_ids(spec):
    import seqio

    vocabulary = seqio.get_mixture_or_task(spec.name).output_features["text"].vocabulary
    rows = []
    for prompts in spec.class_prompts:
        for prompt in prompts:
            ids = np.zeros(spec.text_length, np.int32)
            tokens = vocabulary.encode(prompt)[: spec.text_length]
            ids[: len(tokens)] = tokens
            rows.append(ids)
    return np.stack(rows)


def test_eval_values_match_a_direct_computation(evaluated, run_dir):
    """Classification top-1 from the head's logits and zero-shot top-1 against averaged,
    normalised prompt embeddings, computed here example by example with `model.apply`."""
    _, summary = evaluated
    experiment, params = _restored(run_dir)
    model, specs = experiment.model, experiment.specs

    cls = specs["digit_videos_cls"]
    data = _held_out(cls, with_labels=True)
    logits = np.concatenate(
        [
            model.apply({"params": params}, {"vision": data["vision"][i : i + 1]}, head=cls.head)[
                "logits"
            ]
            for i in range(len(data["label"]))
        ]
    )
    top1 = np.mean(logits.argmax(1) == data["label"])
    assert summary["tasks"]["digit_videos_cls"]["top1"]["value"] == pytest.approx(top1, abs=1e-9)

    nce = specs["digit_images_text"]
    data = _held_out(nce, with_labels=True)
    images = model.apply({"params": params}, {"vision": data["vision"]})["embedding/vision/text"]
    prompts = model.apply({"params": params}, {"text": _prompt_ids(nce)})["embedding/text/vision"]
    prompts = np.asarray(prompts).reshape(len(nce.class_prompts), -1, prompts.shape[-1])
    prompts = prompts / np.linalg.norm(prompts, axis=-1, keepdims=True)
    prototypes = prompts.mean(1)
    prototypes /= np.linalg.norm(prototypes, axis=-1, keepdims=True)
    images = np.asarray(images) / np.linalg.norm(images, axis=-1, keepdims=True)
    top1 = np.mean((images @ prototypes.T).argmax(1) == data["label"])
    reported = summary["tasks"]["digit_images_text"]["zero_shot_top1/vision"]["value"]
    assert reported == pytest.approx(top1, abs=1e-9)


def test_prompt_ensembling_averages_normalised_prompt_embeddings(run_dir):
    from imp.evaluation import evaluator

    experiment, params = _restored(run_dir)
    spec = experiment.specs["digit_images_text"]
    got = evaluator.class_embeddings(evaluator.Encoder(experiment, params), spec)["vision"]
    expected = []
    for row in _prompt_ids(spec).reshape(len(spec.class_prompts), -1, spec.text_length):
        out = experiment.model.apply({"params": params}, {"text": jax.numpy.asarray(row)})
        embedded = np.asarray(out["embedding/text/vision"])
        mean = (embedded / np.linalg.norm(embedded, axis=1, keepdims=True)).mean(0)
        expected.append(mean / np.linalg.norm(mean))
    np.testing.assert_allclose(got, np.stack(expected), atol=1e-5)


def test_eval_on_another_mesh_gives_the_same_metrics(evaluated, run_dir, tmp_path):
    """Trained on 1 device; evaluated on 8 virtual devices with data and model axes (and a
    training batch that would not split over them: evaluation does not train)."""
    env = {**os.environ, "XLA_FLAGS": with_devices(8)}
    argv = [
        sys.executable,
        "-m",
        "imp.cli",
        "eval",
        f"--checkpoint_dir={run_dir}",
        f"--out={tmp_path}",
        "--evaluations=classification,zero_shot",
        "--gin.Partitioner.num_partitions=2",  # data 4 x model 2
        "--gin.prepare_demo.batch_size=2",
    ]
    subprocess.run(argv, check=True, env=env, capture_output=True)
    eight = json.loads((tmp_path / "eval.json").read_text())
    assert eight["devices"] == 8
    compared = 0
    for task, task_metrics in eight["tasks"].items():
        for name, m in task_metrics.items():
            one = evaluated[1]["tasks"][task][name]["value"]
            assert m["value"] == pytest.approx(one, abs=1e-6), name
            compared += 1
    assert compared >= 10  # classification and zero-shot of every data set


def test_eval_errors(run_dir, tmp_path, capsys):
    assert cli.main(["eval", f"--checkpoint_dir={tmp_path / 'nope'}"]) == 2
    assert "does not exist" in capsys.readouterr().err
    empty = tmp_path / "empty"
    (empty / "checkpoints").mkdir(parents=True)
    (empty / "config.gin").write_text((run_dir / "config.gin").read_text())
    assert cli.main(["eval", f"--checkpoint_dir={empty}"]) == 2
    assert "no checkpoint in" in capsys.readouterr().err
    assert cli.main(["eval", f"--checkpoint_dir={run_dir}", "--gin.ImpModel.d_model=48"]) == 2
    err = capsys.readouterr().err
    assert "does not match the configured model: params/" in err
    assert "(32" in err and "(48" in err
    assert (
        cli.main(["eval", f"--checkpoint_dir={run_dir}", "--evaluations=zero_shot,retreival"]) == 2
    )
    assert "unknown evaluation 'retreival'; did you mean retrieval" in capsys.readouterr().err


@pytest.mark.parametrize("height", [136, 256])
def test_eval_past_the_position_tables_stops_before_compiling(run_dir, tmp_path, height, capsys):
    """136 / 8 = 17 tubelets > the 16-row table (a lookup past it reads NaN, and NaN scores
    would rank every positive first); 256 used to run the machine out of memory."""
    from imp.partitioning.partitioner import Partitioner

    compiles = []
    real = Partitioner.compile
    argv = ["eval", f"--checkpoint_dir={run_dir}", f"--out={tmp_path}"]
    argv += [f"--gin.Dataset.eval_height={height}"]
    try:
        Partitioner.compile = lambda *a, **k: compiles.append(a) or real(*a, **k)
        assert cli.main(argv) == 2
    finally:
        Partitioner.compile = real
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "evaluation input (Dataset.eval_height / eval_width): vision frames x height x " in err
    assert f"x{height}x32 makes a grid of" in err
    assert "larger than the position tables ImpModel.vision_max_grid=(8, 16, 16)" in err
    assert not compiles and not list(tmp_path.iterdir())


def test_eval_at_another_resolution_with_several_clips(run_dir, tmp_path, capsys):
    """Trained on one 32x32 clip; evaluated at 48x48 (the factorised position tables cover the
    larger grid) with 2 clips x 2 spatial crops per video averaged."""
    out = tmp_path / "hires"
    argv = [
        "eval",
        f"--checkpoint_dir={run_dir}",
        f"--out={out}",
        "--evaluations=classification,zero_shot",
        "--gin.Dataset.eval_height=48",
        "--gin.Dataset.eval_width=48",
        "--gin.Dataset.eval_clips=2",
        "--gin.Dataset.eval_crops=2",
    ]
    assert cli.main(argv) == 0
    assert "digit_videos_cls evaluated on vision 4x8x48x48x3" in capsys.readouterr().out
    summary = json.loads((out / "eval.json").read_text())
    assert summary["inputs"]["digit_images_cls"] == {"vision": [4, 1, 48, 48, 3]}
    assert {"top1", "top5"} <= set(summary["tasks"]["digit_videos_cls"])
    assert np.isfinite(summary["tasks"]["digit_images_text"]["zero_shot_top1/vision"]["value"])


def test_periodic_evaluation_keeps_the_best_checkpoint_across_a_resume(tmp_path, run_config):
    """The best value is saved with its checkpoint and read back: a resumed run replaces the
    best only when it beats the value from before the restart."""
    periodic = (
        "train.evaluate_at_end = False",
        "train.eval_every = 3",
        "train.best_metric = 'digit_videos_cls/top1'",
        "train.end_evaluations = ('classification',)",
    )
    loop.train(*run_config(tmp_path, 6, *periodic))
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").open()]
    evals = [r for r in records if r["task"] == "eval/digit_videos_cls"]
    assert [r["step"] for r in evals] == [3, 6] and all("top1" in r for r in evals)
    best_step = 3 if evals[0]["top1"] >= evals[1]["top1"] else 6
    best = tmp_path / "best"
    assert [p.name for p in best.iterdir() if p.name.isdigit()] == [str(best_step)]

    before = max(r["top1"] for r in evals)
    loop.train(*run_config(tmp_path, 9, *periodic))
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").open()]
    last = [r["top1"] for r in records if r["task"] == "eval/digit_videos_cls" and r["step"] == 9]
    expected = 9 if last[0] > before else best_step
    assert [p.name for p in best.iterdir() if p.name.isdigit()] == [str(expected)]

    from imp.errors import ImpError
    from imp.training.checkpoint import BestCheckpoint

    assert BestCheckpoint(best, "digit_videos_cls/top1").value == max(before, last[0])
    with pytest.raises(ImpError, match="keeps the best checkpoint by 'digit_videos_cls/top1'"):
        BestCheckpoint(best, "digit_videos_cls/top5")


def test_a_task_outside_the_runs_mixture_is_probed_by_its_features(run_dir, tmp_path, capsys):
    """The clips' sound, which the run never trained on, under a head of its own: its linear
    probe runs; its classification, with no trained head, is refused by name."""
    argv = [
        "eval",
        f"--checkpoint_dir={run_dir}",
        f"--out={tmp_path}",
        "--gin.prepare_demo.audio_classification=True",
        "--gin.MIXTURE_OR_TASK_NAME='digit_videos_audio_cls'",
        "--gin.Experiment.task_options={'digit_videos_audio_cls': {'head_name': 'sounds'}}",
    ]
    assert cli.main([*argv, "--evaluations=linear_probe"]) == 0
    summary = json.loads((tmp_path / "eval.json").read_text())
    probe = summary["tasks"]["digit_videos_audio_cls"]["linear_probe_top1/spectrogram"]
    assert np.isfinite(probe["value"]) and probe["chance"] == pytest.approx(1 / 40)
    assert cli.main(argv) == 2
    assert "this run trained no classifiers_sounds" in capsys.readouterr().err
    assert cli.main([*argv, "--evaluations=linear_probe", "--cross_modal=vision:spectrogram"]) == 2
    assert "vision_patch's height and width (8, 8) differ" in capsys.readouterr().err
    # The run's row of seed 000's Table 9: it trained spectrograms too, so no conversion; its
    # probes go beside the run's other evaluations.
    table = ["probe-table", f"--checkpoint_dir={run_dir}", "--mixture=digit_videos_audio_cls"]
    assert cli.main([*table, argv[3], argv[5], "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["trained"] == ["spectrogram", "vision"]
    cell = row["tasks"]["digit_videos_audio_cls"]
    assert cell == {
        "value": pytest.approx(probe["value"]),
        "chance": probe["chance"],
        "cross_modal": False,
    }
    assert (run_dir / "eval" / "probes_step_10" / "eval.json").is_file()
