import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from imp.modeling.embedders import FactorisedPositions, VisionEmbedder, drop_tokens
from imp.modeling.encoder import Encoder
from imp.modeling.heads import MlpProjection
from imp.modeling.layers import SelfAttention
from imp.modeling.model import MODALITIES, ImpModel, init_variables
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
    "factorised_self_attention": (dict(attention="factorised_self_attention"), {"segment_0": 4}),
    "factorised_dot_product": (dict(attention="factorised_dot_product"), {"segment_0": 4}),
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

    ((a, _, stats_a), g_scan), ((b, _, stats_b), g_unrolled) = (
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
    ea = model.apply(params, {"text": short})["embedding/text/vision"]
    eb = model.apply(params, {"text": padded})["embedding/text/vision"]
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
    assert out["embedding/spectrogram/text"].shape == (3, 8)
    tokens, mask, _ = model.apply(
        params, "spectrogram", jnp.ones((3, 16, 8)), method=ImpModel.encode
    )
    assert tokens.shape == (3, 8, 16) and mask.all()  # (16 / 4) x (8 / 4) patches


def _layer_norm(x, scale, bias=0.0, eps=1e-6):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * scale + bias


def _attention_reference(p, x, mask, num_heads, qk_layernorm, allowed=None):
    """Naive multi-head attention, head by head, in float64; `allowed[h]` `[length, length]`
    (default: everything) also limits which keys each query of head h sees."""
    x, mask = np.asarray(x, np.float64), np.asarray(mask)
    batch, length, d_model = x.shape
    if allowed is None:
        allowed = np.ones((num_heads, length, length), bool)
    head_dim = d_model // num_heads
    out = np.zeros((batch, length, d_model))
    for b in range(batch):
        for h in range(num_heads):
            q, k, v = (x[b] @ p["qkv_kernel"][:, t, h] + p["qkv_bias"][t, h] for t in range(3))
            if qk_layernorm:
                q = _layer_norm(q, p["q_norm"]["scale"])
                k = _layer_norm(k, p["k_norm"]["scale"])
            logits = q @ k.T / math.sqrt(head_dim)
            logits[:, ~mask[b]] = -np.inf
            logits[~allowed[h]] = -np.inf
            weights = np.exp(logits - logits.max(-1, keepdims=True))
            weights /= weights.sum(-1, keepdims=True)
            out[b] += weights @ v @ p["out_kernel"][h]
    return out + p["out_bias"]


def _randomised(params, seed):
    """Every leaf replaced by normal noise: ones, zeros and shared values hide mistakes."""
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return jax.tree.unflatten(
        tree, [jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves, strict=True)]
    )


@pytest.mark.parametrize("qk_layernorm", [False, True])
def test_attention_matches_a_naive_reference(qk_layernorm):
    """qk-LayerNorm: q and k LayerNormed over the head dimension, per head, with one learned
    scale of [head_dim] (no bias) shared by the heads, before the 1/sqrt(head_dim) scaling."""
    x = jax.random.normal(jax.random.key(4), (2, 5, 12))
    mask = jnp.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
    attention = SelfAttention(3, qk_layernorm)
    params = _randomised(_init(attention, x, mask)["params"], seed=5)
    if qk_layernorm:
        assert params["q_norm"]["scale"].shape == params["k_norm"]["scale"].shape == (4,)
    else:
        assert "q_norm" not in params and "k_norm" not in params
    got = attention.apply({"params": params}, x, mask)
    expected = _attention_reference(jax.tree.map(np.asarray, params), x, mask, 3, qk_layernorm)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_qk_layernorm_reaches_every_encoder_layer():
    model = ImpModel(**SMALL, qk_layernorm=True, num_experts=4, moe_every=3)
    attention = _initialised(model)["params"]["encoder"]["segment_0"]
    for block in ("dense_0", "dense_1", "moe_2"):
        assert attention[block]["attention"]["q_norm"]["scale"].shape == (1, 8)  # [layers, kv]


