"""The AGD training loop (seed 004 Algorithm 1): each step samples one task, fetches its batch,
and runs the compiled graph for exactly that task's input signature.

Resumable: parameters, optimizer state, the sampler's generator and every task's stream
position are checkpointed, so a resumed run continues the same sequence of tasks and batches.
SIGTERM and SIGINT finish the current step, save, and exit cleanly.
"""

import functools
import logging
import os
import signal
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import gin
import jax
import numpy as np
import tqdm
from jax.experimental import multihost_utils

from imp.config import write_operative_config
from imp.data import feeding
from imp.errors import ImpError
from imp.evaluation import heldout
from imp.modeling.model import ImpModel
from imp.partitioning.partitioner import Partitioner
from imp.tasks import registry
from imp.tasks.registry import CLASSIFICATION
from imp.training import report, train_state
from imp.training.checkpoint import Checkpointer
from imp.training.graph_table import GraphTable, signature
from imp.training.metrics_writer import MetricsWriter
from imp.training.optimizer import make_optimizer
from imp.training.sampler import ProportionalSampler
from imp.training.step import make_train_step

log = logging.getLogger(__name__)


def make_run_dir(model_dir: str | os.PathLike) -> Path:
    run_dir = Path(model_dir).expanduser()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=run_dir).close()  # a private probe: processes share the dir
    except OSError as e:
        raise ImpError(f"MODEL_DIR '{model_dir}' is not writable ({e.strerror})") from None
    return run_dir


class _StopRequest:
    """Turns SIGTERM/SIGINT into a flag the loop checks between steps."""

    def __init__(self):
        self.signal = None
        self._previous = {
            s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)
        }

    def _handle(self, signum, frame):
        self.signal = signal.Signals(signum).name

    def restore(self):
        for s, handler in self._previous.items():
            signal.signal(s, handler)


