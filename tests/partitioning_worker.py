"""Runs 3 train steps of a tiny IMP on a given mesh; the partitioning tests start it as a
subprocess so each run gets its own device count (and, for multi-host, its own process).

    python tests/partitioning_worker.py --devices 8 --mesh 1,4,2 --out result.npz
        [--moe] [--num_processes 2 --process_id 0 --port 12345]
        [--save_checkpoint DIR | --restore_checkpoint DIR]
"""

import argparse
import os
import sys


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--mesh", default="1,1,1", help="expert,data,model")
    parser.add_argument("--moe", action="store_true")
    parser.add_argument("--num_processes", type=int, default=1)
    parser.add_argument("--process_id", type=int, default=0)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--save_checkpoint")
    parser.add_argument("--restore_checkpoint")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.devices}"

    import jax
    import numpy as np
    import orbax.checkpoint as ocp
    from jax.experimental import multihost_utils

    from imp.modeling.model import ImpModel
    from imp.partitioning import distributed
    from imp.partitioning.partitioner import Partitioner
    from imp.tasks.registry import TaskSpec
    from imp.training import train_state
    from imp.training.optimizer import make_optimizer
    from imp.training.step import make_train_step

    if args.num_processes > 1:
        distributed.initialize(f"127.0.0.1:{args.port}", args.num_processes, args.process_id)
    expert, data, model_axis = (int(v) for v in args.mesh.split(","))
    partitioner = Partitioner(num_partitions=model_axis, num_expert_partitions=expert)
    assert partitioner.mesh.shape["data"] == data, partitioner.mesh.shape
    moe = dict(num_experts=4, moe_every=2, max_group_size=16) if args.moe else {}
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
    tx, schedule = make_optimizer(10, learning_rate=1e-2, warmup_steps=1)
    shardings = train_state.state_shardings(model, tx, partitioner)
    if args.restore_checkpoint:
        manager = ocp.CheckpointManager(args.restore_checkpoint)
        abstract = train_state.abstract(shardings, model, tx)
        state = manager.restore(
            manager.latest_step(), args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract))
        )
        state = state["state"]
        losses = []
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
        step = make_train_step(model, tx, schedule, [task])
        in_shardings = (shardings, batch_shardings, partitioner.replicated())
        out_shardings = (shardings, partitioner.replicated())
        compiled = partitioner.compile(step, (state, batch, key), in_shardings, out_shardings)
        hlo = compiled.as_text()
        lowered = jax.jit(step, in_shardings=in_shardings, out_shardings=out_shardings)
        import flax.linen as nn

        with jax.set_mesh(partitioner.mesh), nn.logical_axis_rules(partitioner.rules):
            stablehlo = lowered.lower(state, batch, key).as_text()
        losses = []
        for _ in range(3):
            state, metrics = compiled(state, batch, key)
            losses.append(float(metrics["loss"]))
        if args.save_checkpoint:
            manager = ocp.CheckpointManager(args.save_checkpoint)
            manager.save(3, args=ocp.args.Composite(state=ocp.args.StandardSave(state)))
            manager.wait_until_finished()
    params = multihost_utils.process_allgather(state["params"], tiled=True)
    flat = {
        jax.tree_util.keystr(p): np.asarray(v)
        for p, v in jax.tree_util.tree_leaves_with_path(params)
    }
    specs = {
        jax.tree_util.keystr(p): str(v.sharding.spec)
        for p, v in jax.tree_util.tree_leaves_with_path(state["params"])
    }
    if args.process_id == 0:
        extra = {}
        if not args.restore_checkpoint:
            extra = {
                "all_to_all": "all-to-all" in hlo,
                "constraint_axes": [
                    line for line in stablehlo.splitlines() if "sharding_constraint" in line
                ],
            }
        np.savez(
            args.out,
            losses=np.array(losses),
            specs=np.array(repr(specs)),
            extra=np.array(repr(extra)),
            **{f"param{k}": v for k, v in flat.items()},
        )


if __name__ == "__main__":
    sys.exit(main())
