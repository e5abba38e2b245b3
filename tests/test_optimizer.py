"""Adam counts each parameter group's own updates: under AGD a head sampled on some steps only is
bias-corrected for the updates it took, not for the run's steps, while the learning rate follows
the run's step (with the drawn task's own peak, warm-up and weight decay where it sets them).
Checked against a hand-written numpy Adam, through the real train-step update
(`apply_gradients`, which keeps the groups a step's tasks do not use as they were)."""

import dataclasses
import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import with_devices

from imp.errors import ImpError
from imp.tasks.spec import TaskSpec
from imp.training.checkpoint import Checkpointer
from imp.training.optimizer import is_kernel, kernel_mask, make_optimizer
from imp.training.step import apply_gradients, used_parameters

SHAPES = {
    "encoder": {"dense": {"kernel": (3, 4), "bias": (4,)}, "ln": {"scale": (4,)}},
    "classifiers_a": {"Dense_0": {"kernel": (4, 2), "bias": (2,)}},
    "classifiers_b": {"Dense_0": {"kernel": (4, 3), "bias": (3,)}},
    "projections_vision": {"Dense_0": {"kernel": (4, 2)}},
    "logit_scale": (),
}
TASK_A = TaskSpec("task_a", "a", "softmax", ("vision",), 10, 4, class_names=("x", "y"))
TASK_B = TaskSpec("task_b", "b", "softmax", ("vision",), 10, 4, class_names=("x", "y", "z"))
TASK_C = TaskSpec("task_c", "c", "nce", ("vision",), 10, 4)
# The groups each task's loss reads, written out by hand (`step.used_parameters` decides).
USED = {
    "task_a": {"encoder", "classifiers_a"},
    "task_b": {"encoder", "classifiers_b"},
    "task_c": {"encoder", "projections_vision", "logit_scale"},
}
# An AGD run: head b is sampled on 3 of 8 steps, the contrastive task on 1; one summed step.
STEPS = [(TASK_A,), (TASK_A,), (TASK_B,), (TASK_A,), (TASK_C,), (TASK_A, TASK_B), (TASK_A,)]
STEPS += [(TASK_B,)]
PEAK, WARMUP, DECAY = 0.1, 3, 10
B1, B2 = 0.9, 0.999


def _is_leaf(x):
    return isinstance(x, tuple) and all(isinstance(n, int) for n in x)


def _params():
    rng = np.random.default_rng(0)
    return jax.tree.map(lambda s: rng.normal(size=s).astype(np.float32), SHAPES, is_leaf=_is_leaf)


def _grads(step, used):
    """Gradient of every group the step's tasks use; zero elsewhere, as a loss would give."""
    rng = np.random.default_rng(100 + step)
    return {
        group: jax.tree.map(
            lambda s, g=group: rng.normal(size=s).astype(np.float32) * (g in used),
            shapes,
            is_leaf=_is_leaf,
        )
        for group, shapes in SHAPES.items()
    }


def _learning_rate(step, peak=PEAK, warmup=WARMUP):
    """Linear warm-up from 0 to `peak`, then a cosine to 0 at DECAY: of the run's step."""
    if step < warmup:
        return peak * step / warmup
    return peak * 0.5 * (1 + np.cos(np.pi * (step - warmup) / (DECAY - warmup)))


def _rate_and_decay(t, tasks, weight_decay):
    """The learning rate and weight decay of step `t`: a lone task's own, else the run's."""
    if len(tasks) > 1:
        return _learning_rate(t), weight_decay
    task = tasks[0]
    warmup = WARMUP if task.warmup_steps is None else task.warmup_steps
    decay = weight_decay if task.weight_decay is None else task.weight_decay
    return _learning_rate(t, PEAK * task.lr_multiplier, warmup), decay


def _numpy_adam(eps, weight_decay, steps=STEPS):
    """Adam (AdamW with `weight_decay`, on kernels), in float64, one count per group."""
    paths, treedef = jax.tree_util.tree_flatten_with_path(_params())
    params = [np.float64(p) for _, p in paths]
    mu, nu = [np.zeros_like(p) for p in params], [np.zeros_like(p) for p in params]
    group = [path[0].key for path, _ in paths]
    kernel = [path[-1].key == "kernel" for path, _ in paths]
    count = dict.fromkeys(SHAPES, 0)
    for t, tasks in enumerate(steps):
        used = set().union(*(USED[task.name] for task in tasks))
        count.update({g: count[g] + 1 for g in used})
        grads = jax.tree.leaves(_grads(t, used))
        rate, decay = _rate_and_decay(t, tasks, weight_decay)
        for i, g in enumerate(grads):
            if group[i] not in used:
                continue
            n = count[group[i]]
            mu[i] = B1 * mu[i] + (1 - B1) * g
            nu[i] = B2 * nu[i] + (1 - B2) * g * g
            step = (mu[i] / (1 - B1**n)) / (np.sqrt(nu[i] / (1 - B2**n)) + eps)
            if kernel[i]:
                step = step + decay * params[i]
            params[i] = params[i] - rate * step
    return jax.tree.unflatten(treedef, params)