@gin.configurable
def train(
    model_dir: str = gin.REQUIRED,
    train_steps: int = gin.REQUIRED,
    mixture_or_task_name: str = gin.REQUIRED,
    prepare_data: Callable[[], None] | None = None,
    seed: int = 0,
    checkpoint_every: int = 200,
    keep_checkpoints: int = 3,
    freeze_untouched: bool = True,
    evaluate_at_end: bool = True,
    progress_bar: bool = True,
) -> dict:
    """Trains `mixture_or_task_name` for `train_steps` steps into `model_dir`; returns the
    summary (also written to `report/summary.json`) on the first process, {} on the others."""
    run_dir = make_run_dir(model_dir)
    if prepare_data is not None:
        prepare_data()
    tasks = registry.resolve(mixture_or_task_name)
    specs = {spec.name: spec for spec, _ in tasks}
    heads = tuple(
        sorted({(s.head, s.num_classes) for s in specs.values() if s.objective in CLASSIFICATION})
    )
    model = ImpModel(heads=heads)
    _check_vocabulary(model, specs.values())
    partitioner = Partitioner()
    tx, schedule = make_optimizer(train_steps)
    shardings = train_state.state_shardings(model, tx, partitioner)
    sampler = ProportionalSampler([s.name for s, _ in tasks], [r for _, r in tasks], seed=seed)
    checkpointer = Checkpointer(run_dir / "checkpoints", keep_checkpoints)

    positions = dict.fromkeys(specs, 0)  # batches consumed per task
    latest = checkpointer.latest_step()
    if latest is None:
        state = train_state.create(model, tx, partitioner, jax.random.key(seed), shardings)
    else:
        state, meta = checkpointer.restore(latest, train_state.abstract(shardings, model, tx))
        sampler.restore(meta["sampler"])
        positions.update(meta["positions"])
        log.info("resumed from %s at step %d", checkpointer.manager.directory, latest)
    first_process = jax.process_index() == 0
    if first_process:
        write_operative_config(run_dir / "config.gin")

    streams = {}
    step_fns = {
        name: make_train_step(model, tx, schedule, s, freeze_untouched) for name, s in specs.items()
    }
    table = GraphTable()
    writer = MetricsWriter(run_dir)
    stop = _StopRequest()
    base_rng = jax.random.key(seed + 1)
    start_step = int(state["step"])
    start_time = time.perf_counter()
    # disable=None shows the bar on a terminal only, keeping CI logs free of it.
    bar = tqdm.tqdm(
        total=train_steps,
        initial=start_step,
        disable=None if progress_bar else True,
        dynamic_ncols=True,
    )
    try:
        for step in range(start_step, train_steps):
            name = sampler.next()
            spec = specs[name]
            if name not in streams:
                streams[name] = feeding.prefetch_to_device(
                    feeding.batches(spec, "train", seed, train=True, skip_batches=positions[name]),
                    partitioner.shard_batch,
                )
            waited = time.perf_counter()
            batch = next(streams[name])
            waited = time.perf_counter() - waited
            positions[name] += 1
            rng = jax.random.fold_in(base_rng, step)
            compiled, compiled_now = table.lookup(
                (name, spec.objective, signature(batch)),
                functools.partial(
                    _compile_step, partitioner, step_fns[name], shardings, (state, batch, rng)
                ),
            )
            tic = time.perf_counter()
            state, metrics = compiled(state, batch, rng)
            metrics = {k: v.tolist() for k, v in jax.device_get(metrics).items()}
            record = {
                "step": step + 1,
                "task": name,
                "objective": spec.objective,
                **metrics,
                "step_seconds": time.perf_counter() - tic,
                "input_seconds": waited,
                "compiled": compiled_now,
            }
            writer.write(record)
            bar.set_postfix_str(f"{name} loss {metrics['loss']:.3f}")
            bar.update()
            if not np.isfinite(metrics["loss"]):
                raise ImpError(f"loss of task '{name}' is {metrics['loss']} at step {step + 1}")
            done = step + 1 == train_steps
            if (step + 1) % checkpoint_every == 0 or done or stop.signal:
                checkpointer.save(
                    step + 1, state, {"sampler": sampler.state(), "positions": positions}
                )
            if stop.signal:
                log.warning("%s received: saved step %d, exiting", stop.signal, step + 1)
                break
    finally:
        bar.close()
        stop.restore()
        writer.close()
        checkpointer.wait()
        checkpointer.close()
    wall = time.perf_counter() - start_time
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("imp.train finished")  # nobody exits early
    if not first_process:
        return {}
    write_operative_config(run_dir / "config.gin")  # now with everything the run called
    evaluation = {}
    if evaluate_at_end and jax.process_count() > 1:
        log.warning("held-out evaluation at the end runs single-process only; use `imp eval`")
    elif evaluate_at_end and not stop.signal:
        evaluation = {
            name: heldout.evaluate(model, state["params"], s)
            for name, s in _one_per_evaluation(specs).items()
        }
    return report.write(run_dir, table.stats_by_task(), evaluation, wall)


def _one_per_evaluation(specs: dict) -> dict:
    """Resolution variants of a task evaluate identically (on their data set's evaluation
    Task); keep the first of each."""
    kept = {}
    for name, s in sorted(specs.items(), key=lambda item: item[1].variant != "base"):
        kept.setdefault((s.eval_task or name, s.objective, s.modalities), (name, s))
    return dict(kept.values())


def _compile_step(partitioner: Partitioner, step_fn: Callable, shardings, args: tuple):
    """AOT-compiles `step_fn(state, batch, rng)`, donating the old state's buffers."""
    batch_shardings = jax.tree.map(lambda x: x.sharding, args[1])
    return partitioner.compile(
        step_fn,
        args,
        (shardings, batch_shardings, partitioner.replicated()),
        (shardings, partitioner.replicated()),
        donate_argnums=(0,),
    )


def _check_vocabulary(model: ImpModel, specs) -> None:
    needed = max((s.vocab_size for s in specs), default=0)
    if needed > model.vocab_size:
        raise ImpError(
            f"ImpModel.vocab_size={model.vocab_size} is smaller than the tasks' vocabulary "
            f"({needed} ids); bind ImpModel.vocab_size >= {needed}"
        )
