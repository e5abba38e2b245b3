"""Run outputs per logged step: `metrics.jsonl` (one JSON object per line) and TensorBoard."""

import json
import logging
import os
from pathlib import Path

import jax
from tensorboardX import SummaryWriter

SUPERSEDED = "metrics.superseded.jsonl"


def tensorboard_tag(name: str) -> str:
    """TensorBoard's spelling of a metric name: `@` (as in `R@1`) is not allowed in tags."""
    return name.replace("@", "_at_")


class MetricsWriter:
    """Writes on the first process only (every process computes the same metrics).

    A run resumed at `start_step` continues `metrics.jsonl` after that step: records of later
    steps (written after the checkpoint it resumed from, and about to be trained again) move to
    `metrics.superseded.jsonl`, so no step appears twice and nothing is thrown away."""

    def __init__(self, run_dir: Path, start_step: int = 0):
        self.active = jax.process_index() == 0
        if self.active:
            path = run_dir / "metrics.jsonl"
            if path.exists():
                _keep_through(path, start_step, run_dir / SUPERSEDED)
            self.jsonl = path.open("a", buffering=1)  # line by line
            self.tensorboard = SummaryWriter(str(run_dir / "tensorboard"))

    def write(self, record: dict) -> None:
        """`record` has `step` and `task`; its other numbers become scalars `<task>/<name>`."""
        if not self.active:
            return
        self.jsonl.write(json.dumps(record) + "\n")
        for name, value in record.items():
            if name != "step" and isinstance(value, int | float) and not isinstance(value, bool):
                tag = tensorboard_tag(f"{record['task']}/{name}")
                self.tensorboard.add_scalar(tag, value, record["step"])

    def close(self) -> None:
        if not self.active:
            return
        self.jsonl.close()
        self.tensorboard.close()


def _keep_through(path: Path, step: int, superseded: Path) -> None:
    """Rewrites `path` with its records up to `step`, appending the others (and a line torn by
    a crash) to `superseded`."""
    kept, moved = [], []
    for line in path.read_text().splitlines(keepends=True):
        try:
            record_step = json.loads(line)["step"]
        except (json.JSONDecodeError, KeyError, TypeError):
            record_step = None
        (kept if record_step is not None and record_step <= step else moved).append(line)
    if not moved:
        return
    with superseded.open("a") as f:
        f.writelines(line if line.endswith("\n") else line + "\n" for line in moved)
    staged = path.with_suffix(".jsonl.tmp")
    staged.write_text("".join(kept))
    os.replace(staged, path)
    logging.getLogger(__name__).warning(
        "resuming at step %d: %d records of later steps moved from %s to %s",
        step,
        len(moved),
        path.name,
        superseded.name,
    )
