"""Step time and FLOPs of MoE vs dense at equal parameters per token (seed 004 §3.3), the two
routers, and expert sharding vs replicated experts on 8 virtual devices.

At capacity factor 1 each token passes through one expert MLP of the dense MLP's size, so
MoE and dense spend the same expert FLOPs per token; the difference is the router and the
dispatch/combine einsums (their cost grows with the token group size). FLOPs are XLA's count
for the whole train step. The sharded comparison runs in a child process started with
`--xla_force_host_platform_device_count=8`: experts split over an 8-way `expert` mesh axis
(expert parallelism, all-to-all dispatch) vs every device holding all experts (pure data
parallelism). On one CPU the 8 "devices" share the same cores, so this measures the extra
work and communication of each layout, not a speed-up.
"""

import argparse
import json
import os
import subprocess
import sys

from imp.bench import common
from imp.partitioning.partitioner import Partitioner

CONFIGS = {
    "dense": {},
    "moe experts_choose": {"router": "experts_choose"},
    "moe tokens_choose": {"router": "tokens_choose"},
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--sizes", default="tiny,s", help="comma-separated: " + ",".join(common.SIZES)
    )
    parser.add_argument("--experts", type=int, default=8)
    parser.add_argument("--group_size", type=int, default=256, help="tokens per routing group")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--devices", type=int, default=8, help="virtual devices; 0 skips")
    parser.add_argument("--sharded_child", action="store_true", help=argparse.SUPPRESS)


def _model(size: str, args, config: dict):
    if not config:
        return common.model(size)
    moe = dict(num_experts=args.experts, moe_every=2, max_group_size=args.group_size)
    return common.model(size, **moe, **config)


def _measure(model, spec, repeats: int, partitioner=None) -> dict:
    bench = common.Bench(common.experiment(model, [spec], partitioner))
    times = bench.time_step((spec.name,), repeats)
    entry = bench.entry(spec.name)
    return {
        "step_median_s": times["median_s"],
        "step_min_s": times["min_s"],
        "GFLOP": common.step_flops(model, spec) / 1e9,
        "peak_MiB": common.mib(common.peak_bytes(entry.memory)["peak_bytes"]),
    }


def _sharded(args, spec) -> list[dict]:
    """Runs in the child: experts sharded over all devices vs replicated, at the first size."""
    import jax

    devices = len(jax.devices())
    size = args.sizes.split(",")[0]
    model = _model(size, args, CONFIGS["moe experts_choose"])
    rows = []
    for label, partitioner in (
        (f"experts sharded {devices}-way", Partitioner(num_expert_partitions=devices)),
        ("experts replicated", Partitioner()),
    ):
        rows.append(
            {"size": size, "model": label, **_measure(model, spec, args.repeats, partitioner)}
        )
    return rows


def _spawn_sharded(args) -> list[dict]:
    flags = os.environ.get("XLA_FLAGS", "")  # the caller's, plus the virtual device count
    env = dict(
        os.environ, XLA_FLAGS=f"{flags} --xla_force_host_platform_device_count={args.devices}"
    )
    argv = [
        sys.executable,
        "-m",
        "imp.cli",
        "bench",
        "moe_overhead",
        "--json",
        "--sharded_child",
        f"--repeats={args.repeats}",
        f"--experts={args.experts}",
        f"--group_size={args.group_size}",
        f"--batch={args.batch}",
        f"--sizes={args.sizes.split(',')[0]}",
    ]
    out = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    if out.returncode:
        raise RuntimeError(f"the {args.devices}-device child failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])["rows"]


def run(args) -> common.Report:
    spec = common.task("video_text", batch_size=args.batch, frames=8)
    settings = {"experts": args.experts, "group_size": args.group_size, "batch": args.batch}
    if args.sharded_child:
        return common.Report("moe_overhead", settings, _sharded(args, spec))
    rows = []
    for size in args.sizes.split(","):
        for label, config in CONFIGS.items():
            rows.append(
                {
                    "size": size,
                    "model": label,
                    **_measure(_model(size, args, config), spec, args.repeats),
                }
            )
        dense = rows[-len(CONFIGS)]
        for row in rows[-len(CONFIGS) :]:
            row["time_vs_dense"] = row["step_median_s"] / dense["step_median_s"]
            row["flops_vs_dense"] = row["GFLOP"] / dense["GFLOP"]
    if args.devices:
        rows += _spawn_sharded(args)
    moe = [r for r in rows if r["model"] == "moe experts_choose" and "flops_vs_dense" in r]
    claims = [
        {
            "claim": "MoE adds capacity at about the dense model's per-token compute",
            "paper": "equal per-token parameters and FLOPs as the dense model (seed 004 §3.3)",
            "measured": ", ".join(
                f"{r['size']}: {r['flops_vs_dense']:.2f}x FLOPs, "
                f"{r['time_vs_dense']:.2f}x step time"
                for r in moe
            ),
            "verdict": "met" if all(r["flops_vs_dense"] <= 1.25 for r in moe) else "not met",
        }
    ]
    settings["repeats"] = args.repeats
    return common.Report("moe_overhead", settings, rows, claims)
