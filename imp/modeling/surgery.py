"""Parameters of one model carried into another of a different shape (seed 001: how ViViT and
PolyViT start from image checkpoints; `imp.training.initialise` applies it to a run).

Parameters are flat dicts `{"embedders_vision/tubelet/kernel": array}` (`flatten`). `transfer`
takes a target model's parameters from a source's: equal shapes are copied; a tubelet kernel
of another depth goes through the source's 2D image kernel (`image_kernel`) and one of the
`TUBELET_INITS`; a position table of another grid is interpolated (`resize_grid`);
scanned and unrolled layer layouts are converted (`to_layout`); ViViT's factorised models
take their layers from a joint encoder (`video_aliases`), PolyViT's modality-adaptor layers
from the first layers of an encoder without them (`adaptor_split`); what the source lacks (a new
head, a new modality) keeps the target's initialisation, and what the target lacks is
dropped, and so is a classifier head of another class count. The report says which parameter
went which way.
"""

import re

import jax
import numpy as np

from imp.errors import ImpError

# Seed 001 (ViViT §3.4): "inflate" repeats the image kernel over the tubelet's frames and
# divides by their number (an I3D-style average); "central_frame" puts it at the middle frame
# and zeros elsewhere. On a static video both give the image model's patch embedding.
# "random" keeps the configured model's own initialisation (ViViT's baseline).
TUBELET_INITS = ("inflate", "central_frame", "random")

_TUBELET = "embedders_vision/tubelet/kernel"
_POSITIONS = re.compile(r"^embedders_\w+/pos/(axis_\d+|table)$")
_STACK = r"^((?:encoders?|adaptors)\w*(?:/\w+)*?)"  # a collection of layer segments
_SCANNED = re.compile(_STACK + r"/segment_(\d+)/(.+)$")
_UNROLLED = re.compile(_STACK + r"/segment_(\d+)_(\d+)/(.+)$")


def flatten(tree) -> dict:
    """`{"a/b/kernel": leaf}` of a pytree: dict keys, sequence indices and named-tuple fields
    alike (orbax's checkpoint metadata holds named tuples as dicts)."""
    return {
        "/".join(
            str(getattr(p, "key", getattr(p, "idx", getattr(p, "name", p)))) for p in path
        ): leaf
        for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
    }


def unflatten(flat: dict[str, np.ndarray]) -> dict:
    nested: dict = {}
    for name, leaf in flat.items():
        *parents, last = name.split("/")
        node = nested
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = leaf
    return nested


def image_kernel(kernel: np.ndarray, depth: int) -> np.ndarray:
    """A tubelet kernel `[depth * ph * pw * 3, d]` (rows in (t, h, w, channel) order, as
    `VisionEmbedder` flattens tubelets) -> the 2D kernel `[ph * pw * 3, d]` that embeds a still
    image the same way: the frames' kernels summed (a still image fills every frame)."""
    return np.asarray(kernel).reshape(depth, -1, kernel.shape[-1]).sum(0)


