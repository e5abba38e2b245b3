"""Every schedule's task counts match its definition: exactly for the deterministic ones, by a
chi-square test at p = 0.001 for the random ones."""

import numpy as np
import pytest

from imp.errors import ImpError
from imp.training.samplers import Sampler

NAMES = ["a", "b", "c", "d"]
RATES = [2876, 2876, 1438, 500]
STEPS = 20_000
# Chi-square critical value at p = 0.001 with 3 degrees of freedom.
CHI2_3DOF = 16.27


def _counts(sampler, steps=STEPS) -> np.ndarray:
    draws = [n for step in range(steps) for n in sampler.next(step)]
    return np.array([draws.count(n) for n in NAMES])


def _chi2(observed, probabilities) -> float:
    expected = observed.sum() * np.asarray(probabilities) / np.sum(probabilities)
    return float(((observed - expected) ** 2 / expected).sum())


@pytest.mark.parametrize(
    "schedule, weights, expected",
    [
        ("proportional", None, RATES),
        ("uniform", None, [1, 1, 1, 1]),
        ("weighted", {"a": 1, "b": 2, "c": 3, "d": 4}, [1, 2, 3, 4]),
    ],
)
def test_random_schedules_follow_their_probabilities(schedule, weights, expected):
    sampler = Sampler(schedule, NAMES, RATES, STEPS, seed=0, weights=weights)
    assert _chi2(_counts(sampler), expected) < CHI2_3DOF


def test_round_robin_alternates():
    sampler = Sampler("round_robin", NAMES, RATES, 10)
    assert [sampler.next(s)[0] for s in range(10)] == ["a", "b", "c", "d"] * 2 + ["a", "b"]


def test_task_by_task_trains_blocks_proportional_to_rates():
    sampler = Sampler("task_by_task", NAMES, RATES, 1000)
    sequence = [sampler.next(s)[0] for s in range(1000)]
    blocks = [n for i, n in enumerate(sequence) if i == 0 or sequence[i - 1] != n]
    assert blocks == NAMES  # one contiguous block per task, in order
    expected = np.round(np.cumsum([0, *RATES]) / sum(RATES) * 1000).astype(int)
    assert _counts(sampler, 1000).tolist() == np.diff(expected).tolist()


@pytest.mark.parametrize("schedule", ["accumulated", "summed"])
def test_joint_schedules_take_every_task_every_step(schedule):
    sampler = Sampler(schedule, NAMES, RATES, 10)
    assert all(sampler.next(s) == NAMES for s in range(10))


def test_loss_aware_leans_to_slow_tasks_without_starving_any():
    sampler = Sampler("loss_aware", NAMES, [1, 1, 1, 1], STEPS, seed=0, floor=0.2)
    for t in range(200):  # a and b improve fast, c slowly, d not at all
        sampler.observe("a", 2.0 * 0.98**t)
        sampler.observe("b", 2.0 * 0.98**t)
        sampler.observe("c", 2.0 * 0.999**t)
        sampler.observe("d", 2.0)
    p = sampler.probabilities()
    assert p[3] > p[2] > p[0] and p[0] == pytest.approx(p[1])
    assert p.min() >= 0.2 / 4  # the floor: no task starves
    assert _chi2(_counts(sampler), p) < CHI2_3DOF


def test_restored_state_continues_the_same_sequence():
    a = Sampler("loss_aware", ["x", "y", "z"], [1, 2, 3], 1000, seed=7)
    for step in range(50):
        a.observe(a.next(step)[0], 1.0 / (step + 1))
    b = Sampler("loss_aware", ["x", "y", "z"], [1, 2, 3], 1000, seed=99)
    b.restore(a.state())
    assert [a.next(s) for s in range(100)] == [b.next(s) for s in range(100)]


@pytest.mark.parametrize("rates", [[1, 0], [1, -1], [1]])
def test_rejects_non_positive_or_missing_rates(rates):
    with pytest.raises(ImpError, match="positive rate per task"):
        Sampler("proportional", ["a", "b"], rates, 10)


def test_unknown_schedule_and_missing_weights():
    with pytest.raises(ImpError, match="unknown schedule 'round_robbin'; did you mean round_robin"):
        Sampler("round_robbin", NAMES, RATES, 10)
    with pytest.raises(ImpError, match=r"Schedule.weights for \['c', 'd'\]"):
        Sampler("weighted", NAMES, RATES, 10, weights={"a": 1, "b": 1})
