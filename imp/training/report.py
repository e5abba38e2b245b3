"""The end-of-run report: `report/summary.json`, a loss plot, and the printed summary table."""

import json
from collections import defaultdict
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from imp.evaluation.metrics import format_cell  # noqa: E402

_SMOOTH = 10  # losses averaged over the first/last this many steps of each task


def _read_metrics(run_dir: Path) -> dict:
    """From `metrics.jsonl`: loss and learning rate per task over steps, seconds in steps and
    waiting for input, the seconds of each step that did not compile, router probabilities per
    modality, and the gradient-similarity matrices."""
    losses = defaultdict(list)
    rates = defaultdict(list)
    seconds = {"step_seconds": 0.0, "input_seconds": 0.0}
    counted_steps = set()
    compiled_free = []
    routing = defaultdict(list)
    similarity = []
    with (run_dir / "metrics.jsonl").open() as f:
        for line in f:
            record = json.loads(line)
            if record["task"] == "gradient_similarity":
                similarity.append(record)
                continue
            if record["task"].startswith("eval/"):
                continue
            losses[record["task"]].append((record["step"], record["loss"]))
            if "learning_rate" in record:  # the task's own: the schedule x its lr_multiplier
                rates[record["task"]].append((record["step"], record["learning_rate"]))
            if record["step"] not in counted_steps:  # joint steps write a line per task
                counted_steps.add(record["step"])
                for key in seconds:
                    seconds[key] += record.get(key, 0.0)
                if not record.get("compiled", False) and "step_seconds" in record:
                    compiled_free.append(record["step_seconds"])
            for key, value in record.items():
                if key.startswith("routing/") and key.endswith("/router_probability"):
                    routing[key.split("/")[1]].append(np.asarray(value, np.float64))
    return {
        "losses": losses,
        "rates": rates,
        "seconds": seconds,
        "compiled_free": compiled_free,
        "routing": routing,
        "similarity": similarity,
    }


