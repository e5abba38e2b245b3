"""Train state: parameters, optimizer state and step, as one plain pytree (checkpointed as is)."""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from imp.modeling.model import ImpModel, init_variables

TrainState = dict[str, Any]  # {"step": int32 [], "params": ..., "opt_state": ...}


def _fresh(model: ImpModel, tx: optax.GradientTransformation, rng: jax.Array) -> TrainState:
    params = nn.unbox(init_variables(model, rng))["params"]
    return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}


def state_shardings(model: ImpModel, tx: optax.GradientTransformation, partitioner) -> TrainState:
    """Shardings of the train state, from the model's logical axis names (no allocation)."""
    boxed = jax.eval_shape(lambda: init_variables(model, jax.random.key(0)))
    params = partitioner.logical_shardings(boxed)["params"]
    abstract_params = nn.unbox(boxed)["params"]
    # Copies of the parameter tree in the state (Adam's moments) take the parameters'
    # shardings; leaves of another shape in such a copy (per-parameter step counts, int32 [])
    # and everything else are replicated.
    opt_state = optax.tree_map_params(
        tx,
        lambda leaf, sharding, param: (
            sharding if leaf.shape == param.shape else partitioner.replicated()
        ),
        jax.eval_shape(tx.init, abstract_params),
        params,
        abstract_params,
        transform_non_params=lambda _: partitioner.replicated(),
    )
    return {"step": partitioner.replicated(), "params": params, "opt_state": opt_state}


def create(
    model: ImpModel,
    tx: optax.GradientTransformation,
    partitioner,
    rng: jax.Array,
    shardings: TrainState,
) -> TrainState:
    """Initialises the state directly into its shardings."""

    compiled = partitioner.compile(
        functools.partial(_fresh, model, tx), (rng,), partitioner.replicated(), shardings
    )
    return compiled(rng)


def abstract(
    shardings: TrainState, model: ImpModel, tx: optax.GradientTransformation
) -> TrainState:
    """`jax.ShapeDtypeStruct`s with shardings: the restore target for checkpoints."""
    shapes = jax.eval_shape(functools.partial(_fresh, model, tx), jax.random.key(0))
    return jax.tree.map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings
    )
