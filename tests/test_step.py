"""Untouched means unchanged: a step on one task leaves other tasks' parameters and their
optimizer state bit-identical; with the switch off, plain Adam moves them on stale momentum."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from imp.modeling.model import ImpModel, init_variables
from imp.tasks.spec import TaskSpec
from imp.training.optimizer import make_optimizer
from imp.training.step import (
    TaskLoss,
    make_apply_step,
    make_grad_step,
    make_gradient_similarity,
    make_train_step,
)

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
LOSS = TaskLoss()


def _batch(seed, classes):
    rng = np.random.default_rng(seed)
    return {
        "vision": jnp.asarray(rng.normal(size=(4, 1, 8, 8, 3)), jnp.float32),
        "label": jnp.asarray(rng.integers(classes, size=4), jnp.int32),
    }


@pytest.mark.parametrize("freeze", [True, False])
def test_other_heads_and_their_adam_state(freeze):
    tx, schedule = make_optimizer(10, learning_rate=1e-2, warmup_steps=1)
    params = _params()
    state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}
    step_a = jax.jit(make_train_step(MODEL, tx, schedule, [TASK_A], LOSS, freeze))
    step_b = jax.jit(make_train_step(MODEL, tx, schedule, [TASK_B], LOSS, freeze))
    state, _ = step_b(state, {"task_b": _batch(0, 4)}, jax.random.key(0))  # head b momentum
    before = jax.tree.map(np.asarray, state)
    state, _ = step_a(state, {"task_a": _batch(1, 3)}, jax.random.key(1))
    after = jax.tree.map(np.asarray, state)

    head_b = lambda s: s["params"]["classifiers_b"]  # noqa: E731
    mu_b = lambda s: s["opt_state"][1].mu["classifiers_b"]  # noqa: E731
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


TASK_VT = TaskSpec("vt", "vt", "nce", ("vision", "text"), 10, 4, text_length=4, vocab_size=20)
TASK_VW = TaskSpec("vw", "vw", "nce", ("vision", "waveform"), 10, 4, num_samples=256)
# (head and temperature options, what a vision-text step must move, what it must not touch)
CONTRASTIVE = {
    "linear_clip": (
        dict(contrastive_head="linear", temperature="clip"),
        ("projections_vision", "projections_text", "logit_scale"),
        ("projections_waveform", "embedders_waveform"),
    ),
    "mlp_per_pair": (
        dict(contrastive_head="mlp", temperature="per_pair"),
        ("projections_vision_to_text", "projections_text_to_vision", "temperature_text_vision"),
        (
            "projections_vision_to_waveform",
            "projections_waveform_to_vision",
            "temperature_vision_waveform",
            "projections_text_to_waveform",
            "embedders_waveform",
        ),
    ),
}


def _contrastive_batch(seed, task):
    rng = np.random.default_rng(seed)
    batch = {"vision": jnp.asarray(rng.normal(size=(4, 1, 8, 8, 3)), jnp.float32)}
    if "text" in task.modalities:
        batch["text"] = jnp.asarray(rng.integers(1, 20, size=(4, 4)), jnp.int32)
    if "waveform" in task.modalities:
        batch["waveform"] = jnp.asarray(rng.normal(size=(4, 256)), jnp.float32)
    return batch


@pytest.mark.parametrize("name", sorted(CONTRASTIVE))
def test_a_contrastive_step_moves_only_its_pair_heads_and_temperature(name):
    """A vision-waveform step gives the vision-waveform heads and temperature Adam momentum;
    the next step, vision-text, leaves them and their momentum bit-identical."""
    options, moved, kept = CONTRASTIVE[name]
    model = MODEL.clone(**options)
    tx, schedule = make_optimizer(10, learning_rate=1e-2, warmup_steps=1)
    params = jax.jit(lambda key: nn.unbox(init_variables(model, key))["params"])(jax.random.key(0))
    state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}
    step_vw = jax.jit(make_train_step(model, tx, schedule, [TASK_VW], LOSS))
    step_vt = jax.jit(make_train_step(model, tx, schedule, [TASK_VT], LOSS))
    state, _ = step_vw(state, {"vw": _contrastive_batch(0, TASK_VW)}, jax.random.key(0))
    before = jax.tree.map(np.asarray, state)
    state, metrics = step_vt(state, {"vt": _contrastive_batch(1, TASK_VT)}, jax.random.key(1))
    after = jax.tree.map(np.asarray, state)

    def same(tree_a, tree_b):
        pairs = zip(jax.tree.leaves(tree_a), jax.tree.leaves(tree_b), strict=True)
        return all(np.array_equal(x, y) for x, y in pairs)

    mu = lambda s: s["opt_state"][1].mu  # noqa: E731
    assert set(moved) | set(kept) <= set(after["params"])
    for key in kept:
        assert same(before["params"][key], after["params"][key]), key
        assert same(mu(before)[key], mu(after)[key]), key
    for key in moved:
        assert not same(before["params"][key], after["params"][key]), key
    assert set(k for k in metrics if k.startswith("temperature/")) == {"temperature/text_vision"}


@functools.cache
def _params():
    """The model's initial parameters (one compiled init for every test)."""
    return jax.jit(lambda key: nn.unbox(init_variables(MODEL, key))["params"])(jax.random.key(0))


