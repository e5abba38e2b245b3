"""Training objectives (seed 004 §3.2): softmax cross-entropy, sigmoid cross-entropy for
multi-label data (AudioSet), and symmetric cross-modal NCE; and set prediction for detection
(UniT, seed 002 §3.4, as DETR).

Each returns `(loss, metrics)` with a scalar loss averaged over the batch.
"""

import dataclasses

import gin
import jax
import jax.numpy as jnp
import optax

from imp import boxes as box_ops
from imp.matching import hungarian


def softmax_cross_entropy(
    logits: jax.Array,
    labels: jax.Array,
    label_smoothing: float = 0.0,
    targets: jax.Array | None = None,
) -> tuple[jax.Array, dict]:
    """`logits` `[batch, classes]`, integer `labels` `[batch]`; `targets` `[batch, classes]`
    (a distribution per row, e.g. `mixup`'s) replace the labels' one-hot rows in the loss,
    and the accuracy stays against `labels`."""
    num_classes = logits.shape[-1]
    if targets is None:
        targets = jax.nn.one_hot(labels, num_classes)
    targets = optax.smooth_labels(targets, label_smoothing)
    loss = optax.softmax_cross_entropy(logits, targets).mean()
    accuracy = (logits.argmax(-1) == labels).mean()
    return loss, {"accuracy": accuracy}


def text_cross_entropy(
    logits: jax.Array, tokens: jax.Array, prompt_lengths: jax.Array, label_smoothing: float = 0.1
) -> tuple[jax.Array, dict]:
    """The LiT decoder's loss (seed 003): cross-entropy of the teacher-forced `logits` `[batch,
    length, vocab]` against `tokens` `[batch, length]` on the answer's tokens only (after each
    prompt, up to the padding), with label smoothing (seed 003: 0.1), averaged over them.
    Metrics: token accuracy, and the share of answers whose every token is right."""
    position = jnp.arange(tokens.shape[1])
    answer = (position[None] >= prompt_lengths[:, None]) & (tokens != 0)
    targets = optax.smooth_labels(jax.nn.one_hot(tokens, logits.shape[-1]), label_smoothing)
    ce = optax.softmax_cross_entropy(logits, targets)
    count = jnp.maximum(answer.sum(), 1)
    right = logits.argmax(-1) == tokens
    exact = jnp.all(right | ~answer, axis=1)
    return jnp.where(answer, ce, 0.0).sum() / count, {
        "token_accuracy": jnp.where(answer, right, False).sum() / count,
        "exact_match": exact.mean(),
    }


def sigmoid_binary_cross_entropy(logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, dict]:
    """Multi-label: `logits` and multi-hot `labels` `[batch, classes]`; per-class sigmoid
    cross-entropy summed over classes, averaged over the batch."""
    loss = optax.sigmoid_binary_cross_entropy(logits, labels).sum(-1).mean()
    # The top class is among the example's labels.
    hit = jnp.take_along_axis(labels, logits.argmax(-1)[:, None], axis=-1)[:, 0]
    return loss, {"accuracy": hit.mean()}


def mixup(
    rng: jax.Array, inputs: dict[str, jax.Array], targets: jax.Array, alpha: float
) -> tuple[dict[str, jax.Array], jax.Array, dict]:
    """Mixup (Zhang et al. 2018; seed 000 trains audio with alpha 0.3): one weight
    `lam ~ Beta(alpha, alpha)` for the batch, each example mixed with another of a random
    permutation, `lam * x + (1 - lam) * x[perm]`, float inputs and `targets` `[batch,
    classes]` alike (token ids are not mixed). Returns the mixed inputs and targets and
    `{"lam", "perm"}`."""
    lam_rng, perm_rng = jax.random.split(rng)
    lam = jax.random.beta(lam_rng, alpha, alpha)
    perm = jax.random.permutation(perm_rng, targets.shape[0])

    def mix(x):
        x = jnp.asarray(x)
        if not jnp.issubdtype(x.dtype, jnp.floating):
            return x
        return (lam.astype(x.dtype) * x + (1 - lam).astype(x.dtype) * x[perm]).astype(x.dtype)

    mixed = {m: mix(x) for m, x in inputs.items()}
    return mixed, mix(jnp.asarray(targets, jnp.float32)), {"lam": lam, "perm": perm}


