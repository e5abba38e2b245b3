"""ViT checkpoints written by other frameworks, read into this model's parameter names (the
flat `surgery.flatten` form) for `surgery.transfer`: how a user starts from the image models
they already hold (seed 001 and seed 000 start from ImageNet ViTs).

- **big_vision / vision_transformer** (flax) `.npz`: big_vision's names, scanned or unrolled,
  and the older AugReg names (`Transformer/posembed_input`, `MultiHeadDotProductAttention_1`,
  `MlpBlock_3`), as `np.savez` of the "/"-joined parameter tree.
- **timm** (PyTorch) `state_dict` of a `VisionTransformer`: `.safetensors`, or the zip archive
  of `torch.save` (`.pth`, `.pt`, `.bin`). Neither needs PyTorch: safetensors is a JSON header
  and raw arrays, and `torch.save`'s archive is a pickle whose tensors are rebuilt here over
  numpy buffers (`_TorchUnpickler` admits nothing else).

A ViT maps onto a joint-attention `ImpModel` with `positions = "joint"` (its one position
table; a `[1, h, w, d]` grid) and, where it has one, `class_token = True` (the class token's
position row folded into the token, which is a constant). Heads, MAP heads and pre-logits
are skipped: new tasks bring their own. The readers refuse what the model cannot compute
(layer scale, register tokens, timm's `fc_norm` after pooling) with the parameter's name.
timm's models use the exact GELU and big_vision's the tanh approximation (`ImpModel.gelu`).
"""

import collections
import dataclasses
import json
import math
import pickle
import re
import zipfile
from pathlib import Path

import ml_dtypes
import numpy as np

from imp.errors import ImpError

SUFFIXES = {
    ".npz": "big_vision",
    ".safetensors": "timm",
    ".pth": "timm",
    ".pt": "timm",
    ".bin": "timm",
}


@dataclasses.dataclass(frozen=True)
class Foreign:
    """A foreign checkpoint in this model's names."""

    params: dict[str, np.ndarray]
    framework: str  # a value of `SUFFIXES`
    gelu: str  # the activation its model was trained with (`model.GELUS`)
    skipped: tuple[str, ...]  # the foreign names left out (heads)


def read(path: str | Path, num_heads: int) -> Foreign:
    """The checkpoint at `path`, by its suffix (`SUFFIXES`). `num_heads` splits timm's fused
    attention projections (its state_dict does not record the head count)."""
    path = Path(path).expanduser()
    framework = SUFFIXES.get(path.suffix)
    if framework is None:
        raise ImpError(f"{path}: not a checkpoint format imp reads (suffixes {tuple(SUFFIXES)})")
    if not path.is_file():
        raise ImpError(f"{path} does not exist")
    try:
        if framework == "big_vision":
            return _big_vision(_strip(_read_npz(path), ("params/", "opt/target/")))
        return _timm(_strip(_read_state_dict(path), ("module.",)), num_heads)
    except ImpError as error:
        raise ImpError(f"{path}: {error.message}") from None


def _strip(flat: dict, prefixes: tuple[str, ...]) -> dict:
    for prefix in prefixes:
        if flat and all(name.startswith(prefix) for name in flat):
            flat = {name.removeprefix(prefix): value for name, value in flat.items()}
    return flat


def _layer(i: int) -> str:
    return f"encoder/segment_0_{i}/dense_0"


def _vision(
    patch_kernel: np.ndarray,
    patch_bias: np.ndarray,
    positions: np.ndarray,
    class_token: np.ndarray | None,
) -> dict[str, np.ndarray]:
    """The embedder's parameters from a 2D patch kernel `[ph, pw, c, d]`, positions
    `[n, d]` of a square grid (the class token's row already removed) and the class token."""
    n, d = positions.shape
    side = math.isqrt(n)
    if side * side != n:
        raise ImpError(f"the position table has {n} rows, not a square grid of patches")
    params = {
        "embedders_vision/tubelet/kernel": patch_kernel.reshape(-1, d),
        "embedders_vision/tubelet/bias": patch_bias,
        "embedders_vision/pos/table": positions.reshape(1, side, side, d),
    }
    if class_token is not None:
        params["class_tokens_vision/token"] = class_token.reshape(d)
    return params


