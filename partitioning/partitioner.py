"""A t5x-style partitioner on `jax.sharding`: mesh, logical axis rules, shardings, jit.

The training loop asks it for shardings and jitted steps; the model only carries logical
axis names. Defaults follow t5x's `standard_logical_axis_rules`: batch over `data`,
mlp/heads/vocab over `model`, embed/kv/length unsharded.
"""

from collections.abc import Callable, Sequence

import flax.linen as nn
import gin
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from imp.errors import ImpError

LogicalRules = Sequence[tuple[str, str | None]]

DEFAULT_RULES: LogicalRules = (
    ("batch", "data"),
    ("mlp", "model"),
    ("heads", "model"),
    ("vocab", "model"),
    ("expert", "data"),
    ("embed", None),
    ("kv", None),
    ("length", None),
    ("layers", None),
)


@gin.configurable
class Partitioner:
    """Places parameters and batches on a `(data, model)` device mesh."""

    def __init__(
        self,
        num_partitions: int = 1,
        logical_axis_rules: LogicalRules = DEFAULT_RULES,
        devices: Sequence[jax.Device] | None = None,
    ):
        devices = list(devices if devices is not None else jax.devices())
        if num_partitions < 1 or len(devices) % num_partitions:
            raise ImpError(
                f"Partitioner.num_partitions={num_partitions} does not divide the "
                f"{len(devices)} devices"
            )
        grid = np.array(devices).reshape(len(devices) // num_partitions, num_partitions)
        self.mesh = Mesh(grid, ("data", "model"))
        self.rules = tuple(logical_axis_rules)

    @property
    def data_parallelism(self) -> int:
        return self.mesh.shape["data"]

    def sharding(self, spec: PartitionSpec) -> NamedSharding:
        return NamedSharding(self.mesh, spec)

    def logical_shardings(self, boxed_tree) -> object:
        """Shardings for a tree of flax `LogicallyPartitioned` boxes (or plain arrays)."""
        specs = nn.get_partition_spec(boxed_tree)
        return nn.logical_to_mesh_sharding(specs, self.mesh, self.rules)

    def replicated(self) -> NamedSharding:
        return self.sharding(PartitionSpec())

    def batch_sharding(self) -> NamedSharding:
        return self.sharding(PartitionSpec("data"))

    def shard_batch(self, local_batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        """This process's slice of the global batch -> global arrays sharded over `data`."""
        sharding = self.batch_sharding()
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

        Lowering runs under the mesh and our rules so `with_logical_constraint` annotations
        inside the model resolve to mesh axes.
        """
        jitted = jax.jit(
            fn,
            in_shardings=in_shardings,
            out_shardings=out_shardings,
            donate_argnums=donate_argnums,
        )
        with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
            return jitted.lower(*args).compile()
