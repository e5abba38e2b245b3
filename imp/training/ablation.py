"""`imp ablation NAME`: the papers' findings, measured on the demo world.

A `Study` is one claim of a paper (a sentence and its source), a base run file
(`gin/runs/ablation_<name>.gin`, sized so that every variant at 3 seeds finishes within
30 minutes on 2 CPU cores; flags scale it up), and one or more `Table`s: variants (each a list
of extra gin bindings), the columns to report (a held-out metric of a task, or the mean of
other columns), and the comparisons the claim predicts (`Comparison`: variant A above
variant B in a column).

`run` builds and validates every (variant, seed) experiment first, then trains each with
`loop.train` into `<out>/<variant>/seed<k>/` (the seed bound as `Experiment.seed`), reusing a
run whose `report/summary.json` exists, so an interrupted study resumes where it stopped. It
writes `<out>/report.md` (the claim, the command, mean ± std over seeds per column, the
per-seed values, the verdict), `<out>/results.json` and `<out>/<name>.png`.

A comparison agrees when the favoured variant's mean is higher and the means differ by more
than the two standard deviations together (the mean ± std bars do not overlap), disagrees
when it is lower by that much, and is inconclusive otherwise. A study agrees when all its
comparisons do and disagrees when any does. Where our numbers disagree with the paper, the
report says so.

Variants must not change the data registration (`prepare_demo.*`): the experiments are all
built before the first trains, and the last build's tasks are the registered ones.
"""

import dataclasses
import json
import logging
import math
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from imp.errors import ImpError

log = logging.getLogger(__name__)

AGREES, DISAGREES = "agrees", "disagrees"
WITHIN_SPREAD = "inconclusive: difference within the spread"
ONE_SEED = "inconclusive: one seed, no spread measured"
NOT_MEASURED = "inconclusive: not measured"
SUMMARY = Path("report") / "summary.json"  # what `loop.train` writes last into a run dir


@dataclasses.dataclass(frozen=True)
class Column:
    """A held-out metric (`summary["tasks"][task]["heldout"][metric]`) of the first of `tasks`
    that reports it, or with `mean_of`, the mean of those columns of the same run."""

    label: str
    metric: str = ""
    tasks: tuple[str, ...] = ()
    mean_of: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Variant:
    """A run: extra gin bindings, and optionally its steps as a function of the configured
    steps and the number of tasks (e.g. equal examples seen as a joint schedule)."""

    label: str
    bindings: tuple[str, ...] = ()
    steps: Callable[[int, int], int] | None = None

    @property
    def slug(self) -> str:
        return re.sub(r"[^a-z0-9]+", "-", self.label.lower()).strip("-")


@dataclasses.dataclass(frozen=True)
class Comparison:
    """The claim predicts `better` above `worse` in `column` (higher is better)."""

    better: str
    worse: str
    column: str


@dataclasses.dataclass(frozen=True)
class Table:
    title: str
    variants: tuple[Variant, ...]
    columns: tuple[Column, ...]
    comparisons: tuple[Comparison, ...]


@dataclasses.dataclass(frozen=True)
class Study:
    name: str
    help: str  # one line for `imp ablation --help`
    claim: str  # one sentence, with its source
    tables: tuple[Table, ...]

    @property
    def run_file(self) -> str:
        return f"runs/ablation_{self.name}.gin"

    @property
    def variants(self) -> list[Variant]:
        return [v for table in self.tables for v in table.variants]


# Held-out columns of the five demo tasks (tasks/demo.py).
_ZERO_SHOT = (
    Column("image zero-shot", "zero_shot_top1/vision", ("digit_images_text",)),
    Column("video zero-shot", "zero_shot_top1/vision", ("digit_videos_text",)),
    Column("audio zero-shot", "zero_shot_top1/waveform", ("digit_videos_audio_text",)),
)
_CLS = (
    Column("image cls", "top1", ("digit_images_cls",)),
    Column("video cls", "top1", ("digit_videos_cls",)),
)
_MEAN_ZERO_SHOT = Column("mean zero-shot", mean_of=tuple(c.label for c in _ZERO_SHOT))
_MEAN = Column("mean", mean_of=tuple(c.label for c in _ZERO_SHOT + _CLS))
DEMO_COLUMNS = (*_ZERO_SHOT, *_CLS, _MEAN_ZERO_SHOT, _MEAN)