def _block(
    i: int,
    norms: tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]],
    qkv: tuple[np.ndarray, np.ndarray],
    out: tuple[np.ndarray, np.ndarray],
    mlp: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
) -> dict[str, np.ndarray]:
    """Layer `i`: pre-attention and pre-MLP LayerNorms `(scale, bias)`, q/k/v kernel
    `[d, 3, heads, kv]` and bias `[3, heads, kv]`, output kernel `[heads, kv, d]` and bias,
    MLP kernels `[d, f]`, `[f, d]` and biases."""
    (s1, b1), (s2, b2) = norms
    wi, bi, wo, bo = mlp
    return {
        f"{_layer(i)}/ln_attention/LayerNorm_0/scale": s1,
        f"{_layer(i)}/ln_attention/LayerNorm_0/bias": b1,
        f"{_layer(i)}/attention/qkv_kernel": qkv[0],
        f"{_layer(i)}/attention/qkv_bias": qkv[1],
        f"{_layer(i)}/attention/out_kernel": out[0],
        f"{_layer(i)}/attention/out_bias": out[1],
        f"{_layer(i)}/ln_mlp/LayerNorm_0/scale": s2,
        f"{_layer(i)}/ln_mlp/LayerNorm_0/bias": b2,
        f"{_layer(i)}/mlp/wi/kernel": wi,
        f"{_layer(i)}/mlp/wi/bias": bi,
        f"{_layer(i)}/mlp/wo/kernel": wo,
        f"{_layer(i)}/mlp/wo/bias": bo,
    }


def _final_norm(scale: np.ndarray, bias: np.ndarray) -> dict[str, np.ndarray]:
    return {"encoder/ln_final/LayerNorm_0/scale": scale, "encoder/ln_final/LayerNorm_0/bias": bias}


class _Names:
    """The foreign names a reader took, to refuse the rest by name."""

    def __init__(self, flat: dict[str, np.ndarray], skip: str):
        self.flat, self.used = flat, set()
        self.skipped = tuple(sorted(n for n in flat if re.match(skip, n)))

    def __contains__(self, name: str) -> bool:
        return name in self.flat

    def __call__(self, name: str) -> np.ndarray:
        if name not in self.flat:
            raise ImpError(f"it has no parameter {name}")
        self.used.add(name)
        return np.asarray(self.flat[name], np.float32)

    def check_all_read(self, what: str) -> None:
        rest = sorted(set(self.flat) - self.used - set(self.skipped))
        if rest:
            shown = ", ".join(rest[:4]) + (f" and {len(rest) - 4} more" if len(rest) > 4 else "")
            raise ImpError(f"{what} parameters the model has no counterpart for: {shown}")


# big_vision and vision_transformer (AugReg) checkpoints: `np.savez` of the flat tree.


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise ImpError(f"not a readable .npz archive ({error})") from None


