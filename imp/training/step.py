"""Train steps: forward, objective, backward, optax update, for one task (AGD) or several
(the summed and accumulated baselines).

Parameters the step's tasks do not touch (other datasets' heads, other modalities' embedders
and projections) and their optimizer state are kept exactly as they were: with plain Adam
they would otherwise keep moving on stale momentum (UniT, seed 002 footnote 2). Each graph is
compiled for its tasks, so this mask is static.

A step whose loss or gradients are not finite changes nothing but the step counter and
reports `skipped`; the loop decides when too many in a row stop the run.
"""

import dataclasses
import functools
import itertools
from collections.abc import Callable, Sequence

import gin
import jax
import jax.numpy as jnp
import optax

from imp import objectives, validation
from imp.modeling.model import ImpModel, contrastive_parameters
from imp.tasks.spec import CLASSIFICATION, DETECTION, GENERATION, TaskSpec
from imp.training.optimizer import StepSize
from imp.training.train_state import TrainState


def used_parameters(task: TaskSpec) -> set[str]:
    """Top-level parameter collections the task reads."""
    parts = ("embedders", "class_tokens", "adaptors", "encoders")
    used = {"encoder"} | {f"{part}_{m}" for m in task.modalities for part in parts}
    if "vision" in task.modalities:  # PolyViT's separate image and video adaptors
        used.add("adaptors_image" if task.frames == 1 else "adaptors_video")
    if task.objective == GENERATION:  # the LiT decoder, shared by every generation task
        used.add("text_decoder")
    elif task.decoded:  # UniT: the shared decoder, the task's queries and head
        head = "detectors" if task.objective == DETECTION else "decoded_classifiers"
        used |= {"decoder", f"queries_{task.head}", f"{head}_{task.head}"}
    elif task.objective in CLASSIFICATION:
        used.add(f"classifiers_{task.head}")
    else:
        used |= contrastive_parameters(task.modalities)
    return used


def _keep_untouched(new, old, untouched: set[str]):
    """`old` under the top-level collections named in `untouched`, else `new`."""

    def pick(path, n, o):
        return o if any(getattr(p, "key", None) in untouched for p in path) else n

    return jax.tree_util.tree_map_with_path(pick, new, old)


COMPUTE_DTYPES = ("float32", "bfloat16")


