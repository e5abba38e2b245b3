"""ViT checkpoints of other frameworks (`imp.modeling.readers`) against timm's own features.

The fixtures in `tests/fixtures/vit/` (written by its `make.py` with timm and torch) hold a
small random timm ViT's state_dict as safetensors and `torch.save`, two random flax ViTs in
big_vision's and AugReg's `.npz` names, and timm's `forward_features` of each on two images
(the `.npz` ones loaded by timm's own loader). Our encoder, given what the readers made of
each file, must reproduce those features. With timm installed (the `reference` extra), the
last test builds fresh random timm ViTs of other shapes and compares live.
"""

import importlib.util
import json
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import flax.linen as nn
import jax
import numpy as np
import pytest

from imp.errors import ImpError
from imp.modeling import readers, surgery
from imp.modeling.model import ImpModel, init_variables
from imp.training.initialise import InitFrom

FIXTURES = Path(__file__).parent / "fixtures" / "vit"
VIT = dict(
    d_model=32,
    num_layers=2,
    num_heads=4,
    mlp_dim=64,
    vision_patch=(1, 8, 8),
    vision_max_grid=(1, 4, 4),
    positions="joint",
    class_token=True,
    pool="class_token",
    gelu="exact",  # timm's, the reference's
)


def features(foreign: dict, images: np.ndarray, **overrides) -> tuple[np.ndarray, dict]:
    """Our encoder's vision tokens of `images` `[b, h, w, 3]` with the parameters `foreign`
    carried in by `surgery.transfer`, and its report."""
    model = ImpModel(**{**VIT, **overrides})
    params = nn.unbox(init_variables(model, jax.random.key(0))["params"])
    flat = surgery.flatten(params)
    values, report = surgery.transfer(flat, foreign, model.vision_patch[0])
    params = surgery.unflatten(flat | values)
    tokens, _, _ = model.apply(
        {"params": params}, "vision", images[:, None], method=ImpModel.encode
    )
    return np.asarray(tokens), report


@pytest.fixture(scope="module")
def reference():
    with np.load(FIXTURES / "reference.npz") as data:
        return dict(data)


@pytest.mark.parametrize(
    "file, key",
    [
        ("timm_vit.safetensors", "timm"),
        ("timm_vit.pth", "timm"),
        ("big_vision_vit.npz", "big_vision"),
        ("augreg_vit.npz", "augreg"),
    ],
)
def test_our_encoder_reproduces_timm_on_each_format(reference, file, key):
    foreign = readers.read(FIXTURES / file, num_heads=4)
    got, report = features(foreign.params, reference["images"])
    np.testing.assert_allclose(got, reference[key], atol=2e-5, rtol=1e-5)
    vision_path = ("embedders_vision/", "encoder/", "class_tokens_vision/")
    assert not [n for n in report["kept"] if n.startswith(vision_path)]
    assert report["dropped"] == [] and foreign.gelu == ("exact" if key == "timm" else "tanh")
    assert foreign.skipped == (
        ("head.bias", "head.weight") if key == "timm" else ("head/bias", "head/kernel")
    )


def test_the_formats_agree_and_layouts_convert(reference):
    safetensors = readers.read(FIXTURES / "timm_vit.safetensors", 4).params
    pth = readers.read(FIXTURES / "timm_vit.pth", 4).params
    assert safetensors.keys() == pth.keys()
    for name in safetensors:
        np.testing.assert_array_equal(safetensors[name], pth[name], err_msg=name)
    unrolled, _ = features(safetensors, reference["images"], scan_layers=False)
    np.testing.assert_allclose(unrolled, reference["timm"], atol=2e-5, rtol=1e-5)


def test_a_video_model_starts_from_a_timm_vit(reference):
    """A 2-frame tubelet and a 2x larger position grid from the image ViT: a still video of
    the fixture's image at the same grid gives timm's features (inflation is exact on a still
    clip), and the time axis of the table is the image table repeated."""
    foreign = readers.read(FIXTURES / "timm_vit.safetensors", 4).params
    model = dict(vision_patch=(2, 8, 8), vision_max_grid=(2, 4, 4))
    images = reference["images"]
    model_ = ImpModel(**{**VIT, **model})
    params = nn.unbox(init_variables(model_, jax.random.key(0))["params"])
    values, report = surgery.transfer(surgery.flatten(params), foreign, 2, "inflate")
    assert report["converted"] == ["embedders_vision/pos/table", "embedders_vision/tubelet/kernel"]
    table = values["embedders_vision/pos/table"]
    np.testing.assert_allclose(table[0], table[1], rtol=1e-6)
    np.testing.assert_allclose(table[0], foreign["embedders_vision/pos/table"][0], rtol=1e-6)
    still = np.repeat(images[:, None], 2, axis=1)
    tokens, _, _ = model_.apply(
        {"params": surgery.unflatten(surgery.flatten(params) | values)},
        "vision",
        still,
        method=ImpModel.encode,
    )
    np.testing.assert_allclose(tokens, reference["timm"], atol=2e-5, rtol=1e-5)


