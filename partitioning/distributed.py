"""Multi-host start-up: `jax.distributed.initialize` from gin, flags or the environment.

On TPU pods and SLURM clusters JAX finds the coordinator itself; elsewhere (several processes
on one machine, or hand-launched hosts) give the coordinator address, the process count and
this process's id, by gin (`initialize.coordinator_address = ...`) or by the environment
variables `IMP_COORDINATOR_ADDRESS`, `IMP_NUM_PROCESSES`, `IMP_PROCESS_ID`
(`launch/multiprocess.sh` sets them). CPU processes talk through gloo collectives.
"""

import os

import gin
import jax


@gin.configurable
def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    cluster: bool = False,
) -> None:
    """Joins the JAX cluster; a no-op for a single process unless `cluster` asks JAX to
    detect a TPU pod or SLURM allocation."""
    coordinator_address = coordinator_address or os.environ.get("IMP_COORDINATOR_ADDRESS")
    if num_processes is None and "IMP_NUM_PROCESSES" in os.environ:
        num_processes = int(os.environ["IMP_NUM_PROCESSES"])
    if process_id is None and "IMP_PROCESS_ID" in os.environ:
        process_id = int(os.environ["IMP_PROCESS_ID"])
    if coordinator_address is None and not cluster:
        return
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU backend only
    jax.distributed.initialize(
        coordinator_address, num_processes=num_processes, process_id=process_id
    )
