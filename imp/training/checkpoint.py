"""Orbax checkpoints of the train state plus the loop's JSON metadata (sampler, data positions,
graph-table statistics).

Orbax writes each step into a temporary directory and renames it when complete, so a run
killed mid-save never leaves a checkpoint that restore would pick up. A checkpoint that is
complete but unreadable (a damaged disk, a hand-edited file) is skipped for the one before it,
with a warning.
"""

import logging
import time
from pathlib import Path

import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from imp.errors import ImpError
from imp.training.train_state import TrainState


class Checkpointer:
    def __init__(self, directory: Path, max_to_keep: int = 3, read_only: bool = False):
        """`read_only` opens another run's checkpoints without ever writing to them."""
        self.manager = ocp.CheckpointManager(
            Path(directory).absolute(),
            options=ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep, create=not read_only, read_only=read_only
            ),
            item_handlers={
                "state": ocp.StandardCheckpointHandler(),
                "meta": ocp.JsonCheckpointHandler(),
            },
        )

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def parameter_shapes(self, step: int) -> dict[str, tuple[int, ...]]:
        """`{"a/b/kernel": shape}` of the parameters saved at `step` (metadata only)."""
        return parameter_shapes(self.manager.item_metadata(step)["state"]["params"])

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: TrainState, meta: dict) -> None:
        """Starts an asynchronous save; `wait()` blocks until it is on disk."""
        self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
            ),
        )

    def restore(self, step: int, abstract_state: TrainState) -> tuple[TrainState, dict]:
        """Restores `step` into the shardings carried by `abstract_state`."""
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()
            ),
        )
        return restored["state"], restored["meta"]

    def restore_latest(self, abstract_state: TrainState) -> tuple[int, TrainState, dict] | None:
        """The newest checkpoint that reads back, as `(step, state, meta)`; None without any."""
        steps = sorted(self.manager.all_steps(), reverse=True)
        for step in steps:
            try:
                return (step, *self.restore(step, abstract_state))
            except Exception as error:  # orbax and tensorstore raise many kinds
                aside = self._set_aside(step)
                logging.getLogger(__name__).warning(
                    "checkpoint at step %d in %s is unreadable (%s: %s); moved to %s, trying "
                    "the one before",
                    step,
                    self.manager.directory,
                    type(error).__name__,
                    str(error).splitlines()[0][:200] if str(error) else "",
                    aside.name,
                )
        if steps:
            raise ImpError(f"no checkpoint in {self.manager.directory} reads back (steps {steps})")
        return None

    def _set_aside(self, step: int) -> Path:
        """Renames an unreadable step's folder so nothing restores it and the step can be
        saved again (on the first process; the others wait for it)."""
        directory = Path(self.manager.directory)
        aside = directory / f"{step}.unreadable-{int(time.time())}"
        if jax.process_index() == 0:
            (directory / str(step)).rename(aside)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices(f"imp.checkpoint.set_aside.{step}")
        self.manager.reload()
        return aside

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


def _path(path) -> str:
    return "/".join(str(getattr(p, "key", getattr(p, "idx", p))) for p in path)


def parameter_shapes(params) -> dict[str, tuple[int, ...]]:
    """`{"a/b/kernel": shape}` of a parameter tree (arrays, `ShapeDtypeStruct`s or orbax's
    array metadata)."""
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    return {_path(p): tuple(leaf.shape) for p, leaf in flat}
