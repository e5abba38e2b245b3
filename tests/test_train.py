"""End-to-end runs of the AGD loop on a small demo world and a tiny model."""

import json

import numpy as np
import orbax.checkpoint as ocp
import pytest

from imp.training import loop


def _records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").open()]


def _params(run_dir, step):
    restored = ocp.CheckpointManager(run_dir / "checkpoints").restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore())
    )
    return restored["state"]["params"]


def test_run_writes_outputs(tmp_path, run_config):
    run_config(tmp_path, 12, "train.evaluate_at_end = False")
    summary = loop.train()
    for path in ["config.gin", "metrics.jsonl", "report/summary.json", "report/loss_per_task.png"]:
        assert (tmp_path / path).is_file(), path
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert (tmp_path / "checkpoints" / "12").is_dir()
    records = _records(tmp_path)
    assert [r["step"] for r in records] == list(range(1, 13))
    assert {"step", "task", "loss", "step_seconds", "compiled"} <= set(records[0])
    # One compile per task the sampler drew, flagged on its first step only.
    first_steps = {}
    for r in records:
        first_steps.setdefault(r["task"], r["step"])
    assert [r["step"] for r in records if r["compiled"]] == sorted(first_steps.values())
    assert {t: s["compiles"] for t, s in summary["tasks"].items()} == dict.fromkeys(first_steps, 1)
    assert "TRAIN_STEPS = 12" in (tmp_path / "config.gin").read_text()


def test_resume_continues_exactly(tmp_path, run_config):
    """10 straight steps == 5 steps, restart, 5 more: same tasks, same batches, same params."""
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    same = ["train.evaluate_at_end = False", "make_optimizer.decay_steps = 10"]
    run_config(straight, 10, *same)
    loop.train()
    run_config(resumed, 5, *same)
    loop.train()
    run_config(resumed, 10, *same)
    loop.train()
    a, b = _records(straight), _records(resumed)
    assert [r["step"] for r in b] == list(range(1, 11))  # resumed at 5, not restarted
    assert [r["task"] for r in a] == [r["task"] for r in b]
    np.testing.assert_allclose([r["loss"] for r in a], [r["loss"] for r in b], rtol=1e-5)
    pa, pb = _params(straight, 10), _params(resumed, 10)
    for x, y in zip(jax_leaves(pa), jax_leaves(pb), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


def jax_leaves(tree):
    import jax

    return jax.tree.leaves(tree)


@pytest.mark.slow
def test_demo_model_learns_video_classification(tmp_path, run_config, full_world_dir):
    """The demo's tiny model, 300 steps of held-out-unseen digits: well above chance."""
    run_config(tmp_path, 300, mixture="digit_videos_cls", data_dir=full_world_dir, tiny=False)
    summary = loop.train()
    video = summary["tasks"]["digit_videos_cls"]["heldout"]["top1"]
    assert video["value"] > 3 * video["chance"], video