# Registered, not decorated: `Experiment.from_gin` reads the gin bindings once and the steps
# receive a plain value, so gin is never consulted while a step is traced.
@gin.register
@dataclasses.dataclass(frozen=True)
class TaskLoss:
    """A task's weighted loss and its metrics, `(model, task, params, batch, rng) -> (loss,
    metrics)`.

    `compute_dtype="bfloat16"` runs the model in bfloat16 on bfloat16 copies of the float32
    parameters (their gradients flow back to float32); losses are computed in float32. MoE
    auxiliary losses (router z-loss, load balancing) are added with their weights; seed 004
    trains experts-choose routing without them.
    """

    router_z_loss_weight: float = 0.0
    load_balancing_weight: float = 0.0
    label_smoothing: float = 0.0
    compute_dtype: str = "float32"
    text_label_smoothing: float = 0.1  # of generation tasks (seed 003 fixes 0.1)
    set_weights: objectives.SetWeights = objectives.SetWeights()  # of detection tasks

    def __post_init__(self):
        validation.check_fields(self, "TaskLoss")
        for name in (
            "router_z_loss_weight",
            "load_balancing_weight",
            "label_smoothing",
            "text_label_smoothing",
        ):
            validation.at_least(f"TaskLoss.{name}", getattr(self, name), 0.0)
        for name in ("label_smoothing", "text_label_smoothing"):
            validation.require(
                getattr(self, name) < 1.0,
                f"TaskLoss.{name} = {getattr(self, name)}: expected a number in [0, 1)",
            )
        validation.require(
            self.compute_dtype in COMPUTE_DTYPES,
            f"TaskLoss.compute_dtype = {self.compute_dtype!r}: choose from {COMPUTE_DTYPES}",
        )
        validation.require(
            isinstance(self.set_weights, objectives.SetWeights),
            f"TaskLoss.set_weights = {self.set_weights!r}: expected @SetWeights()",
        )
        validation.check_fields(self.set_weights, "SetWeights")
        for name in ("classification", "l1", "giou", "no_object"):
            validation.at_least(f"SetWeights.{name}", getattr(self.set_weights, name), 0.0)

    def __call__(
        self, model: ImpModel, task: TaskSpec, params, batch: dict, rng: jax.Array
    ) -> tuple[jax.Array, dict]:
        inputs = {m: batch[m] for m in task.modalities}
        if self.compute_dtype != "float32":
            dtype = jnp.dtype(self.compute_dtype)
            params = jax.tree.map(
                lambda p: p.astype(dtype) if p.dtype == jnp.float32 else p, params
            )
            inputs = {
                m: x.astype(dtype) if x.dtype == jnp.float32 else x for m, x in inputs.items()
            }
        targets = None
        if task.mixup > 0:  # a classification task's (checked when the experiment is built)
            rng, mix_rng = jax.random.split(rng)
            labels = batch["labels"] if task.objective == "bce" else batch["label"]
            if task.objective == "softmax":
                labels = jax.nn.one_hot(labels, task.num_classes)
            inputs, targets, _ = objectives.mixup(mix_rng, inputs, labels, task.mixup)
        method = ImpModel.decode if task.decoded else ImpModel.__call__
        if task.objective == GENERATION:
            method = functools.partial(ImpModel.text_logits, tokens=batch["decoder_tokens"])
        out = model.apply(
            {"params": params},
            inputs,
            head=task.output_head,
            drop_rate=task.drop_rate,
            train=True,
            drop_path=task.stochastic_depth,
            rngs={"droptoken": rng, "drop_path": jax.random.fold_in(rng, 1)},
            method=method,
        )
        out = {k: v.astype(jnp.float32) if v.dtype == jnp.bfloat16 else v for k, v in out.items()}
        if task.objective == DETECTION:
            labels = batch["object_labels"]  # [batch, max_objects], -1 = padding
            loss, metrics = objectives.set_prediction(
                out["class_logits"],
                out["boxes"],
                jnp.maximum(labels, 0),
                batch["object_boxes"],
                labels >= 0,
                self.set_weights,
            )
        elif task.objective == GENERATION:
            loss, metrics = objectives.text_cross_entropy(
                out["logits"],
                batch["decoder_tokens"],
                batch["prompt_length"],
                self.text_label_smoothing,
            )
        elif task.objective == "softmax":
            loss, metrics = objectives.softmax_cross_entropy(
                out["logits"], batch["label"], self.label_smoothing, targets
            )
        elif task.objective == "bce":
            labels = batch["labels"] if targets is None else targets
            loss, metrics = objectives.sigmoid_binary_cross_entropy(out["logits"], labels)
        else:
            pairs = list(itertools.combinations(sorted(task.modalities), 2))
            scales = {(x, y): out[f"logit_scale/{x}/{y}"] for x, y in pairs}
            embeddings = {
                (s, t): out[f"embedding/{s}/{t}"]
                for s, t in itertools.permutations(task.modalities, 2)
            }
            loss, metrics = objectives.nce(embeddings, scales)
        routing = {k: v for k, v in out.items() if k.startswith("routing/")}
        if routing:
            aux = {
                name: jnp.mean(jnp.stack([v for k, v in routing.items() if k.endswith(name)]))
                for name in ("/z_loss", "/load_balancing_loss")
            }
            loss = loss + self.router_z_loss_weight * aux["/z_loss"]
            loss = loss + self.load_balancing_weight * aux["/load_balancing_loss"]
            metrics.update(routing)
        return task.loss_weight * loss, {**metrics, "loss": loss}


def _select(finite, new, old):
    return jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)


