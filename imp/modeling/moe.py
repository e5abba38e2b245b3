"""Sparse Mixture-of-Experts feed-forward layer with V-MoE / LIMoE routers.

Tokens are split into groups `[G, S, D]`; a router maps each group to dispatch and combine
tensors `[G, S, E, C]` (token s goes to slot c of expert e, weighted by its router
probability). Experts are one stacked MLP with a leading `expert` axis, so the partitioner
can shard them across devices (an all-to-all dispatch under expert parallelism).

Routers (one interface: `probs [G, S, E] -> Routing`):
  - `experts_choose` (IMP / LIMoE default, seed 004 §3.3): each expert takes its top-C tokens
    by probability; C = round(capacity_factor * S / E), at least 1. No auxiliary loss needed.
  - `tokens_choose`: each token picks its top-k experts; experts accept tokens in priority
    order up to capacity C = round(capacity_factor * k * S / E) and drop the rest. Batch
    Prioritized Routing (V-MoE) orders tokens by their top probability instead of position.
"""

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from imp.modeling.layers import constrain, param_with_axes

ROUTERS = ("experts_choose", "tokens_choose")


@dataclasses.dataclass
class Routing:
    dispatch: jax.Array  # [G, S, E, C] 0/1
    combine: jax.Array  # [G, S, E, C] router probability of each dispatched token


def capacity(group_size: int, num_experts: int, capacity_factor: float, k: int = 1) -> int:
    return max(1, round(capacity_factor * k * group_size / num_experts))


def experts_choose(probs: jax.Array, capacity_factor: float = 1.0) -> Routing:
    """Each expert fills exactly C slots with its C most probable tokens of the group."""
    g, s, e = probs.shape
    c = capacity(s, e, capacity_factor)
    top_probs, top_tokens = jax.lax.top_k(probs.transpose(0, 2, 1), min(c, s))  # [G, E, C]
    dispatch = jax.nn.one_hot(top_tokens, s, dtype=probs.dtype)  # [G, E, C, S]
    dispatch = dispatch.transpose(0, 3, 1, 2)  # [G, S, E, C]
    return Routing(dispatch, dispatch * top_probs[:, None])


def tokens_choose(
    probs: jax.Array, k: int = 1, capacity_factor: float = 1.0, batch_priority: bool = False
) -> Routing:
    """Top-k experts per token; an expert over capacity drops its lowest-priority tokens.

    Priority: all tokens' first choices before any second choice, and within a choice, token
    order (or, with `batch_priority`, descending top-1 probability).
    """
    g, s, e = probs.shape
    c = capacity(s, e, capacity_factor, k)
    top_probs, top_experts = jax.lax.top_k(probs, k)  # [G, S, k]
    if batch_priority:
        order = jnp.argsort(-top_probs[..., 0], axis=1)  # [G, S] tokens, most confident first
    else:
        order = jnp.broadcast_to(jnp.arange(s), (g, s))
    inverse = jnp.argsort(order, axis=1)
    choices = jax.nn.one_hot(top_experts, e, dtype=jnp.int32)  # [G, S, k, E]
    ranked = jnp.take_along_axis(choices, order[:, :, None, None], axis=1)
    ranked = ranked.transpose(0, 2, 1, 3).reshape(g, k * s, e)  # choice-major priority
    position = jnp.cumsum(ranked, axis=1) * ranked - 1  # slot in the expert, -1 = not chosen
    position = position.reshape(g, k, s, e).transpose(0, 2, 1, 3)  # [G, S(ranked), k, E]
    position = jnp.take_along_axis(position, inverse[:, :, None, None], axis=1)
    slots = jax.nn.one_hot(position, c, dtype=probs.dtype)  # [G, S, k, E, C]; -1 and >= C drop
    dispatch = slots.sum(2)  # [G, S, E, C]
    weights = (jax.nn.one_hot(top_experts, e, dtype=probs.dtype) * top_probs[..., None]).sum(2)
    return Routing(dispatch, dispatch * weights[..., None])


def load_balancing_loss(probs: jax.Array) -> jax.Array:
    """Switch/V-MoE auxiliary loss: E * sum_e (fraction routed top-1 to e) * (mean prob of e)."""
    e = probs.shape[-1]
    top1 = jax.nn.one_hot(probs.argmax(-1), e).mean(axis=(0, 1))
    return e * jnp.sum(top1 * probs.mean(axis=(0, 1)))


def z_loss(logits: jax.Array) -> jax.Array:
    """ST-MoE router z-loss: mean squared log-partition of the router logits."""
    return jnp.mean(jax.nn.logsumexp(logits, axis=-1) ** 2)


