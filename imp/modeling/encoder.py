"""The shared pre-LN Transformer encoder, scanned over layers and rematerialised.

Seed 004 §3.1: `nn.scan` traces one layer and loops it (compile time independent of depth);
`nn.remat` recomputes activations in the backward pass (memory for compute). Both are
numerically neutral, and `scan_layers=False` keeps an unrolled form for comparison.
"""

import flax.linen as nn
import jax

from imp.modeling.layers import LayerNorm, MlpBlock, SelfAttention, constrain

REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
    "minimal": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


class EncoderBlock(nn.Module):
    num_heads: int
    mlp_dim: int

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array) -> tuple[jax.Array, None]:
        x = constrain(x, ("batch", "length", "embed"))
        x = x + SelfAttention(self.num_heads, name="attention")(
            LayerNorm(name="ln_attention")(x), mask
        )
        x = x + MlpBlock(self.mlp_dim, name="mlp")(LayerNorm(name="ln_mlp")(x))
        return x, None  # (carry, per-layer output) as nn.scan expects


class Encoder(nn.Module):
    """`[batch, length, embed]` tokens with `[batch, length]` mask -> encoded tokens."""

    num_layers: int
    num_heads: int
    mlp_dim: int
    scan_layers: bool = True
    remat_policy: str = "none"

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        if self.remat_policy not in REMAT_POLICIES:
            raise ValueError(f"remat_policy '{self.remat_policy}' not in {sorted(REMAT_POLICIES)}")
        block = EncoderBlock
        if self.remat_policy != "none":
            block = nn.remat(
                block, policy=REMAT_POLICIES[self.remat_policy], prevent_cse=not self.scan_layers
            )
        if self.scan_layers:
            stack = nn.scan(
                block,
                variable_axes={"params": 0},
                split_rngs={"params": True, "dropout": True},
                in_axes=nn.broadcast,
                length=self.num_layers,
                metadata_params={nn.PARTITION_NAME: "layers"},
            )(self.num_heads, self.mlp_dim, name="layers")
            x, _ = stack(x, mask)
        else:
            for i in range(self.num_layers):
                x, _ = block(self.num_heads, self.mlp_dim, name=f"layers_{i}")(x, mask)
        return LayerNorm(name="ln_final")(x)