def make_train_step(
    model: ImpModel,
    tx: optax.GradientTransformation,
    step_size: StepSize,
    tasks: Sequence[TaskSpec],
    loss: TaskLoss,
    freeze_untouched: bool = True,
) -> Callable:
    """`(state, batches, rng) -> (state, metrics)` minimising the sum of `tasks`' losses on
    `batches` (task name -> batch): one task is an AGD step, all tasks the summed baseline.

    A lone task's step goes its own `StepSize` (`StepSize.for_task`); with several tasks,
    each `lr_multiplier` scales that task's gradient and the update goes the run's.
    """
    tasks = tuple(tasks)
    size = step_size.for_task(tasks[0]) if len(tasks) == 1 else step_size

    def loss_fn(params, batches, rng):
        total, metrics = 0.0, {}
        for i, task in enumerate(tasks):
            scale = task.lr_multiplier if len(tasks) > 1 else 1.0
            value, m = loss(model, task, params, batches[task.name], jax.random.fold_in(rng, i))
            total = total + scale * value
            metrics.update({f"{task.name}/{k}": v for k, v in m.items()} if len(tasks) > 1 else m)
        return total, metrics

    def step(state: TrainState, batches: dict, rng: jax.Array) -> tuple[TrainState, dict]:
        (total, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state["params"], batches, rng
        )
        finite = jnp.isfinite(total) & jnp.isfinite(optax.global_norm(grads))
        new_state = apply_gradients(state, grads, tx, size, tasks, freeze_untouched, finite)
        metrics = {
            **metrics,
            "loss": total,
            "grad_norm": optax.global_norm(grads),
            "learning_rate": size(state["step"]),
            "skipped": ~finite,
        }
        return new_state, metrics

    return step


def apply_gradients(
    state, grads, tx, step_size: StepSize, tasks, freeze_untouched: bool = True, finite=None
) -> TrainState:
    """The update of `grads` (`tx`'s direction, `step_size`'s learning rate and weight decay)
    for a step training `tasks`, keeping untouched parameters (and everything, when the step is not
    `finite`: by default, when the gradients are not) as they were; the step counter always
    advances, so the learning rate of step n is the one reported for step n."""
    if finite is None:
        finite = jnp.isfinite(optax.global_norm(grads))
    direction, opt_state = tx.update(grads, state["opt_state"], state["params"])
    updates = step_size.update(direction, state["params"], state["step"])
    params = optax.apply_updates(state["params"], updates)
    if freeze_untouched:
        untouched = set(state["params"]) - set().union(*(used_parameters(t) for t in tasks))
        params = _keep_untouched(params, state["params"], untouched)
        opt_state = _keep_untouched(opt_state, state["opt_state"], untouched)
    return {
        "step": state["step"] + 1,
        "params": _select(finite, params, state["params"]),
        "opt_state": _select(finite, opt_state, state["opt_state"]),
    }


def make_grad_step(model: ImpModel, task: TaskSpec, loss: TaskLoss) -> Callable:
    """`(params, batch, rng) -> (grads, metrics)` of one task (the accumulated schedule)."""

    def grad_step(params, batch, rng):
        (_, metrics), grads = jax.value_and_grad(
            lambda p: loss(model, task, p, batch, rng), has_aux=True
        )(params)
        grads = jax.tree.map(lambda g: g * task.lr_multiplier, grads)
        return grads, metrics

    return grad_step


def make_apply_step(
    tx: optax.GradientTransformation,
    step_size: StepSize,
    tasks: Sequence[TaskSpec],
    freeze_untouched: bool = True,
) -> Callable:
    """`(state, grads) -> (state, metrics)`: one update from gradients summed over tasks (each
    scaled by its `lr_multiplier` in `make_grad_step`), of the run's `step_size`."""

    def apply_step(state, grads):
        new_state = apply_gradients(state, grads, tx, step_size, tuple(tasks), freeze_untouched)
        finite = jnp.isfinite(optax.global_norm(grads))
        return new_state, {
            "grad_norm": optax.global_norm(grads),
            "learning_rate": step_size(state["step"]),
            "skipped": ~finite,
        }

    return apply_step


def make_gradient_similarity(
    model: ImpModel, tasks: Sequence[TaskSpec], loss: TaskLoss
) -> Callable:
    """`(params, batches, rng) -> [tasks, tasks]` cosine similarity of the tasks' gradients
    on the shared encoder: negative entries are conflicting tasks (seed 004 §3.3)."""
    tasks = tuple(tasks)

    def similarity(params, batches, rng):
        flat = []
        for task in tasks:
            grads = jax.grad(lambda p, t=task: loss(model, t, p, batches[t.name], rng)[0])(params)
            flat.append(jnp.concatenate([g.ravel() for g in jax.tree.leaves(grads["encoder"])]))
        g = jnp.stack(flat)
        g = g / jnp.maximum(jnp.linalg.norm(g, axis=1, keepdims=True), 1e-12)
        return g @ g.T

    return similarity
