"""Multiview Transformers (seed 001, MTV): a video seen through several tubelet sizes at once.

Views are ordered by increasing token count (decreasing tubelet depth, e.g. 8, 4, 2 frames:
"Ti/8 + S/4 + B/2"). Each view has its own tubelet embedding and its own encoder, as wide as
its `width` (the view with more tokens is usually the wider one). A view encoder works within
each frame of its tubelets, as ViViT Model 2's spatial encoder, and after every layer each view
attends into the next (cross-view attention from view i+1 into view i): each frame of view i
queries the frames of view i+1 that cover the same time. The cross-view output projection
starts at zero, so at initialisation every view runs as if alone.

Each view's frame tokens (averaged over the frame) are projected to the model width and all
views' frame tokens are concatenated: that is the input of the global encoder, which in `ImpModel`
is the shared encoder every other modality uses. One view is a factorised encoder (ViViT Model
2) with a projection between its spatial and temporal parts.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from imp.modeling import factorised
from imp.modeling.embedders import VisionEmbedder, vision_grid
from imp.modeling.encoder import EncoderBlock, rematerialised, scanned
from imp.modeling.heads import masked_mean
from imp.modeling.layers import LayerNorm, dense_init, dot_product_attention, param_with_axes


class CrossViewAttention(nn.Module):
    """Queries from `x` `[rows, n, d]`, keys and values from `context` `[rows, m, d_c]`;
    returns the update `[rows, n, d]` (zero at initialisation)."""

    num_heads: int

    @nn.compact
    def __call__(self, x: jax.Array, context: jax.Array) -> jax.Array:
        d_model = x.shape[-1]
        head_dim = d_model // self.num_heads
        xavier = nn.initializers.xavier_uniform(in_axis=0, out_axis=(1, 2))

        def project(name, inputs, names):
            kernel = param_with_axes(
                self, f"{name}_kernel", xavier, (inputs.shape[-1], self.num_heads, head_dim), names
            )
            bias = param_with_axes(
                self, f"{name}_bias", nn.initializers.zeros, kernel.shape[1:], names[1:]
            )
            return jnp.einsum("rld,dhk->rhlk", inputs, kernel) + bias[:, None, :]

        q = project("q", LayerNorm(name="ln_query")(x), ("embed", "heads", "kv"))
        context = LayerNorm(name="ln_context")(context)
        k, v = (project(n, context, (None, "heads", "kv")) for n in ("k", "v"))
        q = q / jnp.sqrt(head_dim).astype(x.dtype)
        out = dot_product_attention(q, k, v, jnp.ones(context.shape[:2], bool))
        w_out = param_with_axes(
            self,
            "out_kernel",
            nn.initializers.zeros,
            (self.num_heads, head_dim, d_model),
            ("heads", "kv", "embed"),
        )
        return jnp.einsum("rhnk,hkd->rnd", out, w_out)


class MultiviewLayer(nn.Module):
    """One layer of every view: its encoder block within each frame, then cross-view
    attention from view i+1 into view i."""

    widths: tuple[int, ...]
    head_dim: int
    grids: tuple[tuple[int, int], ...]  # (frames, space) of each view
    approximate_gelu: bool = True

    @nn.compact
    def __call__(self, views: tuple[jax.Array, ...], _) -> tuple[tuple[jax.Array, ...], None]:
        batch = views[0].shape[0]
        out = []
        for i, (x, width, grid) in enumerate(zip(views, self.widths, self.grids, strict=True)):
            rows = factorised.to_space(x, grid)
            block = EncoderBlock(
                width // self.head_dim,
                4 * width,
                approximate_gelu=self.approximate_gelu,
                name=f"view_{i}",
            )
            rows, _ = block(rows, jnp.ones(rows.shape[:2], bool))
            out.append(factorised.from_space(rows, batch))
        for i in range(len(out) - 1):
            frames, (next_frames, next_space) = self.grids[i][0], self.grids[i + 1]
            per = next_frames // frames  # frames of view i+1 in one frame of view i
            query = factorised.to_space(out[i], self.grids[i])  # [b * frames, space, d]
            context = out[i + 1].reshape(batch * frames, per * next_space, -1)
            attention = CrossViewAttention(self.widths[i] // self.head_dim, name=f"cross_{i}")
            out[i] = out[i] + factorised.from_space(attention(query, context), batch)
        return tuple(out), None


class MultiviewEmbedder(nn.Module):
    """Video `[batch, frames, height, width, 3]` -> the global encoder's input
    `[batch, sum of the views' frames, d_model]` and its mask (see the module docstring)."""

    d_model: int
    patches: tuple[tuple[int, int, int], ...]  # per view, fewest tokens first
    widths: tuple[int, ...]
    num_layers: int
    head_dim: int
    max_grid: tuple[int, int, int]
    scan_layers: bool = True
    remat_policy: str = "none"
    positions: str = "factorised"  # the views' position tables (`embedders.POSITIONS`)
    approximate_gelu: bool = True

    @nn.compact
    def __call__(self, video: jax.Array) -> tuple[jax.Array, jax.Array]:
        grids = []
        views = []
        for i, (patch, width) in enumerate(zip(self.patches, self.widths, strict=True)):
            frames, height, width_grid = vision_grid(video.shape[1:4], patch, self.max_grid)
            grids.append((frames, height * width_grid))
            embedder = VisionEmbedder(
                width, patch, self.max_grid, self.positions, name=f"embed_{i}"
            )
            views.append(embedder(video)[0])
        layer = rematerialised(MultiviewLayer, self.remat_policy, self.scan_layers)
        args = (tuple(self.widths), self.head_dim, tuple(grids), self.approximate_gelu)
        if self.scan_layers:
            views, _ = scanned(layer, self.num_layers)(*args, name="layers")(tuple(views), None)
        else:
            for r in range(self.num_layers):
                views, _ = layer(*args, name=f"layers_{r}")(tuple(views), None)
        tokens = []
        for i, (x, grid) in enumerate(zip(views, grids, strict=True)):
            rows = factorised.to_space(LayerNorm(name=f"ln_{i}")(x), grid)
            frames = masked_mean(rows, jnp.ones(rows.shape[:2], bool))
            frames = frames.reshape(video.shape[0], grid[0], -1)
            tokens.append(
                nn.Dense(
                    self.d_model, kernel_init=dense_init((None, "embed")), name=f"to_global_{i}"
                )(frames)
            )
        tokens = jnp.concatenate(tokens, axis=1)
        return tokens, jnp.ones(tokens.shape[:2], bool)
