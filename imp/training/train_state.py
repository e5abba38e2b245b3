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
    # Copies of the parameter tree in the state (Adam's moments, also of a part of the
    # parameters, as under a frozen encoder) take the parameters' shardings: a leaf whose key
    # path ends with a parameter's path, in the parameter's shape. Leaves of another shape
    # (per-parameter step counts, int32 []) and everything else are replicated.
    by_path = {
        _keys(path): (sharding, leaf.shape)
        for (path, sharding), leaf in zip(
            jax.tree_util.tree_leaves_with_path(params),
            jax.tree.leaves(abstract_params),
            strict=True,
        )
    }

    def sharding_of(path, leaf):
        keys = _keys(path)
        for start in range(len(keys)):
            sharding, shape = by_path.get(keys[start:], (None, None))
            if sharding is not None:
                return sharding if shape == leaf.shape else partitioner.replicated()
        return partitioner.replicated()

    opt_state = jax.tree_util.tree_map_with_path(
        sharding_of, jax.eval_shape(tx.init, abstract_params)
    )
    return {"step": partitioner.replicated(), "params": params, "opt_state": opt_state}


def _keys(path) -> tuple:
    """The dictionary keys along a pytree path (tuple and attribute steps left out)."""
    return tuple(p.key for p in path if isinstance(p, jax.tree_util.DictKey))


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
