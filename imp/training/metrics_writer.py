"""Run outputs per logged step: `metrics.jsonl` (one JSON object per line) and TensorBoard."""

import json
from pathlib import Path

from tensorboardX import SummaryWriter


class MetricsWriter:
    def __init__(self, run_dir: Path):
        self.jsonl = (run_dir / "metrics.jsonl").open("a")
        self.tensorboard = SummaryWriter(str(run_dir / "tensorboard"))

    def write(self, record: dict) -> None:
        """`record` has `step` and `task`; its other numbers become scalars `<task>/<name>`."""
        self.jsonl.write(json.dumps(record) + "\n")
        for name, value in record.items():
            if name != "step" and isinstance(value, int | float) and not isinstance(value, bool):
                self.tensorboard.add_scalar(f"{record['task']}/{name}", value, record["step"])

    def close(self) -> None:
        self.jsonl.close()
        self.tensorboard.close()
