"""Task schedules: which tasks each step trains, behind one interface (`Sampler`).

* `proportional` (IMP, seed 004 §3.2, the default): multinomial over tasks, probability
  proportional to the mixture rates (training examples; resolution variants share their
  data set's weight).
* `weighted`: multinomial with weights given in gin (PolyViT's "weighted", seed 000 §4.2).
* `uniform`: multinomial with equal probabilities (PolyViT's "uniform").
* `task_by_task`: each task trains for a contiguous block of steps proportional to its rate,
  one task after the other (PolyViT's "task-by-task").
* `round_robin`: tasks in turn (PolyViT's "alternating").
* `interval`: the IMP reference code's deterministic loop. It visits the tasks in a fixed
  order, again and again; each task counts its visits and trains (one optimizer step) only
  on the visits where `count % interval == 0` (`Schedule.intervals`, default 1: every
  visit). Only visits that train are steps. With every interval 1 it is `round_robin`; an
  interval of k makes a task train on every k-th of its turns. The reference keys its
  counters by data-set name, so two loaders of one data set (e.g. two resolution variants)
  share a counter; ours are keyed by task, so each task keeps its own.
* `accumulated`: every step computes every task's gradients and makes one update from their
  sum (PolyViT's "accumulating gradients").
* `summed`: every step runs all tasks in one graph and minimises the summed loss (the
  single-graph baseline that AGD avoids).
* `loss_aware`: none of the papers has it. A multinomial whose weights lean towards the tasks
  whose loss falls slowest. The loss of a training batch is measured before the step trains
  on it, so until the data repeat it is a held-out ("progressive validation") loss. Each
  task's relative improvement r = (slow EMA - fast EMA) / slow EMA sets its weight
  rate * exp(-r / temperature); every task keeps at least `floor` / n probability.

`next(step)` returns the tasks of a step: one for AGD schedules, all for `accumulated` and
`summed`; steps are asked for in order. State (generator, loss averages, the interval
schedule's cursor and visit counters) is JSON and goes into every checkpoint.
"""

import dataclasses
import math
from collections.abc import Sequence

import gin
import numpy as np

from imp import validation
from imp.errors import ImpError, did_you_mean

SCHEDULES = (
    "proportional",
    "weighted",
    "uniform",
    "task_by_task",
    "round_robin",
    "interval",
    "accumulated",
    "summed",
    "loss_aware",
)
JOINT = ("accumulated", "summed")  # every task in every step


class Sampler:
    def __init__(
        self,
        schedule: str,
        names: Sequence[str],
        rates: Sequence[float],
        total_steps: int,
        seed: int = 0,
        weights: dict[str, float] | None = None,
        temperature: float = 0.05,
        floor: float = 0.2,
        fast_decay: float = 0.7,
        slow_decay: float = 0.95,
        intervals: dict[str, int] | None = None,
    ):
        if schedule not in SCHEDULES:
            hint = did_you_mean(schedule, SCHEDULES) or f"; choose from {SCHEDULES}"
            raise ImpError(f"unknown schedule '{schedule}'{hint}")
        if schedule == "weighted":
            missing = sorted(set(names) - set(weights or {}))
            if missing:
                raise ImpError(f"schedule 'weighted' needs Schedule.weights for {missing}")
            rates = [weights[n] for n in names]
        rates = np.asarray(rates if schedule != "uniform" else [1.0] * len(names), np.float64)
        if not len(names) or len(rates) != len(names) or np.any(rates <= 0):
            raise ImpError(
                f"need a positive rate per task, got {dict(zip(names, rates, strict=False))}"
            )
        self.schedule = schedule
        self.names = list(names)
        self.rates = rates / rates.sum()
        self.total_steps = total_steps
        self.rng = np.random.default_rng(seed)
        self.temperature, self.floor = temperature, floor
        self.decays = (fast_decay, slow_decay)
        self.averages: dict[str, list[float]] = {}  # task -> [fast, slow] loss EMAs
        # task_by_task: task i owns steps [boundaries[i], boundaries[i + 1]).
        self.boundaries = np.round(np.cumsum([0.0, *self.rates]) * total_steps).astype(int)
        # interval: each task's interval, the visits so far, and each task's visit count.
        self.intervals = _intervals(schedule, self.names, intervals)
        self.cursor = 0
        self.visits = {n: 0 for n in self.names}

    def next(self, step: int) -> list[str]:
        if self.schedule in JOINT:
            return list(self.names)
        if self.schedule == "round_robin":
            return [self.names[step % len(self.names)]]
        if self.schedule == "task_by_task":
            index = int(np.searchsorted(self.boundaries, step, side="right")) - 1
            return [self.names[min(index, len(self.names) - 1)]]
        if self.schedule == "interval":
            return [self._next_interval()]
        return [self.names[self.rng.choice(len(self.names), p=self.probabilities())]]

    def _next_interval(self) -> str:
        """Visits tasks in order until one is due (each task is due at least every
        `interval` of its visits, so this ends within sum(intervals) visits)."""
        while True:
            name = self.names[self.cursor % len(self.names)]
            self.cursor += 1
            count = self.visits[name]
            self.visits[name] = count + 1
            if count % self.intervals[name] == 0:
                return name

    def probabilities(self) -> np.ndarray:
        """The current multinomial (random schedules)."""
        if self.schedule != "loss_aware":
            return self.rates
        improvement = np.array(
            [
                (a[1] - a[0]) / max(abs(a[1]), 1e-8) if (a := self.averages.get(n)) else 0.0
                for n in self.names
            ]
        )
        logits = np.log(self.rates) - improvement / self.temperature
        p = np.exp(logits - logits.max())
        p /= p.sum()
        return (1.0 - self.floor) * p + self.floor / len(self.names)

    def observe(self, task: str, loss: float) -> None:
        """Records a task's loss on a batch it had not trained on yet (for `loss_aware`)."""
        if not math.isfinite(loss):
            return
        if task not in self.averages:
            self.averages[task] = [loss, loss]
            return
        for i, decay in enumerate(self.decays):
            self.averages[task][i] = decay * self.averages[task][i] + (1 - decay) * loss

    def state(self) -> dict:
        return {
            "bit_generator": self.rng.bit_generator.state,
            "averages": self.averages,
            "cursor": self.cursor,
            "visits": dict(self.visits),
        }

    def restore(self, state: dict) -> None:
        self.rng.bit_generator.state = state["bit_generator"]
        self.averages = {k: list(v) for k, v in state.get("averages", {}).items()}
        self.cursor = int(state.get("cursor", 0))
        self.visits = {n: int(state.get("visits", {}).get(n, 0)) for n in self.names}


