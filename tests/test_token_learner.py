"""TokenLearner v1 / v1.1 against numpy, TokenFuser the identity at initialisation, and the
encoder with a TokenLearner after layer k (seed 001)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from imp.errors import ImpError
from imp.modeling.encoder import Encoder
from imp.modeling.model import ImpModel, check_config
from imp.modeling.token_learner import TokenFuser, TokenLearner, TokenLearnerEncoder

X = jax.random.normal(jax.random.key(0), (2, 6, 8))
MASK = jnp.array([[1, 1, 1, 1, 0, 0], [1] * 6], bool)


def _randomised(params, seed):
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return jax.tree.unflatten(
        tree, [jax.random.normal(k, x.shape) for k, x in zip(keys, leaves, strict=True)]
    )


def _gelu(x):
    return np.asarray(jax.nn.gelu(jnp.asarray(x)))


@pytest.mark.parametrize("version", ["v1", "v1.1"])
def test_token_learner_matches_numpy(version):
    """S weight maps from LayerNorm -> Dense -> GELU -> Dense; v1: sigmoid weights, averaged
    over the kept tokens; v1.1: a softmax over the kept tokens, summed."""
    learner = TokenLearner(3, version)
    params = _randomised(nn.unbox(learner.init(jax.random.key(1), X, MASK))["params"], 2)
    got = learner.apply({"params": params}, X, MASK)
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    x = np.asarray(X, np.float64)
    for r in range(2):
        kept = x[r][np.asarray(MASK[r])]  # [n, d]
        mean, var = kept.mean(-1, keepdims=True), kept.var(-1, keepdims=True)
        ln = p["ln"]["LayerNorm_0"]
        h = (kept - mean) / np.sqrt(var + 1e-6) * ln["scale"] + ln["bias"]
        h = _gelu(h @ p["wi"]["kernel"] + p["wi"]["bias"])
        logits = h @ p["wo"]["kernel"] + p["wo"]["bias"]  # [n, S]
        if version == "v1":
            weights = 1 / (1 + np.exp(-logits)) / len(kept)
        else:
            weights = np.exp(logits - logits.max(0)) / np.exp(logits - logits.max(0)).sum(0)
        np.testing.assert_allclose(got[r], weights.T @ kept, rtol=2e-4, atol=2e-5)


def test_token_fuser_is_the_identity_at_initialisation():
    learned = jax.random.normal(jax.random.key(3), (2, 3, 8))
    fuser = TokenFuser()
    params = fuser.init(jax.random.key(4), learned, X)
    np.testing.assert_array_equal(fuser.apply(params, learned, X), X)


def test_the_encoder_learns_tokens_per_frame_and_fuses_them_back():
    """3 frames x 4 positions: after layer 1 each frame becomes 2 tokens (6 in all); with the
    fuser the output is the 12 tokens again, at initialisation exactly the first layer's."""
    x = jax.random.normal(jax.random.key(5), (2, 12, 16))
    mask = jnp.ones((2, 12), bool)
    first, rest = Encoder(1, 2, 32), Encoder(2, 2, 32)
    learned = TokenLearnerEncoder(first, rest, 2)
    params = learned.init(jax.random.key(6), x, mask, (3, 4))
    tokens, kept, _ = learned.apply(params, x, mask, (3, 4))
    assert tokens.shape == (2, 6, 16) and kept.shape == (2, 6)
    fused = TokenLearnerEncoder(first, rest, 2, fuse=True)
    params = fused.init(jax.random.key(6), x, mask, (3, 4))
    tokens, kept, _ = fused.apply(params, x, mask, (3, 4))
    expected, _, _ = first.apply({"params": params["params"]["first"]}, x, mask)
    assert tokens.shape == (2, 12, 16)
    np.testing.assert_allclose(tokens, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(token_learner="v2"), "ImpModel.token_learner = 'v2' is not known"),
        (dict(token_learner="v1", token_learner_layer=4), "after one of layers 1 .. 3"),
        (dict(token_learner="v1", token_learner_layer=2, temporal_layers=1), "not the factor"),
        (
            dict(token_learner="v1", token_learner_layer=1, num_experts=2, moe_every=2),
            r"MoE layers \(the layers before and after the TokenLearner\)",
        ),
    ],
)
def test_token_learner_options_are_checked(fields, message):
    model = ImpModel(num_layers=4, **fields)
    with pytest.raises(ImpError, match=message):
        check_config(model)
