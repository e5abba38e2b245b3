"""Checkpoint surgery (`imp.modeling.surgery`): tubelet initialisers from an image kernel, position
tables resized, scanned and unrolled layouts, and a whole image model carried into a video
model."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from imp.errors import ImpError
from imp.modeling import surgery
from imp.modeling.embedders import VisionEmbedder
from imp.modeling.model import ImpModel, init_variables

SMALL = dict(d_model=16, num_layers=2, num_heads=2, mlp_dim=32, embed_dim=8, vocab_size=20)


def _params(model):
    return nn.unbox(jax.jit(functools.partial(init_variables, model))(jax.random.key(0)))["params"]


@pytest.mark.parametrize("init", ["inflate", "central_frame"])
def test_a_static_video_gets_the_image_models_patch_embedding(init):
    """Seed 001: on a video of one image repeated, either initialiser gives every temporal
    tubelet exactly the image model's embedding of that image (positions left out)."""
    image_model = VisionEmbedder(16, (2, 8, 8), (1, 4, 4))  # images tiled over 2 frames
    video_model = VisionEmbedder(16, (4, 8, 8), (2, 4, 4))
    image = jax.random.uniform(jax.random.key(1), (3, 1, 16, 16, 3), minval=-1, maxval=1)
    image_params = nn.unbox(image_model.init(jax.random.key(2), image))["params"]
    image_params = jax.tree.map(
        lambda x: jax.random.normal(jax.random.key(3), x.shape), image_params
    )
    image_params["pos"] = jax.tree.map(jnp.zeros_like, image_params["pos"])
    video = jnp.repeat(image, 8, axis=1)
    video_params = nn.unbox(video_model.init(jax.random.key(4), video))["params"]
    video_params = {
        "tubelet": {
            "kernel": surgery.tubelet_kernel(
                surgery.image_kernel(image_params["tubelet"]["kernel"], 2), 4, init
            ),
            "bias": image_params["tubelet"]["bias"],
        },
        "pos": jax.tree.map(jnp.zeros_like, video_params["pos"]),
    }
    expected, _ = image_model.apply({"params": image_params}, image)  # [3, 2 x 2, 16]
    got, _ = video_model.apply({"params": video_params}, video)  # [3, 2 x 2 x 2, 16]
    assert got.shape == (3, 8, 16)
    for t in range(2):
        np.testing.assert_allclose(got[:, 4 * t : 4 * (t + 1)], expected, rtol=1e-5, atol=1e-5)


def test_tubelet_initialisers_by_hand():
    kernel_2d = np.arange(6.0).reshape(3, 2)
    inflated = surgery.tubelet_kernel(kernel_2d, 4, "inflate").reshape(4, 3, 2)
    np.testing.assert_allclose(inflated, np.broadcast_to(kernel_2d / 4, (4, 3, 2)))
    central = surgery.tubelet_kernel(kernel_2d, 4, "central_frame").reshape(4, 3, 2)
    np.testing.assert_array_equal(central[2], kernel_2d)
    assert not central[[0, 1, 3]].any()
    with pytest.raises(ImpError, match="'middle' is not one of"):
        surgery.tubelet_kernel(kernel_2d, 4, "middle")


def test_position_tables_resize_between_row_centres():
    ramp = np.linspace(0.5, 7.5, 8)[:, None] / 8 * np.ones((1, 3))  # row i: its centre
    np.testing.assert_allclose(surgery.resize_positions(ramp, 8), ramp, rtol=1e-6)
    half = surgery.resize_positions(ramp, 4)  # centres 1/8, 3/8, 5/8, 7/8
    np.testing.assert_allclose(half[:, 0], [0.125, 0.375, 0.625, 0.875], rtol=1e-5)


def test_layouts_round_trip_and_run_the_same_model():
    scanned_model = ImpModel(**SMALL, num_experts=2, moe_every=2, heads=(("d", 5),))
    unrolled_model = scanned_model.clone(scan_layers=False)
    flat = surgery.flatten(_params(scanned_model))
    unrolled = surgery.to_layout(flat, scanned=False)
    assert "encoder/segment_0_0/moe_1/moe/wi" in unrolled
    assert set(unrolled) == set(surgery.flatten(_params(unrolled_model)))
    back = surgery.to_layout(unrolled, scanned=True)
    assert set(back) == set(flat)
    for name in flat:
        np.testing.assert_array_equal(back[name], flat[name])
    video = jax.random.normal(jax.random.key(5), (2, 2, 16, 16, 3))
    a = scanned_model.apply({"params": surgery.unflatten(flat)}, {"vision": video}, head="d")
    b = unrolled_model.apply({"params": surgery.unflatten(unrolled)}, {"vision": video}, head="d")
    np.testing.assert_allclose(a["logits"], b["logits"], rtol=1e-5, atol=1e-5)