def _unstack_scanned(flat: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """big_vision's scanned encoder (`Transformer/encoderblock/...`, layers on axis 0) as
    one entry per layer."""
    out = {}
    for name, value in flat.items():
        if name.startswith("Transformer/encoderblock/"):
            rest = name.removeprefix("Transformer/encoderblock/")
            for i, layer in enumerate(value):
                out[f"Transformer/encoderblock_{i}/{rest}"] = layer
        else:
            out[name] = value
    return out


def _big_vision(flat: dict[str, np.ndarray]) -> Foreign:
    flat = _unstack_scanned(flat)
    names = _Names(flat, r"^(head|pre_logits|MAPHead_0)/")
    if "embedding/kernel" not in names:
        raise ImpError("no embedding/kernel: not a big_vision or vision_transformer ViT")
    for old in ("Transformer/posembed_input/pos_embedding", "Transformer/pos_embedding"):
        if old in names:
            positions = names(old)
            break
    else:
        positions = names("pos_embedding")
    positions = positions.reshape(-1, positions.shape[-1])
    class_token = names("cls") if "cls" in names else None
    kernel = names("embedding/kernel")  # [ph, pw, c, d]
    if class_token is not None and math.isqrt(len(positions) - 1) ** 2 == len(positions) - 1:
        class_token, positions = class_token.reshape(-1) + positions[0], positions[1:]
    params = _vision(kernel, names("embedding/bias"), positions, class_token)
    layers = sorted(
        {int(m.group(1)) for n in flat if (m := re.match(r"Transformer/encoderblock_(\d+)/", n))}
    )
    for i in layers:
        prefix = f"Transformer/encoderblock_{i}"
        modules = sorted({n[len(prefix) + 1 :].split("/")[0] for n in flat if n.startswith(prefix)})
        norms = [m for m in modules if m.startswith("LayerNorm_")]
        attention = next(m for m in modules if m.startswith("MultiHeadDotProductAttention_"))
        mlp = next(m for m in modules if m.startswith("MlpBlock_"))
        norms = sorted(norms, key=lambda m: int(m.rpartition("_")[2]))

        def get(module, leaf, prefix=prefix):
            return names(f"{prefix}/{module}/{leaf}")

        att = f"{attention}/"
        params |= _block(
            i,
            (
                (get(norms[0], "scale"), get(norms[0], "bias")),
                (get(norms[1], "scale"), get(norms[1], "bias")),
            ),
            (
                np.stack([get(att + p, "kernel") for p in ("query", "key", "value")], 1),
                np.stack([get(att + p, "bias") for p in ("query", "key", "value")], 0),
            ),
            (get(att + "out", "kernel"), get(att + "out", "bias")),
            (
                get(f"{mlp}/Dense_0", "kernel"),
                get(f"{mlp}/Dense_0", "bias"),
                get(f"{mlp}/Dense_1", "kernel"),
                get(f"{mlp}/Dense_1", "bias"),
            ),
        )
    params |= _final_norm(
        names("Transformer/encoder_norm/scale"), names("Transformer/encoder_norm/bias")
    )
    names.check_all_read("big_vision")
    return Foreign(params, "big_vision", "tanh", names.skipped)


# timm: a PyTorch state_dict of `timm.models.vision_transformer.VisionTransformer`.


def _timm(flat: dict[str, np.ndarray], num_heads: int) -> Foreign:
    names = _Names(flat, r"^head\.")
    if "patch_embed.proj.weight" not in names:
        raise ImpError("no patch_embed.proj.weight: not a timm VisionTransformer state_dict")
    if "fc_norm.weight" in names:
        raise ImpError(
            "fc_norm (timm's LayerNorm after average pooling, instead of one on every token) "
            "has no counterpart in the model"
        )
    weight = names("patch_embed.proj.weight")  # [d, c, ph, pw]
    d = weight.shape[0]
    if d % num_heads:
        raise ImpError(f"its width {d} is not a multiple of ImpModel.num_heads = {num_heads}")
    kv = d // num_heads
    positions = names("pos_embed").reshape(-1, d)
    class_token = names("cls_token").reshape(d) if "cls_token" in names else None
    if class_token is not None and math.isqrt(len(positions) - 1) ** 2 == len(positions) - 1:
        class_token, positions = class_token + positions[0], positions[1:]
    kernel = weight.transpose(2, 3, 1, 0)  # [ph, pw, c, d]
    params = _vision(kernel, names("patch_embed.proj.bias"), positions, class_token)
    layers = sorted({int(m.group(1)) for n in flat if (m := re.match(r"blocks\.(\d+)\.", n))})
    for i in layers:

        def get(leaf, i=i):
            return names(f"blocks.{i}.{leaf}")

        params |= _block(
            i,
            ((get("norm1.weight"), get("norm1.bias")), (get("norm2.weight"), get("norm2.bias"))),
            (
                get("attn.qkv.weight").T.reshape(d, 3, num_heads, kv),
                get("attn.qkv.bias").reshape(3, num_heads, kv),
            ),
            (get("attn.proj.weight").T.reshape(num_heads, kv, d), get("attn.proj.bias")),
            (
                get("mlp.fc1.weight").T,
                get("mlp.fc1.bias"),
                get("mlp.fc2.weight").T,
                get("mlp.fc2.bias"),
            ),
        )
    params |= _final_norm(names("norm.weight"), names("norm.bias"))
    names.check_all_read("timm")
    return Foreign(params, "timm", "exact", names.skipped)


def _read_state_dict(path: Path) -> dict[str, np.ndarray]:
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    if not zipfile.is_zipfile(path):
        raise ImpError(
            "not a torch.save zip archive (PyTorch >= 1.6); save it again with torch.save, or "
            "as .safetensors"
        )
    with zipfile.ZipFile(path) as archive:
        pickles = [n for n in archive.namelist() if n.endswith("/data.pkl")]
        if len(pickles) != 1:
            raise ImpError("not a torch.save archive (no single data.pkl)")
        prefix = pickles[0].removesuffix("data.pkl")
        with archive.open(pickles[0]) as file:
            state = _TorchUnpickler(file, archive, prefix).load()
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, np.ndarray) for v in state.values()):
        raise ImpError("does not hold a state_dict (a dict of tensors)")
    return state


