"""Task heads on pooled encoder tokens: per-dataset classifiers and the contrastive heads
that project a modality into a common space (linear, CLIP's; or an MLP, IMP's)."""

import flax.linen as nn
import jax
import jax.numpy as jnp

from imp.modeling.layers import dense_init

# Seed 000 Table 6: zero-initialised heads train as well or better than LeCun-normal ones.
HEAD_INITS = {"zeros": nn.initializers.zeros, "lecun_normal": nn.initializers.lecun_normal()}


def masked_mean(tokens: jax.Array, mask: jax.Array) -> jax.Array:
    """`[batch, length, embed]`, `[batch, length]` -> `[batch, embed]` over real tokens only."""
    weights = mask.astype(tokens.dtype)[..., None]
    return (tokens * weights).sum(1) / jnp.maximum(weights.sum(1), 1.0)


class ClassifierHead(nn.Module):
    """Linear classifier `[batch, embed]` -> `[batch, classes]`."""

    num_classes: int
    init: str = "zeros"

    @nn.compact
    def __call__(self, pooled: jax.Array) -> jax.Array:
        return nn.Dense(
            self.num_classes,
            kernel_init=nn.with_logical_partitioning(HEAD_INITS[self.init], ("embed", None)),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (None,)),
        )(pooled)


def l2_normalise(z: jax.Array) -> jax.Array:
    return z / jnp.linalg.norm(z, axis=-1, keepdims=True).clip(1e-6)


class Projection(nn.Module):
    """CLIP-style projection into the common space, L2-normalised: `[batch, embed_dim]`."""

    embed_dim: int

    @nn.compact
    def __call__(self, pooled: jax.Array) -> jax.Array:
        z = nn.Dense(self.embed_dim, use_bias=False, kernel_init=dense_init(("embed", None)))(
            pooled
        )
        return l2_normalise(z)


class MlpProjection(nn.Module):
    """IMP's feed-forward contrastive head (seed 004 §3.3: "separate feedforward heads for
    each modality-to-common-space projection"): Dense -> GELU -> Dense -> LayerNorm, then
    L2-normalised: `[batch, embed]` -> `[batch, embed_dim]`. The reference code keeps one per
    (source, target) modality pair, hidden width = common width."""

    hidden_dim: int
    embed_dim: int

    @nn.compact
    def __call__(self, pooled: jax.Array) -> jax.Array:
        h = nn.Dense(
            self.hidden_dim,
            kernel_init=dense_init(("embed", "mlp")),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("mlp",)),
            name="hidden",
        )(pooled)
        h = nn.gelu(h, approximate=False)
        z = nn.Dense(
            self.embed_dim,
            kernel_init=dense_init(("mlp", None)),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (None,)),
            name="out",
        )(h)
        z = nn.LayerNorm(
            scale_init=nn.with_logical_partitioning(nn.initializers.ones, (None,)),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (None,)),
            name="norm",
        )(z)
        return l2_normalise(z)
