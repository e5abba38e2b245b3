import jax
import numpy as np
import pytest
import scipy.stats

from imp import objectives


def _log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _normalised(rng, shape):
    x = rng.normal(size=shape)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_softmax_cross_entropy_matches_numpy(smoothing):
    rng = np.random.default_rng(0)
    logits, labels = rng.normal(size=(6, 5)), np.array([0, 1, 2, 3, 4, 0])
    targets = np.eye(5)[labels] * (1 - smoothing) + smoothing / 5
    expected = -(targets * _log_softmax(logits)).sum(-1).mean()
    loss, metrics = objectives.softmax_cross_entropy(logits, labels, smoothing)
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    assert metrics["accuracy"] == np.mean(logits.argmax(-1) == labels)


def _nce_reference(a, b, scale):
    """Naive loop: for each row, -log softmax of its positive, both directions."""
    total = 0.0
    for i in range(len(a)):
        row = scale * np.array([a[i] @ b[j] for j in range(len(b))])
        col = scale * np.array([b[i] @ a[j] for j in range(len(a))])
        total += -_log_softmax(row)[i] - _log_softmax(col)[i]
    return total / (2 * len(a))


def test_pairwise_nce_matches_naive_loop():
    rng = np.random.default_rng(1)
    a, b = _normalised(rng, (7, 4)), _normalised(rng, (7, 4))
    loss, _ = objectives.pairwise_nce(a, b, 3.0)
    np.testing.assert_allclose(loss, _nce_reference(a, b, 3.0), rtol=1e-5)


def _pairs(names):
    return [(x, y) for x in sorted(names) for y in sorted(names) if x < y]


def test_nce_averages_all_modality_pairs_each_at_its_own_temperature():
    """Each direction has its own embedding (per-pair heads), each pair its own scale."""
    rng = np.random.default_rng(2)
    names = ("vision", "waveform", "text")
    e = {(s, t): _normalised(rng, (5, 3)) for s in names for t in names if s != t}
    scales = {("text", "vision"): 2.0, ("text", "waveform"): 5.0, ("vision", "waveform"): 0.5}
    assert sorted(scales) == _pairs(names)
    expected = np.mean([_nce_reference(e[x, y], e[y, x], scales[x, y]) for x, y in scales])
    loss, metrics = objectives.nce(e, scales)
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    assert set(metrics) == {f"{k}/{x}_{y}" for x, y in scales for k in ("accuracy", "temperature")}
    for x, y in scales:
        np.testing.assert_allclose(metrics[f"temperature/{x}_{y}"], 1 / scales[x, y], rtol=1e-6)


def test_nce_of_perfectly_aligned_pairs_is_near_zero():
    a = np.eye(4)
    embeddings = {("text", "vision"): a, ("vision", "text"): a}
    loss, metrics = objectives.nce(embeddings, {("text", "vision"): 100.0})
    assert loss < 1e-6 and metrics["accuracy/text_vision"] == 1.0


def test_mixup_mixes_inputs_and_labels_as_numpy_does():
    """One weight for the batch, each example with its partner of a permutation; token ids
    unmixed; the soft-target loss is numpy's cross-entropy against the mixed labels."""
    rng = np.random.default_rng(3)
    inputs = {
        "vision": rng.normal(size=(8, 1, 4, 4, 3)).astype(np.float32),
        "text": rng.integers(1, 9, size=(8, 5)).astype(np.int32),
    }
    labels = rng.integers(0, 5, size=8)
    one_hot = np.eye(5, dtype=np.float32)[labels]
    mixed, targets, info = objectives.mixup(jax.random.key(0), inputs, one_hot, 0.3)
    lam, perm = float(info["lam"]), np.asarray(info["perm"])
    assert sorted(perm) == list(range(8)) and 0.0 <= lam <= 1.0
    np.testing.assert_allclose(targets, lam * one_hot + (1 - lam) * one_hot[perm], rtol=1e-6)
    expected = lam * inputs["vision"] + (1 - lam) * inputs["vision"][perm]
    np.testing.assert_allclose(mixed["vision"], expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(mixed["text"], inputs["text"])
    np.testing.assert_allclose(np.asarray(targets).sum(-1), 1.0, rtol=1e-6)

    logits = rng.normal(size=(8, 5))
    loss, metrics = objectives.softmax_cross_entropy(logits, labels, 0.0, targets)
    expected_loss = -(np.asarray(targets) * _log_softmax(logits)).sum(-1).mean()
    np.testing.assert_allclose(loss, expected_loss, rtol=1e-5)
    assert metrics["accuracy"] == np.mean(logits.argmax(-1) == labels)


def test_mixup_weights_follow_beta_alpha_alpha():
    """Kolmogorov-Smirnov against scipy's Beta(0.3, 0.3) over 4000 fixed keys."""
    keys = jax.random.split(jax.random.key(1), 4000)
    one_hot = np.eye(2, dtype=np.float32)

    def lam(key):
        return objectives.mixup(key, {}, one_hot, 0.3)[2]["lam"]

    draws = np.asarray(jax.vmap(lam)(keys))
    assert scipy.stats.kstest(draws, scipy.stats.beta(0.3, 0.3).cdf).pvalue > 0.01
    assert scipy.stats.kstest(draws, scipy.stats.beta(1.0, 1.0).cdf).pvalue < 1e-6
