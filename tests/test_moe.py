import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from imp.modeling import moe

# One group of 4 tokens over 2 experts; rows are tokens.
PROBS = np.array([[[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.2, 0.8]]], np.float32)


def test_experts_choose_hand_case():
    """C = round(1.0 * 4 / 2) = 2: expert 0 takes tokens 0, 1; expert 1 takes tokens 3, 2."""
    routing = moe.experts_choose(jnp.asarray(PROBS))
    expected = np.zeros((1, 4, 2, 2))
    expected[0, 0, 0, 0] = expected[0, 1, 0, 1] = 1  # expert 0: slot 0 token 0, slot 1 token 1
    expected[0, 3, 1, 0] = expected[0, 2, 1, 1] = 1  # expert 1: slot 0 token 3, slot 1 token 2
    np.testing.assert_array_equal(routing.dispatch, expected)
    np.testing.assert_allclose(routing.combine, expected * PROBS[..., None], rtol=1e-6)


@pytest.mark.parametrize("capacity_factor", [0.5, 1.0, 2.0])
def test_experts_choose_fills_every_expert_exactly(capacity_factor):
    probs = jax.nn.softmax(jax.random.normal(jax.random.key(0), (3, 16, 4)), -1)
    routing = moe.experts_choose(probs, capacity_factor)
    c = max(1, round(capacity_factor * 16 / 4))
    assert routing.dispatch.shape == (3, 16, 4, c)
    np.testing.assert_array_equal(routing.dispatch.sum(axis=1), np.ones((3, 4, c)))
    chosen = routing.dispatch.sum(-1)  # [G, S, E]
    np.testing.assert_allclose(routing.combine.sum(-1), chosen * probs, rtol=1e-6)
    # Each expert's chosen tokens are its most probable ones.
    for g in range(3):
        for e in range(4):
            top = set(np.argsort(-np.asarray(probs[g, :, e]))[:c])
            assert set(np.nonzero(np.asarray(chosen[g, :, e]))[0]) == top


def _dense_mixture(layer, params, x):
    """Naive reference: every token through every expert, weighted by its router probability."""
    p = params["params"]
    tokens = np.asarray(x).reshape(-1, x.shape[-1])
    probs = np.asarray(jax.nn.softmax(tokens @ p["router"], -1))
    out = np.zeros_like(tokens)
    for e in range(layer.config.num_experts):
        h = np.asarray(nn.gelu(tokens @ p["wi"][e] + p["bi"][e]))
        out += probs[:, e : e + 1] * (h @ p["wo"][e] + p["bo"][e])
    return out.reshape(x.shape)


