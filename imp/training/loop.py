"""The AGD training loop (seed 004 Algorithm 1): each step samples a task (or, for the
baselines, takes all of them), fetches its batch, and runs the compiled graph for exactly that
task's input signature (`imp.training.trainer`).

`train(experiment, options)` receives a validated `imp.experiment.Experiment` and builds
nothing from gin; `TrainOptions` (gin: `train.*`) say how often to save, evaluate and log.

Resumable: parameters, optimizer state, the sampler's state, every task's stream position and
the graph-table statistics are checkpointed, so a resumed run continues the same sequence of
tasks and batches; the step RNG is `fold_in(key(seed + 1), step)`. SIGTERM and SIGINT finish
the current step, save, and exit cleanly; with several processes, all of them stop and save
at the same step. A step with a non-finite loss is skipped and logged.
"""

import copy
import dataclasses
import itertools
import logging
import signal
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import gin
import jax
import numpy as np
import tqdm
from jax.experimental import multihost_utils

from imp import validation
from imp.data.feeding import TrainStreams
from imp.errors import ImpError
from imp.training import initialise, report, train_state
from imp.training.checkpoint import BestCheckpoint, Checkpointer
from imp.training.graph_table import use_persistent_cache
from imp.training.metrics_writer import MetricsWriter
from imp.training.samplers import JOINT, Sampler
from imp.training.trainer import Trainer

if TYPE_CHECKING:
    from imp.experiment import Experiment

log = logging.getLogger(__name__)


# Registered, not decorated: commands read the bindings once with `TrainOptions.from_gin()`.
@gin.register("train")
@dataclasses.dataclass(frozen=True)
class TrainOptions:
    """How `imp train` runs an experiment (gin: `train.checkpoint_every = 200`, ...).

    Attributes:
      checkpoint_every: save every N steps (and at the end, and on SIGTERM).
      keep_checkpoints: the newest N checkpoints are kept.
      freeze_untouched: keep the parameters a step's tasks do not read, and their optimizer
        state, exactly as they were (UniT, seed 002 footnote 2).
      evaluate_at_end: evaluate every data set's held-out split after the last step.
      precompile: compile every graph of the schedule before step 1 (`compile_threads` at a
        time) instead of at first use.
      compilation_cache: JAX's persistent compilation cache: "run" = `MODEL_DIR/
        compilation_cache`, a path, or None for none.
      max_bad_steps: a step with a non-finite loss or gradient is skipped (and logged); this
        many in a row stop the run.
      gradient_similarity_every: every N steps, log the cosine similarity of the tasks'
        encoder gradients (0: never).
      end_evaluations: what `evaluate_at_end` and `eval_every` run
        (`imp.evaluation.evaluator.EVALUATIONS`).
      eval_every: every N steps, evaluate held-out data and log it to metrics.jsonl and
        TensorBoard as task `eval/<task>`.
      best_metric: "<task>/<metric>" (e.g. "digit_videos_cls/top1"): keep the checkpoint
        with its best periodic value in `MODEL_DIR/best` (needs `eval_every`).
    """

    checkpoint_every: int = 200
    keep_checkpoints: int = 3
    freeze_untouched: bool = True
    evaluate_at_end: bool = True
    progress_bar: bool = True
    precompile: bool = False
    compile_threads: int = 2
    compilation_cache: str | None = "run"
    max_bad_steps: int = 5
    gradient_similarity_every: int = 0
    end_evaluations: Sequence[str] = (
        "classification",
        "zero_shot",
        "retrieval",
        "detection",
        "generation",
    )
    eval_every: int = 0
    best_metric: str | None = None

    def __post_init__(self):
        validation.check_fields(self, "train")
        for name in ("checkpoint_every", "keep_checkpoints", "compile_threads", "max_bad_steps"):
            validation.at_least(f"train.{name}", getattr(self, name), 1)
        for name in ("eval_every", "gradient_similarity_every"):
            validation.at_least(f"train.{name}", getattr(self, name), 0)
        validation.require(
            self.best_metric is None or self.eval_every > 0,
            f"train.best_metric = {self.best_metric!r} needs periodic evaluation: bind "
            "train.eval_every to a number of steps",
        )

    @classmethod
    def from_gin(cls) -> "TrainOptions":
        return gin.get_configurable(cls)()

    def check(self, experiment: "Experiment") -> None:
        """The evaluations exist, and `best_metric` is one of the metrics they report."""
        names = experiment.metric_names(self.end_evaluations)
        if self.best_metric is not None:
            known = sorted(f"{task}/{m}" for task, metrics in names.items() for m in metrics)
            validation.require(
                self.best_metric in known,
                f"train.best_metric = {self.best_metric!r} is not among the metrics of "
                f"train.end_evaluations: {known}",
            )


