"""Evaluation metrics against direct numpy references on hand-made embeddings."""

import numpy as np
import pytest

from imp.errors import ImpError
from imp.evaluation import metrics


def _naive_ranks(scores, positive):
    """Loop reference: rank of the best positive, ties counted against it."""
    ranks = []
    for row, pos in zip(scores, positive, strict=True):
        best = max(s for s, p in zip(row, pos, strict=True) if p)
        ranks.append(1 + sum(1 for s, p in zip(row, pos, strict=True) if not p and s >= best))
    return np.array(ranks)


def test_retrieval_matches_a_loop_on_random_embeddings():
    rng = np.random.default_rng(0)
    q, g = rng.normal(size=(40, 8)), rng.normal(size=(60, 8))
    positive = rng.random((40, 60)) < 0.05
    positive[np.arange(40), rng.integers(60, size=40)] = True
    got = metrics.retrieval(q, g, positive)
    scores = metrics.normalise(q) @ metrics.normalise(g).T
    ranks = _naive_ranks(scores, positive)
    for k in (1, 5, 10):
        assert got[f"R@{k}"] == pytest.approx(np.mean(ranks <= k))
    assert got["median_rank"] == np.median(ranks)


def test_perfect_retrieval_with_several_captions_per_item():
    items = np.eye(4)
    captions = np.repeat(items, 3, axis=0) + 0.01  # 3 captions per item
    caption_to_item = np.repeat(np.eye(4, dtype=bool), 3, axis=0)  # [12, 4]
    assert metrics.retrieval(captions, items, caption_to_item)["R@1"] == 1.0
    out = metrics.retrieval(items, captions, caption_to_item.T)  # any of its captions counts
    assert out["R@1"] == 1.0 and out["median_rank"] == 1.0


def test_ties_count_against_the_positive():
    constant = np.ones((5, 3))
    out = metrics.retrieval(constant, constant, np.eye(5, dtype=bool))
    assert out["R@1"] == 0.0 and out["median_rank"] == 5.0
    scores = np.array([[1.0, 1.0, 0.0]])
    assert metrics.topk_accuracy(scores, np.array([0]), ks=(1, 2)) == {"top1": 0.0, "top2": 1.0}


def test_topk_and_chance():
    rng = np.random.default_rng(1)
    scores = rng.normal(size=(200, 10))
    labels = rng.integers(10, size=200)
    ranks = _naive_ranks(scores, np.eye(10, dtype=bool)[labels])
    got = metrics.topk_accuracy(scores, labels)
    assert got == {"top1": np.mean(ranks <= 1), "top5": np.mean(ranks <= 5)}
    positive = np.zeros((3, 10), bool)
    positive[:, :2] = True  # 2 of 10 right: R@1 chance 0.2, R@5 chance 1 - C(8,5)/C(10,5)
    assert metrics.retrieval_chance(positive, 1) == pytest.approx(0.2)
    assert metrics.retrieval_chance(positive, 5) == pytest.approx(1 - 56 / 252)


def test_linear_probe_separates_separable_features_and_not_noise():
    rng = np.random.default_rng(2)
    centres = rng.normal(size=(5, 16)) * 3
    y = rng.integers(5, size=400)
    x = centres[y] + rng.normal(size=(400, 16))
    good = metrics.linear_probe(x[:300], y[:300], x[300:], y[300:], 5)
    assert good["top1"] > 0.9
    noise = rng.normal(size=(400, 16))
    bad = metrics.linear_probe(noise[:300], y[:300], noise[300:], y[300:], 5)
    assert bad["top1"] < 0.45


def test_retrieval_runs_over_distinct_caption_texts():
    tokens = np.zeros((3, 2, 4), np.int32)
    tokens[0, 0] = [5, 6, 1, 0]  # item 0: "a", "b"
    tokens[0, 1] = [7, 1, 0, 0]
    tokens[1, 0] = [5, 6, 1, 0]  # item 1: "a"; its second caption is absent
    tokens[2, 0] = [8, 1, 0, 0]  # item 2: "c", "a"
    tokens[2, 1] = [5, 6, 1, 0]
    index, positive = metrics.distinct_captions(tokens)
    texts = [tuple(tokens.reshape(-1, 4)[i]) for i in index]
    assert sorted(texts) == [(5, 6, 1, 0), (7, 1, 0, 0), (8, 1, 0, 0)]  # one per text
    expected = [
        [any(tuple(c) == text for c in tokens[item]) for item in range(3)] for text in texts
    ]
    np.testing.assert_array_equal(positive, expected)
    # A perfect model: each item's embedding is the mean of its texts' one-hot embeddings.
    text_embedding = np.eye(3)
    items = positive.T @ text_embedding
    assert metrics.retrieval(items, text_embedding, positive.T)["R@1"] == 1.0


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_metrics_refuse_scores_that_are_not_finite(bad):
    """A NaN compares false with everything: ranked pessimistically, NaN scores would put
    every positive first (a perfect score from a broken model)."""
    scores = np.eye(4)
    scores[1, 2] = bad
    with pytest.raises(ImpError, match="1 of 16 values are not finite"):
        metrics.topk_accuracy(scores, np.arange(4))
    with pytest.raises(ImpError, match="retrieval embeddings: 1 of 16 values"):
        metrics.retrieval(scores, np.eye(4), np.eye(4, dtype=bool))
    with pytest.raises(ImpError, match="linear probe features"):
        metrics.linear_probe(scores, np.arange(4), np.eye(4), np.arange(4), 4)
