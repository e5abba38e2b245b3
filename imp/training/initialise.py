"""`Experiment.init_from`: a run that starts from the parameters of another run's checkpoint,
carried into this model's shapes by `imp.modeling.surgery` (seed 001: a video model from an
image model; seed 000: PolyViT from a ViT).

    Experiment.init_from = @InitFrom()
    InitFrom.checkpoint_dir = 'runs/images'   # a run directory of `imp train`, or its checkpoints/
    InitFrom.tubelet_init = 'central_frame'   # or 'inflate'

Only a fresh run is initialised this way; a run with checkpoints of its own resumes from them.
The optimizer starts afresh. The source and every shape conversion are checked when the
experiment is built, before anything compiles; the log lists what was copied, converted, kept
(the configured initialisation: new heads, new modalities) and dropped.
"""

import dataclasses
import logging
from pathlib import Path

import gin
import jax
import numpy as np

from imp import validation
from imp.errors import ImpError
from imp.modeling import surgery
from imp.training.checkpoint import Checkpointer

log = logging.getLogger(__name__)


@gin.register
@dataclasses.dataclass(frozen=True)
class InitFrom:
    checkpoint_dir: str = ""
    step: int | None = None  # None: the newest checkpoint
    tubelet_init: str = "central_frame"  # `surgery.TUBELET_INITS`

    def check(self, abstract_params, tubelet_depth: int) -> None:
        """An `ImpError` naming the binding or parameter when the source cannot initialise a
        model of `abstract_params` (from the checkpoint's metadata: nothing is read)."""
        validation.require(
            self.tubelet_init in surgery.TUBELET_INITS,
            f"InitFrom.tubelet_init = {self.tubelet_init!r}: expected one of "
            f"{surgery.TUBELET_INITS}",
        )
        checkpointer, step = self._open()
        try:
            specs = checkpointer.specs(step)
        finally:
            checkpointer.close()
        source = {
            name.removeprefix("params/"): spec
            for name, spec in specs.items()
            if name.startswith("params/")
        }
        try:
            surgery.match(surgery.flatten(abstract_params), source, tubelet_depth)
        except ImpError as error:
            raise ImpError(f"{self._where(step)}: {error.message}") from None

    def load(self, abstract_params, tubelet_depth: int) -> tuple[dict, dict]:
        """The parameters taken from the source (flat host arrays; the rest keep the model's
        initialisation) and the report of `surgery.transfer`."""
        checkpointer, step = self._open()
        try:
            params = checkpointer.params(step)
        finally:
            checkpointer.close()
        source = surgery.flatten(jax.tree.map(np.asarray, params))
        target = surgery.flatten(abstract_params)
        values, report = surgery.transfer(target, source, tubelet_depth, self.tubelet_init)
        log.info(
            "initialised from %s: %d parameters copied, %d converted (%s), %d kept as "
            "initialised (%s), %d of the source dropped (%s)",
            self._where(step),
            len(report["copied"]),
            len(report["converted"]),
            ", ".join(report["converted"]) or "none",
            len(report["kept"]),
            ", ".join(report["kept"]) or "none",
            len(report["dropped"]),
            ", ".join(report["dropped"]) or "none",
        )
        return values, report

    def _where(self, step: int) -> str:
        return f"InitFrom.checkpoint_dir = {self.checkpoint_dir!r} (step {step})"

    def _open(self) -> tuple[Checkpointer, int]:
        validation.require(
            isinstance(self.checkpoint_dir, str) and bool(self.checkpoint_dir),
            f"InitFrom.checkpoint_dir = {self.checkpoint_dir!r}: expected the run directory "
            "of an `imp train` run (or its checkpoints/)",
        )
        path = Path(self.checkpoint_dir).expanduser()
        directory = path if path.name == "checkpoints" else path / "checkpoints"
        validation.require(
            directory.is_dir(),
            f"InitFrom.checkpoint_dir = {self.checkpoint_dir!r}: {directory} does not exist",
        )
        checkpointer = Checkpointer(directory, read_only=True)
        steps = checkpointer.all_steps()
        step = steps[-1] if steps and self.step is None else self.step
        if step not in steps:
            checkpointer.close()
            raise ImpError(
                f"InitFrom.checkpoint_dir = {self.checkpoint_dir!r}: no checkpoint "
                + (f"at step {step} " if self.step is not None else "")
                + f"in {directory} (it has {steps or 'none'})"
            )
        return checkpointer, step


def initialised_params(init_from: InitFrom, fresh_params, shardings, tubelet_depth: int):
    """`fresh_params` (placed with `shardings`) with the source's values put in place."""
    values, _ = init_from.load(jax.eval_shape(lambda: fresh_params), tubelet_depth)
    flat = surgery.flatten(fresh_params)
    placed = surgery.flatten(shardings)
    for name, value in values.items():
        flat[name] = jax.make_array_from_callback(
            value.shape, placed[name], lambda index, value=value: value[index]
        )
    return surgery.unflatten(flat)
