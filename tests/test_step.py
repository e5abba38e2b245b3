"""Untouched means unchanged: a step on one task leaves other tasks' parameters and their
optimizer state bit-identical; with the switch off, plain Adam moves them on stale momentum."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from imp.modeling.model import ImpModel, init_variables
from imp.tasks.registry import TaskSpec
from imp.training.optimizer import make_optimizer
from imp.training.step import make_train_step

MODEL = ImpModel(
    heads=(("a", 3), ("b", 4)),
    d_model=16,
    num_layers=1,
    num_heads=2,
    mlp_dim=32,
    embed_dim=8,
    vocab_size=20,
    vision_patch=(1, 4, 4),
    head_init="lecun_normal",  # a zero head would pass no gradient to the encoder at first
)
TASK_A = TaskSpec("task_a", "a", "softmax", ("vision",), 10, 4, class_names=("x", "y", "z"))
TASK_B = TaskSpec("task_b", "b", "softmax", ("vision",), 10, 4, class_names=tuple("pqrs"))


def _batch(seed, classes):
    rng = np.random.default_rng(seed)
    return {
        "vision": jnp.asarray(rng.normal(size=(4, 1, 8, 8, 3)), jnp.float32),
        "label": jnp.asarray(rng.integers(classes, size=4), jnp.int32),
    }


@pytest.mark.parametrize("freeze", [True, False])
def test_other_heads_and_their_adam_state(freeze):
    tx, schedule = make_optimizer(10, learning_rate=1e-2, warmup_steps=1)
    params = nn.unbox(init_variables(MODEL, jax.random.key(0)))["params"]
    state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}
    step_a = jax.jit(make_train_step(MODEL, tx, schedule, TASK_A, freeze))
    step_b = jax.jit(make_train_step(MODEL, tx, schedule, TASK_B, freeze))
    state, _ = step_b(state, _batch(0, 4), jax.random.key(0))  # gives head b momentum
    before = jax.tree.map(np.asarray, state)
    state, _ = step_a(state, _batch(1, 3), jax.random.key(1))
    after = jax.tree.map(np.asarray, state)

    head_b = lambda s: s["params"]["classifiers_b"]  # noqa: E731
    mu_b = lambda s: s["opt_state"][1][0].mu["classifiers_b"]  # noqa: E731
    unchanged = all(
        np.array_equal(x, y)
        for x, y in zip(
            jax.tree.leaves(head_b(before)), jax.tree.leaves(head_b(after)), strict=True
        )
    )
    assert unchanged == freeze
    same_mu = all(
        np.array_equal(x, y)
        for x, y in zip(jax.tree.leaves(mu_b(before)), jax.tree.leaves(mu_b(after)), strict=True)
    )
    assert same_mu == freeze
    # The task's own head and the shared encoder always move.
    assert not np.array_equal(
        before["params"]["classifiers_a"]["Dense_0"]["kernel"],
        after["params"]["classifiers_a"]["Dense_0"]["kernel"],
    )
    assert not all(
        np.array_equal(x, y)
        for x, y in zip(
            jax.tree.leaves(before["params"]["encoder"]),
            jax.tree.leaves(after["params"]["encoder"]),
            strict=True,
        )
    )