def pairwise_nce(a: jax.Array, b: jax.Array, logit_scale: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Symmetric InfoNCE between L2-normalised `a`, `b` `[batch, dim]`: row i's positive is
    column i, every other column of the batch is a negative (CLIP)."""
    logits = logit_scale * a @ b.T  # [batch, batch]
    labels = jnp.arange(a.shape[0])
    a_to_b = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    b_to_a = optax.softmax_cross_entropy_with_integer_labels(logits.T, labels).mean()
    accuracy = (logits.argmax(-1) == labels).mean()
    return 0.5 * (a_to_b + b_to_a), accuracy


def nce(
    embeddings: dict[tuple[str, str], jax.Array], logit_scales: dict[tuple[str, str], jax.Array]
) -> tuple[jax.Array, dict]:
    """Average symmetric NCE over the modality pairs `(x, y)` (names sorted) of a task, e.g.
    video-audio-text: 3 pairs. `logit_scales[(x, y)]` is the pair's 1 / temperature;
    `embeddings[(x, y)]` is x embedded for comparison with y, `[batch, dim]` L2-normalised
    (with linear heads the same array for every y)."""
    pairs = sorted(logit_scales)
    assert pairs and all(x < y for x, y in pairs), f"NCE needs sorted modality pairs: {pairs}"
    losses, metrics = [], {}
    for x, y in pairs:
        scale = logit_scales[x, y]
        loss, accuracy = pairwise_nce(embeddings[x, y], embeddings[y, x], scale)
        losses.append(loss)
        metrics[f"accuracy/{x}_{y}"] = accuracy
        metrics[f"temperature/{x}_{y}"] = 1.0 / scale
    return jnp.mean(jnp.stack(losses)), metrics


# Registered, not decorated: `TaskLoss.set_weights = @SetWeights()` and its bindings reach the
# loss `Experiment.from_gin` builds.
@gin.register
@dataclasses.dataclass(frozen=True)
class SetWeights:
    """The set-prediction loss's weights, in the matching cost and in the loss alike, and the
    no-object class's weight in the classification loss: DETR's, which UniT keeps (seed
    002 §3.4). (Deformable DETR doubles the class weight, which the demo's UniT run takes.)"""

    classification: float = 1.0
    l1: float = 5.0
    giou: float = 2.0
    no_object: float = 0.1


def set_prediction(
    class_logits: jax.Array,
    pred_boxes: jax.Array,
    labels: jax.Array,
    target_boxes: jax.Array,
    valid: jax.Array,
    weights: SetWeights = SetWeights(),
) -> tuple[jax.Array, dict]:
    """DETR's loss of a set of predictions against a set of objects, summed over decoder
    layers (the auxiliary decoding losses; the last layer is the prediction).

    `class_logits` `[layers, batch, queries, classes + 1]` (the last class: no object),
    `pred_boxes` `[layers, batch, queries, 4]` `(cx, cy, w, h)` in [0, 1]; `labels`
    `[batch, objects]`, `target_boxes` `[batch, objects, 4]` and `valid` `[batch, objects]`
    (padding rows False). Each layer and example is matched on its own (`hungarian`) by the
    weighted cost of class probability, L1 and GIoU; matched queries learn their object's
    class and box, the others the no-object class (weighted `no_object`). The classification
    loss is averaged over the weights, the box losses over the batch's objects."""
    no_object = class_logits.shape[-1] - 1
    objects = jnp.maximum(valid.sum(), 1).astype(jnp.float32)

    def layer(logits, pred):
        assigned = jax.vmap(_match, in_axes=(0, 0, 0, 0, 0, None))(
            logits, pred, labels, target_boxes, valid, weights
        )
        queries = logits.shape[1]
        rows = jnp.where(valid, assigned, queries)  # padding rows write nowhere
        batch = jnp.arange(labels.shape[0])[:, None]
        target = jnp.full(logits.shape[:2], no_object).at[batch, rows].set(labels, mode="drop")
        class_weight = jnp.where(target == no_object, weights.no_object, 1.0)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, target)
        classification = (class_weight * ce).sum() / class_weight.sum()
        matched = jnp.take_along_axis(pred, jnp.maximum(assigned, 0)[..., None], axis=1)
        l1 = jnp.abs(matched - target_boxes).sum(-1)
        giou = jax.vmap(jax.vmap(_giou))(matched, target_boxes)
        l1 = jnp.where(valid, l1, 0.0).sum() / objects
        giou_loss = jnp.where(valid, 1.0 - giou, 0.0).sum() / objects
        loss = weights.classification * classification + weights.l1 * l1 + weights.giou * giou_loss
        found = jnp.where(target == no_object, False, logits.argmax(-1) == target)
        accuracy = found.sum() / objects
        return loss, {
            "loss_classification": classification,
            "loss_l1": l1,
            "loss_giou": giou_loss,
            "matched_accuracy": accuracy,
        }

    losses, metrics = jax.vmap(layer)(class_logits, pred_boxes)
    return losses.sum(), {name: value[-1] for name, value in metrics.items()}


def _giou(a: jax.Array, b: jax.Array) -> jax.Array:
    """GIoU of two `(cx, cy, w, h)` boxes."""
    return box_ops.pairwise_giou(box_ops.corners(a)[None], box_ops.corners(b)[None])[0, 0]


def _match(logits, pred, labels, target_boxes, valid, weights: SetWeights) -> jax.Array:
    """One example's query per object (`hungarian` on the weighted cost; -1: padding)."""
    logits, pred = jax.lax.stop_gradient((logits, pred))
    probability = jax.nn.softmax(logits, axis=-1)  # [queries, classes + 1]
    cost_class = -probability[:, labels].T  # [objects, queries]
    cost_l1 = jnp.abs(target_boxes[:, None, :] - pred[None, :, :]).sum(-1)
    cost_giou = -box_ops.pairwise_giou(box_ops.corners(target_boxes), box_ops.corners(pred))
    cost = weights.classification * cost_class + weights.l1 * cost_l1 + weights.giou * cost_giou
    return hungarian(jnp.where(valid[:, None], cost, 0.0), valid)
