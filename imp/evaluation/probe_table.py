"""`imp probe-table`: linear probes of several runs on the tasks of one mixture, as seed 000's
Table 9 reports them (rows: models, columns: tasks of every modality).

A run probed on a task of a modality it never trained (an image model on audio) first has
that modality's embedder made from the one it trained (`imp.modeling.cross_modal`); its other
tasks are probed on its own embedders. Each run's probes are written to
`RUN/eval/probes_step_N/eval.json`, beside, never over, the run's other evaluations.
"""

from collections.abc import Callable, Iterable

from imp.errors import ImpError
from imp.modeling import cross_modal

PROBED = ("vision", "spectrogram")  # the modalities a cross-modal probe converts between


def trained_modalities(tasks: Iterable) -> set[str]:
    """The embedded modalities (`PROBED`) that a run of `tasks` (`TaskSpec`s) trained."""
    return {m for spec in tasks for m in spec.modalities if m in PROBED}


def conversion(trained: set[str], probed: set[str]) -> tuple[str, str] | None:
    """The `(source, target)` embedder conversion a run that trained `trained` needs for
    probes of `probed`: from its one trained modality to the one it never trained."""
    missing = sorted((probed & set(PROBED)) - trained)
    if not missing:
        return None
    if not trained:
        raise ImpError(
            f"the run trained none of {PROBED}: there is no embedder to probe {missing} with"
        )
    (source,) = sorted(trained)  # PROBED has two: a run lacking one trained the other
    return source, missing[0]


def probe_row(label: str, experiment, trained: set[str], step: int, evaluate: Callable) -> dict:
    """One row: `{task: {"value", "chance", "cross_modal"}}` of `experiment`'s tasks, by
    `evaluate(experiment, step, evaluations, out, pair)` (`checkpoint_eval.evaluate`)."""
    probed = trained_modalities(experiment.tasks)
    pair = conversion(trained, probed)
    if pair:
        cross_modal.check(experiment.model, *pair)
    out = experiment.run_dir / "eval" / f"probes_step_{step}"
    summary = evaluate(experiment, step, ["linear_probe"], str(out), pair)
    row = {}
    for spec in experiment.tasks:
        results = summary["tasks"].get(spec.name, {})
        probe = next((v for k, v in results.items() if k.startswith("linear_probe_top1/")), None)
        if probe is None:
            raise ImpError(f"task '{spec.name}' has no linear probe (it needs class labels)")
        moved = bool(pair) and pair[1] in spec.modalities
        row[spec.name] = {"value": probe["value"], "chance": probe["chance"], "cross_modal": moved}
    return {"label": label, "step": step, "trained": sorted(trained), "tasks": row}


def format_table(rows: list[dict]) -> str:
    """The rows as a markdown table, cross-modal probes marked with `*`."""
    tasks = list(rows[0]["tasks"])
    lines = [
        "| run | trained | " + " | ".join(tasks) + " |",
        "|---|---|" + "---|" * len(tasks),
    ]
    for row in rows:
        cells = [
            f"{c['value']:.3f}" + ("*" if c["cross_modal"] else "")
            for c in (row["tasks"][t] for t in tasks)
        ]
        lines.append(
            f"| {row['label']} | {', '.join(row['trained'])} | " + " | ".join(cells) + " |"
        )
    chance = [f"{rows[0]['tasks'][t]['chance']:.3f}" for t in tasks]
    lines.append("| chance | | " + " | ".join(chance) + " |")
    lines.append("")
    lines.append("linear-probe top-1 on held-out data; * = probed through a converted embedder")
    return "\n".join(lines)
