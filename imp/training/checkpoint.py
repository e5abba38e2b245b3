"""Orbax checkpoints of the train state plus the loop's JSON metadata (sampler, data positions,
graph-table statistics), and the keeper of the best checkpoint by a held-out metric.

Nothing is lost on a restore:
* orbax writes each step into a temporary directory and renames it when complete, so a run
  killed mid-save never leaves a checkpoint that restore would pick up;
* a checkpoint saved by another configuration (a parameter of another shape, another
  optimizer) stops the run with the first mismatched leaf and both shapes, before anything
  is touched;
* a read that fails with an I/O error is retried; if it keeps failing the run stops and the
  checkpoint stays where it is; so does any other failure (an orbax version it cannot read,
  a sharding it cannot place, memory);
* only a checkpoint whose files are damaged (unparsable, cut short or missing data) is set
  aside, renamed `N.unreadable-<time>`, for the one before it.
"""

import errno
import json
import logging
import math
import time
from pathlib import Path

import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from imp.errors import ImpError
from imp.modeling import surgery
from imp.training.train_state import TrainState

log = logging.getLogger(__name__)

RETRIES = 3  # reads of one checkpoint before an I/O error is reported
_RETRY_SECONDS = 1.0
# Status codes of tensorstore / gRPC storage errors: the first kind a later attempt may not
# see; the second, data that is not there or cut short (what damaged files give).
_TRANSIENT_CODES = ("UNAVAILABLE", "DEADLINE_EXCEEDED", "ABORTED")
_DAMAGE_CODES = ("DATA_LOSS", "OUT_OF_RANGE", "NOT_FOUND")
_DAMAGE_ERRNOS = (errno.ENOENT, errno.ENOTDIR, errno.EISDIR)


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

    @property
    def directory(self) -> Path:
        return Path(self.manager.directory)

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

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

    def shapes(self, step: int) -> dict[str, tuple[int, ...]]:
        """`{"params/a/kernel": shape}` of every leaf saved at `step` (metadata only)."""
        return tree_shapes(self._read(step, lambda: self.manager.item_metadata(step)["state"]))

    def param_specs(self, step: int) -> dict[str, jax.ShapeDtypeStruct]:
        """`{"a/kernel": ShapeDtypeStruct}` of every parameter saved at `step` (metadata
        only), named as `surgery.flatten` names a model's parameters."""
        metadata = self._read(step, lambda: self.manager.item_metadata(step)["state"])
        flat = surgery.flatten(dict(metadata)["params"])
        return {name: jax.ShapeDtypeStruct(m.shape, m.dtype) for name, m in flat.items()}

    def params(self, step: int, abstract_params=None) -> dict:
        """The parameters saved at `step`, read without the optimizer state (so a run of
        another optimizer evaluates too): those `abstract_params` names (`ShapeDtypeStruct`s
        with shardings; each must be saved, in its shape), placed like them; or all of them,
        as saved by any model, on this process's first device."""
        metadata = dict(self._read(step, lambda: self.manager.item_metadata(step)["state"]))
        saved = surgery.flatten(metadata["params"])
        if abstract_params is None:
            device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
            wanted = {
                n: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device) for n, m in saved.items()
            }
        else:
            wanted = surgery.flatten(abstract_params)
            for name, spec in sorted(wanted.items()):
                shape = tuple(saved[name].shape) if name in saved else None
                if shape != tuple(spec.shape):
                    raise self._mismatch(step, f"params/{name}", shape, spec.shape)
        # Whatever is not wanted is skipped (orbax's placeholder), which only the PyTree
        # handler underneath the standard one reads.
        skip = lambda tree: jax.tree.map(lambda _: ocp.PLACEHOLDER, tree)  # noqa: E731
        target = {key: skip(value) for key, value in metadata.items()}
        target["params"] = surgery.unflatten({n: wanted.get(n, ocp.PLACEHOLDER) for n in saved})
        restore_args = jax.tree.map(
            lambda x: (
                ocp.ArrayRestoreArgs(sharding=x.sharding)
                if isinstance(x, jax.ShapeDtypeStruct)
                else ocp.RestoreArgs()
            ),
            target,
        )
        args = ocp.args.Composite(state=ocp.args.PyTreeRestore(target, restore_args=restore_args))
        reader = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(read_only=True),
            item_handlers={"state": ocp.PyTreeCheckpointHandler()},
        )
        try:
            read = self._readable(step, lambda: reader.restore(step, args=args))["state"]["params"]
        finally:
            reader.close()
        read = surgery.flatten(read)
        return surgery.unflatten({name: read[name] for name in wanted})

    def check_matches(self, step: int, abstract_state: TrainState) -> None:
        """An `ImpError` naming the first leaf whose shape differs between the checkpoint at
        `step` and `abstract_state` (or that only one of them has)."""
        saved, configured = self.shapes(step), tree_shapes(abstract_state)
        # Parameters first: their names say more than the optimizer state's mirror of them.
        for name in sorted(set(saved) | set(configured), key=lambda n: (n[:7] != "params/", n)):
            a, b = saved.get(name), configured.get(name)
            if a != b:
                raise self._mismatch(step, name, a, b)

    def _mismatch(self, step: int, name: str, saved, configured) -> ImpError:
        return ImpError(
            f"the checkpoint at step {step} in {self.directory} does not match the configured "
            f"model: {name} is {_shape(saved)} in the checkpoint and {_shape(configured)} in the "
            "configuration; resume with the run's own config.gin, or train into a new MODEL_DIR"
        )

    def restore(self, step: int, abstract_state: TrainState) -> tuple[TrainState, dict]:
        """Restores `step` into the shardings carried by `abstract_state`, after checking that
        it matches; I/O errors are retried, and an unreadable checkpoint is an `ImpError`."""
        try:
            return self._restore(step, abstract_state)
        except _Damaged as damage:
            raise self._unreadable(step, damage) from None

    def _restore(self, step: int, abstract_state: TrainState) -> tuple[TrainState, dict]:
        self.check_matches(step, abstract_state)
        args = ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()
        )
        restored = self._read(step, lambda: self.manager.restore(step, args=args))
        return restored["state"], restored["meta"]

    def meta(self, step: int) -> dict:
        """The JSON metadata saved with `step`."""
        args = ocp.args.Composite(meta=ocp.args.JsonRestore())
        return self._readable(step, lambda: self.manager.restore(step, args=args))["meta"]

    def restore_latest(self, abstract_state: TrainState) -> tuple[int, TrainState, dict] | None:
        """The newest checkpoint that reads back, as `(step, state, meta)`; None without any.

        A damaged checkpoint is set aside for the one before it; one of another configuration
        or one that keeps failing with I/O errors stops with an `ImpError`, untouched."""
        steps = sorted(self.manager.all_steps(), reverse=True)
        for step in steps:
            try:
                return (step, *self._restore(step, abstract_state))
            except _Damaged as damage:
                aside = self.set_aside(step, "unreadable")
                log.warning(
                    "checkpoint at step %d in %s is unreadable (%s); moved to %s, trying the "
                    "one before",
                    step,
                    self.directory,
                    damage,
                    aside.name,
                )
        if steps:
            raise ImpError(f"no checkpoint in {self.directory} reads back (steps {steps})")
        aside = sorted(p.name for p in self.directory.glob("*.unreadable-*"))
        if aside:
            raise ImpError(
                f"{self.directory} holds only checkpoints set aside as unreadable ({aside}); "
                "move them away to start this run over"
            )
        return None

    def _readable(self, step: int, read):
        """`_read`, with damage reported as an `ImpError`."""
        try:
            return self._read(step, read)
        except _Damaged as damage:
            raise self._unreadable(step, damage) from None

    def _unreadable(self, step: int, damage: "_Damaged") -> ImpError:
        return ImpError(f"checkpoint at step {step} in {self.directory} is unreadable ({damage})")

    def _read(self, step: int, read):
        """`read()`: damaged data raises `_Damaged`; an I/O error is retried, then reported;
        anything else stops with the error, the checkpoint untouched."""
        for attempt in range(RETRIES):
            try:
                return read()
            except ImpError:
                raise
            except Exception as error:  # noqa: BLE001 - orbax and tensorstore raise many kinds
                kind = _kind(error)
                if kind == "damaged":
                    raise _Damaged(_describe(error)) from error
                if kind != "transient":
                    raise ImpError(
                        f"cannot read the checkpoint at step {step} in {self.directory} "
                        f"({_describe(error)}); nothing was changed"
                    ) from None
                if attempt + 1 == RETRIES:
                    raise ImpError(
                        f"cannot read the checkpoint at step {step} in {self.directory} "
                        f"({_describe(error)}) after {RETRIES} attempts; nothing was changed, "
                        "try again when the storage answers"
                    ) from None
                log.warning("reading step %d failed (%s); retrying", step, _describe(error))
                time.sleep(_RETRY_SECONDS * (attempt + 1))
        raise AssertionError("unreachable")

    def set_aside(self, step: int, why: str) -> Path:
        """Renames a step's folder to `N.<why>-<time>`, so nothing restores it and the step can
        be saved again; nothing is deleted (on the first process; the others wait for it)."""
        aside = self.directory / f"{step}.{why}-{int(time.time())}"
        if jax.process_index() == 0:
            (self.directory / str(step)).rename(aside)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices(f"imp.checkpoint.set_aside.{step}.{why}")
        self.manager.reload()
        return aside

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


