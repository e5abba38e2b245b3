"""UniT's query decoder (seed 002 §3.3-3.4), shared by the tasks that decode, and its heads.

A task that decodes (`TaskSpec.queries`, or any detection task) sends learned query
embeddings of its own (`QueryEmbeddings`: seed 002 uses 100 for detection, 25 otherwise)
through one Transformer decoder: self-attention among the queries, cross-attention into the
encoded tokens of every input modality of the task (concatenated, seed 002 §3.3), and an MLP,
in pre-LN blocks scanned over layers and rematerialised like the encoder's. The decoder
returns every layer's output, each through its final LayerNorm, since detection learns from
every layer (auxiliary decoding losses) and predicts from the last.

As in DETR, which UniT keeps, the hidden states start at zero and the queries are added to
them before every attention, as positions; and fixed sine positions of the encoded tokens
(`grid_positions`, over each input's grid of patches or text tokens) are added to the keys of
every cross-attention, so a query can look for a place. One departure: pre-LN blocks (the
encoder's form) instead of DETR's post-LN.

Heads (seed 002 §3.4): for detection (`DetectionHead`), a class layer over the classes and
"no object", and a three-layer box MLP with a sigmoid giving `(cx, cy, w, h)` in [0, 1] of
the image, on every layer; for the other tasks (`DecodedClassifier`), a two-layer GELU MLP on
the first query's output of the last layer.
"""

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp

from imp.modeling.encoder import rematerialised, scanned
from imp.modeling.layers import (
    CrossAttention,
    LayerNorm,
    MlpBlock,
    SelfAttention,
    constrain,
    dense_init,
)

# Query embeddings per task when the task does not set `TaskSpec.queries` (seed 002 §3.3).
DETECTION_QUERIES = 100
OTHER_QUERIES = 25


def _dense(features: int, names: tuple[str, str], name: str) -> nn.Dense:
    return nn.Dense(
        features,
        kernel_init=dense_init(names),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, names[1:]),
        name=name,
    )


class DecoderBlock(nn.Module):
    """Pre-LN: self-attention over the queries, cross-attention into `memory`, MLP."""

    num_heads: int
    mlp_dim: int
    approximate_gelu: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, memory: tuple):
        tokens, mask, positions, queries = memory
        x = constrain(x, ("batch", "length", "embed"))
        everyone = jnp.ones(x.shape[:2], bool)
        attention = SelfAttention(self.num_heads, name="self_attention")
        x = x + attention(LayerNorm(name="ln_self_attention")(x) + queries, everyone)
        cross = CrossAttention(self.num_heads, name="cross_attention")
        h = LayerNorm(name="ln_cross_attention")(x) + queries
        x = x + cross(h, tokens, mask, positions)
        h = LayerNorm(name="ln_mlp")(x)
        x = x + MlpBlock(self.mlp_dim, self.approximate_gelu, name="mlp")(h)
        return x, x


# Registered, not decorated: `ImpModel.decoder = @QueryDecoder()` and its bindings
# (`QueryDecoder.num_layers = 6`) reach the model `Experiment.from_gin` builds.
@gin.register
class QueryDecoder(nn.Module):
    """The shared decoder: `(queries [batch, q, width], tokens [batch, length, d], mask
    [batch, length], positions [length, width]) -> [layers, batch, q, width]`, every layer's
    output after the final LayerNorm. Encoder tokens of another width than the decoder's are
    projected first (`input_projection`; UniT: a 256-wide image encoder, a 768-wide
    decoder)."""

    width: int = 128
    num_layers: int = 2
    num_heads: int = 4
    mlp_dim: int = 512
    scan_layers: bool = True
    remat_policy: str = "none"
    approximate_gelu: bool = True

    @nn.compact
    def __call__(
        self, queries: jax.Array, tokens: jax.Array, mask: jax.Array, positions: jax.Array
    ) -> jax.Array:
        if tokens.shape[-1] != self.width:
            tokens = _dense(self.width, ("embed", None), "input_projection")(tokens)
        block = rematerialised(DecoderBlock, self.remat_policy, self.scan_layers)
        args = (self.num_heads, self.mlp_dim, self.approximate_gelu)
        memory = (tokens, mask, positions.astype(tokens.dtype), queries)
        start = jnp.zeros_like(queries)
        if self.scan_layers:
            _, outputs = scanned(block, self.num_layers)(*args, name="layers")(start, memory)
        else:
            x, outputs = start, []
            for i in range(self.num_layers):
                x, out = block(*args, name=f"layer_{i}")(x, memory)
                outputs.append(out)
            outputs = jnp.stack(outputs)
        return LayerNorm(name="ln_final")(outputs)


def grid_positions(grid: tuple[int, ...], width: int) -> jax.Array:
    """Fixed sine positions `[prod(grid), width]` of the cells of `grid` (row-major, as tokens
    are laid out): each axis takes an equal share of the width (the rest stays zero), as
    sines and cosines of its index at geometrically spaced frequencies."""
    share = (width // len(grid)) // 2 * 2
    codes = []
    for size in grid:
        frequencies = 1.0 / 10000 ** (jnp.arange(share // 2) / max(share // 2, 1))
        angles = jnp.arange(size)[:, None] * frequencies[None]
        codes.append(jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1))
    mesh = jnp.meshgrid(*[jnp.arange(size) for size in grid], indexing="ij")
    parts = [code[index.ravel()] for code, index in zip(codes, mesh, strict=True)]
    out = jnp.concatenate(parts, axis=-1)
    return jnp.pad(out, ((0, 0), (0, width - out.shape[-1])))


class QueryEmbeddings(nn.Module):
    """A task's learned queries `[count, width]`, broadcast over the batch."""

    count: int
    width: int

    @nn.compact
    def __call__(self, batch: int) -> jax.Array:
        table = self.param(
            "embedding",
            nn.with_logical_partitioning(nn.initializers.normal(1.0), (None, "embed")),
            (self.count, self.width),
        )
        return jnp.broadcast_to(table, (batch, self.count, self.width))


class DetectionHead(nn.Module):
    """Class logits over `num_classes` + no object, and boxes `(cx, cy, w, h)` in [0, 1]."""

    num_classes: int

    @nn.compact
    def __call__(self, hidden: jax.Array) -> tuple[jax.Array, jax.Array]:
        width = hidden.shape[-1]
        logits = _dense(self.num_classes + 1, ("embed", "vocab"), "classes")(hidden)
        h = nn.relu(_dense(width, ("embed", "mlp"), "box_0")(hidden))
        h = nn.relu(_dense(width, ("mlp", "embed"), "box_1")(h))
        boxes = nn.sigmoid(_dense(4, ("embed", None), "box_2")(h))
        return logits, boxes


class DecodedClassifier(nn.Module):
    """Seed 002's eq. 8: `W1 GELU(W2 h + b2) + b1` on the first query's output."""

    num_classes: int

    @nn.compact
    def __call__(self, hidden: jax.Array) -> jax.Array:
        h = nn.gelu(_dense(hidden.shape[-1], ("embed", "mlp"), "hidden")(hidden[:, 0]))
        return _dense(self.num_classes, ("mlp", "vocab"), "logits")(h)
