import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from imp.modeling.embedders import FactorisedPositions, VisionEmbedder, drop_tokens
from imp.modeling.encoder import Encoder
from imp.modeling.model import ImpModel, init_variables
from imp.modeling.moe import MoeConfig

SMALL = dict(d_model=16, num_layers=3, num_heads=2, mlp_dim=32, embed_dim=8, vocab_size=20)


def _initialised(model: ImpModel) -> dict:
    """Every parameter of `model`, initialised by one compiled call."""
    return nn.unbox(jax.jit(functools.partial(init_variables, model))(jax.random.key(0)))


def _init(model, *inputs):
    return nn.unbox(jax.jit(model.init)(jax.random.key(0), *inputs))


def _scanned_to_unrolled(params, repeats):
    """`segment_j` stacked over repeats -> `segment_j_r` per repeat."""
    out = {k: v for k, v in params.items() if not k.startswith("segment_")}
    for name, stacked in params.items():
        if name.startswith("segment_"):
            for r in range(repeats[name]):
                out[f"{name}_{r}"] = jax.tree.map(lambda x, r=r: x[r], stacked)
    return out


ENCODERS = {
    "dense": (dict(), {"segment_0": 4}),
    "moe_every_2": (dict(moe=MoeConfig(4), moe_every=2), {"segment_0": 2}),
    "moe_last_1": (
        dict(moe=MoeConfig(4, "tokens_choose"), moe_last=1),
        {"segment_0": 3, "segment_1": 1},
    ),
}


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_scan_equals_unrolled_outputs_and_grads(name):
    kwargs, repeats = ENCODERS[name]
    x = jax.random.normal(jax.random.key(1), (2, 5, 16))
    mask = jnp.array([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]], bool)
    scanned = Encoder(4, 2, 32, scan_layers=True, **kwargs)
    unrolled = Encoder(4, 2, 32, scan_layers=False, **kwargs)
    params = _init(scanned, x, mask)["params"]
    mapped = _scanned_to_unrolled(params, repeats)

    @functools.partial(jax.jit, static_argnums=0)
    def outputs_and_grads(model, p):
        def loss(q):
            return (model.apply({"params": q}, x, mask)[0] ** 2).sum()

        return model.apply({"params": p}, x, mask), jax.grad(loss)(p)

    ((a, stats_a), g_scan), ((b, stats_b), g_unrolled) = (
        outputs_and_grads(scanned, params),
        outputs_and_grads(unrolled, mapped),
    )
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    for key in stats_a:
        np.testing.assert_allclose(stats_a[key], stats_b[key], rtol=1e-5, atol=1e-6)
    g_scan = _scanned_to_unrolled(g_scan, repeats)
    assert jax.tree.structure(g_scan) == jax.tree.structure(g_unrolled)
    for a, b in zip(jax.tree.leaves(g_scan), jax.tree.leaves(g_unrolled), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=5e-5)  # key-bias grads are 0 + noise


