"""Orbax checkpoints of the train state plus the loop's JSON metadata (sampler, data positions).

Orbax writes each step into a temporary directory and renames it when complete, so a run
killed mid-save never leaves a checkpoint that restore would pick up.
"""

from pathlib import Path

import orbax.checkpoint as ocp

from imp.training.train_state import TrainState


class Checkpointer:
    def __init__(self, directory: Path, max_to_keep: int = 3):
        self.manager = ocp.CheckpointManager(
            Path(directory).absolute(),
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
        )

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

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()
