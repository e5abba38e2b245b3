"""Every schedule's task counts match its definition: exactly for the deterministic ones, by a
chi-square test at p = 0.001 for the random ones."""

import json

import numpy as np
import pytest

from imp.errors import ImpError
from imp.training.samplers import Sampler, Schedule

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


@pytest.mark.parametrize("rates", [[1, 0], [1, -1], [1]])
def test_rejects_non_positive_or_missing_rates(rates):
    with pytest.raises(ImpError, match="positive rate per task"):
        Sampler("proportional", ["a", "b"], rates, 10)


def test_unknown_schedule_and_missing_weights():
    with pytest.raises(ImpError, match="unknown schedule 'round_robbin'; did you mean round_robin"):
        Sampler("round_robbin", NAMES, RATES, 10)
    with pytest.raises(ImpError, match=r"Schedule.weights for \['c', 'd'\]"):
        Sampler("weighted", NAMES, RATES, 10, weights={"a": 1, "b": 1})


def test_interval_visits_in_order_and_trains_every_kth_visit():
    # Visits a b c | a b c | ...: b trains on its visits 0, 2, 4, c on 0, 3; a skipped visit
    # is no step. Rounds: abc | a | ab | ac | ab.
    sampler = Sampler("interval", ["a", "b", "c"], [1, 1, 1], 10, intervals={"b": 2, "c": 3})
    expected = ["a", "b", "c", "a", "a", "b", "a", "c", "a", "b"]
    assert [sampler.next(s)[0] for s in range(10)] == expected


def test_interval_of_one_everywhere_is_round_robin():
    interval = Sampler("interval", NAMES, RATES, 10)
    round_robin = Sampler("round_robin", NAMES, RATES, 10)
    assert [interval.next(s) for s in range(10)] == [round_robin.next(s) for s in range(10)]


@pytest.mark.parametrize("schedule", ["interval", "loss_aware"])
def test_restored_state_continues_the_same_sequence(schedule):
    intervals = {"x": 2, "z": 3} if schedule == "interval" else None

    def sampler(seed):
        return Sampler(schedule, ["x", "y", "z"], [1, 2, 3], 1000, seed=seed, intervals=intervals)

    def steps(sampler, start, stop):
        tasks = []
        for step in range(start, stop):
            tasks.append(sampler.next(step))
            sampler.observe(tasks[-1][0], 1.0 / (step + 1))
        return tasks

    straight = steps(sampler(7), 0, 150)
    first = sampler(7)
    assert steps(first, 0, 50) == straight[:50]
    resumed = sampler(99)
    resumed.restore(json.loads(json.dumps(first.state())))  # as a checkpoint stores it
    assert steps(resumed, 50, 150) == straight[50:]


@pytest.mark.parametrize(
    "schedule, intervals, message",
    [
        ("interval", {"e": 2}, r"Schedule.intervals names 'e', which is not trained"),
        ("interval", {"a": 0}, r"Schedule.intervals\['a'\] = 0: expected an integer >= 1"),
        ("round_robin", {"a": 2}, r"read by Schedule.name = 'interval' only, not 'round_robin'"),
    ],
)
def test_interval_rejects_bad_intervals(schedule, intervals, message):
    with pytest.raises(ImpError, match=message):
        Sampler(schedule, NAMES, RATES, 10, intervals=intervals)


def test_schedule_checks_intervals_before_any_task_is_known():
    with pytest.raises(ImpError, match=r"Schedule.intervals\['a'\] = 0: expected a number >= 1"):
        Schedule(name="interval", intervals={"a": 0})
