"""`imp eval` on a short run's checkpoint: the table, eval.json, another mesh, and its errors."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from imp import cli
from imp.training import loop


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, world_dir):
    from conftest import TINY, WORLD_IMAGES

    from imp import config
    from imp.tasks import demo  # noqa: F401 - registers prepare_demo with gin

    out = tmp_path_factory.mktemp("eval_run")
    config.parse(
        ["runs/demo.gin"],
        [
            f"MODEL_DIR = '{out}'",
            "TRAIN_STEPS = 30",
            f"prepare_demo.data_dir = '{world_dir}'",
            f"prepare_demo.num_images = {WORLD_IMAGES}",
            "prepare_demo.batch_size = 8",
            "train.progress_bar = False",
            "train.evaluate_at_end = False",
            *TINY,
        ],
    )
    loop.train()
    return out


def _snapshot(path):
    return {p: p.stat().st_mtime_ns for p in path.rglob("*")}


def test_eval_prints_every_metric_with_chance(run_dir, capsys):
    before = _snapshot(run_dir / "checkpoints")
    assert cli.main(["eval", f"--checkpoint_dir={run_dir / 'checkpoints'}"]) == 0
    table = capsys.readouterr().out
    assert "step 30 on 1 device(s)" in table
    summary = json.loads((run_dir / "eval" / "step_30" / "eval.json").read_text())
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
    assert list((run_dir / "eval" / "step_30" / "tensorboard").iterdir())
    assert _snapshot(run_dir / "checkpoints") == before  # read-only


def test_eval_on_another_mesh_gives_the_same_metrics(run_dir, tmp_path):
    """Trained on 1 device; evaluated on 8 virtual devices with data and model axes."""

    def run(out, devices):
        env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
        argv = [
            sys.executable,
            "-m",
            "imp.cli",
            "eval",
            f"--checkpoint_dir={run_dir}",
            f"--out={out}",
            "--evaluations=classification,zero_shot,retrieval",
        ]
        if devices > 1:
            argv += ["--gin.Partitioner.num_partitions=2"]  # data 4 x model 2
        subprocess.run(argv, check=True, env=env, capture_output=True)
        return json.loads((out / "eval.json").read_text())

    one, eight = run(tmp_path / "one", 1), run(tmp_path / "eight", 8)
    assert eight["devices"] == 8
    for task, task_metrics in one["tasks"].items():
        for name, m in task_metrics.items():
            assert eight["tasks"][task][name]["value"] == pytest.approx(m["value"], abs=1e-6), name


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
    assert "does not match the configured model: parameter" in err and "(32" in err and "(48" in err
    assert (
        cli.main(["eval", f"--checkpoint_dir={run_dir}", "--evaluations=zero_shot,retreival"]) == 2
    )
    assert "unknown evaluation 'retreival'; did you mean retrieval" in capsys.readouterr().err


def test_prompt_ensembling_averages_normalised_prompt_embeddings(run_dir):
    import jax
    import seqio

    from imp import config
    from imp.evaluation import evaluator
    from imp.tasks import registry

    config.parse([str(run_dir / "config.gin")], [])  # the run's model, whatever ran before
    from imp.training import train_state
    from imp.training.checkpoint import Checkpointer
    from imp.training.optimizer import make_optimizer

    spec = registry.spec("digit_images_text")
    model = loop.model_for({s.name: s for s, _ in registry.resolve("demo_all")})
    tx, _ = make_optimizer(30)
    from imp.partitioning.partitioner import Partitioner

    shardings = train_state.state_shardings(model, tx, Partitioner())
    state, _ = Checkpointer(run_dir / "checkpoints", read_only=True).restore(
        30, train_state.abstract(shardings, model, tx)
    )
    got = evaluator.class_embeddings(model, state["params"], spec)
    vocabulary = seqio.get_mixture_or_task(spec.name).output_features["text"].vocabulary
    expected = []
    for prompts in spec.class_prompts:
        rows = []
        for prompt in prompts:
            ids = np.zeros((1, spec.text_length), np.int32)
            tokens = vocabulary.encode(prompt)[: spec.text_length]
            ids[0, : len(tokens)] = tokens
            out = model.apply({"params": state["params"]}, {"text": jax.numpy.asarray(ids)})
            rows.append(np.asarray(out["embedding/text"][0]))
        mean = np.mean([r / np.linalg.norm(r) for r in rows], axis=0)
        expected.append(mean / np.linalg.norm(mean))
    np.testing.assert_allclose(got, np.stack(expected), atol=1e-5)


def test_periodic_evaluation_keeps_the_best_checkpoint(tmp_path, run_config):
    run_config(
        tmp_path,
        6,
        "train.evaluate_at_end = False",
        "train.eval_every = 3",
        "train.best_metric = 'digit_videos_cls/top1'",
        "train.end_evaluations = ('classification',)",
    )
    loop.train()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").open()]
    evals = [r for r in records if r["task"] == "eval/digit_videos_cls"]
    assert [r["step"] for r in evals] == [3, 6] and all("top1" in r for r in evals)
    best_step = 3 if evals[0]["top1"] >= evals[1]["top1"] else 6
    assert [p.name for p in (tmp_path / "best").iterdir() if p.name.isdigit()] == [str(best_step)]


def test_eval_at_another_resolution_with_several_clips(run_dir, tmp_path, capsys):
    """Trained on one 32x32 clip; evaluated at 48x48 (the factorised position tables cover the
    larger grid) with 3 clips per video averaged."""
    out = tmp_path / "hires"
    argv = [
        "eval",
        f"--checkpoint_dir={run_dir}",
        f"--out={out}",
        "--evaluations=classification,zero_shot",
        "--gin.Dataset.eval_height=48",
        "--gin.Dataset.eval_width=48",
        "--gin.Dataset.eval_clips=3",
    ]
    assert cli.main(argv) == 0
    assert "digit_videos_cls evaluated on vision 3x8x48x48x3" in capsys.readouterr().out
    summary = json.loads((out / "eval.json").read_text())
    assert summary["inputs"]["digit_images_cls"] == {"vision": [3, 1, 48, 48, 3]}
    assert {"top1", "top5"} <= set(summary["tasks"]["digit_videos_cls"])
    assert np.isfinite(summary["tasks"]["digit_images_text"]["zero_shot_top1/vision"]["value"])