def test_mlp_head_is_dense_gelu_dense_layernorm_then_normalised():
    pooled = jax.random.normal(jax.random.key(6), (3, 16))
    head = MlpProjection(hidden_dim=10, embed_dim=6)
    p = jax.tree.map(np.asarray, _randomised(_init(head, pooled)["params"], seed=7))
    got = head.apply({"params": p}, pooled)
    x = np.asarray(pooled, np.float64)
    h = x @ p["hidden"]["kernel"] + p["hidden"]["bias"]
    h = 0.5 * h * (1 + np.vectorize(math.erf)(h / math.sqrt(2)))  # exact GELU
    z = h @ p["out"]["kernel"] + p["out"]["bias"]
    z = _layer_norm(z, p["norm"]["scale"], p["norm"]["bias"])
    expected = z / np.linalg.norm(z, axis=-1, keepdims=True)
    assert got.shape == (3, 6)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_mlp_heads_one_per_source_and_target():
    model = ImpModel(**SMALL, contrastive_head="mlp")
    params = _initialised(model)["params"]
    heads = {k for k in params if k.startswith("projections_")}
    pairs = [(s, t) for s in MODALITIES for t in MODALITIES if s != t]
    assert heads == {f"projections_{s}_to_{t}" for s, t in pairs}  # 4 x 3 heads
    inputs = {"vision": jax.random.normal(jax.random.key(8), (2, 2, 32, 32, 3))}
    out = model.apply({"params": params}, inputs)
    assert {k for k in out if k.startswith("embedding/")} == {
        "embedding/vision/waveform",
        "embedding/vision/spectrogram",
        "embedding/vision/text",
    }
    for target in ("waveform", "text"):
        head = MlpProjection(8, 8)
        expected = head.apply(
            {"params": params[f"projections_vision_to_{target}"]}, out["pooled/vision"]
        )
        np.testing.assert_allclose(out[f"embedding/vision/{target}"], expected, rtol=1e-6)
    assert not np.allclose(out["embedding/vision/waveform"], out["embedding/vision/text"])


def test_linear_head_serves_every_target():
    model = ImpModel(**SMALL)
    params = _initialised(model)
    out = model.apply(params, {"text": jnp.array([[3, 4, 5, 0]])})
    for target in ("vision", "waveform"):
        np.testing.assert_array_equal(out[f"embedding/text/{target}"], out["embedding/text/vision"])


def test_per_pair_temperatures_divide_similarities_unclipped():
    """`logit_scale/a/b` = 1 / (relu(T_ab) + 1e-6), one raw T per unordered pair."""
    model = ImpModel(**SMALL, temperature="per_pair", temperature_init=0.25)
    params = _initialised(model)["params"]
    pairs = [(a, b) for a in sorted(MODALITIES) for b in sorted(MODALITIES) if a < b]
    assert {k for k in params if k.startswith("temperature_")} == {
        f"temperature_{a}_{b}" for a, b in pairs
    }
    assert "logit_scale" not in params
    scales = model.apply({"params": params}, method=ImpModel.logit_scales)
    assert set(scales) == {f"logit_scale/{a}/{b}" for a, b in pairs}
    np.testing.assert_allclose(scales["logit_scale/text/vision"], 4.0, rtol=1e-5)
    params = {**params, "temperature_text_vision": 0.05, "temperature_vision_waveform": -3.0}
    scales = model.apply({"params": params}, method=ImpModel.logit_scales)
    np.testing.assert_allclose(scales["logit_scale/text/vision"], 1 / (0.05 + 1e-6), rtol=1e-5)
    np.testing.assert_allclose(scales["logit_scale/vision/waveform"], 1e6, rtol=1e-5)
    np.testing.assert_allclose(scales["logit_scale/text/waveform"], 4.0, rtol=1e-5)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("contrastive_head", "mpl", "did you mean mlp"),
        ("temperature", "per-pair", "did you mean per_pair"),
        ("temperature_init", 0.0, "ImpModel.temperature_init = 0.0"),
        ("qk_layernorm", 1, "ImpModel.qk_layernorm = 1: expected True or False"),
    ],
)
def test_check_config_names_a_bad_head_or_temperature(field, value, message):
    from imp.errors import ImpError
    from imp.modeling.model import check_config

    with pytest.raises(ImpError, match=message):
        check_config(ImpModel(**SMALL, **{field: value}))


# ViViT's factorised attentions (seed 001) on a video of 3 frames x 4 positions, one example
# with its last two tokens padded.
GRID = (3, 4)
FRAME, POSITION = np.divmod(np.arange(12), 4)
SAME_FRAME = FRAME[:, None] == FRAME[None, :]
SAME_POSITION = POSITION[:, None] == POSITION[None, :]
VIDEO_MASK = jnp.array([[1] * 10 + [0] * 2, [1] * 12], bool)


