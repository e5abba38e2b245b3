"""Optax Adam with a linear warm-up and cosine decay (seed 004 §4: Adam, no weight decay)."""

import gin
import optax


@gin.configurable
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