def _times_tasks(steps: int, tasks: int) -> int:
    return steps * tasks


def _per_task(steps: int, tasks: int) -> int:
    return max(1, round(steps / tasks))


def _versus(better: str, worse: Sequence[str], columns: Sequence[str]) -> tuple:
    return tuple(Comparison(better, w, c) for w in worse for c in columns)


_LABELS = "MIXTURE_OR_TASK_NAME = 'demo_digit_images_labels'"
_NO_PROBE = "train.end_evaluations = ('classification', 'zero_shot')"  # its table has none
_ALTERNATING = "NCE + softmax, alternating"
_ALL_ALTERNATING = "all tasks, NCE + softmax, alternating (AGD)"
_OBJECTIVES = Study(
    "objectives",
    "seed 004 Table 2: NCE only vs softmax only vs both summed vs both alternating (AGD)",
    "seed 004 Table 2: combining the NCE and softmax objectives beats either alone, and "
    "alternating them (AGD) beats summing them into one loss, at the same number of steps.",
    (
        Table(
            "One labelled data set (digit images), seed 004 Table 2's setting",
            (
                Variant("NCE only", ("MIXTURE_OR_TASK_NAME = 'digit_images_label_text'",)),
                Variant("softmax only", ("MIXTURE_OR_TASK_NAME = 'digit_images_cls'",)),
                Variant("NCE + softmax, summed", (_LABELS, "Schedule.name = 'summed'")),
                # Each objective exactly half of the steps, as in Table 2.
                Variant(_ALTERNATING, (_LABELS, "Schedule.name = 'round_robin'")),
                Variant(
                    "NCE + softmax, alternating, 2x steps (equal examples)",
                    (_LABELS, "Schedule.name = 'round_robin'"),
                    _times_tasks,
                ),
            ),
            (
                Column(
                    "linear probe",
                    "linear_probe_top1/vision",
                    ("digit_images_cls", "digit_images_label_text"),
                ),
                Column(
                    "image-to-text zero-shot", "zero_shot_top1/vision", ("digit_images_label_text",)
                ),
            ),
            (
                *_versus(
                    _ALTERNATING,
                    ["NCE + softmax, summed", "NCE only"],
                    ["linear probe", "image-to-text zero-shot"],
                ),
                Comparison(_ALTERNATING, "softmax only", "linear probe"),
            ),
        ),
        Table(
            "Every demo task: the NCE tasks only, or NCE and softmax tasks summed or alternating",
            (
                Variant(
                    "all tasks, NCE only",
                    ("MIXTURE_OR_TASK_NAME = 'demo_contrastive'", _NO_PROBE),
                ),
                Variant(
                    "all tasks, NCE + softmax, summed",
                    ("MIXTURE_OR_TASK_NAME = 'demo_all'", "Schedule.name = 'summed'", _NO_PROBE),
                ),
                Variant(_ALL_ALTERNATING, ("MIXTURE_OR_TASK_NAME = 'demo_all'", _NO_PROBE)),
            ),
            DEMO_COLUMNS,
            (
                Comparison(_ALL_ALTERNATING, "all tasks, NCE + softmax, summed", "mean"),
                Comparison(_ALL_ALTERNATING, "all tasks, NCE only", "mean zero-shot"),
            ),
        ),
    ),
)

_MOE = Study(
    "moe",
    "seed 004 Fig. 4: dense vs experts-choose MoE with 4 and 16 experts",
    "seed 004 Fig. 4: at equal parameters per token, an experts-choose MoE encoder with 4 "
    "experts improves accuracy over dense, most on zero-shot, and 16 experts improve further "
    "across all evaluations.",
    (
        Table(
            "Dense vs MoE (experts choose, capacity factor 1, every other FFN)",
            (
                Variant("dense", ("ImpModel.num_experts = 0",)),
                Variant("MoE, 4 experts", ("ImpModel.num_experts = 4",)),
                Variant("MoE, 16 experts", ("ImpModel.num_experts = 16",)),
            ),
            DEMO_COLUMNS,
            (
                Comparison("MoE, 4 experts", "dense", "mean zero-shot"),
                Comparison("MoE, 16 experts", "MoE, 4 experts", "mean"),
            ),
        ),
    ),
)