class _Damaged(Exception):
    """A checkpoint whose data cannot be read back (not an I/O hiccup)."""


def _kind(error: BaseException) -> str:
    """ "damaged": the checkpoint's data is missing, cut short or not what it should be;
    "transient": a storage or network failure a later attempt may not see; "other"."""
    if isinstance(error, json.JSONDecodeError | FileNotFoundError | NotADirectoryError):
        return "damaged"
    text = str(error)
    if isinstance(error, ValueError | OSError) and any(c in text for c in _DAMAGE_CODES):
        return "damaged"
    if isinstance(error, OSError) and error.errno not in _DAMAGE_ERRNOS:
        return "transient"
    if any(code in text for code in _TRANSIENT_CODES):
        return "transient"
    return "other"


def _describe(error: BaseException) -> str:
    first = str(error).splitlines()[0][:200] if str(error) else ""
    return f"{type(error).__name__}: {first}"


def _shape(shape) -> str:
    return "absent" if shape is None else str(tuple(shape))


def tree_shapes(tree) -> dict[str, tuple[int, ...]]:
    """`{"a/b/kernel": shape}` of a tree of arrays, `ShapeDtypeStruct`s or orbax's array
    metadata."""
    return {name: tuple(getattr(leaf, "shape", ())) for name, leaf in surgery.flatten(tree).items()}