def _fresh_state(tx):
    params = _params()
    return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}


def _assert_trees_close(a, b, **tolerance):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), **tolerance)


def test_summed_and_accumulated_equal_a_hand_summed_update():
    """One step of each baseline == Adam applied to grad(L_a) + grad(L_b), computed by hand."""
    tx, schedule = make_optimizer(10, learning_rate=1e-2, warmup_steps=1)
    batches = {"task_a": _batch(1, 3), "task_b": _batch(2, 4)}
    rng = jax.random.key(3)
    state = _fresh_state(tx)

    @jax.jit
    def by_hand(state):
        grads = [
            jax.grad(
                lambda p, t=t, i=i: LOSS(MODEL, t, p, batches[t.name], jax.random.fold_in(rng, i))[
                    0
                ]
            )(state["params"])
            for i, t in enumerate((TASK_A, TASK_B))
        ]
        total = jax.tree.map(jnp.add, *grads)
        direction, _ = tx.update(total, state["opt_state"], state["params"])
        updates = schedule.update(direction, state["params"], state["step"])
        return optax.apply_updates(state["params"], updates)

    reference = by_hand(state)

    summed, _ = jax.jit(make_train_step(MODEL, tx, schedule, [TASK_A, TASK_B], LOSS))(
        _fresh_state(tx), batches, rng
    )
    _assert_trees_close(summed["params"], reference, rtol=1e-5, atol=1e-6)

    grad_a = jax.jit(make_grad_step(MODEL, TASK_A, LOSS))
    grad_b = jax.jit(make_grad_step(MODEL, TASK_B, LOSS))
    fresh = _fresh_state(tx)
    accumulated_grads = jax.tree.map(
        jnp.add,
        grad_a(fresh["params"], batches["task_a"], jax.random.fold_in(rng, 0))[0],
        grad_b(fresh["params"], batches["task_b"], jax.random.fold_in(rng, 1))[0],
    )
    accumulated, _ = jax.jit(make_apply_step(tx, schedule, [TASK_A, TASK_B]))(
        fresh, accumulated_grads
    )
    _assert_trees_close(accumulated["params"], reference, rtol=1e-5, atol=1e-6)


def test_non_finite_step_changes_nothing_but_the_counters():
    """A skipped step keeps parameters and Adam's state; the step counter, which the learning
    rate follows, advances, so the next step applies the next step's rate (warm-up of one
    step: the rate is 0 at step 0 and 1e-2 from step 1)."""
    tx, schedule = make_optimizer(10, learning_rate=1e-2, warmup_steps=1)
    step = jax.jit(make_train_step(MODEL, tx, schedule, [TASK_A], LOSS))
    state = _fresh_state(tx)
    before = jax.tree.map(np.asarray, state)
    batch = _batch(1, 3)
    broken = {**batch, "vision": batch["vision"].at[0, 0, 0, 0, 0].set(jnp.nan)}
    after, metrics = step(state, {"task_a": broken}, jax.random.key(0))
    assert bool(metrics["skipped"]) and int(after["step"]) == 1
    _assert_trees_close(after["params"], before["params"], rtol=0, atol=0)
    _assert_trees_close(after["opt_state"], before["opt_state"], rtol=0, atol=0)
    resumed, metrics = step(after, {"task_a": batch}, jax.random.key(1))
    assert float(metrics["learning_rate"]) == pytest.approx(1e-2)
    moved = max(
        float(np.abs(np.asarray(a) - b).max())
        for a, b in zip(
            jax.tree.leaves(resumed["params"]), jax.tree.leaves(before["params"]), strict=True
        )
    )
    assert moved > 1e-3  # the rate of step 1, not step 0's zero


