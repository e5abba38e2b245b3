"""`imp data inspect`: one row per task variant with its rate, batch, feature shapes and the
model's token counts, and decoded examples."""

import json
import re

import pytest
from conftest import WORLD_IMAGES

from imp import cli


def _inspect(world_dir, capsys, *flags) -> str:
    argv = [
        "data",
        "inspect",
        "--mixture=demo_all_multires",
        f"--gin.prepare_demo.data_dir={world_dir}",
        f"--gin.prepare_demo.num_images={WORLD_IMAGES}",
        "--gin.prepare_demo.batch_size=8",
        *flags,
    ]
    assert cli.main(argv) == 0
    return capsys.readouterr().out


def test_rows_per_variant_with_shapes_rates_and_tokens(world_dir, capsys):
    rows = {r["task"]: r for r in json.loads(_inspect(world_dir, capsys, "--json"))}
    assert len(rows) == 15
    assert sum(r["rate"] for r in rows.values()) == pytest.approx(1.0)
    # tiny.gin: 2x8x8 tubelets. A 8x32x32 clip is 4x4x4 = 64 tokens; half resolution 4x2x2;
    # DropToken keeps 1/T_F = 1/4; a still fills one tubelet: 1x4x4. The full-token video
    # base (4x the image budget) sits out the multi-resolution mixture (seed 004).
    assert "digit_videos_cls" not in rows
    video = {v: rows[f"digit_videos_cls_{v}"] for v in ("half_res", "quarter_batch", "droptoken")}
    assert {v: r["tokens_per_example"] for v, r in video.items()} == {
        "half_res": 16,
        "quarter_batch": 64,
        "droptoken": 16,
    }
    image_budget = rows["digit_images_cls"]["tokens_per_batch"]
    assert image_budget == 128
    assert {v: r["tokens_per_batch"] for v, r in video.items()} == dict.fromkeys(video, 128)
    assert all(
        r["tokens_per_batch"] <= image_budget
        for r in rows.values()
        if r["task"].startswith("digit_videos_cls")
    )
    assert rows["digit_images_cls"]["tokens_per_example"] == 16
    assert rows["digit_images_text"]["tokens_per_example"] == 16 + 24  # and 24 text tokens
    assert video["half_res"]["features"]["vision"] == [[8, 8, 16, 16, 3], "float32"]
    assert video["quarter_batch"]["features"]["label"] == [[2], "int32"]
    # Variants of a task share its weight: three video variants, a third each.
    assert video["half_res"]["rate"] == video["droptoken"]["rate"]


def test_show_decodes_captions_and_labels(world_dir, capsys):
    out = _inspect(world_dir, capsys, "--show", "2")
    assert "digit_videos (validation):" in out and "digit_images (validation):" in out
    shown = [line for line in out.splitlines() if line.startswith("  [")]
    assert len(shown) == 4
    assert all("label " in line and ("handwritten" in line or "digit" in line) for line in shown)


def test_show_lists_a_detection_example_s_objects(world_dir, capsys):
    out = _inspect(
        world_dir,
        capsys,
        "--gin_file=runs/unit_demo.gin",
        "--mixture=digit_scenes_detection",
        "--show",
        "1",
    )
    (shown,) = [line for line in out.splitlines() if line.startswith("  [")]
    assert re.fullmatch(r"  \[0\] \d objects: '\d' at \(0\.\d\d, 0\.\d\d\)(, .*)?", shown)
