"""The LiT decoder on the demo world (seed 003): prompts and answers as decoder tokens, the loss
on answers only, a frozen encoder (no update, no optimizer state) or a slower one, exact match
and caption scores, and `runs/lit_demo.gin` trained for two steps, evaluated by `imp eval` and
read by `imp generate`."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import SHARED, TINY, small_run

from imp import cli, config, generation, objectives
from imp.data import demo_world, feeding
from imp.decoding import EOS
from imp.errors import ImpError
from imp.evaluation import metrics
from imp.tasks import datasets

DECODER = [
    "TextDecoder.width = 32",
    "TextDecoder.num_layers = 1",
    "TextDecoder.num_heads = 2",
    "TextDecoder.mlp_dim = 64",
]


def _bindings(world_dir, run_dir, *extra):
    return [
        *small_run(run_dir, world_dir),
        "Experiment.init_from = None",
        *DECODER,
        *SHARED,
        *TINY,
        *extra,
    ]


def _experiment(world_dir, tmp_path, *extra):
    from imp.experiment import Experiment
    from imp.partitioning import distributed  # noqa: F401 - registers what the run binds
    from imp.tasks import demo  # noqa: F401
    from imp.training import loop  # noqa: F401

    config.parse(["runs/lit_demo.gin"], _bindings(world_dir, tmp_path / "lit", *extra))
    return Experiment.from_gin()


def test_each_task_writes_its_prompt_then_its_answer(world_dir, tmp_path):
    experiment = _experiment(world_dir, tmp_path)
    vocab = generation.vocabulary(experiment.tasks[0])
    seen = set()
    for spec in experiment.tasks:
        batch = next(feeding.batches(spec, "train", 0, train=True))
        for tokens, length in zip(batch["decoder_tokens"], batch["prompt_length"], strict=True):
            ids = [int(t) for t in tokens if t]
            assert ids[-1] == EOS and ids.count(EOS) == 1 and len(ids) < len(tokens)
            prompt, answer = vocab.decode(ids[:length]), vocab.decode(ids[length:-1])
            if spec.name.endswith("classify"):
                assert prompt == "classify:" and answer in spec.class_names
            elif spec.name.endswith("caption"):
                assert prompt == "caption:" and answer.startswith(
                    ("a handwritten", "the digit", "a picture")
                )
            else:
                assert prompt.startswith("question: ") and prompt.endswith(" answer:")
                assert answer in spec.class_names
            seen.add(spec.name)
    assert seen == {
        "lit_images_caption",
        "lit_images_classify",
        "lit_videos_caption",
        "lit_questions_answer",
    }


def test_the_text_loss_reads_only_the_answer_with_label_smoothing():
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.normal(size=(2, 6, 7)), jnp.float32)
    tokens = jnp.asarray([[4, 5, 6, 3, EOS, 0], [4, 2, EOS, 0, 0, 0]])
    lengths = jnp.asarray([2, 1])
    loss, m = objectives.text_cross_entropy(logits, tokens, lengths, 0.1)
    answer = [(0, 2), (0, 3), (0, 4), (1, 1), (1, 2)]
    expected = []
    for b, t in answer:
        target = np.full(7, 0.1 / 7)
        target[tokens[b, t]] += 0.9
        expected.append(-(target * jax.nn.log_softmax(logits[b, t])).sum())
    assert float(loss) == pytest.approx(np.mean(expected), rel=1e-5)
    moved = logits.at[:, :1].add(5.0).at[0, 5].add(5.0)  # prompt and padding positions only
    assert float(objectives.text_cross_entropy(moved, tokens, lengths, 0.1)[0]) == pytest.approx(
        float(loss), rel=1e-6
    )
    assert 0 <= float(m["token_accuracy"]) <= 1 and 0 <= float(m["exact_match"]) <= 1


def _params_after_step(experiment, steps=1):
    from imp.training import train_state
    from imp.training.step import make_train_step

    state = train_state.create(
        experiment.model,
        experiment.tx,
        experiment.partitioner,
        jax.random.key(0),
        experiment.shardings,
    )
    before = jax.tree.map(np.asarray, state["params"])
    spec = experiment.specs["lit_images_classify"]
    batch = next(feeding.batches(spec, "train", 0, train=True))
    step = jax.jit(
        make_train_step(
            experiment.model, experiment.tx, experiment.step_size, [spec], experiment.loss
        )
    )
    for i in range(steps):
        state, _ = step(state, {spec.name: batch}, jax.random.key(i))
    return before, jax.tree.map(np.asarray, state["params"]), state["opt_state"]


def test_a_frozen_encoder_keeps_its_parameters_and_has_no_optimizer_state(world_dir, tmp_path):
    experiment = _experiment(world_dir, tmp_path)
    assert experiment.model.frozen_encoder
    before, after, opt_state = _params_after_step(experiment, steps=2)
    for collection in before:
        same = jax.tree.all(jax.tree.map(np.array_equal, before[collection], after[collection]))
        assert same == (collection != "text_decoder"), collection
    state_paths = {
        jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_leaves_with_path(opt_state)
    }
    assert state_paths and all("'text_decoder'" in p for p in state_paths)


def test_the_encoder_learns_at_its_multiplier_of_the_rate(world_dir, tmp_path):
    full = _experiment(world_dir, tmp_path, "make_optimizer.encoder_lr_multiplier = 1.0")
    slow = _experiment(world_dir, tmp_path, "make_optimizer.encoder_lr_multiplier = 0.1")
    # The warm-up's first rate is 0: the second step is the first that moves anything, from
    # the same state in both runs.
    before, fast_after, _ = _params_after_step(full, steps=2)
    _, slow_after, _ = _params_after_step(slow, steps=2)
    for name in ("encoder", "text_decoder"):
        fast = jax.tree.map(lambda a, b: a - b, fast_after[name], before[name])
        slow_moved = jax.tree.map(lambda a, b: a - b, slow_after[name], before[name])
        scale = 0.1 if name == "encoder" else 1.0
        for f, s in zip(jax.tree.leaves(fast), jax.tree.leaves(slow_moved), strict=True):
            np.testing.assert_allclose(s, scale * f, rtol=1e-4, atol=1e-7)
        assert any(np.abs(f).max() > 0 for f in jax.tree.leaves(fast))


def test_configuration_errors_name_their_culprit(world_dir, tmp_path):
    with pytest.raises(ImpError, match="bind ImpModel.text_decoder"):
        _experiment(world_dir, tmp_path, "ImpModel.text_decoder = None")
    with pytest.raises(ImpError, match="TextDecoder.max_length = 16"):
        _experiment(world_dir, tmp_path, "TextDecoder.max_length = 16")
    with pytest.raises(ImpError, match="make_optimizer.encoder_lr_multiplier = -1"):
        _experiment(world_dir, tmp_path, "make_optimizer.encoder_lr_multiplier = -1.0")
    manifest = demo_world.load_manifest(world_dir)
    info = manifest["datasets"]["image"]
    dataset = datasets.Dataset(
        name="prompted",
        file_patterns={s: str(world_dir / v["file_pattern"]) for s, v in info["splits"].items()},
        num_examples={s: v["num_examples"] for s, v in info["splits"].items()},
        tasks={"write": ("generation", ("vision",), "labels")},
        prompts={"write": "quiz;"},
        vocabulary=str(world_dir / manifest["vocabulary"]),
        class_names=tuple(info["class_names"]),
    )
    with pytest.raises(ImpError, match=r"prompted/Dataset.prompts\['write'\] = 'quiz;'.*cannot"):
        datasets.register_dataset(dataset)
    with pytest.raises(ImpError, match=r"Dataset.prompts names \['other'\]"):
        datasets.register_dataset(dataclasses.replace(dataset, prompts={"other": "x"}))


def test_exact_match_and_caption_scores():
    assert metrics.exact_match(["7", " no", "3"], [["7"], ["no"], ["8"]]) == pytest.approx(2 / 3)
    refs = [
        ["a handwritten seven moving left", "the digit 7 moves left"],
        ["a handwritten three moving up", "the digit 3 moves up"],
    ]
    perfect = metrics.caption_scores(
        ["a handwritten seven moving left", "the digit 3 moves up"], refs
    )
    assert perfect["BLEU-4"] == pytest.approx(1.0, abs=1e-6)
    worse = metrics.caption_scores(
        ["a handwritten three moving left", "the digit 7 moves up"], refs
    )
    assert worse["CIDEr"] < perfect["CIDEr"] and worse["BLEU-4"] < perfect["BLEU-4"]
    with pytest.raises(ImpError, match="at least one reference"):
        metrics.caption_scores(["a"], [[]])


def test_lit_demo_trains_and_imp_eval_and_imp_generate_read_it(world_dir, tmp_path, capsys):
    run_dir = tmp_path / "lit"
    flags = [f"--gin_bindings={b}" for b in _bindings(world_dir, run_dir)]
    assert cli.main(["train", "--gin_file=runs/lit_demo.gin", *flags]) == 0
    capsys.readouterr()
    evaluations = "--evaluations=generation,linear_probe"
    assert cli.main(["eval", f"--checkpoint_dir={run_dir}", evaluations, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["tasks"]
    classify = summary["lit_images_classify"]
    assert classify["exact_match"]["chance"] == pytest.approx(0.1)
    assert "linear_probe_top1/vision" in classify
    assert set(summary["lit_videos_caption"]) >= {"BLEU-4", "CIDEr"}
    assert "exact_match" in summary["lit_questions_answer"]
    task = "--task=lit_questions_answer"
    assert cli.main(["generate", f"--checkpoint_dir={run_dir}", task, "--num=3", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [r["id"] for r in rows] == [0, 1, 2]
    assert all(r["prompt"].startswith("question: ") and r["references"] for r in rows)
    assert cli.main(["generate", f"--checkpoint_dir={run_dir}", "--task=lit_image", "--num=1"]) == 2
    assert "did you mean lit_images_caption" in capsys.readouterr().err


def test_mix_in_batch_merges_tasks_of_equal_inputs_and_each_still_evaluates(world_dir, tmp_path):
    experiment = _experiment(world_dir, tmp_path, "Experiment.mix_in_batch = True")
    mixed = experiment.specs["lit_images_caption+lit_images_classify"]
    assert [m.name for m in mixed.members] == ["lit_images_caption", "lit_images_classify"]
    assert sum(mixed.member_weights) == pytest.approx(1.0)
    assert len(experiment.tasks) == 3  # the videos and the questions have inputs of their own
    vocab = generation.vocabulary(mixed)
    prompts = set()
    stream = feeding.batches(mixed, "train", 0, train=True)
    for batch in (next(stream) for _ in range(3)):
        for tokens, length in zip(batch["decoder_tokens"], batch["prompt_length"], strict=True):
            prompts.add(vocab.decode([int(t) for t in tokens[:length]]))
    assert prompts == {"caption:", "classify:"}
    assert set(experiment.metric_names(["generation"])) == {
        "lit_images_caption",
        "lit_images_classify",
        "lit_videos_caption",
        "lit_questions_answer",
    }
    with pytest.raises(ImpError, match="mix_in_batch = True: no two tasks"):
        _experiment(
            world_dir,
            tmp_path,
            "Experiment.mix_in_batch = True",
            "MIXTURE_OR_TASK_NAME = 'lit_videos_caption'",
        )
