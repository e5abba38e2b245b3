"""The AGD training loop (seed 004 Algorithm 1): each step samples a task (or, for the
baselines, takes all of them), fetches its batch, and runs the compiled graph for exactly that
task's input signature (`imp.training.trainer`).

Resumable: parameters, optimizer state, the sampler's state, every task's stream position and
the graph-table statistics are checkpointed, so a resumed run continues the same sequence of
tasks and batches; the step RNG is `fold_in(key(seed + 1), step)`. SIGTERM and SIGINT finish
the current step, save, and exit cleanly. A step with a non-finite loss is skipped and logged.
"""

import copy
import dataclasses
import logging
import os
import signal
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import gin
import jax
import tqdm
from jax.experimental import multihost_utils

from imp.config import write_operative_config
from imp.data import feeding
from imp.errors import ImpError
from imp.evaluation import evaluator
from imp.modeling.model import ImpModel
from imp.partitioning.partitioner import Partitioner
from imp.tasks import registry
from imp.tasks.registry import CLASSIFICATION
from imp.training import report, train_state
from imp.training.checkpoint import Checkpointer
from imp.training.graph_table import use_persistent_cache
from imp.training.metrics_writer import MetricsWriter
from imp.training.optimizer import make_optimizer
from imp.training.samplers import JOINT, make_sampler
from imp.training.trainer import Trainer

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


class _Streams:
    """Each task's batches, opened on first use at the position the checkpoint recorded and
    kept two batches ahead on the devices."""

    def __init__(self, specs: dict, seed: int, positions: dict, partitioner: Partitioner):
        self.specs, self.seed, self.partitioner = specs, seed, partitioner
        self.positions = dict.fromkeys(specs, 0) | positions  # batches consumed per task
        self.iterators = {}

    def next(self, name: str) -> dict:
        if name not in self.iterators:
            self.iterators[name] = feeding.prefetch_to_device(
                feeding.batches(
                    self.specs[name],
                    "train",
                    self.seed,
                    train=True,
                    skip_batches=self.positions[name],
                ),
                self.partitioner.shard_batch,
            )
        self.positions[name] += 1
        return next(self.iterators[name])

    def abstract(self, name: str) -> dict:
        """The global batch of a task as `jax.ShapeDtypeStruct`s (for precompiling)."""
        element = feeding.dataset(self.specs[name], "train", self.seed, train=True).element_spec
        sharding = self.partitioner.batch_sharding()
        return {
            k: jax.ShapeDtypeStruct(
                (v.shape[0] * jax.process_count(), *v.shape[1:]),
                v.dtype.as_numpy_dtype,
                sharding=sharding,
            )
            for k, v in element.items()
        }


