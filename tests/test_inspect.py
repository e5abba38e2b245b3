"""`imp data inspect`: one row per task variant with its rate, batch, feature shapes and the
model's token counts, and decoded examples."""

import json

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
    assert len(rows) == 18
    assert sum(r["rate"] for r in rows.values()) == pytest.approx(1.0)
    # tiny.gin: 2x8x8 tubelets. A 8x32x32 clip is 4x4x4 = 64 tokens; half resolution 4x2x2;
    # DropToken keeps 1/T_F = 1/4; a still fills one tubelet: 1x4x4.
    video = {
        v: rows[f"digit_videos_cls{v}"] for v in ("", "_half_res", "_quarter_batch", "_droptoken")
    }
    assert {v: r["tokens_per_example"] for v, r in video.items()} == {
        "": 64,
        "_half_res": 16,
        "_quarter_batch": 64,
        "_droptoken": 16,
    }
    assert {v: r["tokens_per_batch"] for v, r in video.items()} == {
        "": 512,
        "_half_res": 128,
        "_quarter_batch": 128,
        "_droptoken": 128,
    }
    assert rows["digit_images_cls"]["tokens_per_example"] == 16
    assert rows["digit_images_text"]["tokens_per_example"] == 16 + 24  # and 24 text tokens
    assert video[""]["features"]["vision"] == [[8, 8, 32, 32, 3], "float32"]
    assert video["_half_res"]["features"]["vision"] == [[8, 8, 16, 16, 3], "float32"]
    assert video["_quarter_batch"]["features"]["label"] == [[2], "int32"]
    # Variants of a task share its weight: the base and its three variants, a quarter each.
    assert video[""]["rate"] == video["_droptoken"]["rate"]


def test_show_decodes_captions_and_labels(world_dir, capsys):
    out = _inspect(world_dir, capsys, "--show", "2")
    assert "digit_videos (validation):" in out and "digit_images (validation):" in out
    shown = [line for line in out.splitlines() if line.startswith("  [")]
    assert len(shown) == 4
    assert all("label " in line and ("handwritten" in line or "digit" in line) for line in shown)
