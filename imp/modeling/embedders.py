"""Modality embedders: raw inputs -> tokens `[batch, length, d_model]` with positions added.

Position embeddings are factorised tables looked up by each token's coordinates (seed 004
§3.4 multi-resolution training): the same weights serve any resolution or frame count up to
the table sizes, and DropToken keeps the positions of the tokens it keeps.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from imp.modeling.layers import dense_init, param_with_axes

_POS_INIT = nn.initializers.normal(stddev=0.02)


class VisionEmbedder(nn.Module):
    """Tubelet embedding of `[batch, frames, height, width, 3]` (a still image is one frame).

    A clip shorter than the tubelet depth (an image) is tiled along time to fill one tubelet,
    as in ViViT's image-initialised tubelets (seed 001).
    """

    d_model: int
    patch: tuple[int, int, int] = (2, 8, 8)  # (t, h, w)
    max_grid: tuple[int, int, int] = (16, 32, 32)  # tubelets along (t, h, w)

    @nn.compact
    def __call__(self, video: jax.Array) -> tuple[jax.Array, jax.Array]:
        pt, ph, pw = self.patch
        b, t, h, w, c = video.shape
        if t < pt:
            video = jnp.tile(video, (1, -(-pt // t), 1, 1, 1))[:, :pt]
            t = pt
        if t % pt or h % ph or w % pw:
            raise ValueError(
                f"vision input {video.shape[1:4]} is not divisible by tubelet {self.patch}"
            )
        gt, gh, gw = t // pt, h // ph, w // pw
        patches = video.reshape(b, gt, pt, gh, ph, gw, pw, c)
        patches = patches.transpose(0, 1, 3, 5, 2, 4, 6, 7).reshape(b, gt * gh * gw, -1)
        tokens = nn.Dense(self.d_model, kernel_init=dense_init((None, "embed")), name="tubelet")(
            patches
        )
        coords = jnp.stack(
            jnp.meshgrid(jnp.arange(gt), jnp.arange(gh), jnp.arange(gw), indexing="ij"), -1
        ).reshape(-1, 3)  # [length, 3]
        tokens = tokens + FactorisedPositions(self.d_model, self.max_grid, name="pos")(coords)
        return tokens, jnp.ones(tokens.shape[:2], bool)


class WaveformEmbedder(nn.Module):
    """Raw waveform `[batch, samples]` -> 1D patches of `patch` samples with 1D positions."""

    d_model: int
    patch: int = 128
    max_length: int = 256

    @nn.compact
    def __call__(self, waveform: jax.Array) -> tuple[jax.Array, jax.Array]:
        b, s = waveform.shape
        if s % self.patch:
            raise ValueError(f"waveform length {s} is not divisible by patch {self.patch}")
        patches = waveform.reshape(b, s // self.patch, self.patch)
        tokens = nn.Dense(self.d_model, kernel_init=dense_init((None, "embed")), name="patch")(
            patches
        )
        coords = jnp.arange(s // self.patch)[:, None]
        tokens = tokens + FactorisedPositions(self.d_model, (self.max_length,), name="pos")(coords)
        return tokens, jnp.ones(tokens.shape[:2], bool)


class SpectrogramEmbedder(nn.Module):
    """Log-mel spectrogram `[batch, time, mel]` -> 2D patches with 2D (time, frequency)
    positions, as AudioMAE (seed 004 §3.3)."""

    d_model: int
    patch: tuple[int, int] = (16, 16)  # (time, mel)
    max_grid: tuple[int, int] = (64, 8)

    @nn.compact
    def __call__(self, spectrogram: jax.Array) -> tuple[jax.Array, jax.Array]:
        b, t, f = spectrogram.shape
        pt, pf = self.patch
        if t % pt or f % pf:
            raise ValueError(f"spectrogram {t}x{f} is not divisible by patch {self.patch}")
        patches = spectrogram.reshape(b, t // pt, pt, f // pf, pf).transpose(0, 1, 3, 2, 4)
        patches = patches.reshape(b, (t // pt) * (f // pf), pt * pf)
        tokens = nn.Dense(self.d_model, kernel_init=dense_init((None, "embed")), name="patch")(
            patches
        )
        coords = jnp.stack(
            jnp.meshgrid(jnp.arange(t // pt), jnp.arange(f // pf), indexing="ij"), -1
        ).reshape(-1, 2)
        tokens = tokens + FactorisedPositions(self.d_model, self.max_grid, name="pos")(coords)
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
        coords = jnp.arange(text.shape[1])[:, None]
        tokens = tokens + FactorisedPositions(self.d_model, (self.max_length,), name="pos")(coords)
        return tokens, text != 0


class FactorisedPositions(nn.Module):
    """Sum of one learned table per axis, looked up by integer coordinates `[length, axes]`."""

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
