"""The shared pre-LN Transformer encoder, scanned over layers and rematerialised.

Seed 004 §3.1: `nn.scan` traces one layer and loops it (compile time independent of depth);
`nn.remat` recomputes activations in the backward pass (memory for compute). Both are
numerically neutral, and `scan_layers=False` keeps an unrolled form for comparison.

Layers come in segments of a repeated pattern: dense only (`("dense",) x L`), a MoE FFN every
k-th layer (`("dense",) * (k-1) + ("moe",)` repeated L/k times, as V-MoE/LIMoE), or the last
n layers MoE (a dense segment, then a MoE segment). Each segment is one scan.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from imp.modeling import factorised
from imp.modeling.layers import LayerNorm, MlpBlock, SelfAttention, constrain
from imp.modeling.moe import MoeConfig, MoeMlp

REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
    "minimal": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def rematerialised(layer: type[nn.Module], policy: str, scan: bool) -> type[nn.Module]:
    """`layer` under `nn.remat` with one of `REMAT_POLICIES` ("none": as it is). Unrolled
    layers keep `prevent_cse` so XLA cannot undo the recomputation."""
    if policy == "none":
        return layer
    return nn.remat(layer, policy=REMAT_POLICIES[policy], prevent_cse=not scan)


def scanned(layer: type[nn.Module], length: int) -> type[nn.Module]:
    """`layer` (called as `(carry, broadcast input) -> (carry, per-layer output)`) looped
    `length` times by `nn.scan`, its parameters stacked on a leading `layers` axis."""
    return nn.scan(
        layer,
        variable_axes={"params": 0},
        split_rngs={"params": True, "drop_path": True},
        in_axes=nn.broadcast,
        length=length,
        metadata_params={nn.PARTITION_NAME: "layers"},
    )


def layer_plan(
    num_layers: int, moe_every: int = 0, moe_last: int = 0
) -> list[tuple[tuple[str, ...], int]]:
    """Segments `(pattern, repeats)` covering `num_layers` layers."""
    if moe_every and moe_last:
        raise ValueError("set moe_every or moe_last, not both")
    if moe_every:
        if num_layers % moe_every:
            raise ValueError(f"num_layers={num_layers} is not a multiple of moe_every={moe_every}")
        return [(("dense",) * (moe_every - 1) + ("moe",), num_layers // moe_every)]
    if not 0 <= moe_last <= num_layers:
        raise ValueError(f"moe_last={moe_last} must lie in [0, num_layers={num_layers}]")
    plan = [(("dense",), num_layers - moe_last), (("moe",), moe_last)]
    return [(pattern, repeats) for pattern, repeats in plan if repeats]


def drop_path(branch: jax.Array, rate: float, rng: jax.Array) -> jax.Array:
    """Stochastic depth (Huang et al. 2016; seed 000 trains audio with 0.3): each example's
    residual branch `[batch, ...]` is dropped with probability `rate`, and the kept ones are
    scaled by 1 / (1 - rate), so the expected branch is the evaluation branch."""
    keep = 1.0 - rate
    shape = (branch.shape[0],) + (1,) * (branch.ndim - 1)
    kept = jax.random.bernoulli(rng, keep, shape)
    return branch * kept.astype(branch.dtype) / keep


# How a block attends over video tokens (seed 001, ViViT): "joint" over all space-time tokens
# (Model 1, IMP's encoder); "factorised_self_attention" first within each frame, then along
# each position, with separate weights (Model 3); "factorised_dot_product" with half the heads
# within frames and half along positions, in one attention (Model 4). See `factorised`.
ATTENTIONS = ("joint", "factorised_self_attention", "factorised_dot_product")


class EncoderBlock(nn.Module):
    """Pre-LN block: attention (`ATTENTIONS`) then a dense or MoE feed-forward (its GELU the
    tanh approximation or exact, `MlpBlock`). `grid` is `(frames, space)` of video tokens,
    None for other inputs (`factorised`)."""

    num_heads: int
    mlp_dim: int
    moe: MoeConfig | None = None
    qk_layernorm: bool = False
    attention: str = "joint"
    grid: tuple[int, int] | None = None
    approximate_gelu: bool = True
    drop_path: float = 0.0  # stochastic depth in training (`drop_path`); 0 in evaluation

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array) -> tuple[jax.Array, dict]:
        x = constrain(x, ("batch", "length", "embed"))
        if self.attention == "factorised_self_attention":
            x = self._factorised_self_attention(x, mask)
        else:
            factorised = self.attention == "factorised_dot_product"
            attention = SelfAttention(
                self.num_heads, self.qk_layernorm, factorised, name="attention"
            )
            x = x + self._drop(attention(LayerNorm(name="ln_attention")(x), mask, self.grid))
        h = LayerNorm(name="ln_mlp")(x)
        if self.moe is None:
            return x + self._drop(MlpBlock(self.mlp_dim, self.approximate_gelu, name="mlp")(h)), {}
        y, stats = MoeMlp(self.moe, self.mlp_dim, self.approximate_gelu, name="moe")(h, mask)
        return x + self._drop(y), stats

    def _drop(self, branch: jax.Array) -> jax.Array:
        if not self.drop_path:
            return branch
        return drop_path(branch, self.drop_path, self.make_rng("drop_path"))

    def _factorised_self_attention(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        """Model 3: residual attention within each frame, then along each position."""
        batch = x.shape[0]
        for axis, to, back in (
            ("space", factorised.to_space, factorised.from_space),
            ("time", factorised.to_time, factorised.from_time),
        ):
            attention = SelfAttention(self.num_heads, self.qk_layernorm, name=f"attention_{axis}")
            h = to(LayerNorm(name=f"ln_attention_{axis}")(x), self.grid)
            x = x + self._drop(back(attention(h, to(mask, self.grid)), batch))
        return x


class BlockGroup(nn.Module):
    """One repeat of a segment's pattern; returns (tokens, routing stats of its MoE blocks)."""

    pattern: tuple[str, ...]
    num_heads: int
    mlp_dim: int
    moe: MoeConfig | None = None
    qk_layernorm: bool = False
    attention: str = "joint"
    grid: tuple[int, int] | None = None
    approximate_gelu: bool = True
    drop_path: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array) -> tuple[jax.Array, list[dict]]:
        stats = []
        for i, kind in enumerate(self.pattern):
            moe = self.moe if kind == "moe" else None
            block = EncoderBlock(
                self.num_heads,
                self.mlp_dim,
                moe,
                self.qk_layernorm,
                self.attention,
                self.grid,
                self.approximate_gelu,
                self.drop_path,
                name=f"{kind}_{i}",
            )
            x, s = block(x, mask)
            if s:
                stats.append(s)
        return x, stats  # (carry, per-layer output) as nn.scan expects


