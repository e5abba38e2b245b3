"""Small building blocks carrying t5x logical axis names on every parameter and activation.

Logical names (`batch`, `length`, `embed`, `mlp`, `heads`, `kv`, `vocab`, `expert`) are mapped
to mesh axes by `imp.partitioning`; the model never sees the mesh.
"""

from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from imp.modeling.factorised import factorised_heads

Initializer = Callable[..., jax.Array]


def dense_init(names: Sequence[str | None]) -> Initializer:
    """Xavier-uniform kernel initialiser (ViT's choice) tagged with logical axis names."""
    return nn.with_logical_partitioning(nn.initializers.xavier_uniform(), tuple(names))


def param_with_axes(
    module: nn.Module,
    name: str,
    init: Initializer,
    shape: tuple[int, ...],
    names: Sequence[str | None],
) -> jax.Array:
    return module.param(name, nn.with_logical_partitioning(init, tuple(names)), shape)


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
    """Activation sharding constraint by logical names (a no-op outside a mesh context)."""
    return nn.with_logical_constraint(x, tuple(names))


class LayerNorm(nn.Module):
    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return nn.LayerNorm(
            scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
        )(x)


class MlpBlock(nn.Module):
    """Dense -> GELU -> Dense, the ViT feed-forward block. `approximate_gelu`: the tanh form
    (flax's default, big_vision's and scenic's models) or the exact erf form (timm's)."""

    mlp_dim: int
    approximate_gelu: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:  # [batch, length, embed]
        d_model = x.shape[-1]
        h = nn.Dense(
            self.mlp_dim,
            kernel_init=dense_init(("embed", "mlp")),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("mlp",)),
            name="wi",
        )(x)
        h = constrain(nn.gelu(h, self.approximate_gelu), ("batch", "length", "mlp"))
        return nn.Dense(
            d_model,
            kernel_init=dense_init(("mlp", "embed")),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
            name="wo",
        )(h)


def _qk_norm(name: str) -> nn.LayerNorm:
    """LayerNorm over the last axis (`kv`) of `[batch, heads, length, kv]`: scale `[kv]`."""
    scale_init = nn.with_logical_partitioning(nn.initializers.ones, ("kv",))
    return nn.LayerNorm(epsilon=1e-6, use_bias=False, scale_init=scale_init, name=name)


def dot_product_attention(q, k, v, mask: jax.Array) -> jax.Array:
    """Softmax attention of `q, k, v` `[batch, heads, length, kv]` (q already scaled) over the
    keys that `mask` keeps: `[batch, keys]` for every query alike, or `[batch, queries,
    keys]`."""
    logits = jnp.einsum("bhqd,bhkd->bhqk", q, k)
    mask = mask[:, None, None, :] if mask.ndim == 2 else mask[:, None]
    logits = jnp.where(mask, logits, jnp.finfo(logits.dtype).min)
    weights = jax.nn.softmax(logits, axis=-1)
    return jnp.einsum("bhqk,bhkd->bhqd", weights, v)


class SelfAttention(nn.Module):
    """Multi-head self-attention over `[batch, length, embed]` with a key padding mask.

    `qk_layernorm`: q and k are each LayerNormed over `kv` (per head, one learned scale of
    `[kv]` shared by the heads, no bias) before the 1/sqrt(kv) scaling. It bounds the
    attention logits, which otherwise grow without limit in large (MoE) models; IMP's reference
    code turns it on in its MoE models only.

    `factorised`: ViViT's Model 4 (factorised dot-product attention): half the heads attend
    within each frame of `grid`, half along each position (`factorised.factorised_heads`)."""

    num_heads: int
    qk_layernorm: bool = False
    factorised: bool = False

    @nn.compact
    def __call__(
        self, x: jax.Array, mask: jax.Array, grid: tuple[int, int] | None = None
    ) -> jax.Array:
        d_model = x.shape[-1]
        head_dim = d_model // self.num_heads
        q, k, v = qkv_projection(self, x, self.num_heads)  # [batch, heads, length, kv]
        if self.qk_layernorm:
            q, k = _qk_norm("q_norm")(q), _qk_norm("k_norm")(k)
        q = q / jnp.sqrt(head_dim).astype(x.dtype)
        if self.factorised:
            out = factorised_heads(dot_product_attention, q, k, v, mask, grid)
        else:
            out = dot_product_attention(q, k, v, mask)
        return output_projection(self, out, d_model)


