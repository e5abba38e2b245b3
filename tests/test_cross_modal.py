"""Cross-modal probes (seed 000 Appendix C): a vision model's embedder converted for
spectrograms and back (`imp.modeling.cross_modal`). With equal grids and a vision time table
of zeros (what the frame average keeps), a spectrogram through the converted model is
encoded exactly as the grey image of the same values through the source model."""

import functools

import flax.linen as nn
import jax
import numpy as np
import pytest

from imp.errors import ImpError
from imp.modeling import cross_modal, surgery
from imp.modeling.model import ImpModel, init_variables

SMALL = dict(
    d_model=16,
    num_layers=2,
    num_heads=2,
    mlp_dim=32,
    embed_dim=8,
    vocab_size=20,
    vision_patch=(2, 8, 8),
    vision_max_grid=(2, 4, 4),
    spectrogram_patch=(8, 8),
    spectrogram_max_grid=(4, 4),
)


def _flat(model, seed):
    params = nn.unbox(jax.jit(functools.partial(init_variables, model))(jax.random.key(seed)))
    flat = surgery.flatten(params["params"])
    for name in flat:  # every table random, so a wrong axis cannot pass
        if "/pos/" in name:
            flat[name] = jax.random.normal(jax.random.key(hash(name) % 1000), flat[name].shape)
    return {name: np.asarray(value) for name, value in flat.items()}


def _encode(model, flat, modality, x):
    encode = functools.partial(ImpModel.encode, modality=modality, x=x)
    return np.asarray(model.apply({"params": surgery.unflatten(flat)}, method=encode)[0])


@pytest.mark.parametrize("positions", ["factorised", "joint"])
@pytest.mark.parametrize("class_token", [False, True])
def test_vision_and_spectrogram_convert_both_ways(positions, class_token):
    model = ImpModel(**SMALL, positions=positions, class_token=class_token)
    flat = _flat(model, 0)
    if positions == "factorised":
        flat["embedders_vision/pos/axis_0"] = np.zeros_like(flat["embedders_vision/pos/axis_0"])
    else:  # every frame's table the same: its mean
        table = flat["embedders_vision/pos/table"]
        flat["embedders_vision/pos/table"] = np.repeat(table[:1], table.shape[0], axis=0)
    spectrogram = np.random.default_rng(1).normal(size=(2, 32, 32)).astype(np.float32)
    grey = np.repeat(spectrogram[:, None, :, :, None], 3, axis=-1)  # one frame, 3 channels

    converted = flat | cross_modal.convert(flat, model, "vision", "spectrogram")
    got = _encode(model, converted, "spectrogram", spectrogram)
    np.testing.assert_allclose(got, _encode(model, flat, "vision", grey), rtol=1e-4, atol=1e-5)

    back = flat | cross_modal.convert(flat, model, "spectrogram", "vision")
    got = _encode(model, back, "vision", grey)
    expected = _encode(model, flat, "spectrogram", spectrogram)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_adaptor_stacks_and_unsupported_pairs():
    model = ImpModel(
        **SMALL, adaptor_layers=1, adaptor_modalities=("image", "video", "spectrogram")
    )
    flat = _flat(model, 2)
    out = cross_modal.convert(flat, model, "vision", "spectrogram")
    name = "adaptors_spectrogram/segment_0/dense_0/mlp/wi/kernel"
    np.testing.assert_array_equal(out[name], flat[name.replace("spectrogram", "image", 1)])
    with pytest.raises(ImpError, match="cross-modal probe vision:waveform: imp converts"):
        cross_modal.convert(flat, model, "vision", "waveform")
    with pytest.raises(ImpError, match=r"vision_patch's height and width \(8, 8\) differ"):
        cross_modal.convert(flat, model.clone(spectrogram_patch=(16, 16)), "vision", "spectrogram")


def test_the_frames_positions_are_averaged():
    """Shifting one of the T frames' position rows by c shifts every converted row by c / T."""
    model = ImpModel(**SMALL, positions="joint")
    flat = _flat(model, 3)
    shifted = dict(flat)
    table = flat["embedders_vision/pos/table"].copy()
    table[1] += 2.0
    shifted["embedders_vision/pos/table"] = table
    name = "embedders_spectrogram/pos/table"
    before = cross_modal.convert(flat, model, "vision", "spectrogram")[name]
    after = cross_modal.convert(shifted, model, "vision", "spectrogram")[name]
    np.testing.assert_allclose(after - before, 2.0 / table.shape[0], rtol=1e-5)