def test_surgery_names_the_binding_a_vit_needs():
    foreign = readers.read(FIXTURES / "augreg_vit.npz", 4).params
    with pytest.raises(ImpError, match="bind ImpModel.positions = 'joint'"):
        features(foreign, np.zeros((1, 32, 32, 3), np.float32), positions="factorised")
    with pytest.raises(ImpError, match="bind ImpModel.class_token = True"):
        features(foreign, np.zeros((1, 32, 32, 3), np.float32), class_token=False, pool="mean")


def _write_safetensors(path: Path, tensors: dict[str, np.ndarray]) -> None:
    header, offset, body = {}, 0, b""
    for name, value in tensors.items():
        data = np.ascontiguousarray(value, np.float32).tobytes()
        header[name] = {
            "dtype": "F32",
            "shape": list(value.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        offset, body = offset + len(data), body + data
    text = json.dumps(header).encode()
    path.write_bytes(np.uint64(len(text)).tobytes() + text + body)


def test_readers_refuse_what_the_model_cannot_compute(tmp_path):
    raw = readers._read_safetensors(FIXTURES / "timm_vit.safetensors")
    cases = {
        "layer_scale": (
            {"blocks.0.ls1.gamma": np.ones(32)},
            r"no counterpart for: blocks.0.ls1.gamma",
        ),
        "fc_norm": ({"fc_norm.weight": np.ones(32)}, "fc_norm"),
    }
    for name, (extra, message) in cases.items():
        path = tmp_path / f"{name}.safetensors"
        _write_safetensors(path, raw | extra)
        with pytest.raises(ImpError, match=message):
            readers.read(path, 4)
    with pytest.raises(ImpError, match="width 32 is not a multiple of ImpModel.num_heads = 3"):
        readers.read(FIXTURES / "timm_vit.safetensors", 3)
    with pytest.raises(ImpError, match="not a checkpoint format"):
        readers.read(tmp_path / "vit.ckpt", 4)
    with pytest.raises(ImpError, match="does not exist"):
        readers.read(tmp_path / "missing.npz", 4)
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(ImpError, match="bad.npz: not a readable .npz archive"):
        readers.read(tmp_path / "bad.npz", 4)


def test_the_torch_reader_runs_no_other_code(tmp_path):
    """A `.pth` whose pickle names any callable besides tensor rebuilding is refused."""
    path = tmp_path / "evil.pth"
    with zipfile.ZipFile(FIXTURES / "timm_vit.pth") as source, zipfile.ZipFile(path, "w") as out:
        for item in source.namelist():
            data = source.read(item)
            if item.endswith("/data.pkl"):
                data = pickle.dumps({"x": print})
            out.writestr(item, data)
    with pytest.raises(ImpError, match=r"evil.pth: its pickle names builtins.print"):
        readers.read(path, 4)


def test_init_from_weights_is_checked_before_compiling():
    model = ImpModel(**VIT)
    abstract = jax.eval_shape(lambda: nn.unbox(init_variables(model, jax.random.key(0))["params"]))
    InitFrom(weights=str(FIXTURES / "big_vision_vit.npz")).check(abstract, model)
    with pytest.raises(ImpError, match="InitFrom.weights = '.*augreg_vit.npz': .*positions"):
        factorised = model.clone(positions="factorised")
        InitFrom(weights=str(FIXTURES / "augreg_vit.npz")).check(
            jax.eval_shape(
                lambda: nn.unbox(init_variables(factorised, jax.random.key(0))["params"])
            ),
            factorised,
        )
    with pytest.raises(ImpError, match="set one of InitFrom.checkpoint_dir .* not both"):
        InitFrom(checkpoint_dir="x", weights="y.npz").check(abstract, model)
    with pytest.raises(ImpError, match="not neither"):
        InitFrom().check(abstract, model)


@pytest.mark.parametrize(
    "options",
    [
        dict(class_token=False, global_pool="avg", fc_norm=False),
        dict(class_token=True, no_embed_class=True, global_pool="token"),
    ],
)
def test_live_parity_with_fresh_timm_vits(tmp_path, options):
    """Needs timm and torch (`pip install -e '.[reference]'`); skipped without them. timm runs
    in a child process: torch cannot share one with TensorFlow (`imp.bench.torch_peer`)."""
    if not all(importlib.util.find_spec(m) for m in ("timm", "torch", "safetensors")):
        pytest.skip("timm, torch and safetensors are not installed (the reference extra)")
    size = dict(img_size=48, patch_size=8, embed_dim=48, depth=3, num_heads=6, mlp_ratio=3.0)
    subprocess.run(
        [
            sys.executable,
            str(FIXTURES / "make.py"),
            "live",
            str(tmp_path),
            json.dumps({**options, "size": size}),
        ],
        check=True,
    )
    with np.load(tmp_path / "reference.npz") as data:
        images, expected = data["images"], data["features"]
    foreign = readers.read(tmp_path / "vit.safetensors", num_heads=6)
    got, _ = features(
        foreign.params,
        images,
        d_model=48,
        num_layers=3,
        num_heads=6,
        mlp_dim=144,
        vision_max_grid=(1, 6, 6),
        class_token=options["class_token"],
        pool="class_token" if options["class_token"] else "mean",
    )
    np.testing.assert_allclose(got, expected, atol=2e-5, rtol=1e-5)
