"""`imp ablation NAME`: the papers' findings, measured on the demo world.

The studies (`imp.training.studies.STUDIES`) are data: a claim, a run file, tables of
variants, columns and comparisons.

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
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from imp.errors import ImpError
from imp.tasks.spec import CLASSIFICATION
from imp.training.studies import Column, Study, Variant

log = logging.getLogger(__name__)

AGREES, DISAGREES = "agrees", "disagrees"
WITHIN_SPREAD = "inconclusive: difference within the spread"
ONE_SEED = "inconclusive: one seed, no spread measured"
NOT_MEASURED = "inconclusive: not measured"
STEP_MS = "step ms"  # median time of a step that did not compile
SUMMARY = Path("report") / "summary.json"  # what `loop.train` writes last into a run dir


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
                seeds[r.seed] = values | {
                    "wall seconds": summary["wall_seconds"],
                    STEP_MS: _milliseconds(summary.get("median_step_seconds")),
                }
            first = by_variant[variant.label][0].experiment
            variants[variant.label] = {
                "steps": first.train_steps,
                "parameters": _parameters(first),
                "gflops": _gflops(first, study.flops_task),
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
                "columns": [c.label for c in table.columns] + ["wall seconds", STEP_MS],
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


def _milliseconds(seconds: float | None) -> float | None:
    return None if seconds is None else 1000.0 * seconds


def _gflops(experiment, task: str) -> float | None:
    """Forward GFLOPs of one example of `task` through the experiment's model."""
    if not task:
        return None
    from imp.modeling.info import forward_flops

    spec = experiment.specs[task]
    head = spec.head if spec.objective in CLASSIFICATION else None
    return forward_flops(experiment.model, spec.input_shapes(train=False), head) / 1e9


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
        flops = any(v.get("gflops") is not None for v in table["variants"].values())
        head = "| variant | steps | parameters | " + ("GFLOPs/example | " if flops else "")
        lines.append(head + " | ".join(columns) + " |")
        lines.append("|---" * (len(columns) + 3 + flops) + "|")
        for label, v in table["variants"].items():
            cells = [_cell(v["mean"][c], v["std"][c], c) for c in columns]
            cost = f"{v['gflops']:.3f} | " if flops else ""
            lines.append(
                f"| {label} | {v['steps']} | {v['parameters']:,} | {cost}"
                + " | ".join(cells)
                + " |"
            )
        lines += ["", f"Verdict: **{table['verdict']}**", ""]
        lines += [_comparison_line(table, c) for c in table["comparisons"]]
        lines.append("")
    lines.append(f"Study verdict against the paper's claim: **{results['verdict']}**")
    return "\n".join(lines)


def _digits(column: str) -> int:
    return {"wall seconds": 0, STEP_MS: 1}.get(column, 3)


def _cell(mean, std, column: str) -> str:
    if mean is None:
        return "-"
    digits = _digits(column)
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
                "-" if values[c] is None else f"{values[c]:.{_digits(c) + 1 if _digits(c) else 0}f}"
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
        "seeds read the study's compilation cache); step ms, the median time of a step that did "
        "not compile. A comparison agrees when the mean ± std bars do not overlap and the "
        "favoured variant is higher.",
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
        columns = [c for c in table["columns"] if c not in ("wall seconds", STEP_MS)]
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
