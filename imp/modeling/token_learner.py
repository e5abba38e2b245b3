"""TokenLearner and TokenFuser (seed 001: "What can 8 learned tokens do for images and
video?"), inserted after layer k of the encoder.

`TokenLearner` summarises the tokens of each frame into S learned tokens: S spatial weight maps
`alpha(x)` (one function with S outputs), each weighting every token before the frame's tokens
are pooled. v1 weights by a sigmoid and averages; v1.1 LayerNorms, weights by a softmax over the
frame's tokens and sums. The layers after it see `frames x S` tokens instead of
`frames x space`, so their cost all but vanishes.

`TokenFuser` maps the learned tokens back onto the frame's original tokens (a mixing over the S
tokens, then per original token a sigmoid choice among them) and adds them to the tokens the
learner started from. Its mixing starts at zero, so it is the identity at initialisation.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from imp.modeling import factorised
from imp.modeling.layers import LayerNorm, constrain, dense_init

VERSIONS = ("v1", "v1.1")


class TokenLearner(nn.Module):
    """`[rows, space, d]` tokens with `[rows, space]` mask -> `[rows, num_tokens, d]`."""

    num_tokens: int
    version: str = "v1.1"

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        d_model = x.shape[-1]
        h = LayerNorm(name="ln")(x)
        h = nn.gelu(nn.Dense(d_model, kernel_init=dense_init(("embed", "mlp")), name="wi")(h))
        logits = nn.Dense(self.num_tokens, kernel_init=dense_init(("mlp", None)), name="wo")(h)
        keep = mask[..., None]  # [rows, space, 1]
        if self.version == "v1":
            weights = jax.nn.sigmoid(logits) * keep
            weights = weights / jnp.maximum(keep.sum(1, keepdims=True), 1)
        else:
            logits = jnp.where(keep, logits, jnp.finfo(logits.dtype).min)
            weights = jax.nn.softmax(logits, axis=1)
        return jnp.einsum("rns,rnd->rsd", weights, x)


class TokenFuser(nn.Module):
    """Learned tokens `[rows, S, d]` onto the original tokens `[rows, space, d]`: returns
    `[rows, space, d]`, equal to `original` at initialisation."""

    @nn.compact
    def __call__(self, learned: jax.Array, original: jax.Array) -> jax.Array:
        num_tokens = learned.shape[1]
        zeros = nn.with_logical_partitioning(nn.initializers.zeros, (None, None))
        mixed = LayerNorm(name="ln_learned")(learned)
        mixed = nn.DenseGeneral(
            num_tokens, axis=1, kernel_init=zeros, use_bias=False, name="mix_tokens"
        )(mixed)  # [rows, d, S]: each output token a mixture of the S tokens
        choice = nn.Dense(num_tokens, kernel_init=dense_init(("embed", None)), name="choose")(
            LayerNorm(name="ln_original")(original)
        )
        fused = jnp.einsum("rns,rds->rnd", jax.nn.sigmoid(choice), mixed)
        return original + fused


class TokenLearnerEncoder(nn.Module):
    """`first` encoder layers, a `TokenLearner` per frame (`grid`), the `rest` of the layers on
    `frames x num_tokens` tokens; with `fuse`, a `TokenFuser` back onto the frames' tokens.
    Same interface as `Encoder`."""

    first: nn.Module  # an `Encoder` of the first k layers
    rest: nn.Module  # an `Encoder` of the others
    num_tokens: int
    version: str = "v1.1"
    fuse: bool = False

    @nn.compact
    def __call__(
        self, x: jax.Array, mask: jax.Array, grid: tuple[int, int] | None = None
    ) -> tuple[jax.Array, jax.Array, dict]:
        batch = x.shape[0]
        frames, _ = factorised.frames_and_space(x.shape[1], grid)
        x, mask, first_stats = self.first(x, mask, grid)
        per_frame, frame_mask = factorised.to_space(x, grid), factorised.to_space(mask, grid)
        learned = TokenLearner(self.num_tokens, self.version, name="token_learner")(
            per_frame, frame_mask
        )
        tokens = constrain(factorised.from_space(learned, batch), ("batch", "length", "embed"))
        kept = frame_mask.any(-1).reshape(batch, frames, 1)
        kept = jnp.broadcast_to(kept, (batch, frames, self.num_tokens)).reshape(batch, -1)
        tokens, kept, rest_stats = self.rest(tokens, kept, (frames, self.num_tokens))
        stats = _mean_stats(first_stats, rest_stats)
        if not self.fuse:
            return tokens, kept, stats
        fused = TokenFuser(name="token_fuser")(
            factorised.to_space(tokens, (frames, self.num_tokens)), per_frame
        )
        return factorised.from_space(fused, batch), mask, stats


def _mean_stats(first: dict, rest: dict) -> dict:
    """Routing statistics of both parts averaged (either may have no MoE layer)."""
    if first and rest:
        return jax.tree.map(lambda a, b: (a + b) / 2, first, rest)
    return first or rest
