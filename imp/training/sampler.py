"""Task samplers: which task the next AGD step trains (seed 004 Algorithm 1).

Every sampler draws from a seeded numpy generator whose state is checkpointed, so a resumed
run continues the same sequence of tasks.
"""

from collections.abc import Sequence

import gin
import numpy as np


@gin.configurable
class ProportionalSampler:
    """Multinomial over tasks with probabilities proportional to their mixture rates.

    Mixture rates default to each task's number of training examples (seqio's
    `mixing_rate_num_examples`), which is IMP's default sampling.
    """

    def __init__(self, names: Sequence[str], rates: Sequence[float], seed: int = 0):
        rates = np.asarray(rates, np.float64)
        if len(names) != len(rates) or not len(names) or np.any(rates <= 0):
            raise ValueError(
                f"need a positive rate per task, got {dict(zip(names, rates, strict=False))}"
            )
        self.names = list(names)
        self.probabilities = rates / rates.sum()
        self.rng = np.random.default_rng(seed)

    def next(self) -> str:
        return self.names[self.rng.choice(len(self.names), p=self.probabilities)]

    def state(self) -> dict:
        return {"bit_generator": self.rng.bit_generator.state}

    def restore(self, state: dict) -> None:
        self.rng.bit_generator.state = state["bit_generator"]