def test_full_capacity_experts_choose_equals_dense_mixture():
    layer = moe.MoeMlp(moe.MoeConfig(3, capacity_factor=3.0), mlp_dim=8)
    x = jax.random.normal(jax.random.key(1), (2, 5, 6))
    mask = jnp.ones((2, 5), bool)
    params = nn.unbox(layer.init(jax.random.key(2), x, mask))
    y, stats = layer.apply(params, x, mask)
    np.testing.assert_allclose(y, _dense_mixture(layer, params, x), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(stats["expert_fraction"], np.ones(3), rtol=1e-6)
    assert float(stats["dropped_fraction"]) == 0.0


def test_tokens_choose_top1_with_ample_capacity_is_argmax_routing():
    probs = jax.nn.softmax(jax.random.normal(jax.random.key(3), (2, 8, 4)), -1)
    routing = moe.tokens_choose(probs, k=1, capacity_factor=4.0)
    chosen = np.asarray(routing.dispatch.sum(-1))  # [G, S, E]
    np.testing.assert_array_equal(chosen, np.eye(4)[np.asarray(probs).argmax(-1)])
    np.testing.assert_allclose(
        routing.combine.sum(-1), chosen * np.asarray(probs.max(-1))[..., None], rtol=1e-6
    )


def test_tokens_choose_drops_lowest_priority_tokens():
    """All 4 tokens want expert 0, which has capacity C = round(1.0 * 4 / 2) = 2."""
    probs = jnp.asarray([[[0.6, 0.4], [0.7, 0.3], [0.9, 0.1], [0.8, 0.2]]])
    by_position = moe.tokens_choose(probs, k=1).dispatch.sum(axis=(2, 3))[0]
    np.testing.assert_array_equal(by_position, [1, 1, 0, 0])  # first come, first served
    by_priority = moe.tokens_choose(probs, k=1, batch_priority=True).dispatch
    np.testing.assert_array_equal(by_priority.sum(axis=(2, 3))[0], [0, 0, 1, 1])  # most confident
    assert by_priority[0, 2, 0, 0] == 1 and by_priority[0, 3, 0, 1] == 1  # 0.9 first, then 0.8


def test_tokens_choose_top2_second_choices_come_after_all_first_choices():
    probs = jnp.asarray(PROBS)
    routing = moe.tokens_choose(probs, k=2, capacity_factor=1.0)  # C = round(2*4/2) = 4
    np.testing.assert_array_equal(routing.dispatch.sum(-1)[0], np.ones((4, 2)))
    # Expert 0: first choices of tokens 0, 1 in slots 0, 1; second choices of 2, 3 after them.
    np.testing.assert_array_equal(np.argmax(routing.dispatch[0, :, 0], -1), [0, 1, 2, 3])


def test_auxiliary_losses_match_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 6, 3)).astype(np.float32)
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    top1 = np.eye(3)[probs.argmax(-1)].reshape(-1, 3).mean(0)
    expected_lb = 3 * np.sum(top1 * probs.reshape(-1, 3).mean(0))
    np.testing.assert_allclose(moe.load_balancing_loss(jnp.asarray(probs)), expected_lb, rtol=1e-5)
    expected_z = np.mean(np.log(np.exp(logits).sum(-1)) ** 2)
    np.testing.assert_allclose(moe.z_loss(jnp.asarray(logits)), expected_z, rtol=1e-5)


def test_padding_tokens_are_never_processed():
    layer = moe.MoeMlp(moe.MoeConfig(2), mlp_dim=8)
    x = jax.random.normal(jax.random.key(4), (1, 6, 4))
    mask = jnp.array([[1, 1, 1, 1, 0, 0]], bool)
    params = layer.init(jax.random.key(5), x, mask)
    y, stats = layer.apply(params, x, mask)
    np.testing.assert_array_equal(y[0, 4:], 0.0)
    np.testing.assert_allclose(stats["expert_fraction"].sum(), 6 / 4, rtol=1e-6)  # 2 x C=3


@pytest.mark.parametrize("tokens, max_group, groups", [(10, 4, 5), (12, 4, 3), (7, 8, 1)])
def test_num_groups(tokens, max_group, groups):
    assert moe.num_groups(tokens, max_group) == groups


def test_expert_weights_carry_the_expert_axis():
    layer = moe.MoeMlp(moe.MoeConfig(2), mlp_dim=8)
    x = jnp.ones((1, 4, 4))
    specs = nn.get_partition_spec(layer.init(jax.random.key(0), x, jnp.ones((1, 4), bool)))
    assert specs["params"]["wi"] == jax.sharding.PartitionSpec("expert", "embed", "mlp")
    assert specs["params"]["wo"] == jax.sharding.PartitionSpec("expert", "mlp", "embed")


def test_the_router_runs_in_float32_under_bfloat16_compute():
    """IMP's reference code routes in float32; the experts and the output keep bfloat16."""
    layer = moe.MoeMlp(moe.MoeConfig(num_experts=4), mlp_dim=16)
    x = jax.random.normal(jax.random.key(0), (2, 8, 8))
    mask = jnp.ones((2, 8), bool)
    params = nn.unbox(layer.init(jax.random.key(1), x, mask))
    bf16 = jax.tree.map(lambda p: p.astype(jnp.bfloat16), params)
    jaxpr = str(jax.make_jaxpr(lambda p, v: layer.apply(p, v, mask))(bf16, x.astype(jnp.bfloat16)))
    # The logits: one group of 16 tokens x 4 experts.
    logits = [line for line in jaxpr.splitlines() if "[1,16,4] = dot_general" in line]
    assert len(logits) == 1 and ":f32[1,16,4]" in logits[0], logits
    y, _ = layer.apply(bf16, x.astype(jnp.bfloat16), mask)
    assert y.dtype == jnp.bfloat16
