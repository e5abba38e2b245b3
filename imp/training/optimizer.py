"""Adam with a step count per parameter, a linear warm-up and a cosine decay (seed 004 §4: Adam,
no weight decay; the reference code's options add `eps` and decoupled weight decay on kernels).

Under AGD a parameter group (a dataset's classifier, a modality's embedder) takes an update only
on the steps that sample it, and the train step keeps it and its optimizer state as they were on
the others. Adam's bias correction must then count the group's own updates, not the run's steps:
with one global count, a head sampled 10% of the time would be corrected as if its moments had
been averaged over ten times as many gradients as they have (UniT, seed 002, keeps one count per
group for this reason). `scale_by_group_adam` keeps one count per parameter leaf, in a tree of
the parameters' structure, so the train step freezes a group's count with its moments.

The optimizer gives a direction; how far a step goes along it is the `StepSize`'s, which the
train step applies: the learning rate follows the run's step, and a task may have its own peak
(`lr_multiplier`), warm-up and weight decay (PolyViT, seed 000 Table 6), so the rate and decay of
a step are those of the task it trains.

Under a text decoder (the LiT decoder, seed 003), everything else, the encoder, may learn at a
fraction of the rate (`encoder_lr_multiplier`; seed 003 fine-tunes at 0.1) or not at all (0:
the encoder is frozen, and the optimizer keeps no state for it).
"""

import dataclasses
import math
from typing import Any, NamedTuple

import gin
import jax
import jax.numpy as jnp
import optax

from imp import validation


class ScaleByGroupAdamState(NamedTuple):
    count: Any  # the parameters' tree of int32 []: updates each leaf has taken
    mu: optax.Updates  # first moments, like the parameters
    nu: optax.Updates  # second moments, like the parameters


def scale_by_group_adam(b1: float, b2: float, eps: float) -> optax.GradientTransformation:
    """Adam's direction `m_hat / (sqrt(v_hat) + eps)`, where the bias corrections
    `1 - b ** n` use each leaf's own update count `n`.

    The counts sit in a tree of the parameters' structure (int32 scalars), so whatever holds a
    parameter collection unchanged, moments and all, holds its count too.
    """

    log_b1, log_b2 = (math.log(b) if b > 0 else -math.inf for b in (b1, b2))

    def init(params):
        return ScaleByGroupAdamState(
            count=jax.tree.map(lambda _: jnp.zeros([], jnp.int32), params),
            mu=jax.tree.map(jnp.zeros_like, params),
            nu=jax.tree.map(jnp.zeros_like, params),
        )

    def update(updates, state, params=None):
        del params
        count = jax.tree.map(optax.safe_increment, state.count)
        mu = jax.tree.map(lambda g, m: b1 * m + (1 - b1) * g, updates, state.mu)
        nu = jax.tree.map(lambda g, v: b2 * v + (1 - b2) * g * g, updates, state.nu)

        def direction(m, v, n):
            # `1 - b ** n` as `-expm1(n log b)`: in float32 the subtraction would lose ~1e-5 of
            # `1 - b2 ** n` to cancellation (b2 = 0.999 is stored to ~1e-8).
            n = n.astype(jnp.float32)
            m_hat = m / -jnp.expm1(n * log_b1).astype(m.dtype)
            v_hat = v / -jnp.expm1(n * log_b2).astype(v.dtype)
            return m_hat / (jnp.sqrt(v_hat) + eps)

        return jax.tree.map(direction, mu, nu, count), ScaleByGroupAdamState(count, mu, nu)

    return optax.GradientTransformation(init, update)


_MOE_MATRICES = ("wi", "wo", "router")  # `imp.modeling.moe.MoeMlp`'s kernels


def is_kernel(path) -> bool:
    """Whether weight decay applies to the parameter at `path`: a leaf named `kernel` or
    `*_kernel` (dense and attention matrices) or one of the MoE layer's stacked expert and
    router matrices (`wi`, `wo`, `router`); not a bias, LayerNorm scale, embedding table,
    position table or temperature."""
    name = str(getattr(path[-1], "key", "")) if path else ""
    return name.endswith("kernel") or name in _MOE_MATRICES


def kernel_mask(params):
    """True at the parameters `is_kernel` picks, like `params`."""
    return jax.tree_util.tree_map_with_path(lambda path, _: is_kernel(path), params)