def test_task_lr_multiplier_scales_the_update():
    import dataclasses

    tx, schedule = make_optimizer(10, learning_rate=1e-2, warmup_steps=1)
    batches = {"task_a": _batch(1, 3)}
    rng = jax.random.key(0)
    start = jax.tree.map(np.asarray, _fresh_state(tx))
    one, _ = jax.jit(make_train_step(MODEL, tx, schedule, [TASK_A], LOSS))(
        _fresh_state(tx), batches, rng
    )
    half_task = dataclasses.replace(TASK_A, lr_multiplier=0.5)
    half, _ = jax.jit(make_train_step(MODEL, tx, schedule, [half_task], LOSS))(
        _fresh_state(tx), batches, rng
    )
    delta = lambda s: jax.tree.map(lambda x, y: np.asarray(x) - y, s["params"], start["params"])  # noqa: E731
    _assert_trees_close(
        delta(half), jax.tree.map(lambda d: 0.5 * d, delta(one)), rtol=1e-4, atol=1e-7
    )


def test_bfloat16_compute_runs_the_model_in_bfloat16_and_keeps_float32_parameters():
    """The model's matmuls run in bfloat16 (seen in the traced step), parameters and loss stay
    float32, and the result is close to, but not the same as, the float32 step's."""
    tx, schedule = make_optimizer(10, learning_rate=1e-2, warmup_steps=1)
    batches = {"task_a": _batch(1, 3)}
    steps = {
        dtype: make_train_step(MODEL, tx, schedule, [TASK_A], TaskLoss(compute_dtype=dtype))
        for dtype in ("float32", "bfloat16")
    }
    dots = {
        dtype: [
            str(eqn.outvars[0].aval.dtype)
            for eqn in jax.make_jaxpr(step)(_fresh_state(tx), batches, jax.random.key(0)).eqns
            for eqn in _all_eqns(eqn)
            if eqn.primitive.name == "dot_general"
        ]
        for dtype, step in steps.items()
    }
    assert dots["float32"] and set(dots["float32"]) == {"float32"}
    assert dots["bfloat16"].count("bfloat16") > len(dots["bfloat16"]) // 2
    (reference, ref_metrics), (state, metrics) = (
        jax.jit(steps[d])(_fresh_state(tx), batches, jax.random.key(0))
        for d in ("float32", "bfloat16")
    )
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state["params"]))
    assert metrics["loss"].dtype == jnp.float32
    assert metrics["loss"] != ref_metrics["loss"]  # bfloat16 rounding shows
    np.testing.assert_allclose(metrics["loss"], ref_metrics["loss"], rtol=2e-2)
    _assert_trees_close(state["params"], reference["params"], rtol=0.1, atol=2e-3)


def _all_eqns(eqn):
    """`eqn` and the equations of every jaxpr nested in it (scan bodies, remat, pjit)."""
    yield eqn
    for param in eqn.params.values():
        inner = getattr(param, "jaxpr", param)
        for sub in getattr(inner, "eqns", []):
            yield from _all_eqns(sub)


def test_loss_weight_scales_the_gradient_not_the_reported_loss():
    import dataclasses

    params = _params()
    batch, rng = _batch(1, 3), jax.random.key(0)
    double = dataclasses.replace(TASK_A, loss_weight=2.0)

    def value_and_grad(task):
        return jax.jit(
            jax.value_and_grad(lambda p: LOSS(MODEL, task, p, batch, rng), has_aux=True)
        )(params)

    (one, m_one), g_one = value_and_grad(TASK_A)
    (two, m_two), g_two = value_and_grad(double)
    assert float(two) == pytest.approx(2 * float(one), rel=1e-6)
    assert float(m_two["loss"]) == pytest.approx(float(m_one["loss"]), rel=1e-6)
    _assert_trees_close(g_two, jax.tree.map(lambda g: 2 * g, g_one), rtol=1e-5, atol=1e-8)


