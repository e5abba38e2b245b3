"""What every benchmark shares: a report format, repeat timing, and our real train step on
synthetic batches.

A benchmark measures ratios within one run (scan vs unrolled, remat vs none, AGD vs mixed
batches), so machine noise largely cancels. Times are the minimum and median over repeats,
after a warm-up call.
"""

import dataclasses
import functools
import json
import statistics
import time
from collections.abc import Callable

import jax
import numpy as np

from imp.experiment import Experiment
from imp.modeling.model import ImpModel
from imp.partitioning.partitioner import Partitioner
from imp.tasks.spec import TaskSpec
from imp.training import train_state
from imp.training.graph_table import Entry
from imp.training.optimizer import make_optimizer
from imp.training.step import make_train_step
from imp.training.trainer import Trainer

# Model sizes: `tiny` is the demo's, `s` is IMP-S's depth and heads at a reduced width (IMP-S
# is d 384, 12 layers), both for CPU runs; `b` is IMP-B's dense backbone (ViT-B), for
# accelerators (`launch/bench_accelerator.sh`); `micro` checks that a benchmark runs, in
# seconds.
SIZES = {
    "micro": dict(d_model=32, num_layers=2, num_heads=2, mlp_dim=64, embed_dim=32),
    "tiny": dict(d_model=128, num_layers=4, num_heads=4, mlp_dim=512, embed_dim=128),
    "s": dict(d_model=192, num_layers=12, num_heads=6, mlp_dim=768, embed_dim=192),
    "b": dict(d_model=768, num_layers=12, num_heads=12, mlp_dim=3072, embed_dim=768),
}
VOCAB = 128


@dataclasses.dataclass
class Report:
    """A benchmark's result: table rows, the paper's claims next to what we measured, and the
    settings that produced them."""

    name: str
    settings: dict
    rows: list[dict]
    claims: list[dict] = dataclasses.field(default_factory=list)  # claim, paper, measured, verdict

    def table(self) -> str:
        lines = [f"imp bench {self.name}  ({_settings_text(self.settings)})", ""]
        lines += _format_rows(self.rows)
        for claim in self.claims:
            lines.append("")
            lines.append(
                f"{claim['claim']}: paper {claim['paper']}; measured {claim['measured']} "
                f"-> {claim['verdict']}"
            )
        return "\n".join(lines)

    def emit(self, as_json: bool) -> None:
        """Prints the table; with `as_json`, the whole report as one JSON object last."""
        print(self.table(), flush=True)
        if as_json:
            print(json.dumps(dataclasses.asdict(self), default=_plain), flush=True)


def _plain(x):
    return x.item() if hasattr(x, "item") else str(x)


def _settings_text(settings: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in settings.items())


