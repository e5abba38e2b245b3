"""Modality embedders: raw inputs -> tokens `[batch, length, d_model]` with positions added.

Position embeddings are factorised by default: one learned table per axis, summed (seed 004
§3.4 multi-resolution training). Vision and spectrogram embedders can instead keep one joint
table over their whole grid (`POSITIONS`), as ViT, ViViT and PolyViT do.

Vision, spectrogram and waveform patches read the tables at their normalised coordinates,
as IMP's reference code does: patch `i` of `n` along an axis sits at `i / n` in [0, 1) and
reads bucket `floor(i / n * size)` of that axis's `size`-row table. A half-resolution clip's
patch `i` therefore reads the bucket of the full-resolution patch `2i`, the corner of the
field of view it covers: every resolution variant, and any evaluation resolution, sees the
same positions for the same place. Text positions are the token indices. DropToken keeps the
positions of the tokens it keeps.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from imp.errors import ImpError
from imp.modeling.layers import dense_init, param_with_axes

_POS_INIT = nn.initializers.normal(stddev=0.02)
# "factorised": one table per axis, summed (IMP); "joint": one row per grid cell (ViT).
POSITIONS = ("factorised", "joint")


def patch_grid(
    shape: tuple[int, ...],
    patch: tuple[int, ...],
    max_grid: tuple[int, ...],
    names: tuple[str, str, str],
    given: tuple[int, ...] | None = None,
) -> tuple[int, ...]:
    """Patches along each axis of `shape`, checked: every axis divisible by its patch size and
    the grid within the position tables `max_grid` (a larger grid would make neighbouring
    patches share a position bucket). `names`: the input, its patch field, its table field;
    `given`: the input's shape as the user gave it, when `shape` is derived from it."""
    what, patch_field, table_field = names
    sizes = "x".join(map(str, given or shape))
    if any(p < 1 or s % p for s, p in zip(shape, patch, strict=True)):
        raise ImpError(f"{what} {sizes} is not divisible by {patch_field}={patch}")
    grid = tuple(s // p for s, p in zip(shape, patch, strict=True))
    if min(grid) < 1:
        raise ImpError(f"{what} {sizes} is smaller than {patch_field}={patch}")
    if any(g > m for g, m in zip(grid, max_grid, strict=True)):
        raise ImpError(
            f"{what} {sizes} makes a grid of {'x'.join(map(str, grid))} patches, larger than "
            f"the position tables {table_field}={max_grid}"
        )
    return grid


def vision_grid(
    shape: tuple[int, int, int], patch: tuple[int, int, int], max_grid: tuple[int, int, int]
) -> tuple[int, int, int]:
    """Tubelets along (t, h, w) of a `(frames, height, width)` clip; a clip shorter than the
    tubelet depth (a still image) is tiled to fill one tubelet."""
    frames, height, width = shape
    names = ("vision frames x height x width", "ImpModel.vision_patch", "ImpModel.vision_max_grid")
    tiled = (max(frames, patch[0]), height, width)
    return patch_grid(tiled, patch, max_grid, names, given=tuple(shape))


def waveform_grid(samples: int, patch: int, max_length: int) -> int:
    names = ("waveform samples", "ImpModel.waveform_patch", "ImpModel.max_waveform_patches")
    return patch_grid((samples,), (patch,), (max_length,), names)[0]


def spectrogram_grid(
    shape: tuple[int, int], patch: tuple[int, int], max_grid: tuple[int, int]
) -> tuple[int, int]:
    names = (
        "spectrogram time x mel bins",
        "ImpModel.spectrogram_patch",
        "ImpModel.spectrogram_max_grid",
    )
    return patch_grid(tuple(shape), tuple(patch), tuple(max_grid), names)


def text_tokens(length: int, max_length: int) -> int:
    """Tokens of a text of `length` ids, which must fit the position table."""
    if length > max_length:
        raise ImpError(
            f"text of {length} tokens is longer than ImpModel.max_text_length={max_length}"
        )
    return length


class VisionEmbedder(nn.Module):
    """Tubelet embedding of `[batch, frames, height, width, 3]` (a still image is one frame).

    A clip shorter than the tubelet depth (an image) is tiled along time to fill one tubelet,
    as in ViViT's image-initialised tubelets (seed 001).
    """

    d_model: int
    patch: tuple[int, int, int] = (2, 8, 8)  # (t, h, w)
    max_grid: tuple[int, int, int] = (16, 32, 32)  # tubelets along (t, h, w)
    positions: str = "factorised"  # `POSITIONS`

    @nn.compact
    def __call__(self, video: jax.Array) -> tuple[jax.Array, jax.Array]:
        pt, ph, pw = self.patch
        b, t, h, w, c = video.shape
        gt, gh, gw = vision_grid((t, h, w), self.patch, self.max_grid)
        if t < pt:
            video = jnp.tile(video, (1, -(-pt // t), 1, 1, 1))[:, :pt]
        patches = video.reshape(b, gt, pt, gh, ph, gw, pw, c)
        patches = patches.transpose(0, 1, 3, 5, 2, 4, 6, 7).reshape(b, gt * gh * gw, -1)
        tokens = nn.Dense(self.d_model, kernel_init=dense_init((None, "embed")), name="tubelet")(
            patches
        )
        coords = grid_buckets((gt, gh, gw), self.max_grid)  # [length, 3]
        tokens = tokens + position_table(self.positions, self.d_model, self.max_grid)(coords)
        return tokens, jnp.ones(tokens.shape[:2], bool)


class WaveformEmbedder(nn.Module):
    """Raw waveform `[batch, samples]` -> 1D patches of `patch` samples with 1D positions."""

    d_model: int
    patch: int = 128
    max_length: int = 256

    @nn.compact
    def __call__(self, waveform: jax.Array) -> tuple[jax.Array, jax.Array]:
        b, s = waveform.shape
        n = waveform_grid(s, self.patch, self.max_length)
        patches = waveform.reshape(b, n, self.patch)
        tokens = nn.Dense(self.d_model, kernel_init=dense_init((None, "embed")), name="patch")(
            patches
        )
        coords = grid_buckets((n,), (self.max_length,))
        tokens = tokens + FactorisedPositions(self.d_model, (self.max_length,), name="pos")(coords)
        return tokens, jnp.ones(tokens.shape[:2], bool)


class SpectrogramEmbedder(nn.Module):
    """Log-mel spectrogram `[batch, time, mel]` -> 2D patches with 2D (time, frequency)
    positions, as AudioMAE (seed 004 §3.3)."""

    d_model: int
    patch: tuple[int, int] = (16, 16)  # (time, mel)
    max_grid: tuple[int, int] = (64, 8)
    positions: str = "factorised"  # `POSITIONS`

    @nn.compact
    def __call__(self, spectrogram: jax.Array) -> tuple[jax.Array, jax.Array]:
        b, t, f = spectrogram.shape
        pt, pf = self.patch
        gt, gf = spectrogram_grid((t, f), self.patch, self.max_grid)
        patches = spectrogram.reshape(b, gt, pt, gf, pf).transpose(0, 1, 3, 2, 4)
        patches = patches.reshape(b, gt * gf, pt * pf)
        tokens = nn.Dense(self.d_model, kernel_init=dense_init((None, "embed")), name="patch")(
            patches
        )
        coords = grid_buckets((gt, gf), self.max_grid)
        tokens = tokens + position_table(self.positions, self.d_model, self.max_grid)(coords)
        return tokens, jnp.ones(tokens.shape[:2], bool)


class TextEmbedder(nn.Module):
    """Token ids `[batch, length]` (0 = padding) -> token embeddings and the padding mask."""

    d_model: int
    vocab_size: int
    max_length: int = 64

    @nn.compact
    def __call__(self, text: jax.Array) -> tuple[jax.Array, jax.Array]:
        table = param_with_axes(
            self, "embedding", _POS_INIT, (self.vocab_size, self.d_model), ("vocab", "embed")
        )
        tokens = jnp.take(table, text, axis=0)
        coords = jnp.arange(text_tokens(text.shape[1], self.max_length))[:, None]
        tokens = tokens + FactorisedPositions(self.d_model, (self.max_length,), name="pos")(coords)
        return tokens, text != 0


def position_buckets(n: int, size: int) -> jax.Array:
    """Table rows of `n` patches along an axis of a `size`-row table: `floor(i / n * size)`
    for patch `i` (integer arithmetic: exact at any size)."""
    return (jnp.arange(n) * size) // n


def grid_buckets(grid: tuple[int, ...], sizes: tuple[int, ...]) -> jax.Array:
    """`[prod(grid), axes]` table rows of every patch of `grid`, in row-major patch order."""
    axes = [position_buckets(n, size) for n, size in zip(grid, sizes, strict=True)]
    return jnp.stack(jnp.meshgrid(*axes, indexing="ij"), -1).reshape(-1, len(grid))


class FactorisedPositions(nn.Module):
    """Sum of one learned table per axis, looked up by table rows `[length, axes]`."""

    d_model: int
    sizes: tuple[int, ...]

    @nn.compact
    def __call__(self, coords: jax.Array) -> jax.Array:
        out = 0.0
        for axis, size in enumerate(self.sizes):
            table = param_with_axes(
                self, f"axis_{axis}", _POS_INIT, (size, self.d_model), (None, "embed")
            )
            out = out + jnp.take(table, coords[..., axis], axis=0)
        return out  # [length, d_model]


def drop_tokens(
    tokens: jax.Array, mask: jax.Array, rate: float, rng: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """DropToken: keeps a random `1 - rate` of each example's tokens, in their original order.

    Positions were added before dropping, so kept tokens keep their coordinates.
    """
    if rate <= 0.0:
        return tokens, mask
    b, n, _ = tokens.shape
    keep = max(1, round(n * (1.0 - rate)))
    scores = jax.random.uniform(rng, (b, n))
    kept = jnp.sort(jnp.argsort(scores, axis=1)[:, :keep], axis=1)  # [batch, keep]
    return (
        jnp.take_along_axis(tokens, kept[..., None], axis=1),
        jnp.take_along_axis(mask, kept, axis=1),
    )


class JointPositions(nn.Module):
    """One learned row per cell of a grid of `sizes`, looked up by table rows `[length,
    axes]`: the table is `[*sizes, d_model]`."""

    d_model: int
    sizes: tuple[int, ...]

    @nn.compact
    def __call__(self, coords: jax.Array) -> jax.Array:
        names = (None,) * len(self.sizes) + ("embed",)
        table = param_with_axes(self, "table", _POS_INIT, (*self.sizes, self.d_model), names)
        return table[tuple(coords.T)]  # [length, d_model]


def position_table(kind: str, d_model: int, sizes: tuple[int, ...]) -> nn.Module:
    """The position module of `POSITIONS` kind `kind`, named `pos`."""
    assert kind in POSITIONS, kind  # `check_config` names a wrong value
    make = FactorisedPositions if kind == "factorised" else JointPositions
    return make(d_model, tuple(sizes), name="pos")


class ClassToken(nn.Module):
    """A learned token put before a modality's tokens (ViT's [class], PolyViT's per-modality
    one); zeros at initialisation, as big_vision's and scenic's. Positions are not added to
    it: a constant token's position is part of what it learns."""

    @nn.compact
    def __call__(self, tokens: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
        token = param_with_axes(
            self, "token", nn.initializers.zeros, (tokens.shape[-1],), ("embed",)
        )
        token = jnp.broadcast_to(token.astype(tokens.dtype), (tokens.shape[0], 1, tokens.shape[-1]))
        keep = jnp.ones((mask.shape[0], 1), bool)
        return jnp.concatenate([token, tokens], 1), jnp.concatenate([keep, mask], 1)