@dataclasses.dataclass(frozen=True)
class StepSize:
    """A step's learning rate, a linear warm-up from zero to `peak` and a cosine decay to zero
    at `decay_steps`, and the decoupled weight decay (AdamW's, scaled by the learning rate) on
    kernels (`is_kernel`). `for_task` gives a task's own."""

    peak: float
    warmup_steps: int
    decay_steps: int
    weight_decay: float = 0.0
    encoder_multiplier: float = 1.0  # of the rate outside `DECODER_COLLECTIONS`

    def __call__(self, step) -> jax.Array:
        """The learning rate at `step` (counted from 0)."""
        warmup = min(self.warmup_steps, self.decay_steps - 1)
        return optax.warmup_cosine_decay_schedule(0.0, self.peak, warmup, self.decay_steps)(step)

    def for_task(self, task) -> "StepSize":
        """The step size of a step that trains `task` alone (a `TaskSpec`): the peak times its
        `lr_multiplier`, and its own `warmup_steps` and `weight_decay` where it sets them."""
        return dataclasses.replace(
            self,
            peak=self.peak * task.lr_multiplier,
            warmup_steps=self.warmup_steps if task.warmup_steps is None else task.warmup_steps,
            weight_decay=self.weight_decay if task.weight_decay is None else task.weight_decay,
        )

    @property
    def frozen_encoder(self) -> bool:
        return self.encoder_multiplier == 0

    def update(self, direction, params, step):
        """The parameter update `-rate(step) * (direction + weight_decay * kernel)`, the rate
        times `encoder_multiplier` outside the text decoder."""
        rate = self(step)
        if self.weight_decay:
            direction = jax.tree.map(
                lambda d, p, k: d + self.weight_decay * p if k else d,
                direction,
                params,
                kernel_mask(params),
            )
        if self.encoder_multiplier == 1.0:
            return jax.tree.map(lambda d: -rate * d, direction)
        scale = {c: 1.0 if c in DECODER_COLLECTIONS else self.encoder_multiplier for c in direction}
        return {
            c: jax.tree.map(lambda d, s=scale[c]: -rate * s * d, tree)
            for c, tree in direction.items()
        }


# The parameter collections of the text decoder; the rest is "the encoder" to
# `encoder_lr_multiplier`.
DECODER_COLLECTIONS = ("text_decoder",)


def _decoder_only(params) -> dict:
    return {collection: collection in DECODER_COLLECTIONS for collection in params}


# "adam": Adam with one update count per parameter group (seed 004); "sgd": SGD with momentum,
# one momentum state for every task (PolyViT, seed 000 Appendix B, and ViT fine-tuning).
OPTIMIZERS = ("adam", "sgd")


# Registered, not decorated: `Experiment.from_gin` applies the bindings (`make_optimizer.*`).
@gin.register
def make_optimizer(
    total_steps: int,
    learning_rate: float = 1e-3,
    warmup_steps: int = 100,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,  # optax's default; the reference code uses 1e-7
    weight_decay: float = 0.0,  # seed 004 §4 trains without; the reference code offers it
    clip_norm: float | None = 1.0,
    decay_steps: int | None = None,
    optimizer: str = "adam",
    momentum: float = 0.9,  # of "sgd"
    encoder_lr_multiplier: float = 1.0,
) -> tuple[optax.GradientTransformation, StepSize]:
    """Returns the optimizer (`OPTIMIZERS`), which gives each step's direction, and the run's
    `StepSize` (learning rate and weight decay), which the train step applies.

    Adam keeps one update count per parameter (see `scale_by_group_adam`). SGD keeps one
    momentum trace, `trace = grad + momentum * trace`, and steps along it; under AGD a group's
    trace, like Adam's moments, holds still on the steps that do not sample it. `weight_decay`
    is decoupled (AdamW: `weight_decay * param` is added to the direction before the learning
    rate scales it) and applies to kernels only (`is_kernel`). Tasks may set their own warm-up
    and weight decay (`Experiment.task_options`).

    The cosine decays over `decay_steps` (default: the run's `total_steps`); fix it when a
    run will be extended, so that its first part follows the same schedule.

    `encoder_lr_multiplier` scales the rate of every parameter outside the text decoder
    (`DECODER_COLLECTIONS`); at 0 they are frozen, with no optimizer state.
    """
    for name, value, minimum in (
        ("learning_rate", learning_rate, 0.0),
        ("warmup_steps", warmup_steps, 0),
        ("weight_decay", weight_decay, 0.0),
        ("b1", b1, 0.0),
        ("b2", b2, 0.0),
        ("eps", eps, 0.0),
        ("encoder_lr_multiplier", encoder_lr_multiplier, 0.0),
    ):
        validation.at_least(f"make_optimizer.{name}", value, minimum)
    validation.require(
        b1 < 1 and b2 < 1, f"make_optimizer: b1 = {b1} and b2 = {b2} must be below 1"
    )
    validation.require(eps > 0, f"make_optimizer.eps = {eps!r}: expected a number > 0")
    validation.require(
        optimizer in OPTIMIZERS,
        f"make_optimizer.optimizer = {optimizer!r}: choose from {OPTIMIZERS}",
    )
    validation.require(
        isinstance(momentum, int | float) and 0 <= momentum < 1,
        f"make_optimizer.momentum = {momentum!r}: expected a number in [0, 1)",
    )
    if clip_norm is not None:
        validation.at_least("make_optimizer.clip_norm", clip_norm, 1e-12)
    if decay_steps is not None:
        validation.at_least("make_optimizer.decay_steps", decay_steps, 1)
    direction = scale_by_group_adam(b1, b2, eps) if optimizer == "adam" else optax.trace(momentum)
    if encoder_lr_multiplier == 0:
        direction = optax.masked(direction, _decoder_only)
    clip = [optax.clip_by_global_norm(clip_norm)] if clip_norm else []
    step_size = StepSize(
        learning_rate,
        warmup_steps,
        max(decay_steps or total_steps, 2),
        weight_decay,
        float(encoder_lr_multiplier),
    )
    return optax.chain(*clip, direction), step_size
