"""Each user error ends with one line naming the culprit and exit code 2, no traceback."""

import pytest
from conftest import WORLD_IMAGES

from imp import cli


@pytest.mark.parametrize(
    "argv, culprit",
    [
        (["train", "--gin.train.trian_steps=3"], "trian_steps"),
        (["train", "--gin.train.trian_steps=3"], "did you mean train_steps"),
        (["train", "--gin.trian.train_steps=3"], "unknown configurable 'trian'"),
        (["train", "--gin.TRAIN_STPES=3"], "did you mean TRAIN_STEPS"),
        (["train", "--gin.TRAIN_STEPS=(3"], "TRAIN_STEPS = (3"),
        (["train", "--gin_bindings", "train.train_steps 3"], "train.train_steps 3"),
        (["train", "--gin.=3"], "--gin.=3"),
        (["train", "--gin_file", "no/such/file.gin"], "no/such/file.gin"),
        (["model-info", "--gin.ImpModel.d_modle=8"], "did you mean d_model"),
    ],
)
def test_gin_errors_name_the_culprit(argv, culprit, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("imp: error:") and culprit in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err


def test_unwritable_model_dir(tmp_path, capsys, world_dir):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    argv = [
        "train",
        f"--gin.MODEL_DIR={blocker}/run",
        f"--gin.prepare_demo.data_dir={world_dir}",
        f"--gin.prepare_demo.num_images={WORLD_IMAGES}",
    ]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert f"MODEL_DIR '{blocker}/run' is not writable" in err
    assert len(err.splitlines()) == 1


def test_unknown_mixture(tmp_path, capsys, world_dir):
    argv = [
        "train",
        f"--gin.MODEL_DIR={tmp_path}",
        "--gin.MIXTURE_OR_TASK_NAME=digit_vidoe_cls",
        f"--gin.prepare_demo.data_dir={world_dir}",
        f"--gin.prepare_demo.num_images={WORLD_IMAGES}",
    ]
    assert cli.main(argv) == 2
    assert "did you mean digit_videos_cls" in capsys.readouterr().err


def test_model_info_counts_parameters(capsys):
    assert cli.main(["model-info", "--gin_file", "models/tiny.gin", "--json"]) == 0
    import json

    info = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert info["total_parameters"] == sum(info["components"].values())
    # One pre-LN layer of width 128 and MLP 512: qkv + out + 2 MLP + 2 LN (+ biases).
    d, m = 128, 512
    per_layer = (d * 3 * d + 3 * d) + (d * d + d) + (d * m + m) + (m * d + d) + 4 * d
    assert info["components"]["encoder"] == 4 * per_layer + 2 * d


def test_bare_string_flags_are_quoted():
    from imp.config import flag_to_binding

    assert flag_to_binding("MODEL_DIR", "/tmp/run") == "MODEL_DIR = '/tmp/run'"
    assert flag_to_binding("MODEL_DIR", "'/tmp/run'") == "MODEL_DIR = '/tmp/run'"
    assert flag_to_binding("TRAIN_STEPS", "30") == "TRAIN_STEPS = 30"
    assert flag_to_binding("x.flag", "True") == "x.flag = True"
    assert flag_to_binding("x.fn", "@prepare_demo") == "x.fn = @prepare_demo"