def test_factorised_dot_product_is_space_heads_and_time_heads():
    """Model 4: heads 0-1 equal attention masked to the query's frame, heads 2-3 attention
    masked to its position, concatenated before the output projection."""
    x = jax.random.normal(jax.random.key(7), (2, 12, 16))
    attention = SelfAttention(4, factorised=True)
    params = nn.unbox(attention.init(jax.random.key(0), x, VIDEO_MASK, GRID))["params"]
    params = _randomised(params, seed=8)
    got = attention.apply({"params": params}, x, VIDEO_MASK, GRID)
    allowed = np.stack([SAME_FRAME] * 2 + [SAME_POSITION] * 2)
    p = jax.tree.map(np.asarray, params)
    expected = _attention_reference(p, x, VIDEO_MASK, 4, False, allowed)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_factorised_self_attention_is_a_frame_step_then_a_position_step():
    """Model 3: x + attention within the frame (its own weights and LayerNorm), then + attention
    along the position, then the MLP, each step equal to joint attention under that mask."""
    from imp.modeling.encoder import EncoderBlock

    x = jax.random.normal(jax.random.key(9), (2, 12, 16))
    block = EncoderBlock(2, 32, attention="factorised_self_attention", grid=GRID)
    params = _randomised(_init(block, x, VIDEO_MASK)["params"], seed=10)
    got, _ = block.apply({"params": params}, x, VIDEO_MASK)
    p = jax.tree.map(np.asarray, params)

    def ln(name, h):
        norm = p[name]["LayerNorm_0"]
        return _layer_norm(h, norm["scale"], norm["bias"], eps=1e-6)

    h = np.asarray(x, np.float64)
    for axis, allowed in (("space", SAME_FRAME), ("time", SAME_POSITION)):
        attention = p[f"attention_{axis}"]
        h = h + _attention_reference(
            attention, ln(f"ln_attention_{axis}", h), VIDEO_MASK, 2, False, np.stack([allowed] * 2)
        )
    mlp = p["mlp"]
    hidden = ln("ln_mlp", h) @ mlp["wi"]["kernel"] + mlp["wi"]["bias"]
    gelu = jax.nn.gelu(hidden)
    expected = h + np.asarray(gelu) @ mlp["wo"]["kernel"] + mlp["wo"]["bias"]
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-3)


def test_factorised_encoder_is_a_vit_per_frame_then_a_temporal_encoder():
    """Model 2: each frame's tokens through the spatial encoder alone (a plain image ViT on
    that frame), averaged, and the frames' tokens through the temporal encoder."""
    from imp.modeling.factorised_encoder import FactorisedEncoder
    from imp.modeling.heads import masked_mean

    x = jax.random.normal(jax.random.key(12), (2, 12, 16))
    spatial, temporal = Encoder(2, 2, 32), Encoder(1, 2, 32)
    encoder = FactorisedEncoder(spatial, temporal)
    params = nn.unbox(encoder.init(jax.random.key(0), x, VIDEO_MASK, GRID))["params"]
    params = _randomised(params, seed=13)
    tokens, mask, _ = encoder.apply({"params": params}, x, VIDEO_MASK, GRID)
    frames = []
    for f in range(GRID[0]):
        x_f, mask_f = x[:, 4 * f : 4 * f + 4], VIDEO_MASK[:, 4 * f : 4 * f + 4]
        h, _, _ = spatial.apply({"params": params["spatial"]}, x_f, mask_f)
        frames.append(masked_mean(h, mask_f))
    expected, _, _ = temporal.apply(
        {"params": params["temporal"]}, jnp.stack(frames, 1), jnp.ones((2, 3), bool)
    )
    assert tokens.shape == (2, 3, 16) and bool(mask.all())
    np.testing.assert_allclose(tokens, expected, rtol=1e-4, atol=1e-4)


# The video encoders of seed 001 at test size: each must trace under the mesh's logical axis
# rules (a parameter's logical names must match its rank as created, e.g. inside DenseGeneral),
# for a video, a still image (one frame) and a text.
VIDEO_ENCODERS = {
    "factorised encoder": dict(temporal_layers=1),
    "factorised self-attention": dict(attention="factorised_self_attention"),
    "factorised dot-product": dict(attention="factorised_dot_product"),
    "token learner": dict(token_learner="v1.1", token_learner_layer=1),
    "token learner, fused": dict(token_learner="v1", token_learner_layer=1, token_fuser=True),
    "mtv": dict(views=((4, 8, 8), (2, 8, 8)), view_widths=(8, 16), view_layers=2),
}


@pytest.mark.parametrize("name", sorted(VIDEO_ENCODERS))
def test_video_encoders_trace_every_modality_under_the_logical_axis_rules(name):
    from imp.partitioning.partitioner import Partitioner

    model = ImpModel(**{**SMALL, "num_layers": 2}, **VIDEO_ENCODERS[name], heads=(("d", 4),))
    partitioner = Partitioner()

    def outputs(key, video, image, text):
        params = nn.unbox(init_variables(model, key))
        return (
            model.apply(params, {"vision": video}, head="d")["logits"],
            model.apply(params, {"vision": image}, head="d")["logits"],
            model.apply(params, {"text": text})["embedding/text/vision"],
        )

    inputs = (
        jax.ShapeDtypeStruct((2, 8, 16, 16, 3), jnp.float32),
        jax.ShapeDtypeStruct((2, 1, 16, 16, 3), jnp.float32),
        jax.ShapeDtypeStruct((2, 5), jnp.int32),
    )
    with jax.set_mesh(partitioner.mesh), nn.logical_axis_rules(partitioner.rules):
        lowered = jax.jit(outputs).lower(jax.random.key(0), *inputs)  # traced, not compiled
    assert [o.shape for o in lowered.out_info] == [(2, 4), (2, 4), (2, 8)]
