"""The demo learns: its model (`gin/models/tiny.gin`) on the whole digit world, trained as
`imp train` trains it."""

import json
import os
import subprocess
import sys

import pytest
from conftest import FAST_COMPILE


@pytest.mark.slow
def test_demo_model_learns_video_classification(tmp_path):
    """The demo's model (`gin/models/tiny.gin`) on the whole digit world: 120 steps of video
    classification put held-out top-1 (digits never seen in training) well above chance.
    `imp train` in a subprocess at XLA's default optimisation: here run time, not compile
    time, counts."""
    flags = [
        f"MODEL_DIR={tmp_path / 'run'}",
        "TRAIN_STEPS=120",
        "MIXTURE_OR_TASK_NAME=digit_videos_cls",
        f"prepare_demo.data_dir={tmp_path / 'world'}",
        "train.end_evaluations=('classification',)",
        "make_optimizer.decay_steps=1000",
        "train.progress_bar=False",
        "train.compilation_cache=None",
    ]
    env = {**os.environ, "XLA_FLAGS": os.environ["XLA_FLAGS"].replace(FAST_COMPILE, "")}
    argv = [sys.executable, "-m", "imp.cli", "train", *(f"--gin.{f}" for f in flags)]
    subprocess.run(argv, env=env, check=True, capture_output=True, timeout=600)
    summary = json.loads((tmp_path / "run" / "report" / "summary.json").read_text())
    video = summary["tasks"]["digit_videos_cls"]["heldout"]["top1"]
    assert video["value"] > 3 * video["chance"], video
