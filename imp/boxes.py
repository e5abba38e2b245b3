"""Axis-aligned boxes for detection (UniT, seed 002, whose heads and losses follow DETR): the
box head predicts `(cx, cy, w, h)` in [0, 1] of the image; IoU and generalised IoU (GIoU) are
taken on corners `(x0, y0, x1, y1)`. All functions broadcast over leading axes.

GIoU = IoU - (enclosing area - union) / enclosing area: in [-1, 1], 1 for equal boxes, and
still informative (negative) for boxes that do not overlap, so it can train a box that
starts far from its object.
"""

import jax.numpy as jnp


def corners(boxes: jnp.ndarray) -> jnp.ndarray:
    """`(cx, cy, w, h)` -> `(x0, y0, x1, y1)`."""
    centre, size = boxes[..., :2], boxes[..., 2:]
    return jnp.concatenate([centre - size / 2, centre + size / 2], axis=-1)


def centres(boxes: jnp.ndarray) -> jnp.ndarray:
    """`(x0, y0, x1, y1)` -> `(cx, cy, w, h)`."""
    low, high = boxes[..., :2], boxes[..., 2:]
    return jnp.concatenate([(low + high) / 2, high - low], axis=-1)


def area(boxes: jnp.ndarray) -> jnp.ndarray:
    """Area of corner boxes (0 for an inverted box)."""
    size = jnp.maximum(boxes[..., 2:] - boxes[..., :2], 0.0)
    return size[..., 0] * size[..., 1]


def pairwise_iou(a: jnp.ndarray, b: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """IoU and union of every pair of corner boxes `a [..., n, 4]` x `b [..., m, 4]`:
    `[..., n, m]` each."""
    a, b = a[..., :, None, :], b[..., None, :, :]
    low = jnp.maximum(a[..., :2], b[..., :2])
    high = jnp.minimum(a[..., 2:], b[..., 2:])
    inter = jnp.prod(jnp.maximum(high - low, 0.0), axis=-1)
    union = area(a) + area(b) - inter
    return inter / jnp.maximum(union, 1e-9), union


def pairwise_giou(a: jnp.ndarray, b: jnp.ndarray) -> jnp.ndarray:
    """Generalised IoU of every pair of corner boxes `a [..., n, 4]` x `b [..., m, 4]`."""
    iou, union = pairwise_iou(a, b)
    a, b = a[..., :, None, :], b[..., None, :, :]
    low = jnp.minimum(a[..., :2], b[..., :2])
    high = jnp.maximum(a[..., 2:], b[..., 2:])
    enclosing = jnp.prod(jnp.maximum(high - low, 0.0), axis=-1)
    return iou - (enclosing - union) / jnp.maximum(enclosing, 1e-9)