class Encoder(nn.Module):
    """`[batch, length, embed]` tokens with `[batch, length]` mask -> encoded tokens, their
    mask (the same) and the routing statistics averaged over MoE layers (empty for a dense
    encoder). `grid`: the `(frames, space)` layout of video tokens for the factorised
    `attention`s; `drop_path`: the stochastic depth rate of every layer (training; an rng
    "drop_path")."""

    num_layers: int
    num_heads: int
    mlp_dim: int
    scan_layers: bool = True
    remat_policy: str = "none"
    moe: MoeConfig | None = None
    moe_every: int = 0
    moe_last: int = 0
    qk_layernorm: bool = False
    attention: str = "joint"
    approximate_gelu: bool = True
    final_norm: bool = True  # a last LayerNorm (not in a stack that feeds another, `adaptors`)

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        mask: jax.Array,
        grid: tuple[int, int] | None = None,
        drop_path: float = 0.0,
    ) -> tuple[jax.Array, jax.Array, dict]:
        assert self.remat_policy in REMAT_POLICIES, self.remat_policy  # see `check_config`
        assert self.attention in ATTENTIONS, self.attention
        group = rematerialised(BlockGroup, self.remat_policy, self.scan_layers)
        moe_every, moe_last = (self.moe_every, self.moe_last) if self.moe else (0, 0)
        layer_stats = []
        for j, (pattern, repeats) in enumerate(layer_plan(self.num_layers, moe_every, moe_last)):
            args = (
                pattern,
                self.num_heads,
                self.mlp_dim,
                self.moe,
                self.qk_layernorm,
                self.attention,
                grid if self.attention != "joint" else None,
                self.approximate_gelu,
                drop_path,
            )
            if self.scan_layers:
                stack = scanned(group, repeats)(*args, name=f"segment_{j}")
                x, stats = stack(x, mask)  # stats leaves: [repeats, ...]
                layer_stats += [jax.tree.map(lambda v: v.mean(0), s) for s in stats]
            else:
                for r in range(repeats):
                    x, stats = group(*args, name=f"segment_{j}_{r}")(x, mask)
                    layer_stats += stats
        stats = (
            jax.tree.map(lambda *v: jnp.mean(jnp.stack(v), 0), *layer_stats) if layer_stats else {}
        )
        return (LayerNorm(name="ln_final")(x) if self.final_norm else x), mask, stats