_MULTIRES = Study(
    "multires",
    "seed 004 Fig. 3: base resolution only vs with the multi-resolution variants",
    "seed 004 Fig. 3 / Table 3: adding resolution variants (batch size x resolution x "
    "DropToken) to the training mixture improves downstream results at the same number of "
    "steps.",
    (
        Table(
            "Base resolution vs multi-resolution mixture, equal steps",
            (
                Variant("base resolution", ("MIXTURE_OR_TASK_NAME = 'demo_all'",)),
                Variant(
                    "with resolution variants", ("MIXTURE_OR_TASK_NAME = 'demo_all_multires'",)
                ),
            ),
            DEMO_COLUMNS,
            (Comparison("with resolution variants", "base resolution", "mean"),),
        ),
    ),
)

_TOWERS = Study(
    "towers",
    "seed 004 §4: one shared encoder vs one dense tower per modality (and shared MoE)",
    "seed 004 §4 (Fig. 6): at the same compute, a multi-tower dense encoder is more accurate "
    "than one shared dense encoder (at more parameters), and a shared MoE encoder beats both.",
    (
        Table(
            "Shared vs per-modality towers, same blocks and steps",
            (
                Variant("shared dense", ("ImpModel.towers = 'shared'",)),
                Variant("multi-tower dense", ("ImpModel.towers = 'per_modality'",)),
                Variant(
                    "shared MoE, 4 experts",
                    ("ImpModel.towers = 'shared'", "ImpModel.num_experts = 4"),
                ),
            ),
            DEMO_COLUMNS,
            (
                Comparison("multi-tower dense", "shared dense", "mean"),
                Comparison("shared MoE, 4 experts", "multi-tower dense", "mean"),
            ),
        ),
    ),
)


def _schedule(label: str, name: str, *extra: str, steps=None) -> Variant:
    return Variant(label, (f"Schedule.name = '{name}'", *extra), steps)


_WEIGHTED = "weighted"
_SCHEDULES = Study(
    "schedules",
    "seed 000 Table 1: task_by_task, alternating, uniform, weighted, accumulated, IMP, interval",
    "seed 000 Table 1: task-by-task training forgets and does worst; weighted task sampling "
    "does best, ahead of uniform, alternating and accumulated gradients.",
    (
        Table(
            "Task schedules over the five demo tasks, equal steps (accumulated: equal examples)",
            (
                _schedule("task by task", "task_by_task"),
                _schedule("alternating", "round_robin"),
                _schedule("uniform", "uniform"),
                # Weights stand in for PolyViT's single-task step budgets: the 40-class video
                # tasks get twice the 10-class image tasks' share.
                _schedule(
                    _WEIGHTED,
                    "weighted",
                    "Schedule.weights = {'digit_images_text': 1.0, 'digit_images_cls': 1.0, "
                    "'digit_videos_text': 2.0, 'digit_videos_audio_text': 2.0, "
                    "'digit_videos_cls': 2.0}",
                ),
                # PolyViT sets U = sum(U_j) / T: each step sees every task.
                _schedule("accumulated", "accumulated", steps=_per_task),
                _schedule("proportional (IMP)", "proportional"),
                # The reference code's loop; the image tasks train on every other turn.
                _schedule(
                    "interval (reference code)",
                    "interval",
                    "Schedule.intervals = {'digit_images_text': 2, 'digit_images_cls': 2}",
                ),
            ),
            DEMO_COLUMNS,
            _versus(_WEIGHTED, ["task by task", "alternating", "uniform", "accumulated"], ["mean"]),
        ),
    ),
)

STUDIES = {s.name: s for s in (_OBJECTIVES, _MOE, _MULTIRES, _TOWERS, _SCHEDULES)}