def training_tasks(mixture_or_task_name: str, task_options: dict | None) -> list:
    """The mixture's tasks and rates, with `task_options` (task -> {loss_weight,
    lr_multiplier, head_name}) applied."""
    tasks = registry.resolve(mixture_or_task_name)
    options = dict(task_options or {})
    unknown = sorted(set(options) - {spec.name for spec, _ in tasks})
    if unknown:
        raise ImpError(f"train.task_options names tasks outside the mixture: {unknown}")
    allowed = {"loss_weight", "lr_multiplier", "head_name"}
    for name, fields in options.items():
        if set(fields) - allowed:
            raise ImpError(
                f"train.task_options['{name}']: unknown fields {sorted(set(fields) - allowed)}; "
                f"allowed: {sorted(allowed)}"
            )
    return [(dataclasses.replace(spec, **options.get(spec.name, {})), rate) for spec, rate in tasks]


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
    precompile: bool = False,
    compile_threads: int = 2,
    compilation_cache: str | None = "run",
    max_bad_steps: int = 5,
    task_options: dict | None = None,
    gradient_similarity_every: int = 0,
    end_evaluations: tuple[str, ...] = ("classification", "zero_shot", "retrieval"),
    eval_every: int = 0,
    best_metric: str | None = None,
) -> dict:
    """Trains `mixture_or_task_name` for `train_steps` steps into `model_dir`; returns the
    summary (also written to `report/summary.json`) on the first process, {} on the others.

    Args:
      precompile: compile every graph of the schedule before step 1 (`compile_threads` at a
        time) instead of at first use.
      compilation_cache: JAX's persistent compilation cache: "run" = `model_dir/
        compilation_cache`, a path, or None for none.
      max_bad_steps: a step with a non-finite loss or gradient is skipped (and logged); this
        many in a row stop the run.
      task_options: per task `{loss_weight, lr_multiplier, head_name}`.
      gradient_similarity_every: every N steps, log the cosine similarity of the tasks'
        encoder gradients (0: never).
      end_evaluations: what `evaluate_at_end` and `eval_every` run
        (`imp.evaluation.evaluator.EVALUATIONS`).
      eval_every: every N steps, evaluate held-out data (single-process runs) and log it to
        metrics.jsonl and TensorBoard as task `eval/<task>`.
      best_metric: "<task>/<metric>" (e.g. "digit_videos_cls/top1"): keep the checkpoint
        with its highest periodic value in `MODEL_DIR/best`.
    """
    run_dir = make_run_dir(model_dir)
    if compilation_cache:
        use_persistent_cache(
            run_dir / "compilation_cache" if compilation_cache == "run" else compilation_cache
        )
    if prepare_data is not None:
        prepare_data()
    tasks = training_tasks(mixture_or_task_name, task_options)
    specs = {spec.name: spec for spec, _ in tasks}
    model = model_for(specs)
    partitioner = Partitioner()
    tx, schedule = make_optimizer(train_steps)
    shardings = train_state.state_shardings(model, tx, partitioner)
    sampler = make_sampler(list(specs), [r for _, r in tasks], train_steps, seed)
    checkpointer = Checkpointer(run_dir / "checkpoints", keep_checkpoints)

    restored = checkpointer.restore_latest(train_state.abstract(shardings, model, tx))
    positions, previous_graphs = {}, []
    if restored is None:
        state = train_state.create(model, tx, partitioner, jax.random.key(seed), shardings)
    else:
        step, state, meta = restored
        sampler.restore(meta["sampler"])
        positions = meta["positions"]
        previous_graphs = meta.get("graphs", [])
        log.info("resumed from %s at step %d", checkpointer.manager.directory, step)
    first_process = jax.process_index() == 0
    if first_process:
        write_operative_config(run_dir / "config.gin")

    best = _BestKeeper(run_dir, best_metric) if best_metric else None
    trainer = Trainer(
        model,
        tx,
        schedule,
        specs,
        partitioner,
        shardings,
        sampler.schedule == "accumulated",
        freeze_untouched,
    )
    streams = _Streams(specs, seed, positions, partitioner)
    base_rng = jax.random.key(seed + 1)
    if precompile:
        _precompile(trainer, streams, sampler, state, base_rng, compile_threads)
    writer = MetricsWriter(run_dir)
    stop = _StopRequest()
    patches = (model.vision_patch, model.waveform_patch, model.spectrogram_patch)
    start_step = int(state["step"])
    start_time = time.perf_counter()
    bad_steps = 0
    # disable=None shows the bar on a terminal only, keeping CI logs free of it.
    bar = tqdm.tqdm(
        total=train_steps,
        initial=start_step,
        disable=None if progress_bar else True,
        dynamic_ncols=True,
    )
    try:
        for step in range(start_step, train_steps):
            names = tuple(sampler.next(step))
            waited = time.perf_counter()
            batches = {n: streams.next(n) for n in names}
            waited = time.perf_counter() - waited
            rng = jax.random.fold_in(base_rng, step)
            tic = time.perf_counter()
            state, per_task, compiled_now = trainer.step(names, state, batches, rng)
            seconds = time.perf_counter() - tic
            for name, metrics in per_task.items():
                metrics = {k: v.tolist() for k, v in metrics.items()}
                sampler.observe(name, metrics["loss"])
                spec = specs[name]
                examples = spec.batch_size
                tokens = sum(spec.tokens_per_example(*patches).values()) * examples
                writer.write(
                    {
                        "step": step + 1,
                        "task": name,
                        "objective": spec.objective,
                        **metrics,
                        "step_seconds": seconds,
                        "input_seconds": waited,
                        "examples_per_second": examples / seconds,
                        "tokens_per_second": tokens / seconds,
                        "compiled": compiled_now,
                        "batch_position": streams.positions[name] - 1,
                    }
                )
            skipped = [n for n, m in per_task.items() if bool(m["skipped"])]
            bad_steps = bad_steps + 1 if skipped else 0
            if skipped:
                log.warning(
                    "step %d: non-finite loss or gradient from %s; update skipped (reproduce: "
                    "seed %d, step %d, batch positions %s)",
                    step + 1,
                    skipped,
                    seed,
                    step + 1,
                    {n: streams.positions[n] - 1 for n in skipped},
                )
                if bad_steps >= max_bad_steps:
                    raise ImpError(
                        f"{bad_steps} steps in a row had a non-finite loss or gradient (last at "
                        f"step {step + 1}, task {skipped}); see {run_dir / 'metrics.jsonl'}"
                    )
            if gradient_similarity_every and (step + 1) % gradient_similarity_every == 0:
                similar = trainer.gradient_similarity(
                    state, {n: streams.next(n) for n in specs}, rng
                )
                writer.write(
                    {
                        "step": step + 1,
                        "task": "gradient_similarity",
                        "tasks": list(specs),
                        "matrix": similar.tolist(),
                    }
                )
            if eval_every and (step + 1) % eval_every == 0 and jax.process_count() == 1:
                results = {
                    name: evaluator.evaluate_task(model, state["params"], s, end_evaluations)
                    for name, s in one_per_evaluation(specs).items()
                }
                for name, task_metrics in results.items():
                    values = {k: m["value"] for k, m in task_metrics.items()}
                    writer.write({"step": step + 1, "task": f"eval/{name}", **values})
                if best:
                    best.offer(step + 1, state, results)
            label = names[0] if len(names) == 1 else sampler.schedule
            bar.set_postfix_str(f"{label} loss {float(per_task[names[-1]]['loss']):.3f}")
            bar.update()
            done = step + 1 == train_steps
            if (step + 1) % checkpoint_every == 0 or done or stop.signal:
                # A copy: the save is asynchronous and the loop goes on changing these.
                meta = copy.deepcopy(
                    {
                        "sampler": sampler.state(),
                        "positions": streams.positions,
                        "graphs": previous_graphs + trainer.table.entry_stats(),
                    }
                )
                checkpointer.save(step + 1, state, meta)
            if stop.signal:
                log.warning("%s received: saved step %d, exiting", stop.signal, step + 1)
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
            name: evaluator.evaluate_task(model, state["params"], s, end_evaluations)
            for name, s in one_per_evaluation(specs).items()
        }
    return report.write(run_dir, trainer.table, evaluation, wall)


