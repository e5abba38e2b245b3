"""Training objectives (seed 004 §3.2): softmax cross-entropy, sigmoid cross-entropy for
multi-label data (AudioSet), and symmetric cross-modal NCE.

Each returns `(loss, metrics)` with a scalar loss averaged over the batch.
"""

import jax
import jax.numpy as jnp
import optax


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