def qkv_projection(module: nn.Module, x: jax.Array, num_heads: int) -> jax.Array:
    """Queries, keys and values `[3, batch, heads, length, head_dim]` of `x` `[batch, length,
    embed]` (parameters `qkv_kernel`, `qkv_bias` of `module`)."""
    d_model = x.shape[-1]
    head_dim = d_model // num_heads
    xavier = nn.initializers.xavier_uniform(in_axis=0, out_axis=(1, 2, 3))
    w_qkv = param_with_axes(
        module,
        "qkv_kernel",
        xavier,
        (d_model, 3, num_heads, head_dim),
        ("embed", None, "heads", "kv"),
    )
    b_qkv = param_with_axes(
        module, "qkv_bias", nn.initializers.zeros, (3, num_heads, head_dim), (None, "heads", "kv")
    )
    # Heads before length in q, k, v and the attention output, so that both attention dots are
    # plain batched matmuls over (batch, heads); with length first, XLA:CPU transposed around
    # them and the forward attention took 1.45x as long (d 256, batch 32, 256 tokens: 211 ->
    # 145 ms a layer; `imp bench throughput --profile`).
    return jnp.einsum("bld,dthk->tbhlk", x, w_qkv) + b_qkv[:, None, :, None]


def output_projection(module: nn.Module, out: jax.Array, d_model: int) -> jax.Array:
    """The heads' outputs `[batch, heads, length, kv]` projected back to `[batch, length,
    embed]` (parameters `out_kernel`, `out_bias` of `module`)."""
    out = constrain(out, ("batch", "heads", "length", "kv"))
    _, heads, _, head_dim = out.shape
    w_out = param_with_axes(
        module,
        "out_kernel",
        nn.initializers.xavier_uniform(in_axis=(0, 1), out_axis=2),
        (heads, head_dim, d_model),
        ("heads", "kv", "embed"),
    )
    b_out = param_with_axes(module, "out_bias", nn.initializers.zeros, (d_model,), ("embed",))
    return jnp.einsum("bhlk,hkd->bld", out, w_out) + b_out


class CrossAttention(nn.Module):
    """Multi-head attention of queries `x` `[batch, queries, embed]` into `memory` `[batch,
    length, embed]` (the keys `mask` `[batch, length]` keeps): a decoder's cross-attention
    (UniT's query decoder, seed 002 §3.3)."""

    num_heads: int

    @nn.compact
    def __call__(
        self, x: jax.Array, memory: jax.Array, mask: jax.Array, key_positions=None
    ) -> jax.Array:
        """`key_positions` (`[length, embed]` or like `memory`) are added to the memory in the
        keys only (DETR's positional encodings of the encoder's tokens)."""
        d_model = x.shape[-1]
        head_dim = d_model // self.num_heads
        w_q = param_with_axes(
            self,
            "q_kernel",
            nn.initializers.xavier_uniform(in_axis=0, out_axis=(1, 2)),
            (d_model, self.num_heads, head_dim),
            ("embed", "heads", "kv"),
        )
        w_kv = param_with_axes(
            self,
            "kv_kernel",
            nn.initializers.xavier_uniform(in_axis=0, out_axis=(1, 2, 3)),
            (d_model, 2, self.num_heads, head_dim),
            ("embed", None, "heads", "kv"),
        )
        b_q = param_with_axes(
            self, "q_bias", nn.initializers.zeros, (self.num_heads, head_dim), ("heads", "kv")
        )
        b_kv = param_with_axes(
            self,
            "kv_bias",
            nn.initializers.zeros,
            (2, self.num_heads, head_dim),
            (None, "heads", "kv"),
        )
        q = jnp.einsum("bqd,dhk->bhqk", x, w_q) + b_q[None, :, None]
        kv = jnp.einsum("bld,dthk->tbhlk", memory, w_kv) + b_kv[:, None, :, None]
        k = kv[0]
        if key_positions is not None:
            k = k + jnp.einsum("...ld,dhk->...hlk", key_positions, w_kv[:, 0])
        q = q / jnp.sqrt(head_dim).astype(x.dtype)
        out = dot_product_attention(q, k, kv[1], mask)
        return output_projection(self, out, d_model)