def _precompile(trainer, streams, sampler, state, rng, threads: int) -> None:
    """Compiles every graph the schedule can use, before step 1."""
    abstract_state = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state
    )
    groups = [tuple(sampler.names)] if sampler.schedule in JOINT else [(n,) for n in sampler.names]
    jobs = {}
    for names in groups:
        batches = {n: streams.abstract(n) for n in names}
        jobs.update(trainer.jobs(names, abstract_state, batches, rng))
    start = time.perf_counter()
    trainer.table.precompile(jobs, threads)
    log.info("precompiled %d graphs in %.1f s", len(jobs), time.perf_counter() - start)


def one_per_evaluation(specs: dict) -> dict:
    """Resolution variants of a task evaluate identically (on their data set's evaluation
    Task); keep the first of each."""
    kept = {}
    for name, s in sorted(specs.items(), key=lambda item: item[1].variant != "base"):
        kept.setdefault((s.eval_task or name, s.objective, s.modalities), (name, s))
    return dict(kept.values())


class _BestKeeper:
    """The checkpoint with the best periodic value of one metric, in `MODEL_DIR/best`."""

    def __init__(self, run_dir: Path, metric: str):
        self.task, _, self.metric = metric.partition("/")
        self.checkpointer = Checkpointer(run_dir / "best", max_to_keep=1)
        self.value = -float("inf")

    def offer(self, step: int, state, results: dict) -> None:
        if self.task not in results or self.metric not in results[self.task]:
            known = sorted(f"{t}/{m}" for t, ms in results.items() for m in ms)
            raise ImpError(f"train.best_metric '{self.task}/{self.metric}' is not among {known}")
        value = results[self.task][self.metric]["value"]
        if value > self.value:
            self.value = value
            self.checkpointer.save(
                step, state, {"metric": f"{self.task}/{self.metric}", "value": value}
            )

    def close(self) -> None:
        self.checkpointer.wait()
        self.checkpointer.close()


def prepare_configured_data() -> dict:
    """Runs the gin-bound `train.prepare_data` (registering the run's tasks) and returns the
    `train` bindings, for tools that work on a configured run without training it."""
    bindings = gin.get_bindings("train", resolve_references=True)
    if bindings.get("prepare_data"):
        bindings["prepare_data"]()
    return bindings


def model_for(specs: dict) -> ImpModel:
    """The gin-configured model with one classifier head per classification data set."""
    heads = tuple(
        sorted({(s.head, s.num_classes) for s in specs.values() if s.objective in CLASSIFICATION})
    )
    model = ImpModel(heads=heads)
    _check_vocabulary(model, specs.values())
    return model


def _check_vocabulary(model: ImpModel, specs) -> None:
    needed = max((s.vocab_size for s in specs), default=0)
    if needed > model.vocab_size:
        raise ImpError(
            f"ImpModel.vocab_size={model.vocab_size} is smaller than the tasks' vocabulary "
            f"({needed} ids); bind ImpModel.vocab_size >= {needed}"
        )
