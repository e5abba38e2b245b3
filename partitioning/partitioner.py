"""A t5x-style partitioner on `jax.sharding`: mesh, logical axis rules, shardings, compile.

The training loop asks it for shardings and compiled steps; the model only carries logical
axis names. The mesh has t5x's axes `data` and `model`, plus t5x MoE's `expert` axis carved
out of data parallelism: experts are sharded over `expert`, and the batch over
`(expert, data)`, so every device still holds a distinct slice of the batch.
"""

from collections.abc import Callable, Sequence

import flax.linen as nn
import gin
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from imp import validation
from imp.errors import ImpError

MESH_AXES = ("expert", "data", "model")


def from_host(value: np.ndarray, sharding: jax.sharding.Sharding) -> jax.Array:
    """A global array laid out by `sharding` from a whole host array that every process
    holds (each process supplies the shards of its own devices)."""
    value = np.asarray(value)
    return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])


LogicalRules = Sequence[tuple[str, str | tuple[str, ...] | None]]

# t5x's standard rules, plus MoE: experts over `expert`; inside the MoE layer, token groups
# sit on `data` once dispatched to their experts (the all-to-all of expert parallelism).
DEFAULT_RULES: LogicalRules = (
    ("batch", ("expert", "data")),
    ("mlp", "model"),
    ("heads", "model"),
    ("vocab", "model"),
    ("expert", "expert"),
    ("expert_group", "data"),
    ("embed", None),
    ("kv", None),
    ("length", None),
    ("layers", None),
)


# Registered, not decorated: `Experiment.from_gin` applies the bindings (`Partitioner.*`).
@gin.register
class Partitioner:
    """`num_partitions` devices per model replica (`model` axis), `num_expert_partitions`
    ways of expert parallelism; the `data` axis takes the remaining devices."""

    def __init__(
        self,
        num_partitions: int = 1,
        num_expert_partitions: int = 1,
        logical_axis_rules: LogicalRules = DEFAULT_RULES,
        devices: Sequence[jax.Device] | None = None,
    ):
        devices = list(devices if devices is not None else jax.devices())
        for name, value in (
            ("num_partitions", num_partitions),
            ("num_expert_partitions", num_expert_partitions),
        ):
            validation.require(
                isinstance(value, int) and not isinstance(value, bool) and value >= 1,
                f"Partitioner.{name} = {value!r}: expected an integer >= 1",
            )
        per_replica = num_partitions * num_expert_partitions
        if len(devices) % per_replica:
            raise ImpError(
                f"Partitioner: num_partitions={num_partitions} x num_expert_partitions="
                f"{num_expert_partitions} does not divide the {len(devices)} devices"
            )
        shape = (num_expert_partitions, len(devices) // per_replica, num_partitions)
        self.mesh = Mesh(np.array(devices).reshape(shape), MESH_AXES)
        validation.require(
            all(isinstance(rule, list | tuple) and len(rule) == 2 for rule in logical_axis_rules),
            "Partitioner.logical_axis_rules: expected (logical name, mesh axes) pairs",
        )
        self.rules = tuple((name, target) for name, target in logical_axis_rules)
        for name, target in self.rules:
            targets = target if isinstance(target, tuple) else (target,)
            unknown = [t for t in targets if t is not None and t not in MESH_AXES]
            if unknown:
                raise ImpError(
                    f"Partitioner.logical_axis_rules: rule ('{name}', {target!r}) names mesh "
                    f"axis {unknown[0]!r}; the mesh axes are {MESH_AXES}"
                )

    @property
    def data_parallelism(self) -> int:
        return self.mesh.shape["expert"] * self.mesh.shape["data"]

    def sharding(self, spec: PartitionSpec) -> NamedSharding:
        return NamedSharding(self.mesh, spec)

    def replicated(self) -> NamedSharding:
        return self.sharding(PartitionSpec())

    def batch_sharding(self) -> NamedSharding:
        return self.sharding(PartitionSpec(("expert", "data")))

    def logical_shardings(self, boxed_tree) -> object:
        """Shardings for a tree of flax `LogicallyPartitioned` boxes; every logical name the
        tree uses must have a rule (an unknown one would silently replicate)."""
        specs = nn.get_partition_spec(boxed_tree)
        known = {name for name, _ in self.rules}
        for path, spec in jax.tree_util.tree_leaves_with_path(
            specs, is_leaf=lambda x: isinstance(x, PartitionSpec)
        ):
            for name in spec:
                if name is not None and name not in known:
                    raise ImpError(
                        f"logical axis '{name}' of parameter {jax.tree_util.keystr(path)} has no "
                        f"rule in Partitioner.logical_axis_rules (known: {sorted(known)})"
                    )
        return nn.logical_to_mesh_sharding(specs, self.mesh, self.rules)

    def shard_batch(self, local_batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        """This process's slice of the global batch -> global arrays sharded over the batch
        axes (each process passes only its own rows)."""
        sharding = self.batch_sharding()
        local_devices = self.data_parallelism // jax.process_count()
        for name, rows in local_batch.items():
            if len(rows) % local_devices:
                raise ImpError(
                    f"feature '{name}': a batch of {len(rows)} rows per process does not split "
                    f"over this process's {local_devices} data-parallel devices"
                )
        return {
            k: jax.make_array_from_process_local_data(sharding, v) for k, v in local_batch.items()
        }

    def compile(
        self,
        fn: Callable,
        args: tuple,
        in_shardings,
        out_shardings,
        donate_argnums: tuple[int, ...] = (),
    ) -> jax.stages.Compiled:
        """Ahead-of-time compiles `fn` for `args` (arrays or `jax.ShapeDtypeStruct`s).

        `jax.jit` with explicit shardings, lowered under the mesh and our rules so the
        model's `with_logical_constraint` annotations resolve to mesh axes (a legacy
        `with mesh:` block would drop them silently).
        """
        jitted = jax.jit(
            fn,
            in_shardings=in_shardings,
            out_shardings=out_shardings,
            donate_argnums=donate_argnums,
        )
        with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
            return jitted.lower(*args).compile()
