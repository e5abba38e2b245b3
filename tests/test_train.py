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


SAME = ["train.evaluate_at_end = False", "make_optimizer.decay_steps = 1000"]


def _assert_same_run(straight, resumed, steps):
    """Same tasks, batches (losses) and parameters. CPU XLA is deterministic, but a restored
    state goes through a save/load and a fresh compile: allow float32 rounding."""
    a, b = _records(straight), _records(resumed)
    assert [r["step"] for r in b if r["step"] <= steps][-1] == steps
    last = {r["step"]: r for r in b}  # a re-run step's later record wins
    assert [r["task"] for r in a] == [last[r["step"]]["task"] for r in a]
    np.testing.assert_allclose(
        [r["loss"] for r in a], [last[r["step"]]["loss"] for r in a], rtol=1e-5
    )
    for x, y in zip(
        jax_leaves(_params(straight, steps)), jax_leaves(_params(resumed, steps)), strict=True
    ):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


def test_resume_continues_exactly(tmp_path, run_config):
    """20 straight steps == 10 steps, save, restore, 10 more."""
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run_config(straight, 20, *SAME)
    loop.train()
    run_config(resumed, 10, *SAME)
    loop.train()
    run_config(resumed, 20, *SAME)
    loop.train()
    assert [r["step"] for r in _records(resumed)] == list(range(1, 21))  # resumed, not restarted
    _assert_same_run(straight, resumed, 20)


def test_corrupt_latest_checkpoint_falls_back(tmp_path, run_config, caplog):
    straight, damaged = tmp_path / "straight", tmp_path / "damaged"
    run_config(straight, 10, *SAME)
    loop.train()
    run_config(damaged, 10, *SAME, "train.checkpoint_every = 5")
    loop.train()
    for path in (damaged / "checkpoints" / "10").rglob("*"):
        if path.is_file():
            path.write_bytes(b"")
    run_config(damaged, 10, *SAME, "train.checkpoint_every = 5")
    loop.train()
    assert "checkpoint at step 10" in caplog.text and "unreadable" in caplog.text
    steps = [r["step"] for r in _records(damaged)]
    assert steps == list(range(1, 11)) + list(range(6, 11))  # steps 6-10 ran again
    _assert_same_run(straight, damaged, 10)


def test_sigterm_saves_and_resumes_to_the_same_result(tmp_path, world_dir):
    """`imp train` in a subprocess gets SIGTERM mid-run, saves and exits 0; resuming to step
    k + 5 gives what a straight k + 5 step run gives."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from conftest import TINY, WORLD_IMAGES

    def argv(model_dir, steps):
        flags = [
            f"MODEL_DIR='{model_dir}'",
            f"TRAIN_STEPS={steps}",
            f"prepare_demo.data_dir='{world_dir}'",
            f"prepare_demo.num_images={WORLD_IMAGES}",
            "prepare_demo.batch_size=8",
            "train.progress_bar=False",
            *SAME,
            *TINY,
        ]
        return [sys.executable, "-m", "imp.cli", "train"] + [f"--gin_bindings={f}" for f in flags]

    resumed = tmp_path / "resumed"
    process = subprocess.Popen(
        argv(resumed, 1000), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.time() + 300
    while time.time() < deadline and not (
        (resumed / "metrics.jsonl").exists() and len(_records(resumed)) >= 8
    ):
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr.decode()[-2000:]
    assert b"SIGTERM received: saved step" in stderr
    k = max(int(p.name) for p in (resumed / "checkpoints").iterdir() if p.name.isdigit())
    assert 8 <= k < 1000
    subprocess.run(argv(resumed, k + 5), check=True, capture_output=True, env=os.environ)
    straight = tmp_path / "straight"
    subprocess.run(argv(straight, k + 5), check=True, capture_output=True, env=os.environ)
    _assert_same_run(straight, resumed, k + 5)


def test_non_finite_steps_are_skipped_then_stop_the_run(tmp_path, run_config, caplog, monkeypatch):
    import jax.numpy as jnp

    from imp.errors import ImpError

    poisoned_steps = {3}
    next_batch = loop._Streams.next
    calls = {"n": 0}

    def poisoned(self, name):
        batch = next_batch(self, name)
        calls["n"] += 1
        if calls["n"] in poisoned_steps:
            batch = {**batch, "vision": batch["vision"] * jnp.nan}
        return batch

    monkeypatch.setattr(loop._Streams, "next", poisoned)
    run_config(tmp_path / "once", 6, *SAME)
    loop.train()
    records = _records(tmp_path / "once")
    assert [r["skipped"] for r in records] == [False, False, True, False, False, False]
    assert "step 3: non-finite loss or gradient from" in caplog.text
    assert "reproduce: seed 0, step 3" in caplog.text

    poisoned_steps.update(range(1, 100))
    calls["n"] = 0
    run_config(tmp_path / "always", 20, *SAME, "train.max_bad_steps = 4")
    with pytest.raises(ImpError, match="4 steps in a row had a non-finite loss"):
        loop.train()


@pytest.mark.parametrize("schedule", ["summed", "accumulated", "task_by_task", "loss_aware"])
def test_every_schedule_trains(tmp_path, run_config, schedule):
    run_config(tmp_path, 4, *SAME, f"make_sampler.schedule = '{schedule}'")
    summary = loop.train()
    records = _records(tmp_path)
    per_step = 5 if schedule in ("summed", "accumulated") else 1
    assert len(records) == 4 * per_step
    assert all(np.isfinite(r["loss"]) for r in records)
    assert summary["graphs"] == {"summed": 1, "accumulated": 6}.get(schedule, summary["graphs"])


def test_precompile_compiles_every_graph_before_step_one(tmp_path, run_config):
    run_config(tmp_path, 6, *SAME, "train.precompile = True")
    summary = loop.train()
    assert summary["graphs"] == 5  # one per task of demo_all
    assert not any(r["compiled"] for r in _records(tmp_path))


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
