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
from tensorboardX import SummaryWriter

from imp.errors import ImpError
from imp.evaluation import evaluator
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


def evaluate(experiment: "Experiment", step: int, evaluations, out: str | None) -> dict:
    """Restores `step` of the experiment's run and evaluates every data set of its mixture;
    returns `{"step", "devices", "inputs", "tasks": {task: {metric: {value, chance}}}}`."""
    run_dir = experiment.run_dir
    checkpointer = Checkpointer(run_dir / "checkpoints", read_only=True)
    state, _ = checkpointer.restore(step, experiment.abstract_state)
    evaluated = evaluator.tasks_to_evaluate(experiment.tasks)
    summary = {
        "step": step,
        "devices": jax.device_count(),
        "inputs": {name: evaluator.input_shapes(spec) for name, spec in evaluated.items()},
        "tasks": experiment.evaluate(state["params"], evaluations),
    }
    if jax.process_index() == 0:
        _write(Path(out) if out else run_dir / "eval" / f"step_{step}", summary)
    return summary


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
