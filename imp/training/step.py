"""The AGD train step for one task: forward, objective, backward, optax update.

Parameters the task does not touch (other datasets' heads, other modalities' embedders and
projections) and their optimizer state are kept exactly as they were: with plain Adam they
would otherwise keep moving on stale momentum (UniT, seed 002 footnote 2). Each task's step
is compiled on its own, so this mask is static.
"""

from collections.abc import Callable

import gin
import jax
import jax.numpy as jnp
import optax

from imp import objectives
from imp.modeling.model import ImpModel
from imp.tasks.registry import CLASSIFICATION
from imp.training.train_state import TrainState


def used_parameters(task) -> set[str]:
    """Top-level parameter collections the task reads."""
    used = {"encoder"} | {
        f"{part}_{m}" for m in task.modalities for part in ("embedders", "encoders")
    }
    if task.objective in CLASSIFICATION:
        used.add(f"classifiers_{task.head}")
    else:
        used |= {f"projections_{m}" for m in task.modalities} | {"logit_scale"}
    return used


def _keep_untouched(new, old, untouched: set[str]):
    def pick(path, n, o):
        touched = not any(getattr(p, "key", None) in untouched for p in path)
        return n if touched else o

    return jax.tree_util.tree_map_with_path(pick, new, old)


@gin.configurable(denylist=["model", "tx", "schedule", "task", "freeze_untouched"])
def make_train_step(
    model: ImpModel,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    task,
    freeze_untouched: bool = True,
    router_z_loss_weight: float = 0.0,
    load_balancing_weight: float = 0.0,
) -> Callable:
    """`(state, batch, rng) -> (state, metrics)` for `task` (an `imp.tasks.TaskSpec`)."""

    def loss_fn(params, batch, rng):
        inputs = {m: batch[m] for m in task.modalities}
        head = task.head if task.objective in CLASSIFICATION else None
        out = model.apply(
            {"params": params},
            inputs,
            head=head,
            drop_rate=task.drop_rate,
            train=True,
            rngs={"droptoken": rng},
        )
        if task.objective == "softmax":
            loss, metrics = objectives.softmax_cross_entropy(out["logits"], batch["label"])
        elif task.objective == "bce":
            loss, metrics = objectives.sigmoid_binary_cross_entropy(out["logits"], batch["labels"])
        else:
            embeddings = {m: out[f"embedding/{m}"] for m in task.modalities}
            loss, metrics = objectives.nce(embeddings, out["logit_scale"])
            metrics["temperature"] = 1.0 / out["logit_scale"]
        routing = {k: v for k, v in out.items() if k.startswith("routing/")}
        if routing:
            aux = {
                name: jnp.mean(jnp.stack([v for k, v in routing.items() if k.endswith(name)]))
                for name in ("/z_loss", "/load_balancing_loss")
            }
            loss = loss + router_z_loss_weight * aux["/z_loss"]
            loss = loss + load_balancing_weight * aux["/load_balancing_loss"]
            metrics.update(routing)
        return loss, metrics

    def step(state: TrainState, batch: dict, rng: jax.Array) -> tuple[TrainState, dict]:
        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state["params"], batch, rng
        )
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        if freeze_untouched:
            untouched = set(state["params"]) - used_parameters(task)
            params = _keep_untouched(params, state["params"], untouched)
            opt_state = _keep_untouched(opt_state, state["opt_state"], untouched)
        metrics = {
            **metrics,
            "loss": loss,
            "grad_norm": optax.global_norm(grads),
            "learning_rate": schedule(state["step"]),
        }
        return {"step": state["step"] + 1, "params": params, "opt_state": opt_state}, metrics

    return step