# Statistics and verdicts: pure functions of the per-seed values.


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and standard deviation over seeds (n - 1 in the denominator; 0 for one seed)."""
    values = np.asarray(values, np.float64)
    std = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return float(values.mean()), std


def compare(better: Sequence[float] | None, worse: Sequence[float] | None) -> str:
    """The verdict on 'better is higher than worse' from their per-seed values."""
    if not better or not worse:
        return NOT_MEASURED
    if len(better) < 2 or len(worse) < 2:
        return ONE_SEED
    (mean_b, std_b), (mean_w, std_w) = mean_std(better), mean_std(worse)
    if abs(mean_b - mean_w) <= std_b + std_w:
        return WITHIN_SPREAD
    return AGREES if mean_b > mean_w else DISAGREES


def overall(verdicts: Sequence[str]) -> str:
    """Agrees if every comparison does, disagrees if any does, inconclusive otherwise."""
    if not verdicts:
        return NOT_MEASURED
    if all(v == AGREES for v in verdicts):
        return AGREES
    if DISAGREES in verdicts:
        return DISAGREES
    inconclusive = sorted({v for v in verdicts if v.startswith("inconclusive")})
    return inconclusive[0] if len(inconclusive) == 1 else WITHIN_SPREAD


def row(
    summary: dict,
    columns: Sequence[Column],
    where: str = "run",
    base_names: dict[str, str] | None = None,
) -> dict[str, float | None]:
    """One run's values per column (None where the run has no such task or metric); a
    non-finite value is an error. `base_names` maps a resolution variant's task name to its
    base task's: a data set evaluates once, under the name of its first trained variant."""
    values: dict[str, float | None] = {}
    heldout = {}
    for task, record in sorted(summary["tasks"].items(), key=lambda i: i[0] in (base_names or {})):
        heldout.setdefault((base_names or {}).get(task, task), record.get("heldout", {}))
    for column in columns:
        if column.mean_of:
            parts = [values[label] for label in column.mean_of]
            values[column.label] = None if None in parts else float(np.mean(parts))
            continue
        task = next((t for t in column.tasks if column.metric in heldout.get(t, {})), None)
        value = None if task is None else heldout[task][column.metric]["value"]
        if value is not None and not math.isfinite(value):
            raise ImpError(f"{where}: {column.label} = {value}; a non-finite metric is no score")
        values[column.label] = value
    return values


# Running a study.


@dataclasses.dataclass
class _Run:
    variant: Variant
    seed: int
    run_dir: Path
    options: object  # loop.TrainOptions
    experiment: object  # imp.experiment.Experiment


def run(
    study: Study,
    out: str | Path,
    build: Callable[[list[str]], tuple],
    seeds: int = 3,
    command: str = "",
) -> dict:
    """Builds every (variant, seed) run, trains those not finished, writes the report;
    returns the results (also `<out>/results.json`).

    `build(bindings)` returns `(TrainOptions, Experiment)` of the study's configuration with
    the extra gin `bindings` (the last ones win)."""
    from imp.training import loop

    if seeds < 1:
        raise ImpError(f"--seeds {seeds}: expected at least 1")
    slugs = [v.slug for v in study.variants]
    assert len(set(slugs)) == len(slugs), f"variant labels of '{study.name}' collide: {slugs}"
    out, start = Path(out), time.perf_counter()
    runs = [
        _build(build, variant, seed, out / variant.slug / f"seed{seed}")
        for seed in range(seeds)
        for variant in study.variants
    ]
    summaries = {}
    for index, r in enumerate(runs, 1):
        where = f"[{index}/{len(runs)}] {study.name}: {r.variant.label}, seed {r.seed}"
        summary = _finished(r)
        if summary is None:
            log.info("%s: training into %s", where, r.run_dir)
            summary = loop.train(r.experiment, r.options)
        else:
            log.info("%s: finished earlier, reusing %s", where, r.run_dir)
        summaries[(r.variant.label, r.seed)] = summary
    results = _results(study, runs, summaries, command, time.perf_counter() - start)
    write_report(study, results, out)
    return results


