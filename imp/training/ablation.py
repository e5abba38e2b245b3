"""`imp ablation objectives`: seed 004 Table 2's comparison on the demo world.

Three runs of the same model and steps: NCE tasks only (AGD); NCE and softmax tasks summed
into one loss per step (every task, every step); NCE and softmax tasks alternating (AGD,
IMP's recipe). The table holds each run's held-out zero-shot and classification accuracy.
Every variant's experiment is built and validated before the first one trains.
"""

from collections.abc import Callable
from pathlib import Path

from imp.training import loop

VARIANTS = {
    "NCE only (AGD)": ["MIXTURE_OR_TASK_NAME = 'demo_contrastive'"],
    "NCE + softmax, summed": ["Schedule.name = 'summed'"],
    "NCE + softmax, alternating (AGD)": [],
}
# (column, task, metric)
COLUMNS = (
    ("image zero-shot", "digit_images_text", "zero_shot_top1/vision"),
    ("video zero-shot", "digit_videos_text", "zero_shot_top1/vision"),
    ("audio zero-shot", "digit_videos_audio_text", "zero_shot_top1/waveform"),
    ("image cls", "digit_images_cls", "top1"),
    ("video cls", "digit_videos_cls", "top1"),
)


def run(out_dir: str, build: Callable[[list[str]], tuple]) -> dict:
    """Trains every variant under `out_dir/<n>`; returns {variant: {column: value}}.

    `build(bindings)` returns the `(TrainOptions, Experiment)` of the configured run with the
    extra gin `bindings`."""
    runs = {
        name: build([*extra, f"MODEL_DIR = '{Path(out_dir) / str(index)}'"])
        for index, (name, extra) in enumerate(VARIANTS.items())
    }
    return {name: row(loop.train(exp, options)) for name, (options, exp) in runs.items()}


def row(summary: dict) -> dict:
    """A run's summary as one table row (None where the run has no such task)."""
    return {
        column: summary["tasks"].get(task, {}).get("heldout", {}).get(metric, {}).get("value")
        for column, task, metric in COLUMNS
    } | {"wall seconds": summary["wall_seconds"]}


def format_table(results: dict) -> str:
    columns = [c for c, _, _ in COLUMNS] + ["wall seconds"]
    lines = ["| run | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, values in results.items():
        cells = ["-" if values[c] is None else f"{values[c]:.3f}" for c in columns[:-1]]
        cells.append(f"{values['wall seconds']:.0f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
