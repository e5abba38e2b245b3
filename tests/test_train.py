"""End-to-end runs of the AGD loop on a small demo world and a tiny model: outputs, exact resume,
SIGTERM, damaged and mismatched checkpoints, skipped steps, every schedule."""

import json
import os
import signal

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from conftest import configure_run

from imp.data.feeding import TrainStreams
from imp.errors import ImpError
from imp.training import loop
from imp.training.optimizer import make_optimizer

# Every run of this file: no evaluation at the end, a checkpoint every 10 steps.
SAME = ["train.evaluate_at_end = False", "train.checkpoint_every = 10"]


def _records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").open()]


def _params(run_dir, step):
    restored = ocp.CheckpointManager(run_dir / "checkpoints").restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore())
    )
    return restored["state"]["params"]


def _snapshot(path):
    return {str(p.relative_to(path)): p.stat().st_mtime_ns for p in path.rglob("*")}


@pytest.fixture(scope="module")
def straight(tmp_path_factory, world_dir):
    """20 steps in one go, with the encoder-gradient similarity logged after the last one (it
    draws a batch of every task, so earlier it would change the batches of later steps)."""
    out = tmp_path_factory.mktemp("straight")
    experiment, options = configure_run(
        world_dir, out, 20, *SAME, "train.gradient_similarity_every = 20"
    )
    return out, loop.train(experiment, options)


def test_run_writes_outputs(straight):
    run_dir, summary = straight
    report = ["summary.json", "loss_per_task.png", "learning_rate_per_task.png"]
    for path in ["config.gin", "metrics.jsonl", *(f"report/{name}" for name in report)]:
        assert (run_dir / path).is_file(), path
    assert (run_dir / "report" / "gradient_similarity.png").is_file()
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["10", "20"]
    records = [r for r in _records(run_dir) if r["task"] != "gradient_similarity"]
    assert [r["step"] for r in records] == list(range(1, 21))
    assert {"step", "task", "loss", "step_seconds", "compiled"} <= set(records[0])
    # One compile per task the sampler drew, flagged on its first step only.
    first_steps = {}
    for r in records:
        first_steps.setdefault(r["task"], r["step"])
    assert [r["step"] for r in records if r["compiled"]] == sorted(first_steps.values())
    assert {t: s["compiles"] for t, s in summary["tasks"].items()} == dict.fromkeys(first_steps, 1)
    for task, stats in summary["tasks"].items():  # each task's own schedule, in the report
        rates = [r["learning_rate"] for r in records if r["task"] == task]
        assert stats["peak_learning_rate"] == pytest.approx(max(rates))
    uncompiled = [r["step_seconds"] for r in records if not r["compiled"]]
    assert summary["median_step_seconds"] == pytest.approx(np.median(uncompiled))
    config = (run_dir / "config.gin").read_text()
    assert "TRAIN_STEPS = 20" in config and "ImpModel.d_model = 32" in config
    assert "Experiment.train_steps = %TRAIN_STEPS" in config
    similarity = [r for r in _records(run_dir) if r["task"] == "gradient_similarity"]
    assert [r["step"] for r in similarity] == [20]
    matrix = np.asarray(similarity[0]["matrix"])
    np.testing.assert_allclose(np.diag(matrix), 1.0, rtol=1e-5)
    np.testing.assert_allclose(matrix, matrix.T, rtol=1e-5)


def test_learning_rate_follows_warmup_then_cosine(straight):
    """The logged rate is the schedule's at the step's start: linear warm-up over 50 steps to
    1e-3 (runs/demo.gin), then a cosine to 0 at step 1000 (decay_steps, conftest)."""
    run_dir, _ = straight
    logged = {r["step"]: r["learning_rate"] for r in _records(run_dir) if "learning_rate" in r}
    expected = {s: 1e-3 * (s - 1) / 50 for s in logged}
    steps = sorted(logged)
    np.testing.assert_allclose([logged[s] for s in steps], [expected[s] for s in steps], rtol=1e-5)
    _, schedule = make_optimizer(1000, learning_rate=1e-3, warmup_steps=50)
    for t in (0, 25, 50, 300, 525, 999):
        cosine = 0.5 * (1 + np.cos(np.pi * (t - 50) / 950))
        want = 1e-3 * t / 50 if t < 50 else 1e-3 * cosine
        assert float(schedule(t)) == pytest.approx(want, rel=1e-5, abs=1e-9), t


def _assert_same_run(straight_dir, resumed, steps):
    """Same tasks, batches (losses) and parameters. CPU XLA is deterministic, but a restored
    state goes through a save/load and a fresh compile: allow float32 rounding. Every step
    appears once in the resumed run's metrics."""
    a = [r for r in _records(straight_dir) if r["task"] != "gradient_similarity"]
    a = [r for r in a if r["step"] <= steps]
    b = _records(resumed)
    assert [r["step"] for r in b] == list(range(1, steps + 1))
    assert [r["task"] for r in a] == [r["task"] for r in b]
    np.testing.assert_allclose([r["loss"] for r in a], [r["loss"] for r in b], rtol=1e-5)
    for x, y in zip(
        jax.tree.leaves(_params(straight_dir, steps)),
        jax.tree.leaves(_params(resumed, steps)),
        strict=True,
    ):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