def _build(build, variant: Variant, seed: int, run_dir: Path) -> _Run:
    bindings = [
        *variant.bindings,
        f"Experiment.seed = {seed}",
        f"Experiment.model_dir = {str(run_dir)!r}",
    ]
    options, experiment = build(bindings)
    if variant.steps is not None:
        steps = variant.steps(experiment.train_steps, len(experiment.tasks))
        options, experiment = build([*bindings, f"Experiment.train_steps = {steps}"])
    return _Run(variant, seed, run_dir, options, experiment)


def _finished(r: _Run) -> dict | None:
    """The summary of a finished run of the same configuration, or None if it has none."""
    path = r.run_dir / SUMMARY
    if not path.exists():
        return None
    config = r.run_dir / "config.gin"
    if config.exists() and config.read_text() != r.experiment.config:
        raise ImpError(
            f"{r.run_dir} holds a finished run of another configuration (see its config.gin); "
            "give the study another --out, or delete that run to train it again"
        )
    return json.loads(path.read_text())


def _base_names(experiment) -> dict[str, str]:
    """Resolution variants' task names -> their base task's (`digit_videos_cls_half_res` ->
    `digit_videos_cls`)."""
    return {
        s.name: s.name.removesuffix(f"_{s.variant}")
        for s in experiment.tasks
        if s.variant != "base"
    }


def _parameters(experiment) -> int:
    import jax

    return int(sum(x.size for x in jax.tree.leaves(experiment.abstract_state["params"])))


def _results(study: Study, runs: list[_Run], summaries: dict, command: str, wall: float) -> dict:
    """{claim, command, tables: [{title, columns, variants: {label: {steps, parameters,
    seeds: {seed: values}, mean, std}}, comparisons, verdict}], verdict}."""
    by_variant: dict[str, list[_Run]] = {}
    for r in runs:
        by_variant.setdefault(r.variant.label, []).append(r)
    tables = []
    for table in study.tables:
        variants = {}
        for variant in table.variants:
            seeds = {}
            for r in by_variant[variant.label]:
                summary = summaries[(variant.label, r.seed)]
                values = row(summary, table.columns, str(r.run_dir), _base_names(r.experiment))
                seeds[r.seed] = values | {"wall seconds": summary["wall_seconds"]}
            first = by_variant[variant.label][0].experiment
            variants[variant.label] = {
                "steps": first.train_steps,
                "parameters": _parameters(first),
                "seeds": seeds,
                **_stats(seeds),
            }
        comparisons = []
        for c in table.comparisons:
            better, worse = (_per_seed(variants[v]["seeds"], c.column) for v in (c.better, c.worse))
            comparisons.append(dataclasses.asdict(c) | {"verdict": compare(better, worse)})
        tables.append(
            {
                "title": table.title,
                "columns": [c.label for c in table.columns] + ["wall seconds"],
                "variants": variants,
                "comparisons": comparisons,
                "verdict": overall([c["verdict"] for c in comparisons]),
            }
        )
    verdicts = [c["verdict"] for t in tables for c in t["comparisons"]]
    return {
        "study": study.name,
        "claim": study.claim,
        "command": command,
        "seeds": len(next(iter(by_variant.values()))),
        "invocation_seconds": wall,
        "tables": tables,
        "verdict": overall(verdicts),
    }


def _per_seed(seeds: dict, column: str) -> list[float] | None:
    values = [v[column] for v in seeds.values()]
    assert all(v is None for v in values) or None not in values, (column, values)
    return None if None in values else values


def _stats(seeds: dict) -> dict:
    mean, std = {}, {}
    for column in next(iter(seeds.values())):
        values = _per_seed(seeds, column)
        mean[column], std[column] = mean_std(values) if values else (None, None)
    return {"mean": mean, "std": std}


# The report.


def format_tables(results: dict) -> str:
    """The mean ± std table of every variant group, and the verdicts, as Markdown."""
    lines = []
    for table in results["tables"]:
        columns = table["columns"]
        lines += [f"### {table['title']}", ""]
        lines.append("| variant | steps | parameters | " + " | ".join(columns) + " |")
        lines.append("|---" * (len(columns) + 3) + "|")
        for label, v in table["variants"].items():
            cells = [_cell(v["mean"][c], v["std"][c], c) for c in columns]
            lines.append(
                f"| {label} | {v['steps']} | {v['parameters']:,} | " + " | ".join(cells) + " |"
            )
        lines += ["", f"Verdict: **{table['verdict']}**", ""]
        lines += [_comparison_line(table, c) for c in table["comparisons"]]
        lines.append("")
    lines.append(f"Study verdict against the paper's claim: **{results['verdict']}**")
    return "\n".join(lines)


