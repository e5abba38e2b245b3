"""`imp eval`: evaluate a saved run's checkpoint on whatever devices this process has.

The run's operative `config.gin` (plus any gin files and flags given) rebuilds the data
tasks and the model; the checkpoint is restored read-only into this mesh's shardings, so a
run still training is never disturbed. Results go to `eval.json` and TensorBoard under
`--out` (default `MODEL_DIR/eval/step_N`).
"""

import json
from pathlib import Path

import jax
from tensorboardX import SummaryWriter

from imp.errors import ImpError, did_you_mean
from imp.evaluation import evaluator
from imp.partitioning.partitioner import Partitioner
from imp.training import loop, train_state
from imp.training.checkpoint import Checkpointer, parameter_shapes
from imp.training.metrics_writer import tensorboard_tag
from imp.training.optimizer import make_optimizer


def run_dir_of(checkpoint_dir: str) -> Path:
    """The run directory of `checkpoint_dir` (a run directory or its `checkpoints/`)."""
    path = Path(checkpoint_dir).expanduser()
    if not path.is_dir():
        raise ImpError(f"checkpoint dir {path} does not exist")
    return path.parent if path.name == "checkpoints" else path


def check_evaluations(names: list[str]) -> None:
    for name in names:
        if name not in evaluator.EVALUATIONS:
            hint = (
                did_you_mean(name, evaluator.EVALUATIONS)
                or f"; choose from {evaluator.EVALUATIONS}"
            )
            raise ImpError(f"unknown evaluation '{name}'{hint}")


def evaluate(run_dir: Path, step: int | None, evaluations: list[str], out: str | None) -> dict:
    """Restores `step` (default: latest) of the run in `run_dir` and evaluates every data
    set of its mixture; returns `{"step", "tasks": {task: {metric: {value, chance}}}}`."""
    check_evaluations(evaluations)
    checkpointer = Checkpointer(run_dir / "checkpoints", read_only=True)
    steps = checkpointer.all_steps() if (run_dir / "checkpoints").is_dir() else []
    if not steps:
        raise ImpError(f"no checkpoint in {run_dir / 'checkpoints'}")
    step = steps[-1] if step is None else step
    if step not in steps:
        raise ImpError(f"no checkpoint at step {step} in {run_dir / 'checkpoints'} (has {steps})")
    bindings = loop.prepare_configured_data()
    tasks = loop.training_tasks(bindings["mixture_or_task_name"], bindings.get("task_options"))
    specs = {spec.name: spec for spec, _ in tasks}
    model = loop.model_for(specs)
    partitioner = Partitioner()
    tx, _ = make_optimizer(bindings["train_steps"])
    shardings = train_state.state_shardings(model, tx, partitioner)
    abstract = train_state.abstract(shardings, model, tx)
    _check_shapes(checkpointer.parameter_shapes(step), parameter_shapes(abstract["params"]))
    state, _ = checkpointer.restore(step, abstract)
    evaluated = loop.one_per_evaluation(specs)
    summary = {
        "step": step,
        "devices": jax.device_count(),
        "inputs": {name: evaluator.input_shapes(spec) for name, spec in evaluated.items()},
        "tasks": {
            name: evaluator.evaluate_task(model, state["params"], spec, evaluations)
            for name, spec in evaluated.items()
        },
    }
    if jax.process_index() == 0:
        _write(Path(out) if out else run_dir / "eval" / f"step_{step}", summary)
    return summary


def _check_shapes(saved: dict, configured: dict) -> None:
    """Stops at the first parameter whose shape differs (or that one side lacks)."""
    for name in sorted(set(saved) | set(configured)):
        a, b = saved.get(name), configured.get(name)
        if a != b:
            raise ImpError(
                f"the checkpoint does not match the configured model: parameter {name} is "
                f"{a if a is not None else 'absent'} in the checkpoint and "
                f"{b if b is not None else 'absent'} in the model"
            )


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
            rows.append(f"{task:30}{name:44}{m['value']:>8.3f}{m['chance']:>8.3f}")
    return "\n".join(rows)
