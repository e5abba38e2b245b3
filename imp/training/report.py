"""The end-of-run report: `report/summary.json`, a loss plot, and the printed summary table."""

import json
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

_SMOOTH = 10  # losses averaged over the first/last this many steps of each task


def _read_metrics(run_dir: Path) -> tuple[dict[str, list[tuple[int, float]]], dict[str, float]]:
    """Loss per task over steps, and the seconds spent in train steps and waiting for input."""
    losses = defaultdict(list)
    seconds = {"step_seconds": 0.0, "input_seconds": 0.0}
    with (run_dir / "metrics.jsonl").open() as f:
        for line in f:
            record = json.loads(line)
            losses[record["task"]].append((record["step"], record["loss"]))
            for key in seconds:
                seconds[key] += record.get(key, 0.0)
    return losses, seconds


def write(run_dir: Path, graphs: dict, evaluation: dict, wall_seconds: float) -> dict:
    losses, seconds = _read_metrics(run_dir)
    tasks = {}
    for name in sorted(set(losses) | set(graphs)):
        values = [loss for _, loss in losses.get(name, [])]
        tasks[name] = {
            "steps": len(values),
            "first_loss": sum(values[:_SMOOTH]) / max(len(values[:_SMOOTH]), 1),
            "last_loss": sum(values[-_SMOOTH:]) / max(len(values[-_SMOOTH:]), 1),
            **graphs.get(name, {"compiles": 0, "compile_seconds": 0.0, "hits": 0}),
            "heldout": evaluation.get(name, {}),
        }
    compile_seconds = sum(g["compile_seconds"] for g in graphs.values())
    summary = {
        "wall_seconds": wall_seconds,
        "compile_seconds": compile_seconds,
        "compile_fraction": compile_seconds / max(wall_seconds, 1e-9),
        # Time the loop waited for the next batch: near 0 when the model step is the bottleneck.
        **seconds,
        "input_wait_fraction": seconds["input_seconds"] / max(wall_seconds, 1e-9),
        "tasks": tasks,
    }
    out = run_dir / "report"
    out.mkdir(exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    _plot_losses(losses, out / "loss_per_task.png")
    return summary


def _plot_losses(losses: dict, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, points in sorted(losses.items()):
        steps, values = zip(*points, strict=True)
        ax.plot(steps, values, label=name, lw=0.8)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend(fontsize=7)
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
            rows.append(f"{name + ' ' + metric:<64}{m['value']:>8.3f}{m['chance']:>8.3f}")
    rows.append("")
    rows.append(
        f"wall {summary['wall_seconds']:.0f} s, compile {summary['compile_seconds']:.1f} s "
        f"({100 * summary['compile_fraction']:.1f}% of wall), waiting for input "
        f"{summary['input_seconds']:.1f} s ({100 * summary['input_wait_fraction']:.1f}%)"
    )
    return "\n".join(rows)
