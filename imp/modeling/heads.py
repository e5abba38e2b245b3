"""Task heads on pooled encoder tokens: per-dataset classifiers and per-modality projections."""

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


class Projection(nn.Module):
    """CLIP-style projection into the common space, L2-normalised: `[batch, embed_dim]`."""

    embed_dim: int

    @nn.compact
    def __call__(self, pooled: jax.Array) -> jax.Array:
        z = nn.Dense(self.embed_dim, use_bias=False, kernel_init=dense_init(("embed", None)))(
            pooled
        )
        return z / jnp.linalg.norm(z, axis=-1, keepdims=True).clip(1e-6)
