"""Shared fixtures: a small demo world and a tiny model config for fast end-to-end tests."""

import pytest

from imp import config
from imp.data import demo_world

# Small enough that a compile takes ~1 s and a step milliseconds.
TINY = [
    "ImpModel.d_model = 32",
    "ImpModel.num_layers = 2",
    "ImpModel.num_heads = 2",
    "ImpModel.mlp_dim = 64",
    "ImpModel.embed_dim = 32",
]


WORLD_IMAGES = 60


@pytest.fixture(scope="session")
def world_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("world") / "demo"
    demo_world.generate(out, seed=0, num_images=WORLD_IMAGES)
    return out


@pytest.fixture(scope="session")
def full_world_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("full_world") / "demo"
    demo_world.generate(out, seed=0)
    return out


@pytest.fixture
def run_config(world_dir):
    """`run_config(model_dir, steps, *bindings)` parses the demo run at test size."""

    def configure(model_dir, steps, *bindings, mixture="demo_all", data_dir=None, tiny=True):
        """Small world, batch 8 and the TINY model unless `data_dir` / `tiny` say otherwise."""
        world = (
            [f"prepare_demo.data_dir = '{data_dir}'"]
            if data_dir
            else [
                f"prepare_demo.data_dir = '{world_dir}'",
                f"prepare_demo.num_images = {WORLD_IMAGES}",
                "prepare_demo.batch_size = 8",
            ]
        )
        config.parse(
            ["runs/demo.gin"],
            [
                f"MODEL_DIR = '{model_dir}'",
                f"TRAIN_STEPS = {steps}",
                f"MIXTURE_OR_TASK_NAME = '{mixture}'",
                "train.progress_bar = False",
                *world,
                *(TINY if tiny else []),
                *bindings,
            ],
        )

    from imp.tasks import demo  # noqa: F401 - registers gin configurables
    from imp.training import loop  # noqa: F401

    return configure