def _run(tx, step_size, steps=STEPS):
    """The real update of each of `steps`, freezing what the step's tasks do not use, with a
    lone task's step size (as `make_train_step` gives it)."""
    params = jax.tree.map(jnp.asarray, _params())
    state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}

    def step(state, grads, tasks):
        size = step_size.for_task(tasks[0]) if len(tasks) == 1 else step_size
        return apply_gradients(state, grads, tx, size, tasks)

    update = jax.jit(step, static_argnums=2)
    for task in {task for tasks in steps for task in tasks}:
        assert used_parameters(task) & set(SHAPES) == USED[task.name], task.name
    for t, tasks in enumerate(steps):
        used = set().union(*(USED[task.name] for task in tasks))
        state = update(state, jax.tree.map(jnp.asarray, _grads(t, used)), tasks)
    return state


def _max_difference(a, b):
    return max(
        float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


def _optimizer(eps, weight_decay):
    return make_optimizer(
        DECAY,
        learning_rate=PEAK,
        warmup_steps=WARMUP,
        eps=eps,
        weight_decay=weight_decay,
        clip_norm=None,
    )


@pytest.mark.parametrize("eps, weight_decay", [(1e-8, 0.0), (1e-7, 0.1)])
def test_each_group_is_bias_corrected_for_its_own_updates(eps, weight_decay):
    expected = _numpy_adam(eps, weight_decay)
    state = _run(*_optimizer(eps, weight_decay))
    assert int(state["step"]) == len(STEPS)
    for (path, x), y in zip(
        jax.tree_util.tree_leaves_with_path(state["params"]), jax.tree.leaves(expected), strict=True
    ):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6, err_msg=jax.tree_util.keystr(path))
    counts = state["opt_state"][-1].count  # (clip), adam
    assert {group: int(jax.tree.leaves(counts[group])[0]) for group in SHAPES} == {
        "encoder": 8,
        "classifiers_a": 5,
        "classifiers_b": 3,
        "projections_vision": 1,
        "logit_scale": 1,
    }


def test_sgd_with_momentum_matches_numpy_with_frozen_groups():
    """PolyViT's optimizer: one momentum trace (`trace = g + 0.9 trace`, step `-lr * trace`),
    and a group's trace holds still on the steps that do not sample it."""
    optimizer = make_optimizer(
        DECAY,
        learning_rate=PEAK,
        warmup_steps=WARMUP,
        weight_decay=0.1,
        clip_norm=None,
        optimizer="sgd",
        momentum=0.9,
    )
    paths, treedef = jax.tree_util.tree_flatten_with_path(_params())
    params = [np.float64(p) for _, p in paths]
    trace = [np.zeros_like(p) for p in params]
    group = [path[0].key for path, _ in paths]
    kernel = [path[-1].key == "kernel" for path, _ in paths]
    for t, tasks in enumerate(STEPS):
        used = set().union(*(USED[task.name] for task in tasks))
        for i, g in enumerate(jax.tree.leaves(_grads(t, used))):
            if group[i] in used:
                trace[i] = g + 0.9 * trace[i]
                step = trace[i] + (0.1 * params[i] if kernel[i] else 0.0)
                params[i] = params[i] - _learning_rate(t) * step
    expected = jax.tree.unflatten(treedef, params)
    assert _max_difference(_run(*optimizer)["params"], expected) < 1e-5
    with pytest.raises(ImpError, match="make_optimizer.optimizer = 'lamb': choose from"):
        make_optimizer(10, optimizer="lamb")
    with pytest.raises(ImpError, match=r"make_optimizer.momentum = 1.0: expected a number in"):
        make_optimizer(10, optimizer="sgd", momentum=1.0)


def test_each_task_steps_with_its_own_peak_warmup_and_weight_decay():
    """PolyViT's per-task optimisation (seed 000 Table 6) in one optimizer state: a lone
    task's step takes its own peak (`lr_multiplier`), warm-up and weight decay; the summed
    step takes the run's."""
    a = dataclasses.replace(TASK_A, lr_multiplier=0.5, warmup_steps=6, weight_decay=0.3)
    b = dataclasses.replace(TASK_B, warmup_steps=0, weight_decay=0.0)
    own = {"task_a": a, "task_b": b}
    steps = [tuple(own.get(task.name, task) for task in tasks) for tasks in STEPS]
    state = _run(*_optimizer(1e-8, 0.1), steps)
    assert _max_difference(state["params"], _numpy_adam(1e-8, 0.1, steps)) < 1e-5
    # The same run with the run's step for every task is another run.
    assert _max_difference(state["params"], _numpy_adam(1e-8, 0.1)) > 1e-2


@pytest.mark.parametrize("eps, weight_decay", [(1e-8, 0.0), (1e-7, 0.1)])
def test_one_global_count_would_miss_the_reference(eps, weight_decay):
    """optax's Adam (one count for the run) through the same freezing: the reference above
    tells it apart, so the test above could catch the bug it guards against."""
    step_size = _optimizer(eps, weight_decay)[1]
    state = _run(optax.scale_by_adam(B1, B2, eps), step_size)
    assert _max_difference(state["params"], _numpy_adam(eps, weight_decay)) > 1e-2


