"""`imp bench NAME`: the systems claims of seed 004 §3.1-3.3 (and the LiT decoder's decoding
speed, `decode`), measured on this machine.

Each benchmark module has `add_arguments(parser)` and `run(args) -> common.Report`; the
results and the commands that produced them are in docs/benchmarks.md.
"""

BENCHMARKS = (
    "scan_compile",
    "remat",
    "graph_table",
    "agd_vs_mixed",
    "moe_overhead",
    "throughput",
    "input_pipeline",
    "decode",
)
