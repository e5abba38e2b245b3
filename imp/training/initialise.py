"""`Experiment.init_from`: a run that starts from the parameters of another run's checkpoint,
or of a ViT another framework wrote, carried into this model's shapes by
`imp.modeling.surgery` (seed 001: a video model from an image model; seed 000: PolyViT from
a ViT).

    Experiment.init_from = @InitFrom()
    InitFrom.checkpoint_dir = 'runs/images'   # a run directory of `imp train`, or its checkpoints/
    InitFrom.tubelet_init = 'central_frame'   # or 'inflate'

or, for a big_vision / vision_transformer `.npz` or a timm state_dict (`.safetensors`,
`.pth`, `.bin`; `imp.modeling.readers`),

    InitFrom.weights = 'vit_b16.npz'
    ImpModel.positions = 'joint'             # a ViT's one position table
    ImpModel.class_token = True              # when it has one

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
from imp.modeling import readers, surgery
from imp.partitioning.partitioner import from_host
from imp.training.checkpoint import Checkpointer

log = logging.getLogger(__name__)


@gin.register
@dataclasses.dataclass(frozen=True)
class InitFrom:
    checkpoint_dir: str = ""  # an `imp train` run (orbax checkpoints)
    weights: str = ""  # or a checkpoint file of another framework (`readers.SUFFIXES`)
    step: int | None = None  # of `checkpoint_dir`; None: the newest checkpoint
    tubelet_init: str = "central_frame"  # `surgery.TUBELET_INITS`

    def check(self, abstract_params, model) -> None:
        """An `ImpError` naming the binding or parameter when the source cannot initialise
        `model` with parameters `abstract_params` (a run's checkpoint: from its metadata,
        nothing is read)."""
        validation.require(
            self.tubelet_init in surgery.TUBELET_INITS,
            f"InitFrom.tubelet_init = {self.tubelet_init!r}: expected one of "
            f"{surgery.TUBELET_INITS}",
        )
        where, source = self._source(model, abstract=True)
        try:
            surgery.match(surgery.flatten(abstract_params), source, model.vision_patch[0])
        except ImpError as error:
            raise ImpError(f"{where}: {error.message}") from None

    def load(self, abstract_params, model) -> tuple[dict, dict]:
        """The parameters taken from the source (flat host arrays; the rest keep the model's
        initialisation) and the report of `surgery.transfer`."""
        where, source = self._source(model, abstract=False)
        target = surgery.flatten(abstract_params)
        values, report = surgery.transfer(target, source, model.vision_patch[0], self.tubelet_init)
        log.info(
            "initialised from %s: %d parameters copied, %d converted (%s), %d kept as "
            "initialised (%s), %d of the source dropped (%s)",
            where,
            len(report["copied"]),
            len(report["converted"]),
            ", ".join(report["converted"]) or "none",
            len(report["kept"]),
            ", ".join(report["kept"]) or "none",
            len(report["dropped"]),
            ", ".join(report["dropped"]) or "none",
        )
        return values, report

    def _source(self, model, abstract: bool) -> tuple[str, dict]:
        """Where the parameters come from (for messages), and their flat shapes
        (`abstract`) or host arrays."""
        validation.require(
            bool(self.checkpoint_dir) != bool(self.weights),
            "InitFrom: set one of InitFrom.checkpoint_dir (an imp run) and InitFrom.weights "
            f"(a file of another framework), not {'both' if self.weights else 'neither'}",
        )
        if self.weights:
            return self._foreign(model)
        checkpointer, step = self._open()
        try:
            if abstract:
                source = checkpointer.param_specs(step)
            else:
                source = surgery.flatten(jax.tree.map(np.asarray, checkpointer.params(step)))
        finally:
            checkpointer.close()
        return self._where(step), source

    def _foreign(self, model) -> tuple[str, dict]:
        where = f"InitFrom.weights = {self.weights!r}"
        validation.require(
            isinstance(self.weights, str),
            f"{where}: expected the path of a checkpoint file ({tuple(readers.SUFFIXES)})",
        )
        try:
            foreign = readers.read(self.weights, model.num_heads)
        except ImpError as error:
            raise ImpError(f"{where}: {error.message}") from None
        if foreign.gelu != model.gelu:
            log.warning(
                "%s: its %s model used the %s GELU and ImpModel.gelu = %r; bind "
                "ImpModel.gelu = %r to compute what it computed",
                where,
                foreign.framework,
                foreign.gelu,
                model.gelu,
                foreign.gelu,
            )
        if foreign.skipped:
            log.info("%s: left out %s", where, ", ".join(foreign.skipped))
        return where, foreign.params

    def _where(self, step: int) -> str:
        return f"InitFrom.checkpoint_dir = {self.checkpoint_dir!r} (step {step})"

    def _open(self) -> tuple[Checkpointer, int]:
        validation.require(
            isinstance(self.checkpoint_dir, str),
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


def initialised_params(init_from: InitFrom, fresh_params, shardings, model):
    """`fresh_params` (placed with `shardings`) with the source's values put in place."""
    values, _ = init_from.load(jax.eval_shape(lambda: fresh_params), model)
    flat = surgery.flatten(fresh_params)
    placed = surgery.flatten(shardings)
    flat |= {name: from_host(value, placed[name]) for name, value in values.items()}
    return surgery.unflatten(flat)