def test_the_learning_rate_follows_the_run_step():
    """A head first sampled at step 4 moves by the schedule at step 4 (Adam's first direction
    is the gradient's sign), though its own count is 1."""
    tx, schedule = make_optimizer(DECAY, learning_rate=PEAK, warmup_steps=WARMUP, clip_norm=None)
    params = jax.tree.map(jnp.asarray, _params())
    state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}
    for t, task in enumerate([TASK_A] * 4 + [TASK_B]):
        before = state
        grads = jax.tree.map(jnp.asarray, _grads(t, USED[task.name]))
        state = apply_gradients(state, grads, tx, schedule, (task,))
    moved = state["params"]["classifiers_b"]["Dense_0"]["kernel"]
    start = before["params"]["classifiers_b"]["Dense_0"]["kernel"]
    g = grads["classifiers_b"]["Dense_0"]["kernel"]
    np.testing.assert_allclose(start - moved, schedule(4) * np.sign(g), rtol=1e-5)
    np.testing.assert_allclose(schedule(4), _learning_rate(4), rtol=1e-6)


def test_eps_is_in_the_denominator():
    """A gradient of size eps takes half a step."""
    tx, _ = make_optimizer(10, learning_rate=1.0, warmup_steps=0, eps=1e-7, clip_norm=None)
    params = {"w": jnp.zeros(3)}
    direction, _ = tx.update({"w": jnp.full(3, 1e-7)}, tx.init(params), params)
    np.testing.assert_allclose(direction["w"], 0.5, rtol=1e-4)


def test_weight_decay_reaches_kernels_only():
    decayed = {
        jax.tree_util.keystr(path)
        for path, leaf in jax.tree_util.tree_leaves_with_path(
            kernel_mask(
                {
                    "encoder": {"attention": {"qkv_kernel": 0, "qkv_bias": 0, "out_kernel": 0}},
                    "ln": {"scale": 0, "bias": 0},
                    "dense": {"kernel": 0, "bias": 0},
                    "moe": {"wi": 0, "bi": 0, "wo": 0, "bo": 0, "router": 0},
                    "embedders_text": {"embedding": 0, "pos": {"axis_0": 0}},
                    "logit_scale": 0,
                }
            )
        )
        if leaf
    }
    assert decayed == {
        "['encoder']['attention']['qkv_kernel']",
        "['encoder']['attention']['out_kernel']",
        "['dense']['kernel']",
        "['moe']['wi']",
        "['moe']['wo']",
        "['moe']['router']",
    }
    assert not is_kernel(())


@pytest.mark.parametrize(
    "binding, value",
    [("eps", 0.0), ("eps", -1e-8), ("eps", "small"), ("weight_decay", -0.1)],
)
def test_bad_values_name_the_binding(binding, value):
    with pytest.raises(ImpError, match=f"make_optimizer.{binding} = "):
        make_optimizer(10, **{binding: value})


def test_the_state_survives_a_checkpoint(tmp_path):
    state = _run(*_optimizer(1e-7, 0.1))
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), state)
    checkpointer = Checkpointer(tmp_path / "ckpt")
    try:
        checkpointer.save(len(STEPS), state, {})
        checkpointer.wait()
        restored, _ = checkpointer.restore(len(STEPS), target)
    finally:
        checkpointer.close()
    assert jax.tree.structure(restored) == jax.tree.structure(state)
    assert _max_difference(restored, state) == 0


SHARDINGS = textwrap.dedent(
    """
    import json, sys
    import jax
    from jax.sharding import PartitionSpec
    from imp.modeling.model import ImpModel
    from imp.partitioning.partitioner import Partitioner
    from imp.training import train_state
    from imp.training.optimizer import make_optimizer

    model = ImpModel(heads=(("a", 3),), d_model=16, num_layers=1, num_heads=2, mlp_dim=32,
                     embed_dim=8, vocab_size=20, vision_patch=(1, 4, 4))
    partitioner = Partitioner(num_partitions=2)
    tx, _ = make_optimizer(10, weight_decay=0.1)
    shardings = train_state.state_shardings(model, tx, partitioner)
    state = train_state.create(model, tx, partitioner, jax.random.key(0), shardings)
    adam = state["opt_state"][1]
    specs = lambda tree: {jax.tree_util.keystr(p): str(x.sharding.spec)
                          for p, x in jax.tree_util.tree_leaves_with_path(tree)}
    json.dump({"params": specs(state["params"]), "mu": specs(adam.mu),
               "count": specs(adam.count)}, sys.stdout)
    """
)


def test_counts_are_replicated_and_moments_sharded_like_the_parameters():
    """On a mesh with a `model` axis the per-parameter counts (int32 []) are replicated."""
    env = {**os.environ, "XLA_FLAGS": with_devices(2)}
    done = subprocess.run(
        [sys.executable, "-c", SHARDINGS], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    specs = json.loads(done.stdout)
    assert specs["mu"] == specs["params"]
    assert any("model" in spec for spec in specs["params"].values())
    assert set(specs["count"].values()) == {str(jax.sharding.PartitionSpec())}