def num_groups(num_tokens: int, max_group_size: int) -> int:
    """Fewest groups of at most `max_group_size` tokens that divide the tokens evenly."""
    groups = math.ceil(num_tokens / max_group_size)
    while num_tokens % groups:
        groups += 1
    return groups


@dataclasses.dataclass(frozen=True)
class MoeConfig:
    """How a MoE layer routes: `num_experts` experts, a router from ROUTERS, its capacity
    factor, the largest token group, and for tokens-choose top-k and BPR."""

    num_experts: int
    router: str = "experts_choose"
    capacity_factor: float = 1.0
    max_group_size: int = 4096
    top_k: int = 1
    batch_priority: bool = False


class MoeMlp(nn.Module):
    """`[batch, length, embed]` -> same, through `config.num_experts` routed MLP experts.

    Returns the output and routing statistics: the fraction of tokens each expert took
    `[E]`, the fraction of real tokens no expert processed, and the auxiliary losses.
    """

    config: MoeConfig
    mlp_dim: int
    approximate_gelu: bool = True  # as `MlpBlock`'s

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array) -> tuple[jax.Array, dict]:
        cfg = self.config
        assert cfg.router in ROUTERS, cfg.router  # `model.check_config` names a wrong value
        b, length, d = x.shape
        g = num_groups(b * length, cfg.max_group_size)
        tokens = constrain(x.reshape(g, -1, d), ("batch", None, "embed"))  # [G, S, D]
        real = mask.reshape(g, -1).astype(jnp.float32)  # [G, S]
        w_router = param_with_axes(
            self, "router", nn.initializers.normal(0.02), (d, cfg.num_experts), ("embed", None)
        )
        # The router runs in float32 whatever the compute dtype (as IMP's reference code):
        # in bfloat16, near-equal logits tie and the top-C choice flips between steps.
        logits = jnp.einsum("gsd,de->gse", tokens.astype(jnp.float32), w_router.astype(jnp.float32))
        # Padding tokens get zero probability: ranked last, combined with weight 0.
        probs = jax.nn.softmax(logits, axis=-1) * real[..., None]
        if cfg.router == "experts_choose":
            routing = experts_choose(probs, cfg.capacity_factor)
        else:
            routing = tokens_choose(probs, cfg.top_k, cfg.capacity_factor, cfg.batch_priority)
        # Under expert parallelism these two constraints make the dispatch and the combine
        # all-to-alls: groups move from the batch axes to their experts' devices and back.
        on_experts = ("expert", "expert_group", None, "embed")
        dispatch, combine = routing.dispatch.astype(x.dtype), routing.combine.astype(x.dtype)
        expert_in = constrain(jnp.einsum("gsec,gsd->egcd", dispatch, tokens), on_experts)
        out = constrain(self._experts(expert_in), on_experts)  # [E, G, C, D]
        y = jnp.einsum("gsec,egcd->gsd", combine, out)
        y = constrain(y, ("batch", None, "embed")).reshape(b, length, d)
        num_real = jnp.maximum(real.sum(), 1.0)
        processed = (routing.dispatch.sum(axis=(2, 3)) > 0).astype(jnp.float32) * real
        stats = {
            "expert_fraction": routing.dispatch.sum(axis=(0, 1, 3)) / num_real,  # [E]
            # Under experts-choose every expert fills its C slots whatever the modality, so
            # the router's preference per expert is the informative view of specialisation.
            "router_probability": probs.sum(axis=(0, 1)) / num_real,  # [E]
            "dropped_fraction": 1.0 - processed.sum() / num_real,
            "load_balancing_loss": load_balancing_loss(probs),
            "z_loss": z_loss(logits),
        }
        return y, stats

    def _experts(self, x: jax.Array) -> jax.Array:
        """Stacked expert MLPs: `[E, G, C, D]` -> `[E, G, C, D]`."""
        e, d, f = self.config.num_experts, x.shape[-1], self.mlp_dim
        xavier = nn.initializers.xavier_uniform(in_axis=-2, out_axis=-1, batch_axis=(0,))
        wi = param_with_axes(self, "wi", xavier, (e, d, f), ("expert", "embed", "mlp"))
        bi = param_with_axes(self, "bi", nn.initializers.zeros, (e, f), ("expert", "mlp"))
        wo = param_with_axes(self, "wo", xavier, (e, f, d), ("expert", "mlp", "embed"))
        bo = param_with_axes(self, "bo", nn.initializers.zeros, (e, d), ("expert", "embed"))
        h = nn.gelu(jnp.einsum("egcd,edf->egcf", x, wi) + bi[:, None, None], self.approximate_gelu)
        return jnp.einsum("egcf,efd->egcd", h, wo) + bo[:, None, None]