def train(experiment: "Experiment", options: TrainOptions = TrainOptions()) -> dict:
    """Trains `experiment` into its run directory; returns the summary (also written to
    `report/summary.json`) on the first process, {} on the others."""
    options.check(experiment)
    run_dir = experiment.make_run_dir()
    if options.compilation_cache:
        cache = options.compilation_cache
        use_persistent_cache(run_dir / "compilation_cache" if cache == "run" else cache)
    checkpointer = Checkpointer(run_dir / "checkpoints", options.keep_checkpoints)
    state, start, meta = _restore_or_create(experiment, checkpointer)
    _write_config(run_dir, experiment.config, start)
    sampler = experiment.new_sampler()
    if meta:
        sampler.restore(meta["sampler"])
    streams = TrainStreams(
        experiment.specs, experiment.seed, meta.get("positions", {}), experiment.partitioner
    )
    trainer = Trainer(experiment, options.freeze_untouched)
    base_rng = jax.random.key(experiment.seed + 1)
    if options.precompile:
        _precompile(trainer, streams, sampler, experiment.abstract_state, base_rng, options)
    writer = MetricsWriter(run_dir, start)
    best = BestCheckpoint(run_dir / "best", options.best_metric) if options.best_metric else None
    stop, bad_steps = _StopRequest(), _BadSteps(options.max_bad_steps, experiment.seed, run_dir)
    # disable=None shows the bar on a terminal only, keeping CI logs free of it.
    bar = tqdm.tqdm(
        total=experiment.train_steps,
        initial=start,
        dynamic_ncols=True,
        disable=None if options.progress_bar else True,
    )
    start_time, stopping = time.perf_counter(), False
    try:
        for step in range(start, experiment.train_steps):
            done = step + 1
            names = tuple(sampler.next(step))
            waited = time.perf_counter()
            batches = {n: streams.next(n) for n in names}
            waited = time.perf_counter() - waited
            tic = time.perf_counter()
            rng = jax.random.fold_in(base_rng, step)
            state, per_task, compiled = trainer.step(names, state, batches, rng)
            timing = (time.perf_counter() - tic, waited)
            _log_step(writer, experiment, sampler, streams, done, per_task, compiled, *timing)
            bad_steps.update(done, per_task, streams)
            if _due(options.gradient_similarity_every, done):
                _log_similarity(writer, trainer, experiment, streams, state, rng, done)
            if _due(options.eval_every, done):
                results = experiment.evaluate(state["params"], options.end_evaluations)
                _log_evaluation(writer, results, done)
                if best:
                    best.offer(done, state, results)
            label = names[0] if len(names) == 1 else sampler.schedule
            bar.set_postfix_str(f"{label} loss {float(per_task[names[-1]]['loss']):.3f}")
            bar.update()
            stopping = stop.agreed()
            if _due(options.checkpoint_every, done) or done == experiment.train_steps or stopping:
                graphs = meta.get("graphs", []) + trainer.table.entry_stats()
                _save(checkpointer, done, state, sampler, streams, graphs)
            if stopping:
                log.warning("%s: saved step %d, exiting", stop.reason(), done)
                break
    finally:
        bar.close()
        stop.restore()
        writer.close()
        checkpointer.wait()
        checkpointer.close()
        if best:
            best.close()
    wall = time.perf_counter() - start_time
    evaluation = {}
    if options.evaluate_at_end and not stopping:
        evaluation = experiment.evaluate(
            state["params"], options.end_evaluations, run_dir / "report"
        )
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("imp.train finished")  # nobody exits early
    if jax.process_index() != 0:
        return {}
    return report.write(run_dir, trainer.table, evaluation, wall)


def _due(every: int, step: int) -> bool:
    return bool(every) and step % every == 0


def _restore_or_create(experiment: "Experiment", checkpointer: Checkpointer) -> tuple:
    """(state, step, checkpoint metadata) of the newest readable checkpoint, or a fresh state
    at step 0 with no metadata."""
    restored = checkpointer.restore_latest(experiment.abstract_state)
    if restored is None:
        rng = jax.random.key(experiment.seed)
        fresh = train_state.create(
            experiment.model, experiment.tx, experiment.partitioner, rng, experiment.shardings
        )
        if experiment.init_from is not None:
            params = initialise.initialised_params(
                experiment.init_from,
                fresh["params"],
                experiment.shardings["params"],
                experiment.model,
            )
            fresh = {**fresh, "params": params}
        return fresh, 0, {}
    step, state, meta = restored
    log.info("resumed from %s at step %d", checkpointer.directory, step)
    return state, step, meta