def write(run_dir: Path, table, evaluation: dict, wall_seconds: float) -> dict:
    """`report/summary.json` and the plots, from the run's metrics and its graph table."""
    metrics = _read_metrics(run_dir)
    losses, seconds = metrics["losses"], metrics["seconds"]
    graphs = table.stats_by_task()
    tasks = {}
    for name in sorted(set(losses) | set(evaluation)):
        values = [loss for _, loss in losses.get(name, [])]
        tasks[name] = {
            "steps": len(values),
            "first_loss": sum(values[:_SMOOTH]) / max(len(values[:_SMOOTH]), 1),
            "last_loss": sum(values[-_SMOOTH:]) / max(len(values[-_SMOOTH:]), 1),
            **graphs.get(name, {"compiles": 0, "compile_seconds": 0.0, "hits": 0, "temp_bytes": 0}),
            "peak_learning_rate": max((r for _, r in metrics["rates"].get(name, [])), default=None),
            "heldout": evaluation.get(name, {}),
        }
    compile_seconds = sum(g["compile_seconds"] for g in graphs.values())
    summary = {
        "wall_seconds": wall_seconds,
        "compile_seconds": compile_seconds,
        "compile_fraction": compile_seconds / max(wall_seconds, 1e-9),
        "graphs": len(table.entries),
        # Time the loop waited for the next batch: near 0 when the model step is the bottleneck.
        **seconds,
        "input_wait_fraction": seconds["input_seconds"] / max(wall_seconds, 1e-9),
        # The median step that did not compile (None when every step compiled).
        "median_step_seconds": (
            float(np.median(metrics["compiled_free"])) if metrics["compiled_free"] else None
        ),
        "tasks": tasks,
    }
    out = run_dir / "report"
    out.mkdir(exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    _plot_curves(losses, "loss", out / "loss_per_task.png")
    if metrics["rates"]:
        _plot_curves(metrics["rates"], "learning rate", out / "learning_rate_per_task.png")
    _plot_bars(
        {n: len(v) for n, v in sorted(losses.items())}, "steps", out / "task_sampling_counts.png"
    )
    _plot_bars(
        {f"{r['task']} #{i}": r["compile_seconds"] for i, r in enumerate(table.entry_stats())},
        "compile seconds",
        out / "compile_seconds_per_graph.png",
    )
    if metrics["routing"]:
        _plot_routing(metrics["routing"], out / "expert_routing_by_modality.png")
    if metrics["similarity"]:
        _plot_similarity(metrics["similarity"][-1], out / "gradient_similarity.png")
    return summary


def _plot_curves(curves: dict, label: str, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, points in sorted(curves.items()):
        steps, values = zip(*points, strict=True)
        ax.plot(steps, values, label=name, lw=0.8)
    ax.set_xlabel("step")
    ax.set_ylabel(label)
    ax.legend(fontsize=7)
    _save(fig, path)


def _plot_bars(values: dict[str, float], label: str, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 0.5 + 0.28 * max(len(values), 1)))
    ax.barh(list(values), list(values.values()))
    ax.invert_yaxis()
    ax.set_xlabel(label)
    ax.tick_params(axis="y", labelsize=7)
    _save(fig, path)


def _plot_routing(routing: dict[str, list], path: Path) -> None:
    """Mean router probability of each expert for each modality's tokens, averaged over the
    run and the MoE layers: where the modalities' tokens want to go. (Experts-choose routing
    fills every expert to capacity, so dispatch fractions would be flat by construction.)"""
    names = sorted(routing)
    rows = [np.mean([r.reshape(-1, r.shape[-1]).mean(0) for r in routing[m]], 0) for m in names]
    fig, ax = plt.subplots(figsize=(7, 1 + 0.5 * len(names)))
    image = ax.imshow(np.stack(rows), aspect="auto", cmap="viridis")
    ax.set_yticks(range(len(names)), names)
    ax.set_xticks(range(rows[0].shape[-1]))
    ax.set_xlabel("expert")
    fig.colorbar(image, ax=ax, label="mean router probability")
    _save(fig, path)


def _plot_similarity(record: dict, path: Path) -> None:
    matrix = np.asarray(record["matrix"])
    fig, ax = plt.subplots(figsize=(6, 5))
    image = ax.imshow(matrix, vmin=-1, vmax=1, cmap="RdBu")
    ax.set_xticks(range(len(record["tasks"])), record["tasks"], rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(record["tasks"])), record["tasks"], fontsize=7)
    ax.set_title(f"encoder gradient cosine similarity, step {record['step']}", fontsize=9)
    fig.colorbar(image, ax=ax)
    _save(fig, path)


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def format_table(summary: dict) -> str:
    """The printed summary: per task losses and compiles, then held-out metrics vs chance."""
    header = ("task", "steps", "first loss", "last loss", "compiles", "compile s")
    rows = ["{:<36}{:>6}{:>11}{:>10}{:>9}{:>10}".format(*header)]
    for name, t in summary["tasks"].items():
        rows.append(
            f"{name:<36}{t['steps']:>6}{t['first_loss']:>11.3f}{t['last_loss']:>10.3f}"
            f"{t['compiles']:>9}{t['compile_seconds']:>10.1f}"
        )
    rows.append("")
    rows.append(f"{'held-out metric':<64}{'value':>8}{'chance':>8}")
    for name, t in summary["tasks"].items():
        for metric, m in t["heldout"].items():
            cells = format_cell(m["value"]) + format_cell(m["chance"])
            rows.append(f"{name + ' ' + metric:<64}{cells}")
    rows.append("")
    rows.append(
        f"wall {summary['wall_seconds']:.0f} s, compile {summary['compile_seconds']:.1f} s "
        f"({100 * summary['compile_fraction']:.1f}% of wall), waiting for input "
        f"{summary['input_seconds']:.1f} s ({100 * summary['input_wait_fraction']:.1f}%)"
    )
    return "\n".join(rows)
