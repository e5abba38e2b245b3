"""The LiT decoder (seed 003): a small causal Transformer that writes text, told its task by a
prompt, looking at an encoder's tokens through cross-attention.

Each block is pre-LN: causal self-attention over the text so far, cross-attention into the
encoded tokens of the task's inputs (any modality, concatenated), and an MLP; the blocks are
scanned over layers and rematerialised like the encoder's. Tokens get a learned embedding and
a learned position embedding; the output projection is the token embedding transposed (`tied`)
or a layer of its own.

Self-attention keeps its keys and values in a cache `[layers, 2, batch, heads, max_length,
head_dim]`. A call writes its tokens' keys and values at `index` and attends over every slot
up to each token's own position, so one code path serves training (all tokens at index 0, an
empty cache) and decoding (one token a step, `imp.decoding`), and a cached step's logits are
the teacher-forced ones (`tests/test_decoding.py`). Cross-attention recomputes the memory's
keys and values at each step: the demo's memory is a few dozen tokens.

The sequence convention is t5x's: position 0 reads the pad id (0) as its start token and
predicts the first token; position i reads token i - 1.
"""

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp

from imp.modeling.encoder import rematerialised
from imp.modeling.layers import (
    CrossAttention,
    LayerNorm,
    MlpBlock,
    constrain,
    dense_init,
    dot_product_attention,
    output_projection,
    param_with_axes,
    qkv_projection,
)


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention of `x` `[batch, t, embed]` at positions `index .. index +
    t - 1` over a key/value cache `[2, batch, heads, max_length, head_dim]`, into which it
    writes its own keys and values; returns the output and the cache."""

    num_heads: int

    @nn.compact
    def __call__(self, x: jax.Array, cache: jax.Array, index: jax.Array):
        d_model = x.shape[-1]
        head_dim = d_model // self.num_heads
        qkv = qkv_projection(self, x, self.num_heads)
        cache = jax.lax.dynamic_update_slice(
            cache, qkv[1:].astype(cache.dtype), (0, 0, 0, index, 0)
        )
        length = x.shape[1]
        queries = index + jnp.arange(length)
        causal = jnp.arange(cache.shape[3])[None, :] <= queries[:, None]  # [t, max_length]
        mask = jnp.broadcast_to(causal, (x.shape[0], *causal.shape))
        q = qkv[0] / jnp.sqrt(head_dim).astype(x.dtype)
        out = dot_product_attention(q, cache[0].astype(x.dtype), cache[1].astype(x.dtype), mask)
        return output_projection(self, out, d_model), cache


class TextDecoderBlock(nn.Module):
    num_heads: int
    mlp_dim: int
    approximate_gelu: bool = True

    @nn.compact
    def __call__(self, x, cache, memory, memory_mask, index):
        x = constrain(x, ("batch", "length", "embed"))
        attention = CausalSelfAttention(self.num_heads, name="self_attention")
        h, cache = attention(LayerNorm(name="ln_self_attention")(x), cache, index)
        x = x + h
        cross = CrossAttention(self.num_heads, name="cross_attention")
        x = x + cross(LayerNorm(name="ln_cross_attention")(x), memory, memory_mask)
        h = LayerNorm(name="ln_mlp")(x)
        x = x + MlpBlock(self.mlp_dim, self.approximate_gelu, name="mlp")(h)
        return x, cache


# Registered, not decorated: `ImpModel.text_decoder = @TextDecoder()` and its bindings
# (`TextDecoder.num_layers = 2`) reach the model `Experiment.from_gin` builds.
@gin.register
class TextDecoder(nn.Module):
    """`(tokens [batch, t], memory [batch, length, d], memory_mask [batch, length], cache,
    index) -> (logits [batch, t, vocab_size], cache)`; `init_cache` gives an empty cache.

    `vocab_size` 0 takes the tasks' text vocabulary (set by the experiment); `max_length`
    bounds prompt and answer together."""

    vocab_size: int = 0
    width: int = 128
    num_layers: int = 2
    num_heads: int = 4
    mlp_dim: int = 512
    max_length: int = 48
    tied: bool = True
    scan_layers: bool = True
    remat_policy: str = "none"
    approximate_gelu: bool = True

    def init_cache(self, batch: int, dtype=jnp.float32) -> jax.Array:
        head_dim = self.width // self.num_heads
        shape = (self.num_layers, 2, batch, self.num_heads, self.max_length, head_dim)
        return jnp.zeros(shape, dtype)

    @nn.compact
    def __call__(
        self,
        tokens: jax.Array,
        memory: jax.Array,
        memory_mask: jax.Array,
        cache: jax.Array | None = None,
        index: jax.Array | int = 0,
    ) -> tuple[jax.Array, jax.Array]:
        if cache is None:
            cache = self.init_cache(tokens.shape[0], memory.dtype)
        embedding = param_with_axes(
            self,
            "token_embedding",
            nn.initializers.normal(self.width**-0.5),
            (self.vocab_size, self.width),
            ("vocab", "embed"),
        )
        positions = param_with_axes(
            self,
            "position_embedding",
            nn.initializers.normal(0.02),
            (self.max_length, self.width),
            ("length", "embed"),
        )
        index = jnp.asarray(index, jnp.int32)
        x = embedding[tokens].astype(memory.dtype)
        x = x + jax.lax.dynamic_slice_in_dim(positions, index, tokens.shape[1]).astype(x.dtype)
        if memory.shape[-1] != self.width:
            memory = nn.Dense(
                self.width,
                kernel_init=dense_init(("embed", None)),
                bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (None,)),
                name="input_projection",
            )(memory)
        block = rematerialised(TextDecoderBlock, self.remat_policy, self.scan_layers)
        args = (self.num_heads, self.mlp_dim, self.approximate_gelu)
        if self.scan_layers:
            layers = nn.scan(
                block,
                variable_axes={"params": 0},
                split_rngs={"params": True},
                in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast),
                length=self.num_layers,
                metadata_params={nn.PARTITION_NAME: "layers"},
            )(*args, name="layers")
            x, cache = layers(x, cache, memory, memory_mask, index)
        else:
            written = []
            for i in range(self.num_layers):
                x, c = block(*args, name=f"layer_{i}")(x, cache[i], memory, memory_mask, index)
                written.append(c)
            cache = jnp.stack(written)
        x = LayerNorm(name="ln_final")(x)
        if self.tied:
            logits = jnp.einsum("bld,vd->blv", x, embedding.astype(x.dtype))
        else:
            logits = nn.Dense(
                self.vocab_size,
                kernel_init=dense_init(("embed", "vocab")),
                bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("vocab",)),
                name="logits",
            )(x)
        return constrain(logits, ("batch", "length", "vocab")), cache
