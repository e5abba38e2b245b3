"""`imp eval`: evaluate a saved run's checkpoint on whatever devices this process has.

The run's operative `config.gin` (plus any gin files and flags given) rebuilds the experiment,
validated like a training run (an evaluation resolution past the position tables stops here,
before anything compiles); the checkpoint is restored read-only into this mesh's shardings, so
a run still training is never disturbed. Results go to `eval.json` and TensorBoard under
`--out` (default `MODEL_DIR/eval/step_N`).
"""

import json
from pathlib import Path
from typing import TYPE_CHECKING

import jax
import numpy as np
from tensorboardX import SummaryWriter

from imp.errors import ImpError
from imp.evaluation import evaluator, metrics
from imp.modeling import cross_modal, surgery
from imp.partitioning.partitioner import from_host
from imp.training.checkpoint import Checkpointer
from imp.training.metrics_writer import tensorboard_tag

if TYPE_CHECKING:
    from imp.experiment import Experiment


def run_dir_of(checkpoint_dir: str) -> Path:
    """The run directory of `checkpoint_dir` (a run directory or its `checkpoints/`)."""
    path = Path(checkpoint_dir).expanduser()
    if not path.is_dir():
        raise ImpError(f"checkpoint dir {path} does not exist")
    run_dir = path.parent if path.name == "checkpoints" else path
    if not (run_dir / "config.gin").is_file():
        raise ImpError(f"{run_dir} has no config.gin (is it a run directory of `imp train`?)")
    return run_dir


def pick_step(run_dir: Path, step: int | None) -> int:
    """`step`, or the latest checkpoint's, checked to exist."""
    checkpoints = run_dir / "checkpoints"
    steps = []
    if checkpoints.is_dir():
        checkpointer = Checkpointer(checkpoints, read_only=True)
        steps = checkpointer.all_steps()
        checkpointer.close()
    if not steps:
        raise ImpError(f"no checkpoint in {checkpoints}")
    if step is not None and step not in steps:
        raise ImpError(f"no checkpoint at step {step} in {checkpoints} (has {steps})")
    return steps[-1] if step is None else step


def evaluate(
    experiment: "Experiment",
    step: int,
    evaluations,
    out: str | None,
    cross_modal_pair: tuple[str, str] | None = None,
) -> dict:
    """Restores `step` of the experiment's run and evaluates every data set of its mixture;
    returns `{"step", "devices", "inputs", "tasks": {task: {metric: {value, chance}}}}`.
    `cross_modal_pair` `(source, target)`: the target modality's embedder is first made from
    the source's (`imp.modeling.cross_modal`), for probes of a model trained on the source."""
    run_dir = experiment.run_dir
    if cross_modal_pair:
        cross_modal.check(experiment.model, *cross_modal_pair)
    checkpointer = Checkpointer(run_dir / "checkpoints", read_only=True)
    new_heads = _heads_not_trained(checkpointer, step, experiment, evaluations)
    if new_heads:
        params = _params_with_new_heads(checkpointer, step, experiment, new_heads)
    else:
        params = checkpointer.params(step, experiment.abstract_state["params"])
    if cross_modal_pair:
        flat = surgery.flatten(params)
        converted = cross_modal.convert(flat, experiment.model, *cross_modal_pair)
        flat |= {n: from_host(v, flat[n].sharding) for n, v in converted.items()}
        params = surgery.unflatten(flat)
    out = Path(out) if out else run_dir / "eval" / f"step_{step}"
    evaluated = evaluator.tasks_to_evaluate(experiment.tasks)
    summary = {
        "step": step,
        "devices": jax.device_count(),
        "inputs": {name: evaluator.input_shapes(spec) for name, spec in evaluated.items()},
        "tasks": experiment.evaluate(params, evaluations, out),
    }
    if jax.process_index() == 0:
        _write(out, summary)
    return summary


def _heads_not_trained(checkpointer, step: int, experiment, evaluations) -> list[str]:
    """The classifier heads the configured tasks have and the checkpoint lacks: tasks from
    outside the run's mixture (`--gin.MIXTURE_OR_TASK_NAME`), evaluated by their features
    only (linear probe, zero-shot, retrieval). Any other difference is left to `restore`."""
    have = checkpointer.param_specs(step)
    missing = set(surgery.flatten(experiment.abstract_state["params"])) - set(have)
    heads = sorted({n.split("/")[0] for n in missing})
    if not heads or not all(h.startswith("classifiers_") for h in heads):
        return []
    if "classification" in evaluations:
        raise ImpError(
            f"this run trained no {', '.join(heads)} (tasks outside its mixture): evaluate "
            "them by their features, --evaluations linear_probe (or zero_shot, retrieval)"
        )
    return heads


def _params_with_new_heads(checkpointer, step: int, experiment, heads: list[str]) -> dict:
    """The checkpoint's parameters with zeros for the `heads` it lacks, placed as configured."""
    abstract = surgery.flatten(experiment.abstract_state["params"])
    kept = {n: spec for n, spec in abstract.items() if n.split("/")[0] not in heads}
    flat = surgery.flatten(checkpointer.params(step, surgery.unflatten(kept)))
    for name in abstract.keys() - kept.keys():
        spec = abstract[name]
        flat[name] = from_host(np.zeros(spec.shape, spec.dtype), spec.sharding)
    return surgery.unflatten(flat)


def _write(out: Path, summary: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps(summary, indent=2) + "\n")
    with SummaryWriter(str(out / "tensorboard")) as writer:
        for task, task_metrics in summary["tasks"].items():
            for name, m in task_metrics.items():
                writer.add_scalar(tensorboard_tag(f"{task}/{name}"), m["value"], summary["step"])


def format_table(summary: dict) -> str:
    rows = [f"step {summary['step']} on {summary['devices']} device(s)"]
    for task, shapes in summary.get("inputs", {}).items():
        shown = ", ".join(f"{m} {'x'.join(map(str, s))}" for m, s in shapes.items())
        rows.append(f"{task} evaluated on {shown}")
    rows.append(f"{'task':30}{'metric':44}{'value':>8}{'chance':>8}")
    for task, task_metrics in summary["tasks"].items():
        for name, m in task_metrics.items():
            cells = metrics.format_cell(m["value"]) + metrics.format_cell(m["chance"])
            rows.append(f"{task:30}{name:44}{cells}")
    return "\n".join(rows)