def test_gradient_similarity_is_the_cosine_of_encoder_gradients():
    params = _params()
    batches = {"task_a": _batch(1, 3), "task_b": _batch(2, 4)}
    rng = jax.random.key(5)
    similarity = jax.jit(make_gradient_similarity(MODEL, [TASK_A, TASK_B], LOSS))
    got = np.asarray(similarity(params, batches, rng))
    flat = []
    for task in (TASK_A, TASK_B):
        loss = jax.jit(jax.grad(lambda p, t=task: LOSS(MODEL, t, p, batches[t.name], rng)[0]))
        grads = loss(params)
        flat.append(np.concatenate([np.ravel(g) for g in jax.tree.leaves(grads["encoder"])]))
    a, b = flat
    cosine = a @ b / np.linalg.norm(a) / np.linalg.norm(b)
    np.testing.assert_allclose(got, [[1.0, cosine], [cosine, 1.0]], rtol=1e-4, atol=1e-6)
    assert abs(cosine) < 0.999  # two different tasks: not trivially aligned


def test_a_mixup_task_trains_on_the_mixed_batch():
    """With `mixup`, the task's loss is the plain loss of the batch mixed by
    `objectives.mixup` (inputs and one-hot labels, the step's rng split for it)."""
    import dataclasses

    from imp import objectives

    params = _params()
    batch, rng = _batch(2, 3), jax.random.key(4)
    mixing = dataclasses.replace(TASK_A, mixup=0.3)
    got, _ = jax.jit(lambda p: LOSS(MODEL, mixing, p, batch, rng))(params)
    _, mix_rng = jax.random.split(rng)
    one_hot = jax.nn.one_hot(batch["label"], 3)
    inputs, targets, _ = objectives.mixup(mix_rng, {"vision": batch["vision"]}, one_hot, 0.3)
    logits = MODEL.apply({"params": params}, inputs, head="a", train=True)["logits"]
    expected = optax.softmax_cross_entropy(logits, targets).mean()
    plain, _ = LOSS(MODEL, TASK_A, params, batch, rng)
    assert float(got) == pytest.approx(float(expected), rel=1e-5)
    assert abs(float(got) - float(plain)) > 1e-3


def test_stochastic_depth_drops_whole_branches_and_keeps_the_expectation():
    """`drop_path`: each example's branch is 0 or scaled by 1 / (1 - rate), dropped at the
    rate, and its mean over draws is the branch; a stochastic-depth task trains (finite
    gradients that differ from the plain task's) and evaluation is unchanged."""
    import dataclasses

    from imp.modeling.encoder import drop_path

    branch = jnp.arange(1.0, 7.0).reshape(6, 1)
    draws = jax.vmap(lambda k: drop_path(branch, 0.3, k))(jax.random.split(jax.random.key(0), 4000))
    values = np.asarray(draws)[..., 0]
    assert np.all((values == 0) | np.isclose(values, np.arange(1.0, 7.0) / 0.7))
    assert np.mean(values == 0) == pytest.approx(0.3, abs=0.02)
    np.testing.assert_allclose(values.mean(0), np.arange(1.0, 7.0), rtol=0.05)

    params = _params()
    batch, rng = _batch(3, 3), jax.random.key(5)
    deep = dataclasses.replace(TASK_A, stochastic_depth=0.5)
    grad = jax.jit(jax.grad(lambda p, t: LOSS(MODEL, t, p, batch, rng)[0]), static_argnums=1)
    g_deep, g_plain = grad(params, deep), grad(params, TASK_A)
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(g_deep))
    differences = jax.tree.leaves(
        jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), g_deep, g_plain)
    )
    assert max(differences) > 1e-4
    evaluated = MODEL.apply({"params": params}, {"vision": batch["vision"]}, head="a")
    again = MODEL.apply({"params": params}, {"vision": batch["vision"]}, head="a", drop_path=0.5)
    np.testing.assert_array_equal(evaluated["logits"], again["logits"])  # not training
