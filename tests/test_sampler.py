import numpy as np
import pytest

from imp.training.sampler import ProportionalSampler


def test_frequencies_follow_rates():
    """Chi-square goodness of fit over 20k draws (critical value at p=0.001, 3 dof: 16.27)."""
    names, rates = ["a", "b", "c", "d"], [2876, 2876, 1438, 500]
    sampler = ProportionalSampler(names, rates, seed=0)
    draws = [sampler.next() for _ in range(20_000)]
    observed = np.array([draws.count(n) for n in names])
    expected = 20_000 * np.array(rates) / sum(rates)
    chi2 = ((observed - expected) ** 2 / expected).sum()
    assert chi2 < 16.27, (observed, expected)


def test_restored_state_continues_the_same_sequence():
    a = ProportionalSampler(["x", "y", "z"], [1, 2, 3], seed=7)
    [a.next() for _ in range(50)]
    b = ProportionalSampler(["x", "y", "z"], [1, 2, 3], seed=99)
    b.restore(a.state())
    assert [a.next() for _ in range(100)] == [b.next() for _ in range(100)]


@pytest.mark.parametrize("rates", [[1, 0], [1, -1], [1]])
def test_rejects_non_positive_or_missing_rates(rates):
    with pytest.raises(ValueError):
        ProportionalSampler(["a", "b"], rates)
