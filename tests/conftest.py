"""Shared fixtures: a small demo world, a tiny model config for fast end-to-end tests, and one
JAX compilation cache for the whole test run.

Compile time, not compute, dominates this suite (XLA:CPU compiles a tiny train step in seconds),
and many tests compile the same graphs: the same tiny model on the same demo tasks. The
persistent compilation cache is set in the environment before JAX is imported, so every xdist
worker and every subprocess a test starts reads and writes the same one.
"""

import functools
import os
import shutil
import tempfile

import pytest

_CACHE_MADE_HERE = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:  # at import: before anything imports JAX
    _CACHE_MADE_HERE = tempfile.mkdtemp(prefix="imp-test-jax-cache-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE_MADE_HERE
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"


def pytest_unconfigure(config):
    if _CACHE_MADE_HERE:  # the process that made it (xdist workers inherit it)
        shutil.rmtree(_CACHE_MADE_HERE, ignore_errors=True)


# Small enough that a compile takes ~1 s and a step milliseconds.
TINY = [
    "ImpModel.d_model = 32",
    "ImpModel.num_layers = 2",
    "ImpModel.num_heads = 2",
    "ImpModel.mlp_dim = 64",
    "ImpModel.embed_dim = 32",
]
# Every test run shares one learning-rate schedule, so their train steps compile to the same
# graphs (the schedule's constants are part of them) and the cache serves them.
SHARED = [
    "make_optimizer.decay_steps = 1000",
    "train.progress_bar = False",
    "train.compilation_cache = None",  # JAX's own: the test run's cache
]
WORLD_IMAGES = 60


@pytest.fixture(scope="session")
def world_dir(tmp_path_factory):
    from imp.data import demo_world

    out = tmp_path_factory.mktemp("world") / "demo"
    demo_world.generate(out, seed=0, num_images=WORLD_IMAGES)
    return out


@pytest.fixture(scope="session")
def full_world_dir(tmp_path_factory):
    from imp.data import demo_world

    out = tmp_path_factory.mktemp("full_world") / "demo"
    demo_world.generate(out, seed=0)
    return out


def demo_bindings(model_dir, steps, world_dir, mixture="demo_all", tiny=True) -> list[str]:
    """Gin bindings of the demo run at test size: the small world, batch 8, the TINY model."""
    return [
        f"MODEL_DIR = '{model_dir}'",
        f"TRAIN_STEPS = {steps}",
        f"MIXTURE_OR_TASK_NAME = '{mixture}'",
        f"prepare_demo.data_dir = '{world_dir}'",
        f"prepare_demo.num_images = {WORLD_IMAGES}",
        "prepare_demo.batch_size = 8",
        *SHARED,
        *(TINY if tiny else []),
    ]


PAIR = "test_pair"  # two tasks of different objectives: all a loop test needs


def configure_run(world_dir, model_dir, steps, *bindings, mixture=PAIR, data_dir=None, tiny=True):
    """Parses the demo run at test size (the small world, batch 8 and the TINY model unless
    `data_dir` / `tiny` say otherwise); returns its `(Experiment, TrainOptions)`, for
    `loop.train(*configure_run(...))`."""
    from imp import config
    from imp.experiment import Experiment
    from imp.training import loop

    _register_test_world()
    lines = demo_bindings(model_dir, steps, world_dir, mixture, tiny)
    if data_dir:  # the full world at the demo's own batch
        lines = [line for line in lines if not line.startswith("prepare_demo.")]
        lines.append(f"prepare_demo.data_dir = '{data_dir}'")
    if mixture == PAIR:  # registered in this process only: not for runs a subprocess reads
        lines.append("Experiment.prepare_data = @prepare_test_world")
    config.parse(["runs/demo.gin"], [*lines, *bindings])
    options = loop.TrainOptions.from_gin()
    return Experiment.from_gin(), options


def experiment_of(run_dir, *bindings):
    """The experiment of a finished run, from its config.gin (as `imp eval` rebuilds it)."""
    from imp import config
    from imp.experiment import Experiment
    from imp.training import loop  # noqa: F401 - registers the train options config.gin sets

    _register_test_world()
    config.parse([str(run_dir / "config.gin")], list(bindings))
    return Experiment.from_gin(writable=False)


@functools.cache
def _register_test_world() -> None:
    import gin

    from imp.tasks import demo, registry

    @gin.register
    def prepare_test_world():
        """The demo's tasks, plus `test_pair`: image-text NCE and video classification."""
        demo.prepare_demo()
        registry.register_mixture(PAIR, ["digit_images_text", "digit_videos_cls"])


@pytest.fixture
def run_config(world_dir):
    """`run_config(model_dir, steps, *bindings)`: `configure_run` on the session's world."""

    def configure(*args, **kwargs):
        return configure_run(world_dir, *args, **kwargs)

    return configure
