"""Runs 3 train steps of a tiny IMP on each of several meshes in one process; the partitioning
tests start it as a subprocess, once per device count (and, for multi-host, per process).

    python tests/partitioning_worker.py --devices 8 --out result.json --runs RUNS
        [--num_processes 2 --process_id 0 --port 12345]

RUNS is a JSON list of `{"name", "mesh": [expert, data, model], "devices": k (the first k
devices; default all), "moe": bool, "save": dir, "restore": dir, "constraints": bool}`. The
result file (written by the first process) maps each name to its losses, first SGD update,
final parameters, parameter shardings and, for trained runs, whether the step has an
all-to-all (and, with "constraints", its lowered activation sharding constraints). It imports
no TensorFlow: the train step never needs it.
"""

import argparse
import json
import os
import sys

LEARNING_RATE = 0.1


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--runs", required=True)
    parser.add_argument("--num_processes", type=int, default=1)
    parser.add_argument("--process_id", type=int, default=0)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    flags = os.environ.get("XLA_FLAGS", "")  # the test run's, plus the device count
    os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={args.devices}"

    import jax

    from imp.partitioning import distributed

    if args.num_processes > 1:
        distributed.initialize(f"127.0.0.1:{args.port}", args.num_processes, args.process_id)
    results = {run["name"]: _run(run, args) for run in json.loads(args.runs)}
    results["_imports"] = {"tensorflow": "tensorflow" in sys.modules}
    if jax.process_index() == 0:
        with open(args.out, "w") as f:
            json.dump(results, f)


def _run(run: dict, args) -> dict:
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    import orbax.checkpoint as ocp
    from jax.experimental import multihost_utils

    from imp.modeling.model import ImpModel
    from imp.partitioning.partitioner import Partitioner
    from imp.tasks.spec import TaskSpec
    from imp.training import train_state
    from imp.training.optimizer import StepSize
    from imp.training.step import TaskLoss, make_train_step

    expert, data, model_axis = run["mesh"]
    devices = jax.devices()[: run.get("devices", len(jax.devices()))]
    partitioner = Partitioner(
        num_partitions=model_axis, num_expert_partitions=expert, devices=devices
    )
    assert partitioner.mesh.shape["data"] == data, partitioner.mesh.shape
    moe = dict(num_experts=4, moe_every=2, max_group_size=16) if run.get("moe") else {}
    model = ImpModel(
        d_model=16,
        num_layers=2,
        num_heads=4,
        mlp_dim=32,
        embed_dim=8,
        vocab_size=20,
        vision_patch=(2, 4, 4),
        **moe,
    )
    task = TaskSpec("t", "d", "nce", ("vision", "text"), 100, 16)
    # Plain SGD: the first update is the gradient (times -lr), and mesh differences show
    # unamplified (Adam's 1/sqrt(v) would magnify the noise on near-zero gradients).
    tx, schedule = optax.identity(), StepSize(LEARNING_RATE, 0, 10**9)
    shardings = train_state.state_shardings(model, tx, partitioner)

    def gathered(tree) -> dict:
        flat = multihost_utils.process_allgather(tree, tiled=True)
        return {
            jax.tree_util.keystr(p): np.asarray(v).tolist()
            for p, v in jax.tree_util.tree_leaves_with_path(flat)
        }

    out = {"losses": [], "extra": {}}
    if run.get("restore"):
        manager = ocp.CheckpointManager(run["restore"])
        abstract = train_state.abstract(shardings, model, tx)
        restored = manager.restore(
            manager.latest_step(),
            args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)),
        )
        state = restored["state"]
    else:
        state = train_state.create(model, tx, partitioner, jax.random.key(0), shardings)
        rng = np.random.default_rng(0)
        global_batch = {
            "vision": rng.normal(size=(16, 2, 8, 8, 3)).astype(np.float32),
            "text": rng.integers(1, 20, size=(16, 6)).astype(np.int32),
        }
        rows = slice(
            args.process_id * 16 // args.num_processes,
            (args.process_id + 1) * 16 // args.num_processes,
        )
        batch = {"t": partitioner.shard_batch({k: v[rows] for k, v in global_batch.items()})}
        key = jax.random.key(1)
        batch_shardings = jax.tree.map(lambda x: x.sharding, batch)
        replicated = partitioner.replicated()
        start = state["params"]
        step = make_train_step(model, tx, schedule, [task], TaskLoss())
        in_shardings = (shardings, batch_shardings, replicated)
        compiled = partitioner.compile(
            step, (state, batch, key), in_shardings, (shardings, replicated)
        )
        for i in range(3):
            state, metrics = compiled(state, batch, key)
            out["losses"].append(float(metrics["loss"]))
            if i == 0:  # -lr x the gradient
                out["first_update"] = gathered(jax.tree.map(jnp.subtract, state["params"], start))
        out["extra"] = {"all_to_all": "all-to-all" in compiled.as_text()}
        if run.get("constraints"):  # the activation constraints, as lowered
            jitted = jax.jit(step, in_shardings=in_shardings, out_shardings=(shardings, replicated))
            with jax.set_mesh(partitioner.mesh), nn.logical_axis_rules(partitioner.rules):
                stablehlo = jitted.lower(state, batch, key).as_text()
            out["extra"]["constraint_axes"] = [
                line for line in stablehlo.splitlines() if "sharding_constraint" in line
            ]
        if run.get("save"):
            manager = ocp.CheckpointManager(run["save"])
            manager.save(3, args=ocp.args.Composite(state=ocp.args.StandardSave(state)))
            manager.wait_until_finished()
    out["params"] = gathered(state["params"])
    out["specs"] = {
        jax.tree_util.keystr(p): str(v.sharding.spec)
        for p, v in jax.tree_util.tree_leaves_with_path(state["params"])
    }
    return out


if __name__ == "__main__":
    sys.exit(main())