# torch's storage classes (pickled by name) -> element types.
_TORCH_STORAGES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


def _rebuild_tensor(storage, offset, size, stride, *_):
    """torch's `_rebuild_tensor_v2` over a numpy buffer: a strided view, copied."""
    itemsize = storage.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        storage[offset:], tuple(size), tuple(s * itemsize for s in stride)
    )
    return np.array(view)


class _TorchUnpickler(pickle.Unpickler):
    """Unpickles `torch.save`'s data.pkl with tensors as numpy arrays; any other class is
    refused (a pickle can name any callable, and these files come from elsewhere)."""

    def __init__(self, file, archive: zipfile.ZipFile, prefix: str):
        super().__init__(file)
        self.archive, self.prefix = archive, prefix

    def find_class(self, module: str, name: str):
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return lambda data, *_: data
        if module == "torch" and name in _TORCH_STORAGES:
            return np.dtype(_TORCH_STORAGES[name])
        raise ImpError(f"its pickle names {module}.{name}, which a state_dict of tensors has not")

    def persistent_load(self, pid):
        kind, dtype, key, _location, _numel = pid
        if kind != "storage":
            raise ImpError(f"its pickle holds a {kind!r} record, not a tensor storage")
        return np.frombuffer(self.archive.read(f"{self.prefix}data/{key}"), dtype)


_SAFETENSORS_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "BF16": ml_dtypes.bfloat16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """safetensors: an 8-byte little-endian header length, a JSON header of each tensor's
    dtype, shape and byte range, then the bytes."""
    data = path.read_bytes()
    try:
        (length,) = np.frombuffer(data[:8], "<u8")
        header = json.loads(data[8 : 8 + int(length)])
    except ValueError as error:
        raise ImpError(f"not a safetensors file ({error})") from None
    body = memoryview(data)[8 + int(length) :]
    tensors = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if entry["dtype"] not in _SAFETENSORS_DTYPES:
            raise ImpError(f"tensor {name} has dtype {entry['dtype']}, which imp does not read")
        start, end = entry["data_offsets"]
        dtype = np.dtype(_SAFETENSORS_DTYPES[entry["dtype"]]).newbyteorder("<")
        tensors[name] = np.frombuffer(body[start:end], dtype).reshape(entry["shape"])
    return tensors
