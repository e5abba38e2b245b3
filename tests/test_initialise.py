"""`Experiment.init_from`: a run starting from another run's checkpoint through checkpoint
surgery, checked before anything compiles."""

import jax
import numpy as np
import pytest

from imp.errors import ImpError
from imp.modeling import surgery
from imp.training import loop
from imp.training.checkpoint import Checkpointer


def test_a_video_model_starts_from_an_image_runs_checkpoint(tmp_path, run_config):
    source_dir = tmp_path / "source"
    loop.train(*run_config(source_dir, 1))
    init = [
        "Experiment.init_from = @InitFrom()",
        f"InitFrom.checkpoint_dir = '{source_dir}'",
        "InitFrom.tubelet_init = 'inflate'",
        "ImpModel.vision_patch = (4, 8, 8)",
    ]
    experiment, _ = run_config(tmp_path / "target", 1, *init)
    checkpointer = Checkpointer(tmp_path / "target" / "checkpoints")
    state, step, _ = loop._restore_or_create(experiment, checkpointer)
    checkpointer.close()
    source_checkpoints = Checkpointer(source_dir / "checkpoints", read_only=True)
    source = surgery.flatten(jax.tree.map(np.asarray, source_checkpoints.params(1)))
    source_checkpoints.close()
    got = surgery.flatten(jax.tree.map(np.asarray, state["params"]))
    assert step == 0 and int(state["step"]) == 0
    kernel = "embedders_vision/tubelet/kernel"
    expected = surgery.tubelet_kernel(surgery.image_kernel(source[kernel], 2), 4, "inflate")
    np.testing.assert_allclose(got[kernel], expected, rtol=1e-6)
    for name in got:
        if name != kernel:
            np.testing.assert_array_equal(got[name], source[name], err_msg=name)

    broken = {
        "InitFrom.checkpoint_dir = '/nowhere'": "InitFrom.checkpoint_dir = '/nowhere': ",
        "InitFrom.step = 7": r"no checkpoint at step 7 in .* \(it has \[1\]\)",
        "InitFrom.tubelet_init = 'middle'": "InitFrom.tubelet_init = 'middle': expected one of",
        "ImpModel.mlp_dim = 48": r"\(step 1\): parameter encoder/segment_0/dense_0/mlp/wi/bias is",
    }
    for binding, message in broken.items():
        with pytest.raises(ImpError, match=message):
            run_config(tmp_path / "target", 1, *init, binding)
