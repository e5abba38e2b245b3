"""Run outputs per logged step: `metrics.jsonl` (one JSON object per line) and TensorBoard."""

import json
from pathlib import Path

import jax
from tensorboardX import SummaryWriter


def tensorboard_tag(name: str) -> str:
    """TensorBoard's spelling of a metric name: `@` (as in `R@1`) is not allowed in tags."""
    return name.replace("@", "_at_")


class MetricsWriter:
    """Writes on the first process only (every process computes the same metrics)."""

    def __init__(self, run_dir: Path):
        self.active = jax.process_index() == 0
        if self.active:
            self.jsonl = (run_dir / "metrics.jsonl").open("a", buffering=1)  # line by line
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
