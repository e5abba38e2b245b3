"""Checkpoints lose nothing: another configuration stops the run, damaged files are set aside,
I/O errors are retried, anything else stops with the folder untouched; the best checkpoint
keeps its value, and a replayed run that beats it moves the old one aside."""

import jax
import jax.numpy as jnp
import optax
import pytest

from imp.errors import ImpError
from imp.training import checkpoint
from imp.training.checkpoint import BestCheckpoint, Checkpointer


def _state(width: int = 3) -> dict:
    params = {"w": jnp.ones((4, width)), "b": jnp.zeros(width)}
    return {
        "step": jnp.zeros((), jnp.int32),
        "params": params,
        "opt_state": optax.adam(1.0).init(params),
    }


def _abstract(state: dict) -> dict:
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), state)


@pytest.fixture
def opened():
    """`opened(directory)`: a Checkpointer closed after the test (orbax's threads with it)."""
    made = []

    def open_(directory):
        made.append(Checkpointer(directory))
        return made[-1]

    yield open_
    for checkpointer in made:
        checkpointer.close()


def _snapshot(path):
    return {str(p.relative_to(path)): p.stat().st_mtime_ns for p in path.rglob("*")}


@pytest.fixture
def saved(tmp_path):
    """Steps 1 and 2 of a small state."""
    saver = Checkpointer(tmp_path / "ckpt")
    for step in (1, 2):
        saver.save(step, _state(), {"step": step})
    saver.wait()
    saver.close()
    return tmp_path / "ckpt"


def test_another_configuration_stops_naming_the_leaf_and_touches_nothing(saved, opened):
    before = _snapshot(saved)
    with pytest.raises(ImpError, match=r"params/b is \(3,\) in the checkpoint and \(5,\) in"):
        opened(saved).restore_latest(_abstract(_state(width=5)))
    assert _snapshot(saved) == before


def test_parameters_read_alone_whatever_the_optimizer_state(saved, opened):
    """Evaluation reads the parameters only: a run of another optimizer (here SGD's state
    over Adam's) still evaluates, placed as asked; a parameter of another shape is named."""
    state = _state()
    sgd = {**state, "opt_state": optax.sgd(1.0, momentum=0.9).init(state["params"])}
    before = _snapshot(saved)
    params = opened(saved).params(2, _abstract(sgd)["params"])
    assert jax.tree.map(lambda x: x.tolist(), params) == jax.tree.map(
        lambda x: x.tolist(), state["params"]
    )
    assert params["w"].sharding == _abstract(sgd)["params"]["w"].sharding
    with pytest.raises(ImpError, match=r"params/b is \(3,\) in the checkpoint and \(5,\) in"):
        opened(saved).params(2, _abstract(_state(width=5))["params"])
    assert _snapshot(saved) == before


# Reading truncated data, tensorstore leaves an asyncio callback for a closed loop: noise.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("damage", ["empty", "truncated"])
def test_damaged_files_are_set_aside_for_the_step_before(saved, damage, opened):
    for path in (saved / "2").rglob("*"):
        if path.is_file() and (damage == "empty" or path.parent.name == "d"):
            path.write_bytes(b"" if damage == "empty" else path.read_bytes()[:10])
    step, _, meta = opened(saved).restore_latest(_abstract(_state()))
    assert step == 1 and meta == {"step": 1}
    assert any(p.name.startswith("2.unreadable-") for p in saved.iterdir())


def _failing(monkeypatch, checkpointer, errors: list):
    real = checkpointer.manager.restore

    def restore(*args, **kwargs):
        if errors:
            raise errors.pop(0)
        return real(*args, **kwargs)

    monkeypatch.setattr(checkpoint, "_RETRY_SECONDS", 0.0)
    monkeypatch.setattr(checkpointer.manager, "restore", restore)


def test_io_errors_are_retried_then_reported_with_the_folder_untouched(saved, monkeypatch, opened):
    checkpointer = opened(saved)
    _failing(monkeypatch, checkpointer, [OSError(5, "Input/output error")] * 2)
    assert checkpointer.restore_latest(_abstract(_state()))[0] == 2  # the third read worked
    before = _snapshot(saved)
    _failing(monkeypatch, checkpointer, [OSError(5, "Input/output error")] * 3)
    with pytest.raises(ImpError, match="after 3 attempts; nothing was changed"):
        checkpointer.restore_latest(_abstract(_state()))
    assert _snapshot(saved) == before


@pytest.mark.parametrize(
    "error", [RuntimeError("RESOURCE_EXHAUSTED: out of memory"), KeyError("sharding")]
)
def test_other_failures_stop_and_never_set_a_checkpoint_aside(saved, monkeypatch, error, opened):
    checkpointer = opened(saved)
    _failing(monkeypatch, checkpointer, [error])
    before = _snapshot(saved)
    with pytest.raises(ImpError, match="cannot read the checkpoint at step 2 .*nothing was"):
        checkpointer.restore_latest(_abstract(_state()))
    assert _snapshot(saved) == before


def test_the_best_keeps_its_value_and_a_replayed_better_one_replaces_it(tmp_path):
    best = BestCheckpoint(tmp_path / "best", "t/top1")
    best.offer(6, _state(), {"t": {"top1": {"value": 0.5}}})
    best.offer(8, _state(), {"t": {"top1": {"value": 0.4}}})  # worse: not kept
    best.close()
    resumed = BestCheckpoint(tmp_path / "best", "t/top1")  # e.g. a run resumed at step 2
    assert resumed.value == 0.5
    resumed.offer(4, _state(), {"t": {"top1": {"value": 0.6}}})
    resumed.close()
    names = sorted(p.name for p in (tmp_path / "best").iterdir())
    assert names[0] == "4" and names[1].startswith("6.superseded-") and len(names) == 2
    again = BestCheckpoint(tmp_path / "best", "t/top1")
    with pytest.raises(ImpError, match="'t/top1' was not reported by this evaluation"):
        again.offer(9, _state(), {"t": {"top5": {}}})
    again.close()


def test_for_a_rank_lower_is_better(tmp_path):
    best = BestCheckpoint(tmp_path / "best", "t/retrieval/text_to_vision/median_rank")

    def offer(step, rank):
        best.offer(step, _state(), {"t": {"retrieval/text_to_vision/median_rank": {"value": rank}}})
        best.checkpointer.wait()
        return sorted(p.name for p in (tmp_path / "best").iterdir() if p.name.isdigit())

    assert offer(1, 5.0) == ["1"]
    assert offer(2, 7.0) == ["1"]
    assert offer(3, 3.0) == ["3"]
    best.close()