@pytest.mark.parametrize(
    "policy, scan",
    # Every policy under scan (how the models run); `full` unrolled too (there remat keeps
    # common-subexpression elimination from undoing it).
    [("full", True), ("full", False), ("dots_saveable", True), ("minimal", True)],
)
def test_remat_changes_nothing_numerically(policy, scan):
    x = jax.random.normal(jax.random.key(2), (2, 6, 16))
    mask = jnp.ones((2, 6), bool)
    plain = Encoder(3, 2, 32, scan_layers=scan)
    remat = Encoder(3, 2, 32, scan_layers=scan, remat_policy=policy)
    params = _init(plain, x, mask)

    def grads(model):
        return jax.jit(jax.grad(lambda p: (model.apply(p, x, mask)[0] ** 2).sum()))(params)

    for a, b in zip(jax.tree.leaves(grads(plain)), jax.tree.leaves(grads(remat)), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_text_padding_does_not_change_real_tokens():
    model = ImpModel(**SMALL)
    params = _initialised(model)
    short = jnp.array([[3, 4, 5, 0]])
    padded = jnp.array([[3, 4, 5, 0, 0, 0, 0, 0]])
    a = model.apply(params, "text", short, method=ImpModel.encode)[0][:, :3]
    b = model.apply(params, "text", padded, method=ImpModel.encode)[0][:, :3]
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    ea = model.apply(params, {"text": short})["embedding/text"]
    eb = model.apply(params, {"text": padded})["embedding/text"]
    np.testing.assert_allclose(ea, eb, rtol=1e-5, atol=1e-6)


def test_positions_follow_token_coordinates():
    """A grid at a new resolution reads the tables at its own (t, h, w) coordinates."""
    module = FactorisedPositions(4, (3, 5, 6))
    coords = jnp.array([[0, 0, 0], [2, 4, 5], [1, 3, 0]])
    params = module.init(jax.random.key(0), coords)
    tables = [nn.unbox(params)["params"][f"axis_{a}"] for a in range(3)]
    expected = np.stack([sum(tables[a][c[a]] for a in range(3)) for c in np.asarray(coords)])
    np.testing.assert_allclose(module.apply(params, coords), expected, rtol=1e-6)


def test_vision_embedder_tiles_stills_and_orders_tubelets():
    embedder = VisionEmbedder(8, patch=(2, 4, 4), max_grid=(4, 4, 4))
    params = embedder.init(jax.random.key(0), jnp.zeros((1, 2, 8, 8, 3)))
    still = jax.random.normal(jax.random.key(1), (1, 1, 8, 8, 3))
    tokens, mask = embedder.apply(params, still)
    assert tokens.shape == (1, 4, 8) and mask.all()  # one tubelet deep, 2 x 2 spatially
    tiled, _ = embedder.apply(params, jnp.concatenate([still, still], axis=1))
    np.testing.assert_allclose(tokens, tiled, rtol=1e-6)


def test_drop_tokens_keeps_order_and_positions():
    tokens = jnp.arange(10, dtype=jnp.float32).reshape(1, 10, 1) * jnp.ones((2, 10, 3))
    kept, mask = drop_tokens(tokens, jnp.ones((2, 10), bool), 0.6, jax.random.key(0))
    assert kept.shape == (2, 4, 3) and mask.shape == (2, 4)
    for row in np.asarray(kept[..., 0]):
        assert np.all(np.diff(row) > 0) and set(row) <= set(range(10))


def test_droptoken_keeps_a_subset_of_positioned_tokens_in_training_only():
    model = ImpModel(**SMALL, vision_patch=(1, 4, 4))
    params = _initialised(model)
    video = jax.random.normal(jax.random.key(3), (2, 2, 8, 8, 3))  # 2 x 2 x 2 = 8 tokens
    embedded, _ = model.apply(params, video, method=lambda m, v: m.embedders["vision"](v))
    kept, _ = drop_tokens(embedded, jnp.ones((2, 8), bool), 0.75, jax.random.key(7))
    assert kept.shape == (2, 2, 16)
    for b in range(2):  # every kept token is one of the example's positioned tokens
        distances = np.abs(np.asarray(embedded[b])[None] - np.asarray(kept[b])[:, None]).sum(-1)
        assert (distances.min(1) < 1e-6).all()
    rngs = {"droptoken": jax.random.key(7)}
    train = model.apply(params, "vision", video, 0.75, True, method=ImpModel.encode, rngs=rngs)
    evaluation = model.apply(params, "vision", video, 0.75, False, method=ImpModel.encode)
    assert train[0].shape == (2, 2, 16) and evaluation[0].shape == (2, 8, 16)


def test_spectrogram_patches_and_positions():
    model = ImpModel(**SMALL, spectrogram_patch=(4, 4), spectrogram_max_grid=(8, 4))
    params = _initialised(model)
    out = model.apply(params, {"spectrogram": jnp.ones((3, 16, 8))})
    assert out["embedding/spectrogram"].shape == (3, 8)
    tokens, mask, _ = model.apply(
        params, "spectrogram", jnp.ones((3, 16, 8)), method=ImpModel.encode
    )
    assert tokens.shape == (3, 8, 16) and mask.all()  # (16 / 4) x (8 / 4) patches