def test_sigterm_saves_and_resumes_to_the_same_result(straight, tmp_path, run_config, monkeypatch):
    """SIGTERM during step 7: the step finishes, step 7 is saved, the run returns. Resuming to
    step 20 gives what the straight run gave: the same tasks, batches, losses and parameters
    (sampler state and stream positions come back with the checkpoint)."""
    next_batch, calls = TrainStreams.next, {"n": 0}

    def signalled(self, name):
        calls["n"] += 1
        if calls["n"] == 7:
            os.kill(os.getpid(), signal.SIGTERM)
        return next_batch(self, name)

    monkeypatch.setattr(TrainStreams, "next", signalled)
    run_dir = tmp_path / "stopped"
    loop.train(*run_config(run_dir, 20, *SAME))
    assert [r["step"] for r in _records(run_dir)] == list(range(1, 8))
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["7"]
    monkeypatch.setattr(TrainStreams, "next", next_batch)
    loop.train(*run_config(run_dir, 20, *SAME))
    _assert_same_run(straight[0], run_dir, 20)


def test_damaged_checkpoint_is_set_aside_and_steps_run_again(
    straight, tmp_path, run_config, caplog
):
    damaged = tmp_path / "damaged"
    loop.train(*run_config(damaged, 15, *SAME, "train.checkpoint_every = 5"))
    for path in (damaged / "checkpoints" / "15").rglob("*"):
        if path.is_file():
            path.write_bytes(b"")
    loop.train(*run_config(damaged, 20, *SAME))
    assert "checkpoint at step 15" in caplog.text and "unreadable" in caplog.text
    names = sorted(p.name for p in (damaged / "checkpoints").iterdir())
    assert "10" in names and any(n.startswith("15.unreadable-") for n in names)
    # Steps 11-15 ran again; their first records moved aside, none is counted twice.
    superseded = [json.loads(line) for line in (damaged / "metrics.superseded.jsonl").open()]
    assert [r["step"] for r in superseded] == list(range(11, 16))
    _assert_same_run(straight[0], damaged, 20)


def test_resume_with_another_model_stops_and_touches_nothing(straight, run_config):
    run_dir, _ = straight
    before = _snapshot(run_dir)
    with pytest.raises(ImpError) as error:
        loop.train(*run_config(run_dir, 30, *SAME, "ImpModel.d_model = 48"))
    message = error.value.message
    assert "does not match the configured model" in message
    assert "params/" in message and "(32" in message and "(48" in message
    assert _snapshot(run_dir) == before


def test_non_finite_steps_are_skipped_then_stop_the_run(tmp_path, run_config, caplog, monkeypatch):
    """A NaN batch at step 3 is skipped and the run goes on; four in a row (steps 6-9) stop
    it, naming the count, the step and the task."""
    import jax.numpy as jnp

    next_batch = TrainStreams.next
    calls = {"n": 0}

    def poisoned(self, name):
        batch = next_batch(self, name)
        calls["n"] += 1
        if calls["n"] in (3, 6, 7, 8, 9):
            batch = {**batch, "vision": batch["vision"] * jnp.nan}
        return batch

    monkeypatch.setattr(TrainStreams, "next", poisoned)
    with pytest.raises(ImpError, match="4 steps in a row had a non-finite loss .* step 9"):
        loop.train(*run_config(tmp_path, 20, *SAME, "train.max_bad_steps = 4"))
    skipped = [r["skipped"] for r in _records(tmp_path)]
    assert skipped == [False, False, True, False, False, True, True, True, True]
    assert "step 3: non-finite loss or gradient from" in caplog.text
    assert "reproduce: seed 0, step 3" in caplog.text


@pytest.mark.parametrize("schedule", ["summed", "accumulated", "loss_aware"])
def test_the_loop_paths_of_the_schedules(tmp_path, run_config, schedule):
    """Each schedule's choices are tested in test_sampler.py; here, the loop's paths: one graph
    for both tasks (summed), a gradient graph per task and one update (accumulated), and
    held-out losses fed back to the sampler, which keeps them in the checkpoint (loss_aware)."""
    from imp.training.checkpoint import Checkpointer

    # A task's own peak and warm-up (seed 000 Table 6), under an alternating schedule.
    videos = "{'digit_videos_cls': {'lr_multiplier': 2.0, 'warmup_steps': 2}}"
    own = [f"Experiment.task_options = {videos}"] if schedule == "loss_aware" else []
    bindings = [*SAME, f"Schedule.name = '{schedule}'", *own]
    summary = loop.train(*run_config(tmp_path, 4, *bindings))
    records = _records(tmp_path)
    assert all(np.isfinite(r["loss"]) for r in records)
    drawn = {r["task"] for r in records}
    if schedule == "loss_aware":
        assert [r["step"] for r in records] == [1, 2, 3, 4]
        for r in records:  # runs/demo.gin: peak 1e-3, 50 warm-up steps
            own = r["task"] == "digit_videos_cls"
            want = 2e-3 * min(r["step"] - 1, 2) / 2 if own else 1e-3 * (r["step"] - 1) / 50
            assert r["learning_rate"] == pytest.approx(want, rel=1e-5), r
        meta = Checkpointer(tmp_path / "checkpoints", read_only=True).meta(4)
        assert set(meta["sampler"]["averages"]) == drawn
        assert summary["graphs"] == len(drawn)
    else:  # every task in every step
        assert [r["step"] for r in records] == [1, 1, 2, 2, 3, 3, 4, 4]
        assert summary["graphs"] == {"summed": 1, "accumulated": 3}[schedule]


def test_precompile_compiles_every_graph_before_step_one(tmp_path, run_config):
    summary = loop.train(*run_config(tmp_path, 3, *SAME, "train.precompile = True"))
    assert summary["graphs"] == 2  # one per task of the pair, whichever the sampler draws
    assert not any(r["compiled"] for r in _records(tmp_path))


def test_optax_schedule_is_the_documented_one():
    """`make_optimizer` without warm-up room: the warm-up is cut to fit the decay."""
    _, schedule = make_optimizer(10, learning_rate=2.0, warmup_steps=100)
    assert float(schedule(0)) == 0.0 and float(schedule(9)) == pytest.approx(2.0, rel=1e-6)
