"""Runs one step of a schedule through the graph table.

An AGD step (one task) or a `summed` step (every task) is one compiled graph
`(state, batches, rng) -> (state, metrics)`; an `accumulated` step runs one gradient graph
per task and one update graph for their sum. Graphs are keyed by their tasks and the
signature (shapes, dtypes, shardings) of their inputs, so each compiles once.
"""

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np

from imp.training.graph_table import GraphTable, signature
from imp.training.step import (
    make_apply_step,
    make_grad_step,
    make_gradient_similarity,
    make_train_step,
)

if TYPE_CHECKING:
    from imp.experiment import Experiment


class Trainer:
    """The experiment's compiled steps: one graph per (tasks, input signature) in its table.
    `freeze_untouched` keeps the parameters a step's tasks do not read (and their optimizer
    state) exactly as they were (`imp.training.step`)."""

    def __init__(self, experiment: "Experiment", freeze_untouched: bool = True):
        self.model, self.tx = experiment.model, experiment.tx
        self.step_size, self.loss = experiment.step_size, experiment.loss
        self.specs, self.partitioner = experiment.specs, experiment.partitioner
        self.shardings = experiment.shardings
        self.accumulate = experiment.schedule.name == "accumulated"
        self.freeze_untouched = freeze_untouched
        self.table = GraphTable()

    def _compile(self, fn: Callable, args: tuple, in_shardings, out_shardings, donate=()):
        return functools.partial(
            self.partitioner.compile, fn, args, in_shardings, out_shardings, donate
        )

    def _batch_shardings(self, batches):
        return jax.tree.map(lambda x: x.sharding, batches)

    def _step_job(self, names: tuple[str, ...], state, batches, rng):
        """(key, compile function) of the graph training `names` on `batches`."""
        tasks = [self.specs[n] for n in names]
        label = names[0] if len(names) == 1 else "summed"
        key = (label, tuple(t.objective for t in tasks), signature(batches))
        fn = make_train_step(
            self.model, self.tx, self.step_size, tasks, self.loss, self.freeze_untouched
        )
        replicated = self.partitioner.replicated()
        compile_fn = self._compile(
            fn,
            (state, batches, rng),
            (self.shardings, self._batch_shardings(batches), replicated),
            (self.shardings, replicated),
            donate=(0,),
        )
        return key, compile_fn

    def _grad_job(self, name: str, params, batch, rng):
        key = (name, ("gradient",), signature(batch))
        fn = make_grad_step(self.model, self.specs[name], self.loss)
        replicated = self.partitioner.replicated()
        compile_fn = self._compile(
            fn,
            (params, batch, rng),
            (self.shardings["params"], self._batch_shardings(batch), replicated),
            (self.shardings["params"], replicated),
        )
        return key, compile_fn

    def _apply_job(self, state, grads):
        key = ("accumulated", ("update",), ())
        tasks = list(self.specs.values())
        fn = make_apply_step(self.tx, self.step_size, tasks, self.freeze_untouched)
        compile_fn = self._compile(
            fn,
            (state, grads),
            (self.shardings, self.shardings["params"]),
            (self.shardings, self.partitioner.replicated()),
            donate=(0,),
        )
        return key, compile_fn

    def jobs(self, names: tuple[str, ...], state, batches: dict, rng) -> dict:
        """Every graph a step over `names` needs, for `GraphTable.precompile`; `state` and
        `batches` may be `jax.ShapeDtypeStruct`s."""
        if not self.accumulate:
            return dict([self._step_job(names, state, batches, rng)])
        jobs = dict(self._grad_job(n, state["params"], batches[n], rng) for n in names)
        jobs.update([self._apply_job(state, state["params"])])
        return jobs

    def step(self, names: tuple[str, ...], state, batches: dict, rng) -> tuple:
        """Trains `names` on `batches`; returns the new state, metrics per task (numpy) and
        whether a graph compiled."""
        if not self.accumulate:
            compiled, fresh = self.table.lookup(*self._step_job(names, state, batches, rng))
            state, metrics = compiled(state, batches, rng)
            metrics = jax.device_get(metrics)
            if len(names) == 1:
                return state, {names[0]: metrics}, fresh
            shared = {k: v for k, v in metrics.items() if "/" not in k or k.startswith("routing/")}
            per_task = {
                n: {
                    **shared,
                    **{k[len(n) + 1 :]: v for k, v in metrics.items() if k.startswith(f"{n}/")},
                }
                for n in names
            }
            return state, per_task, fresh
        total, per_task, fresh = None, {}, False
        for i, name in enumerate(names):
            task_rng = jax.random.fold_in(rng, i)
            job = self._grad_job(name, state["params"], batches[name], task_rng)
            compiled, compiled_now = self.table.lookup(*job)
            grads, metrics = compiled(state["params"], batches[name], task_rng)
            total = grads if total is None else jax.tree.map(jnp.add, total, grads)
            per_task[name] = jax.device_get(metrics)
            fresh |= compiled_now
        compiled, compiled_now = self.table.lookup(*self._apply_job(state, total))
        state, shared = compiled(state, total)
        shared = jax.device_get(shared)
        return state, {n: {**m, **shared} for n, m in per_task.items()}, fresh | compiled_now

    def gradient_similarity(self, state, batches: dict, rng) -> np.ndarray:
        """Cosine similarity of the tasks' encoder gradients (`batches`: task -> batch)."""
        names = tuple(batches)
        fn = make_gradient_similarity(self.model, [self.specs[n] for n in names], self.loss)
        replicated = self.partitioner.replicated()
        key = ("gradient_similarity", names, signature(batches))
        compile_fn = self._compile(
            fn,
            (state["params"], batches, rng),
            (self.shardings["params"], self._batch_shardings(batches), replicated),
            replicated,
        )
        compiled, _ = self.table.lookup(key, compile_fn)
        return np.asarray(compiled(state["params"], batches, rng))