LOWER_IS_BETTER = ("median_rank", "loss")


class BestCheckpoint:
    """The checkpoint with the best periodic value of one metric ("<task>/<metric>"), in
    `directory`. The value is saved with it and read back, so a resumed run keeps comparing
    against its earlier best. Higher is better except for ranks and losses."""

    def __init__(self, directory: Path, metric: str):
        self.metric = metric
        self.task, _, self.name = metric.partition("/")
        self.sign = -1.0 if any(word in self.name for word in LOWER_IS_BETTER) else 1.0
        self.checkpointer = Checkpointer(directory, max_to_keep=1)
        self.value = -math.inf
        latest = self.checkpointer.latest_step()
        if latest is not None:
            meta = self.checkpointer.meta(latest)
            if meta.get("metric") != metric:
                raise ImpError(
                    f"{directory} keeps the best checkpoint by '{meta.get('metric')}', not by "
                    f"train.best_metric = '{metric}'; move it away or keep the metric"
                )
            self.value = self.sign * meta["value"]

    def offer(self, step: int, state: TrainState, results: dict) -> None:
        """Saves `state` if `results` (`{task: {metric: {value}}}`) beats the best so far. A
        best kept from beyond the step a run resumed at is moved aside (never deleted) when
        the replayed steps beat it, as orbax saves no step below its latest."""
        if self.name not in results.get(self.task, {}):
            reported = sorted(f"{t}/{m}" for t, ms in results.items() for m in ms)
            raise ImpError(
                f"train.best_metric = '{self.metric}' was not reported by this evaluation "
                f"(its metrics: {reported}); is the evaluation split labelled?"
            )
        value = results[self.task][self.name]["value"]
        if self.sign * value <= self.value:
            return
        self.value = self.sign * value
        latest = self.checkpointer.latest_step()
        if latest is not None and latest >= step:
            self.checkpointer.wait()
            self.checkpointer.set_aside(latest, "superseded")
        self.checkpointer.save(step, state, {"metric": self.metric, "value": value})

    def close(self) -> None:
        self.checkpointer.wait()
        self.checkpointer.close()