def _cell(mean, std, column: str) -> str:
    if mean is None:
        return "-"
    digits = 0 if column == "wall seconds" else 3
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def _comparison_line(table: dict, c: dict) -> str:
    better, worse = (table["variants"][c[k]] for k in ("better", "worse"))
    column = c["column"]
    said = (
        f"{_cell(better['mean'][column], better['std'][column], column)} vs "
        f"{_cell(worse['mean'][column], worse['std'][column], column)}"
    )
    return f"- {c['better']} > {c['worse']} on {column} ({said}): {c['verdict']}"


def _per_seed_table(table: dict) -> list[str]:
    columns = table["columns"]
    lines = [
        "| variant | seed | " + " | ".join(columns) + " |",
        "|---" * (len(columns) + 2) + "|",
    ]
    for label, v in table["variants"].items():
        for seed, values in v["seeds"].items():
            cells = [
                "-" if values[c] is None else f"{values[c]:.{0 if c == 'wall seconds' else 4}f}"
                for c in columns
            ]
            lines.append(f"| {label} | {seed} | " + " | ".join(cells) + " |")
    return lines


def write_report(study: Study, results: dict, out: Path) -> None:
    """`report.md`, `results.json` and `<name>.png` under `out`."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = [
        f"# Ablation `{study.name}`",
        "",
        f"Claim: {study.claim}",
        "",
        f"Command: `{results['command']}`",
        "",
        f"{results['seeds']} seed(s) per variant; mean ± standard deviation over seeds (n - 1); "
        "held-out top-1 accuracies; wall seconds of the training loop (seed 0 compiles, later "
        "seeds read the study's compilation cache). A comparison agrees when the mean ± std "
        "bars do not overlap and the favoured variant is higher.",
        "",
        format_tables(results),
        "",
    ]
    if results["verdict"] == DISAGREES:
        lines += ["Our measurement disagrees with the paper's claim (see the comparisons).", ""]
    lines += ["## Per-seed values", ""]
    for table in results["tables"]:
        lines += [f"### {table['title']}", "", *_per_seed_table(table), ""]
    loops = sum(
        values["wall seconds"]
        for table in results["tables"]
        for v in table["variants"].values()
        for values in v["seeds"].values()
    )
    lines.append(
        f"Time: {results['invocation_seconds']:.0f} s for this invocation (runs finished "
        f"earlier are read back, not trained again); the training loops of all runs took "
        f"{loops:.0f} s together."
    )
    (out / "report.md").write_text("\n".join(lines) + "\n")
    plot(results, out / f"{study.name}.png")


def plot(results: dict, path: Path) -> None:
    """A bar chart per variant group: variants side by side per column, std as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tables = results["tables"]
    fig, axes = plt.subplots(len(tables), 1, figsize=(11, 4.2 * len(tables)), squeeze=False)
    for ax, table in zip(axes[:, 0], tables, strict=True):
        columns = [c for c in table["columns"] if c != "wall seconds"]
        width = 0.8 / len(table["variants"])
        for i, (label, v) in enumerate(table["variants"].items()):
            x = np.arange(len(columns)) + (i - (len(table["variants"]) - 1) / 2) * width
            means = [v["mean"][c] if v["mean"][c] is not None else np.nan for c in columns]
            stds = [v["std"][c] if v["std"][c] is not None else 0.0 for c in columns]
            ax.bar(x, means, width, yerr=stds, capsize=3, label=label)
        ax.set_xticks(np.arange(len(columns)), columns, rotation=15)
        ax.set_ylabel("held-out top-1")
        ax.set_title(f"{table['title']} ({table['verdict']})", fontsize=10)
        ax.legend(fontsize=8)
    fig.suptitle(f"imp ablation {results['study']}: {results['seeds']} seed(s), mean ± std")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