def test_an_image_model_carried_into_a_video_model_sees_images_the_same():
    """A scanned image model (2x8x8 tubelets, a 10-class head) into an unrolled video model
    (4x8x8 tubelets, its own 40-class head): the encoder is copied, the tubelet kernel
    converted, the old head dropped and the new one kept; on a still image both models compute
    the same tokens. A longer time table in the target is interpolated."""
    source_model = ImpModel(**SMALL, vision_max_grid=(2, 4, 4), heads=(("digits", 10),))
    target_model = ImpModel(
        **SMALL,
        vision_patch=(4, 8, 8),
        vision_max_grid=(2, 4, 4),
        scan_layers=False,
        heads=(("moves", 40),),
    )
    source = surgery.flatten(_params(source_model))
    target = surgery.flatten(_params(target_model))
    values, report = surgery.transfer(target, source, 4, "central_frame")
    params = {**target, **values}
    assert set(values) == set(report["copied"]) | set(report["converted"])
    assert report["converted"] == ["embedders_vision/tubelet/kernel"]
    assert "encoder/segment_0_1/dense_0/mlp/wi/kernel" in report["copied"]
    head = lambda name: [f"classifiers_{name}/Dense_0/{p}" for p in ("bias", "kernel")]  # noqa: E731
    assert sorted(report["kept"]) == head("moves")
    assert report["dropped"] == head("digits")

    image = jax.random.uniform(jax.random.key(6), (2, 1, 16, 16, 3), minval=-1, maxval=1)
    encode = functools.partial(ImpModel.encode, modality="vision", x=image)
    got = target_model.apply({"params": surgery.unflatten(params)}, method=encode)[0]
    expected = source_model.apply({"params": surgery.unflatten(source)}, method=encode)[0]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)

    longer = surgery.flatten(_params(target_model.clone(vision_max_grid=(8, 4, 4))))
    _, report = surgery.transfer(longer, source, 4)
    assert "embedders_vision/pos/axis_0" in report["converted"]
    _, report = surgery.transfer(target, source, 4, "random")  # ViViT's baseline
    assert "embedders_vision/tubelet/kernel" in report["kept"]


def test_vivit_models_2_and_3_start_from_a_joint_model():
    """Seed 001 §3.4: Model 3's spatial attention is the joint model's and its temporal
    attention adds nothing at first (output projection zero), so on a clip of one tubelet in
    time it computes the joint model's tokens; Model 2's spatial encoder is the joint
    encoder, its temporal encoder keeps its initialisation."""
    joint = ImpModel(**SMALL, vision_max_grid=(2, 4, 4))
    source = surgery.flatten(_params(joint))
    model_3 = joint.clone(attention="factorised_self_attention", scan_layers=False)
    target = surgery.flatten(_params(model_3))
    values, report = surgery.transfer(target, source, 2)
    layer = "encoder/segment_0_1/dense_0"
    assert f"{layer}/attention_space/qkv_kernel" in report["converted"]
    assert f"{layer}/ln_attention_space/LayerNorm_0/scale" in report["converted"]
    assert f"{layer}/attention_time/qkv_kernel" in report["kept"]
    assert not np.any(values[f"{layer}/attention_time/out_kernel"])
    assert not [n for n in report["dropped"] if n.startswith("encoder/")]
    clip = jax.random.uniform(jax.random.key(7), (2, 2, 16, 16, 3), minval=-1, maxval=1)
    encode = functools.partial(ImpModel.encode, modality="vision", x=clip)
    got = model_3.apply({"params": surgery.unflatten(target | values)}, method=encode)[0]
    expected = joint.apply({"params": surgery.unflatten(source)}, method=encode)[0]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)

    model_2 = joint.clone(temporal_layers=1)
    target = surgery.flatten(_params(model_2))
    values, report = surgery.transfer(target, source, 2)
    spatial = "encoder/spatial/segment_0/dense_0/mlp/wi/kernel"
    np.testing.assert_array_equal(
        values[spatial], source["encoder/segment_0/dense_0/mlp/wi/kernel"]
    )
    assert "encoder/spatial/ln_final/LayerNorm_0/scale" in report["converted"]
    assert all(n in report["kept"] for n in target if n.startswith("encoder/temporal/"))


def test_a_shape_no_rule_converts_is_named():
    source = surgery.flatten(_params(ImpModel(**SMALL)))
    target = surgery.flatten(_params(ImpModel(**{**SMALL, "mlp_dim": 64})))
    with pytest.raises(ImpError, match=r"parameter encoder/segment_0/dense_0/mlp/wi/bias is "):
        surgery.transfer(target, source, 2)
