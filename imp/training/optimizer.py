"""Optax Adam with a linear warm-up and cosine decay (seed 004 §4: Adam, no weight decay)."""

import gin
import optax

from imp import validation


# Registered, not decorated: `Experiment.from_gin` applies the bindings (`make_optimizer.*`).
@gin.register
def make_optimizer(
    total_steps: int,
    learning_rate: float = 1e-3,
    warmup_steps: int = 100,
    b1: float = 0.9,
    b2: float = 0.999,
    weight_decay: float = 0.0,
    clip_norm: float | None = 1.0,
    decay_steps: int | None = None,
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """Returns the optimizer and its learning-rate schedule.

    The cosine decays over `decay_steps` (default: the run's `total_steps`); fix it when a
    run will be extended, so that its first part follows the same schedule.
    """
    for name, value, minimum in (
        ("learning_rate", learning_rate, 0.0),
        ("warmup_steps", warmup_steps, 0),
        ("weight_decay", weight_decay, 0.0),
        ("b1", b1, 0.0),
        ("b2", b2, 0.0),
    ):
        validation.at_least(f"make_optimizer.{name}", value, minimum)
    validation.require(
        b1 < 1 and b2 < 1, f"make_optimizer: b1 = {b1} and b2 = {b2} must be below 1"
    )
    if clip_norm is not None:
        validation.at_least("make_optimizer.clip_norm", clip_norm, 1e-12)
    if decay_steps is not None:
        validation.at_least("make_optimizer.decay_steps", decay_steps, 1)
    decay_steps = max(decay_steps or total_steps, 2)
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, learning_rate, min(warmup_steps, decay_steps - 1), decay_steps
    )
    if weight_decay:
        update = optax.adamw(schedule, b1=b1, b2=b2, weight_decay=weight_decay)
    else:
        update = optax.adam(schedule, b1=b1, b2=b2)
    parts = [optax.clip_by_global_norm(clip_norm)] if clip_norm else []
    return optax.chain(*parts, update), schedule