def _intervals(schedule: str, names: Sequence[str], intervals: dict | None) -> dict[str, int]:
    """Every task's interval (default 1); a task named that is not trained is an error."""
    intervals = dict(intervals or {})
    validation.require(
        not intervals or schedule == "interval",
        f"Schedule.intervals = {intervals} is read by Schedule.name = 'interval' only, not "
        f"'{schedule}'",
    )
    for name, interval in intervals.items():
        if name not in names:
            hint = did_you_mean(name, names) or f"; the tasks are {list(names)}"
            raise ImpError(f"Schedule.intervals names '{name}', which is not trained{hint}")
        validation.require(
            isinstance(interval, int) and not isinstance(interval, bool) and interval >= 1,
            f"Schedule.intervals['{name}'] = {interval!r}: expected an integer >= 1",
        )
    return {n: intervals.get(n, 1) for n in names}


# Registered, not decorated: `Experiment.from_gin` reads the bindings (`Schedule.name = ...`).
@gin.register
@dataclasses.dataclass(frozen=True)
class Schedule:
    """The run's task schedule: `name` from `SCHEDULES`, with `weights` for `weighted`,
    `intervals` (task -> k, default 1) for `interval` and `temperature` / `floor` for
    `loss_aware`."""

    name: str = "proportional"
    weights: dict[str, float] | None = None
    intervals: dict[str, int] | None = None
    temperature: float = 0.05
    floor: float = 0.2

    def __post_init__(self):
        validation.check_fields(self, "Schedule")
        if self.name not in SCHEDULES:
            hint = did_you_mean(self.name, SCHEDULES) or f"; choose from {SCHEDULES}"
            raise ImpError(f"Schedule.name = {self.name!r} is not a schedule{hint}")
        for task, interval in (self.intervals or {}).items():
            validation.at_least(f"Schedule.intervals['{task}']", interval, 1)
        validation.at_least("Schedule.temperature", self.temperature, 1e-6)
        validation.require(
            0.0 <= self.floor <= 1.0, f"Schedule.floor = {self.floor}: expected a number in [0, 1]"
        )

    def sampler(
        self, names: Sequence[str], rates: Sequence[float], total_steps: int, seed: int
    ) -> Sampler:
        """A fresh sampler over the tasks `names` with their mixture `rates`."""
        return Sampler(
            self.name,
            names,
            rates,
            total_steps,
            seed,
            self.weights,
            self.temperature,
            self.floor,
            intervals=self.intervals,
        )
