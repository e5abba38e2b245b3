"""Examples/s of each task's input pipeline vs the rate its train step consumes them.

The pipeline side reads, decodes and augments the configured mixture's training data on this
host (seqio + tf.data, prefetching on), after a warm-up batch; the model side times the
configured model's train step on batches of the task's shapes. An input pipeline slower than
its step starves the accelerator; the ratio says how much headroom each task has. Takes gin
flags like `imp train` and defaults to the demo run (the digit world, the tiny model).
"""

import argparse

from imp.bench import common
from imp.experiment import Experiment

USES_GIN = True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mixture", help="default: the configured Experiment.mixture_or_task_name")
    parser.add_argument("--batches", type=int, default=20, help="pipeline batches timed per task")


def run(args) -> common.Report:
    # seqio and TensorFlow on use only: the other benchmarks run where they are not installed
    # (an accelerator machine with JAX alone).
    from imp.data import inspect

    experiment = Experiment.from_gin(mixture_or_task_name=args.mixture, writable=False)
    bench = common.Bench(experiment)
    rows = []
    for spec in experiment.tasks:
        pipeline = inspect.throughput(spec, batches=args.batches)
        step = bench.time_step((spec.name,), args.repeats)["median_s"]
        consumed = spec.batch_size / step
        rows.append(
            {
                "task": spec.name,
                "batch": spec.batch_size,
                "pipeline_examples_per_s": pipeline,
                "step_examples_per_s": consumed,
                "headroom": pipeline / consumed,
            }
        )
    slowest = min(rows, key=lambda r: r["headroom"])
    claims = [
        {
            "claim": "the input pipeline keeps up with the train step",
            "paper": "(not stated; a requirement)",
            "measured": f"lowest headroom {slowest['headroom']:.1f}x ({slowest['task']})",
            "verdict": "met" if slowest["headroom"] >= 1 else "not met",
        }
    ]
    settings = {"tasks": len(experiment.tasks), "repeats": args.repeats}
    return common.Report("input_pipeline", settings, rows, claims)
