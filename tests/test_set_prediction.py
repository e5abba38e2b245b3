"""Set prediction for detection (UniT, seed 002 §3.4, as DETR): the in-graph Hungarian
matcher against scipy's `linear_sum_assignment`, GIoU against a numpy loop, and the loss
against a numpy reference matched by scipy, and its invariance to the order of objects and
of queries."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from imp import boxes
from imp.matching import hungarian
from imp.objectives import SetWeights, set_prediction

MATCH = jax.jit(jax.vmap(hungarian))


def _costs(rng, batch, rows, columns, ties):
    if ties:  # few distinct values: many optimal assignments
        return rng.integers(0, 3, size=(batch, rows, columns)).astype(np.float32)
    return rng.normal(size=(batch, rows, columns)).astype(np.float32)


@pytest.mark.parametrize("rows, columns, ties", [(5, 5, False), (4, 9, False), (6, 10, True)])
def test_the_matcher_finds_scipy_s_optimum(rows, columns, ties):
    rng = np.random.default_rng(rows * columns)
    cost = _costs(rng, 64, rows, columns, ties)
    valid = rng.random((64, rows)) < 0.75
    valid[0] = False  # an example without objects
    assigned = np.asarray(MATCH(jnp.asarray(cost), jnp.asarray(valid)))
    for c, v, a in zip(cost, valid, assigned, strict=True):
        assert (a[~v] == -1).all()
        mine = a[v]
        assert (mine >= 0).all() and len(set(mine)) == len(mine)  # distinct queries
        r, q = linear_sum_assignment(c[v])
        assert c[v][np.arange(v.sum()), mine].sum() == pytest.approx(c[v][r, q].sum(), abs=1e-4)


def test_the_matcher_refuses_more_objects_than_queries():
    with pytest.raises(ValueError, match="3 rows cannot take distinct columns of 2"):
        hungarian(jnp.zeros((3, 2)), jnp.ones(3, bool))


def _numpy_giou(a, b):
    """GIoU of two (x0, y0, x1, y1) boxes, by the definition."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    enclosing = (max(a[2], b[2]) - min(a[0], b[0])) * (max(a[3], b[3]) - min(a[1], b[1]))
    return inter / union - (enclosing - union) / enclosing


def _random_boxes(rng, n):
    """`(cx, cy, w, h)` inside the unit square."""
    size = rng.uniform(0.05, 0.5, size=(n, 2))
    centre = rng.uniform(size / 2, 1 - size / 2)
    return np.concatenate([centre, size], axis=1).astype(np.float32)


def test_giou_matches_its_definition():
    rng = np.random.default_rng(0)
    a, b = boxes.corners(_random_boxes(rng, 7)), boxes.corners(_random_boxes(rng, 5))
    # Equal, contained and disjoint pairs beside the random ones.
    a = np.concatenate([a, [[0.1, 0.1, 0.3, 0.3], [0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 0.1, 0.1]]])
    b = np.concatenate([b, [[0.1, 0.1, 0.3, 0.3], [0.2, 0.2, 0.4, 0.5], [0.8, 0.7, 1.0, 0.9]]])
    ours = np.asarray(boxes.pairwise_giou(jnp.asarray(a), jnp.asarray(b)))
    expected = np.array([[_numpy_giou(x, y) for y in b] for x in a])
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-6)
    assert ours[-3, -3] == pytest.approx(1.0) and ours[-1, -1] < 0  # equal; disjoint
    np.testing.assert_allclose(boxes.centres(boxes.corners(a)), a, atol=1e-6)


def _problem(seed, layers=2, batch=3, queries=6, objects=4, classes=5):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(layers, batch, queries, classes + 1)).astype(np.float32)
    pred = np.stack([[_random_boxes(rng, queries) for _ in range(batch)] for _ in range(layers)])
    labels = rng.integers(classes, size=(batch, objects))
    target = np.stack([_random_boxes(rng, objects) for _ in range(batch)])
    valid = np.array([[True] * objects, [True, True, False, False], [False] * objects])
    return logits, pred, labels, target, valid


def _np_corners(box):
    return np.concatenate([box[:2] - box[2:] / 2, box[:2] + box[2:] / 2])


def _numpy_set_loss(logits, pred, labels, target, valid):
    """DETR's loss, matched by scipy, one layer and example at a time, summed over layers."""
    w = SetWeights()
    total, objects = 0.0, max(valid.sum(), 1)
    for lg, pr in zip(logits, pred, strict=True):
        weighted_ce = weight_sum = l1 = giou = 0.0
        for b in range(lg.shape[0]):
            p = np.exp(lg[b] - lg[b].max(-1, keepdims=True))
            p /= p.sum(-1, keepdims=True)
            n = np.flatnonzero(valid[b])
            cost = np.array(
                [
                    [
                        -w.classification * p[q, labels[b, i]]
                        + w.l1 * np.abs(pr[b, q] - target[b, i]).sum()
                        - w.giou * _numpy_giou(_np_corners(target[b, i]), _np_corners(pr[b, q]))
                        for q in range(lg.shape[1])
                    ]
                    for i in n
                ]
            ).reshape(len(n), lg.shape[1])
            rows, queries = linear_sum_assignment(cost)
            cls = np.full(lg.shape[1], lg.shape[2] - 1)
            cls[queries] = labels[b, n[rows]]
            for q in range(lg.shape[1]):
                weight = w.no_object if cls[q] == lg.shape[2] - 1 else 1.0
                weighted_ce += -weight * np.log(p[q, cls[q]])
                weight_sum += weight
            for i, q in zip(n[rows], queries, strict=True):
                l1 += np.abs(pr[b, q] - target[b, i]).sum()
                giou += 1 - _numpy_giou(_np_corners(target[b, i]), _np_corners(pr[b, q]))
        total += w.classification * weighted_ce / weight_sum
        total += (w.l1 * l1 + w.giou * giou) / objects
    return total


def test_the_set_loss_matches_a_numpy_reference_matched_by_scipy():
    problem = _problem(0)
    loss, metrics = jax.jit(set_prediction)(*map(jnp.asarray, problem))
    assert float(loss) == pytest.approx(_numpy_set_loss(*problem), rel=1e-5)
    assert set(metrics) == {"loss_classification", "loss_l1", "loss_giou", "matched_accuracy"}


def test_the_set_loss_ignores_the_order_of_objects_and_of_queries():
    logits, pred, labels, target, valid = _problem(1)
    loss = jax.jit(set_prediction)
    reference = float(loss(logits, pred, labels, target, valid)[0])
    rng = np.random.default_rng(2)
    objects = rng.permutation(labels.shape[1])
    queries = rng.permutation(logits.shape[2])
    permuted = loss(
        logits[:, :, queries],
        pred[:, :, queries],
        labels[:, objects],
        target[:, objects],
        valid[:, objects],
    )[0]
    assert float(permuted) == pytest.approx(reference, rel=1e-6)
    # and the gradient reaches the predictions (through the matched pairs and the classes)
    grads = jax.grad(lambda lg, pr: loss(lg, pr, labels, target, valid)[0], argnums=(0, 1))(
        jnp.asarray(logits), jnp.asarray(pred)
    )
    assert all(np.abs(np.asarray(g)).sum() > 0 for g in grads)