def _write_config(run_dir: Path, config: str, start: int) -> None:
    """`config.gin`: the operative gin config of this run (first process). A resumed run with
    another config keeps the earlier one as `config.before_step_<start>.gin`."""
    path = run_dir / "config.gin"
    if not config or jax.process_index() != 0:
        return
    if path.exists() and path.read_text() != config:
        earlier = run_dir / f"config.before_step_{start}.gin"
        for n in itertools.count(1):  # a third config at one step keeps the second too
            if not earlier.exists():
                break
            earlier = run_dir / f"config.before_step_{start}.{n}.gin"
        path.rename(earlier)
    path.write_text(config)


def _log_step(
    writer,
    experiment,
    sampler: Sampler,
    streams,
    step: int,
    per_task: dict,
    compiled: bool,
    seconds: float,
    waited: float,
) -> None:
    """One metrics.jsonl record per task the step trained; feeds the losses to the sampler."""
    for name, metrics in per_task.items():
        metrics = {k: v.tolist() for k, v in metrics.items()}
        sampler.observe(name, metrics["loss"])
        spec = experiment.specs[name]
        tokens = experiment.tokens_per_example(spec) * spec.batch_size
        writer.write(
            {
                "step": step,
                "task": name,
                "objective": spec.objective,
                **metrics,
                "step_seconds": seconds,
                "input_seconds": waited,
                "examples_per_second": spec.batch_size / seconds,
                "tokens_per_second": tokens / seconds,
                "compiled": compiled,
                "batch_position": streams.positions[name] - 1,
            }
        )


def _log_similarity(writer, trainer, experiment, streams, state, rng, step: int) -> None:
    """The cosine similarity of every task's encoder gradient, on a fresh batch of each."""
    batches = {n: streams.next(n) for n in experiment.specs}
    matrix = trainer.gradient_similarity(state, batches, rng)
    record = {"task": "gradient_similarity", "tasks": list(batches), "matrix": matrix.tolist()}
    writer.write({"step": step, **record})


def _log_evaluation(writer, results: dict, step: int) -> None:
    """Periodic held-out metrics, one record per task as `eval/<task>`."""
    for name, metrics in results.items():
        values = {k: m["value"] for k, m in metrics.items()}
        writer.write({"step": step, "task": f"eval/{name}", **values})


def _save(checkpointer, step: int, state, sampler: Sampler, streams, graphs: list) -> None:
    # A copy: the save is asynchronous and the loop goes on changing these.
    meta = copy.deepcopy(
        {"sampler": sampler.state(), "positions": streams.positions, "graphs": graphs}
    )
    checkpointer.save(step, state, meta)


class _BadSteps:
    """Counts steps in a row with a non-finite loss or gradient; too many stop the run."""

    def __init__(self, limit: int, seed: int, run_dir: Path):
        self.limit, self.seed, self.run_dir, self.count = limit, seed, run_dir, 0

    def update(self, step: int, per_task: dict, streams) -> None:
        skipped = [n for n, m in per_task.items() if bool(m["skipped"])]
        self.count = self.count + 1 if skipped else 0
        if not skipped:
            return
        positions = {n: streams.positions[n] - 1 for n in skipped}
        log.warning(
            "step %d: non-finite loss or gradient from %s; update skipped (reproduce: seed %d, "
            "step %d, batch positions %s)",
            step,
            skipped,
            self.seed,
            step,
            positions,
        )
        if self.count >= self.limit:
            raise ImpError(
                f"{self.count} steps in a row had a non-finite loss or gradient (last at step "
                f"{step}, task {skipped}); see {self.run_dir / 'metrics.jsonl'}"
            )


class _StopRequest:
    """Turns SIGTERM/SIGINT into a flag the loop checks between steps."""

    def __init__(self):
        self.signal = None
        self._previous = {
            s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)
        }

    def _handle(self, signum, frame):
        self.signal = signal.Signals(signum).name

    def agreed(self) -> bool:
        """Whether any process was asked to stop. With several processes this is one
        all-gather of a flag per step, so every process stops (and saves) at the same step."""
        if jax.process_count() == 1:
            return self.signal is not None
        flags = multihost_utils.process_allgather(np.int32(self.signal is not None))
        return bool(np.any(flags))

    def reason(self) -> str:
        return f"{self.signal} received" if self.signal else "another process was stopped"

    def restore(self):
        for s, handler in self._previous.items():
            signal.signal(s, handler)


def _precompile(trainer, streams, sampler, abstract_state, rng, options: TrainOptions) -> None:
    """Compiles every graph the schedule can use, before step 1."""
    joint = sampler.schedule in JOINT
    groups = [tuple(sampler.names)] if joint else [(n,) for n in sampler.names]
    jobs = {}
    for names in groups:
        batches = {n: streams.abstract(n) for n in names}
        jobs.update(trainer.jobs(names, abstract_state, batches, rng))
    start = time.perf_counter()
    trainer.table.precompile(jobs, options.compile_threads)
    log.info("precompiled %d graphs in %.1f s", len(jobs), time.perf_counter() - start)