def tubelet_kernel(kernel_2d: np.ndarray, depth: int, init: str) -> np.ndarray:
    """A 2D kernel `[ph * pw * 3, d]` -> a tubelet kernel `[depth * ph * pw * 3, d]` by one of
    `TUBELET_INITS`."""
    if init not in TUBELET_INITS[:2]:
        raise ImpError(f"tubelet initialiser {init!r} is not one of {TUBELET_INITS[:2]}")
    kernel_2d = np.asarray(kernel_2d)
    if init == "inflate":
        frames = np.repeat(kernel_2d[None], depth, axis=0) / depth
    else:
        frames = np.zeros((depth, *kernel_2d.shape), kernel_2d.dtype)
        frames[depth // 2] = kernel_2d
    return frames.reshape(-1, kernel_2d.shape[-1])


def resize_positions(table: np.ndarray, size: int) -> np.ndarray:
    """A position table `[n, d]` of one axis -> `[size, d]`, linearly interpolated between the
    centres of the rows (each row covers an equal share of the axis, `position_buckets`);
    beyond the outer centres the outer rows are kept."""
    table = np.asarray(table, np.float32)
    old = (np.arange(len(table)) + 0.5) / len(table)
    new = (np.arange(size) + 0.5) / size
    return np.stack([np.interp(new, old, column) for column in table.T], axis=1)


def resize_grid(table: np.ndarray, sizes: tuple[int, ...]) -> np.ndarray:
    """A position table `[*grid, d]` (one axis: `FactorisedPositions`'; several:
    `JointPositions`') -> `[*sizes, d]`, `resize_positions` along each axis in turn
    (multilinear)."""
    table = np.asarray(table, np.float32)
    for axis, size in enumerate(sizes):
        moved = np.moveaxis(table, axis, 0)
        rows = resize_positions(moved.reshape(moved.shape[0], -1), size)
        table = np.moveaxis(rows.reshape(size, *moved.shape[1:]), 0, axis)
    return table


def _stack(leaves: list):
    if isinstance(leaves[0], jax.ShapeDtypeStruct):
        return jax.ShapeDtypeStruct((len(leaves), *leaves[0].shape), leaves[0].dtype)
    return np.stack([np.asarray(leaf) for leaf in leaves])


def _unstack(leaf) -> list:
    if isinstance(leaf, jax.ShapeDtypeStruct):
        return [jax.ShapeDtypeStruct(leaf.shape[1:], leaf.dtype)] * leaf.shape[0]
    return list(np.asarray(leaf))


def to_layout(flat: dict, scanned: bool) -> dict:
    """Encoder layers stacked along a leading axis (`encoder/segment_j/...`, `nn.scan`) or one
    entry per layer (`encoder/segment_j_r/...`), converted to `scanned`. Leaves are arrays or
    `jax.ShapeDtypeStruct`s."""
    out = {}
    if scanned:
        stacks: dict[str, dict[int, object]] = {}
        for name, leaf in flat.items():
            match = _UNROLLED.match(name)
            if match is None:
                out[name] = leaf
                continue
            prefix, segment, repeat, rest = match.groups()
            stacks.setdefault(f"{prefix}/segment_{segment}/{rest}", {})[int(repeat)] = leaf
        for name, layers in stacks.items():
            out[name] = _stack([layers[r] for r in sorted(layers)])
        return out
    for name, leaf in flat.items():
        match = _SCANNED.match(name)
        if match is None:
            out[name] = leaf
            continue
        prefix, segment, rest = match.groups()
        for r, layer in enumerate(_unstack(leaf)):
            out[f"{prefix}/segment_{segment}_{r}/{rest}"] = layer
    return out


def plan(target: dict, source: dict, target_depth: int) -> dict[str, str]:
    """How each target parameter is filled from `source` (flat; arrays or
    `ShapeDtypeStruct`s, `source` already in the target's layout): "copy", "tubelet",
    "positions" or "keep" (the target's initialisation). A parameter both have with shapes
    that no rule converts is an `ImpError` naming it."""
    _check_tokens(target, source)
    rules = {}
    for name, init in target.items():
        if name not in source:
            rules[name] = "keep"
            continue
        have, want = tuple(source[name].shape), tuple(init.shape)
        if have == want:
            rules[name] = "copy"
        elif name.startswith("classifiers_"):  # a head of another class count starts afresh
            rules[name] = "keep"
        elif name == _TUBELET and have[1:] == want[1:] and have[0] % (want[0] // target_depth) == 0:
            rules[name] = "tubelet"
        elif _POSITIONS.match(name) and len(have) == len(want) and have[-1] == want[-1]:
            rules[name] = "positions"
        else:
            raise ImpError(
                f"parameter {name} is {have} in the source and {want} in the configured "
                "model, and no rule converts it (tubelet depth, position table length, layer "
                "layout and classifier heads are converted)"
            )
    return rules


def _check_tokens(target: dict, source: dict) -> None:
    """Position tables of one kind and class tokens must exist on both sides, else the
    carried model would compute something else: an `ImpError` naming the binding."""
    for name in source:
        prefix, _, kind = name.rpartition("/pos/")
        if prefix.startswith("embedders_") and name not in target:
            other = next((n for n in target if n.startswith(f"{prefix}/pos/")), None)
            if other is not None:
                has, want = (
                    ("one joint position table", "joint")
                    if kind == "table"
                    else ("a position table per axis", "factorised")
                )
                raise ImpError(
                    f"{prefix} has {has} in the source: bind ImpModel.positions = {want!r}"
                )
        if name.startswith("class_tokens_") and name not in target:
            raise ImpError(
                f"the source has a class token ({name}): bind ImpModel.class_token = True "
                "(and ImpModel.pool = 'class_token' for heads on it)"
            )


def _zeros_like(leaf):
    if isinstance(leaf, jax.ShapeDtypeStruct):
        return leaf
    return np.zeros(leaf.shape, leaf.dtype)


def video_aliases(target: dict, source: dict) -> dict:
    """Parameters of ViViT's factorised models taken from a joint encoder, as ViViT starts
    them from an image model (seed 001 §3.4): Model 3's spatial attention (and its LayerNorm)
    is the joint attention, and its temporal attention's output projection starts at zero,
    so each block begins as the image model's; Model 2's spatial encoder is the whole joint
    encoder (its temporal encoder keeps its initialisation). Returns the entries to add to
    `source` (both in one layer layout) for target names it lacks, and the source names they
    came from."""
    added, origins = {}, set()
    for name, leaf in target.items():
        if name in source:
            continue
        if name.startswith("encoder/spatial/"):
            origin = "encoder/" + name.removeprefix("encoder/spatial/")
        elif "/attention_space/" in name or "/ln_attention_space/" in name:
            origin = name.replace("_space/", "/", 1)
        elif re.search(r"/attention_time/out_(kernel|bias)$", name):
            joint = name.replace("/attention_time/", "/attention/", 1)
            if joint in source:
                added[name] = _zeros_like(leaf)
            continue
        else:
            continue
        if origin in source:
            added[name] = source[origin]
            origins.add(origin)
    return added, origins


def adaptor_split(target: dict, source: dict) -> dict:
    """PolyViT from a model without modality-adaptor layers (seed 000 §4.3): every modality's
    adaptor stack starts from the source's first `L_adapt` encoder layers, and the shared
    layers from its last `L - L_adapt`. Returns `source` with its encoder layers so renamed,
    unrolled (unchanged when the target has no adaptors or the source has)."""
    if not any(n.startswith("adaptors_") for n in target) or any(
        n.startswith("adaptors_") for n in source
    ):
        return source
    names = to_layout(target, scanned=False)
    layers = [re.match(r"^adaptors_(\w+?)/segment_0_(\d+)/", n) for n in names]
    layers = [m for m in layers if m]
    source = to_layout(source, scanned=False)
    modalities = sorted({m.group(1) for m in layers})
    depth = 1 + max(int(m.group(2)) for m in layers)
    out = {}
    for name, leaf in source.items():
        found = _UNROLLED.match(name)
        if found is None or found.group(1) != "encoder" or found.group(2) != "0":
            out[name] = leaf
            continue
        i, rest = int(found.group(3)), found.group(4)
        if i < depth:
            out |= {f"adaptors_{m}/segment_0_{i}/{rest}": leaf for m in modalities}
        else:
            out[f"encoder/segment_0_{i - depth}/{rest}"] = leaf
    return out


def match(target: dict, source: dict, target_depth: int) -> tuple[dict, dict[str, str], set]:
    """`source` in the target's layer layout (with `adaptor_split` and `video_aliases`), the
    `plan` of each target parameter, and the source names the aliases read."""
    source = to_layout(adaptor_split(target, source), any(_SCANNED.match(n) for n in target))
    added, origins = video_aliases(target, source)
    source = source | added
    rules = plan(target, source, target_depth)
    return source, {n: "alias" if n in added else r for n, r in rules.items()}, origins


def transfer(
    target: dict,
    source: dict[str, np.ndarray],
    target_depth: int,
    tubelet_init: str = "central_frame",
) -> tuple[dict[str, np.ndarray], dict[str, list[str]]]:
    """The values of the target's parameters (flat; arrays or `ShapeDtypeStruct`s) that come
    from `source`, copied or converted (`plan`); those left out keep the target's own
    initialisation. And a report `{"copied", "converted", "kept", "dropped"}` of names.

    `target_depth` is the target's tubelet depth (`vision_patch[0]`); the source's follows
    from its tubelet kernel (the two share the patch's height and width).
    """
    source, rules, origins = match(target, source, target_depth)
    values, report = {}, {"copied": [], "converted": [], "kept": [], "dropped": []}
    for name, rule in rules.items():
        if rule == "keep" or (rule == "tubelet" and tubelet_init == "random"):
            report["kept"].append(name)
            continue
        want, value = target[name], np.asarray(source[name])
        if rule == "tubelet":
            source_depth = value.shape[0] // (want.shape[0] // target_depth)
            value = tubelet_kernel(image_kernel(value, source_depth), target_depth, tubelet_init)
        elif rule == "positions":
            value = resize_grid(value, want.shape[:-1])
        values[name] = value.astype(want.dtype)
        report["copied" if rule == "copy" else "converted"].append(name)
    report["dropped"] = sorted(set(source) - set(target) - origins)
    return values, report
