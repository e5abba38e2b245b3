"""`imp ablation objectives`: seed 004 Table 2's comparison on the demo world.

Three runs of the same model and steps: NCE tasks only (AGD); NCE and softmax tasks summed
into one loss per step (every task, every step); NCE and softmax tasks alternating (AGD,
IMP's recipe). The table holds each run's held-out zero-shot and classification accuracy.
"""

from pathlib import Path

from imp import config

VARIANTS = {
    "NCE only (AGD)": ["MIXTURE_OR_TASK_NAME = 'demo_contrastive'"],
    "NCE + softmax, summed": ["make_sampler.schedule = 'summed'"],
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


def run(out_dir: str, gin_files: list[str], bindings: list[str], search_paths=()) -> dict:
    """Trains every variant under `out_dir/<n>` and returns {variant: {column: value}}."""
    from imp.training import loop

    results = {}
    for index, (name, extra) in enumerate(VARIANTS.items()):
        model_dir = Path(out_dir) / str(index)
        config.parse(
            gin_files, [*bindings, f"MODEL_DIR = '{model_dir}'", *extra], list(search_paths)
        )
        summary = loop.train()
        results[name] = {
            column: summary["tasks"].get(task, {}).get("heldout", {}).get(metric, {}).get("value")
            for column, task, metric in COLUMNS
        } | {"wall seconds": summary["wall_seconds"]}
    return results


def format_table(results: dict) -> str:
    columns = [c for c, _, _ in COLUMNS] + ["wall seconds"]
    lines = ["| run | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, row in results.items():
        cells = ["-" if row[c] is None else f"{row[c]:.3f}" for c in columns[:-1]]
        cells.append(f"{row['wall seconds']:.0f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