def _cell(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _format_rows(rows: list[dict]) -> list[str]:
    if not rows:
        return []
    columns = list(dict.fromkeys(k for row in rows for k in row))
    cells = [[_cell(row.get(c, "")) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    out = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    out.append("  ".join("-" * w for w in widths))
    out += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    return out


def timed(fn: Callable[[], object], repeats: int, warmup: int = 1) -> dict[str, float]:
    """Seconds per call of `fn` (its result blocked on): min and median over `repeats`."""
    for _ in range(warmup):
        jax.block_until_ready(fn())
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        seconds.append(time.perf_counter() - start)
    return {"min_s": min(seconds), "median_s": statistics.median(seconds)}


def model(size: str = "tiny", **overrides) -> ImpModel:
    fields = dict(
        SIZES[size],
        vocab_size=VOCAB,
        vision_patch=(2, 8, 8),
        vision_max_grid=(8, 16, 16),
        head_init="lecun_normal",
    )
    return ImpModel(**{**fields, **overrides})


def task(
    name: str,
    objective: str = "nce",
    modalities: tuple[str, ...] = ("vision", "text"),
    batch_size: int = 8,
    frames: int = 8,
    height: int = 32,
    width: int = 32,
    num_samples: int = 0,
    text_length: int = 16,
    classes: int = 10,
) -> TaskSpec:
    """A synthetic task; classification tasks get a head of their own (named after them)."""
    return TaskSpec(
        name,
        name,
        objective,
        modalities,
        num_examples=1000,
        batch_size=batch_size,
        frames=frames,
        height=height,
        width=width,
        num_samples=num_samples,
        text_length=text_length,
        vocab_size=VOCAB,
        class_names=tuple(f"c{i}" for i in range(classes)) if objective != "nce" else (),
    )


def synthetic_batch(spec: TaskSpec, seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs of the task's shapes (every text token present)."""
    rng = np.random.default_rng(seed)
    b = spec.batch_size
    batch = {}
    if "vision" in spec.modalities:
        shape = (b, spec.frames, spec.height, spec.width, 3)
        batch["vision"] = rng.uniform(-1, 1, shape).astype(np.float32)
    if "waveform" in spec.modalities:
        batch["waveform"] = rng.uniform(-1, 1, (b, spec.num_samples)).astype(np.float32)
    if "spectrogram" in spec.modalities:
        batch["spectrogram"] = rng.normal(size=(b, *spec.spectrogram)).astype(np.float32)
    if "text" in spec.modalities:
        batch["text"] = rng.integers(1, VOCAB, (b, spec.text_length)).astype(np.int32)
    if spec.objective == "softmax":
        batch["label"] = rng.integers(spec.num_classes, size=b).astype(np.int32)
    if spec.objective == "bce":
        batch["labels"] = (rng.random((b, spec.num_classes)) < 0.2).astype(np.float32)
    return batch


def experiment(
    model: ImpModel, tasks: list[TaskSpec], partitioner: Partitioner | None = None
) -> Experiment:
    """The synthetic tasks on `model`, validated like any run; Adam with a short warm-up."""
    tx, step_size = make_optimizer(total_steps=10_000, warmup_steps=10)
    return Experiment(
        tasks=tuple(tasks),
        model=model,
        train_steps=10_000,
        partitioner=partitioner,
        tx=tx,
        step_size=step_size,
    )


class Bench:
    """An experiment's train step (the loop's `Trainer`: graph table, AGD or summed steps,
    untouched parameters kept) on synthetic batches of its tasks' shapes."""

    def __init__(self, experiment: Experiment, seed: int = 0):
        self.experiment = experiment
        self.model, self.partitioner = experiment.model, experiment.partitioner
        self.specs = experiment.specs
        self.trainer = Trainer(experiment)
        self.rng = jax.random.key(seed)
        self._state = None
        self._batches: dict[str, dict] = {}

    @property
    def state(self):
        if self._state is None:
            e = self.experiment
            self._state = train_state.create(e.model, e.tx, e.partitioner, self.rng, e.shardings)
        return self._state

    def batch(self, name: str) -> dict:
        if name not in self._batches:
            host = synthetic_batch(self.specs[name], seed=len(self._batches))
            self._batches[name] = self.partitioner.shard_batch(host)
        return self._batches[name]

    def compile_jobs(self, names: tuple[str, ...]) -> dict:
        """The graph-table jobs (key -> compile function) of a step over `names`, for an
        abstract state (nothing allocated)."""
        state = self.experiment.abstract_state
        batches = {n: self.batch(n) for n in names}
        return self.trainer.jobs(names, state, batches, self.rng)

    def compile_seconds(self, names: tuple[str, ...]) -> float:
        """Wall seconds to lower and compile a fresh step over `names`."""
        (compile_fn,) = self.compile_jobs(names).values()
        start = time.perf_counter()
        compile_fn()
        return time.perf_counter() - start

    def entry(self, name: str) -> Entry:
        """The graph-table entry (compiled step, memory) that trained task `name`."""
        return next(e for key, e in self.trainer.table.entries.items() if key[0] == name)

    def step(self, names: tuple[str, ...]) -> dict:
        """One train step over `names` (through the graph table); returns its metrics."""
        batches = {n: self.batch(n) for n in names}
        self._state, metrics, _ = self.trainer.step(names, self.state, batches, self.rng)
        return metrics

    def time_step(self, names: tuple[str, ...], repeats: int) -> dict[str, float]:
        return timed(lambda: self.step(names), repeats)


def peak_bytes(m: dict[str, int]) -> dict[str, int]:
    """From XLA's memory analysis of a compiled step: arguments, temporaries, and their sum
    (the live set at the step's peak, outputs aliasing the donated state)."""
    return {
        "argument_bytes": m["argument"],
        "temp_bytes": m["temp"],
        "peak_bytes": m["argument"] + m["temp"],
    }


@functools.cache
def step_flops(model: ImpModel, spec: TaskSpec) -> float:
    """XLA's count of floating-point operations in one train step of `spec`, layers unrolled:
    the count of a scanned step holds the loop body once, not once per layer. Lowered only
    (XLA's pre-optimisation count). A GPU backend counts no lowered step, and its compiled
    count leaves out the cuBLAS matmuls (27x too few on ViT-B): there the same step is lowered
    for the CPU and counted."""
    unrolled = Bench(experiment(model.clone(scan_layers=False), [spec]))
    e = unrolled.experiment
    step = make_train_step(e.model, e.tx, e.step_size, [spec], e.loss)
    batch = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), unrolled.batch(spec.name)
    )
    args = (e.abstract_state, {spec.name: batch}, unrolled.rng)
    cost = jax.jit(step).lower(*args).cost_analysis()
    if cost is None:
        plain = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), args)
        cost = jax.jit(step).trace(*plain).lower(lowering_platforms=("cpu",)).cost_analysis()
    return float(cost["flops"])


def tokens(bench: Bench, spec: TaskSpec) -> int:
    """Encoder tokens of one batch of `spec`."""
    return spec.batch_size * bench.experiment.tokens_per_example(spec)


def mib(n: float) -> float:
    return n / 2**20
