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

# XLA's LLVM backend at -O0: the tiny test graphs compile ~40% faster and run slower, which
# only the learning test would feel (it runs in a subprocess without this flag).
FAST_COMPILE = "--xla_backend_optimization_level=0"
if FAST_COMPILE not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {FAST_COMPILE}".strip()
_CACHE_MADE_HERE = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:  # at import: before anything imports JAX
    _CACHE_MADE_HERE = tempfile.mkdtemp(prefix="imp-test-jax-cache-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE_MADE_HERE
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"


@pytest.fixture(scope="module", autouse=True)
def _no_gin_bindings_from_other_modules():
    """Each test module starts with no gin bindings: a module-scoped fixture that calls a
    configurable directly (`prepare_demo`) would otherwise read what an earlier module's
    command parsed (`--gin.prepare_demo.audio_classification=True` once added a task to
    `demo_all` for the next module on that worker)."""
    import gin

    gin.clear_config()


# The longest test files first, so that the two xdist workers finish together (files are
# handed out whole, in collection order).
LONGEST_FIRST = (  # measured with --durations=0; the rest are short
    "test_train.py",
    "test_bench.py",
    "test_eval.py",
    "test_multihost.py",
    "test_model.py",
    "test_partitioning.py",
    "test_demo.py",
    "test_step.py",
    "test_unit.py",
    "test_decoder.py",
    "test_lit.py",
    "test_decoding.py",
    "test_ablation.py",
    "test_convert.py",
    "test_surgery.py",
    "test_readers.py",
    "test_multiview.py",
    "test_data.py",
    "test_initialise.py",
    "test_inspect.py",
    "test_bench_throughput.py",
    "test_moe.py",
)


def pytest_collection_modifyitems(items):
    def rank(item):
        name = item.path.name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: the order within a file is kept


def with_devices(count: int) -> str:
    """XLA_FLAGS for a subprocess: the test run's, with `count` virtual CPU devices."""
    return f"{os.environ['XLA_FLAGS']} --xla_force_host_platform_device_count={count}"


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


def demo_bindings(
    model_dir, steps, world_dir, mixture="demo_all", num_images=WORLD_IMAGES
) -> list[str]:
    """Gin bindings of the demo run at test size: the small world, batch 8, the TINY model."""
    return [
        f"MODEL_DIR = '{model_dir}'",
        f"TRAIN_STEPS = {steps}",
        f"MIXTURE_OR_TASK_NAME = '{mixture}'",
        f"prepare_demo.data_dir = '{world_dir}'",
        f"prepare_demo.num_images = {num_images}",
        "prepare_demo.batch_size = 8",
        *SHARED,
        *TINY,
    ]


def small_run(run_dir, world_dir, steps: int = 2) -> list[str]:
    """Bindings of a run file's own mixture at test size: `steps` steps on the small world,
    batch 8, no evaluation at the end."""
    return [
        f"MODEL_DIR = '{run_dir}'",
        f"TRAIN_STEPS = {steps}",
        f"prepare_demo.data_dir = '{world_dir}'",
        f"prepare_demo.num_images = {WORLD_IMAGES}",
        "prepare_demo.batch_size = 8",
        "train.evaluate_at_end = False",
    ]


PAIR = "test_pair"  # two tasks of different objectives: all a loop test needs


def configure_run(world_dir, model_dir, steps, *bindings, mixture=PAIR):
    """Parses the demo run at test size (the small world, batch 8, the TINY model); returns its
    `(Experiment, TrainOptions)`, for `loop.train(*configure_run(...))`."""
    from imp import config
    from imp.experiment import Experiment
    from imp.training import loop

    _register_test_world()
    lines = demo_bindings(model_dir, steps, world_dir, mixture)
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
