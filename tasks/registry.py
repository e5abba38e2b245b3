"""Task descriptions (`imp.tasks.spec.TaskSpec`) registered together with their seqio Tasks,
and the standard mixtures over them."""

from collections.abc import Sequence

import seqio

from imp.errors import ImpError, did_you_mean
from imp.tasks.spec import CLASSIFICATION, GENERATION, TaskSpec

# Prefixes the messages of in-graph data checks, so `feeding` can report them.
CHECK_MARK = "imp-data-check: "

_SPECS: dict[str, TaskSpec] = {}


def register_task(name: str, source: seqio.DataSource, preprocessors, output_features) -> None:
    """A seqio Task under `name`, replacing an earlier one."""
    if name in seqio.TaskRegistry.names():
        seqio.TaskRegistry.remove(name)
    seqio.TaskRegistry.add(
        name, source=source, preprocessors=preprocessors, output_features=output_features
    )


def register(spec: TaskSpec, source: seqio.DataSource, preprocessors, output_features) -> None:
    """Registers `spec` and its seqio Task under `spec.name` (replacing an earlier one)."""
    register_task(spec.name, source, preprocessors, output_features)
    _SPECS[spec.name] = spec


def register_mixture(
    name: str, task_names: list[str], rates: dict[str, float] | None = None
) -> None:
    """A seqio Mixture; rates default to each task's training examples."""
    if name in seqio.MixtureRegistry.names():
        seqio.MixtureRegistry.remove(name)
    tasks = [(t, rates[t]) for t in task_names] if rates else task_names
    seqio.MixtureRegistry.add(
        name, tasks, default_rate=None if rates else seqio.mixing_rate_num_examples
    )


def mixture_groups(spec: TaskSpec) -> list[str]:
    """The standard mixtures a task belongs to: image_text, video_text, video_audio_text,
    label_text (NCE against class-name prompts), contrastive (every NCE task),
    classification, generation (text written by the LiT decoder), all, and `{data
    set}_labels` (the tasks its labels train: classification and label-text NCE, seed 004
    Table 2's setting)."""
    modalities = set(spec.modalities)
    labels = f"{spec.dataset}_labels"
    if spec.objective == GENERATION:
        return ["all", "generation"]
    if spec.objective in CLASSIFICATION:
        return ["all", "classification", labels]
    if spec.text_source == "labels":
        return ["all", "contrastive", "label_text", labels]
    groups = ["all", "contrastive"]
    if modalities & {"waveform", "spectrogram"} and {"vision", "text"} <= modalities:
        groups.append("video_audio_text")
    elif modalities == {"vision", "text"}:
        groups.append("video_text" if spec.frames > 1 else "image_text")
    return groups


def _base_name(spec: TaskSpec) -> str:
    return spec.name.removesuffix(f"_{spec.variant}") if spec.variant != "base" else spec.name


def register_mixtures(
    prefix: str, tasks: list[tuple[TaskSpec, float]], downstream: Sequence[str] = ()
) -> list[str]:
    """`{prefix}_{group}` over the base-resolution tasks and `{prefix}_{group}_multires`
    over every variant of weight above 0 (a video base sits out, see
    `imp.tasks.datasets`), for each group of `mixture_groups`, with the tasks' weights; a
    base task's weight in `{prefix}_{group}` is its whole family's. Tasks of the
    `downstream` data sets (zero-shot evaluation sets, kept out of pre-training as seed 004
    §4.1 does) join only `{prefix}_downstream` and their data set's own mixtures."""
    members: dict[str, list[tuple[TaskSpec, float]]] = {}
    for spec, weight in tasks:
        groups = mixture_groups(spec)
        if spec.dataset in downstream:
            groups = ["downstream", *(g for g in groups if g == f"{spec.dataset}_labels")]
        for group in groups:
            if weight > 0:
                members.setdefault(f"{prefix}_{group}_multires", []).append((spec, weight))
            if spec.variant == "base":
                base_weight = sum(w for s, w in tasks if _base_name(s) == spec.name)
                members.setdefault(f"{prefix}_{group}", []).append((spec, base_weight))
    for name, entries in members.items():
        if name in _SPECS:
            raise ImpError(f"mixture name '{name}' is taken by a task; choose another prefix")
        register_mixture(name, [s.name for s, _ in entries], {s.name: w for s, w in entries})
    return sorted(members)


def spec(name: str) -> TaskSpec:
    if name not in _SPECS:
        hint = did_you_mean(name, _SPECS) or f"; registered: {sorted(_SPECS)}"
        raise ImpError(f"unknown task '{name}'{hint}")
    return _SPECS[name]


def resolve(mixture_or_task_name: str) -> list[tuple[TaskSpec, float]]:
    """The tasks of a mixture (with their rates) or a single task (rate 1)."""
    if mixture_or_task_name in seqio.MixtureRegistry.names():
        mixture = seqio.get_mixture_or_task(mixture_or_task_name)
        return [(spec(t.name), float(mixture.get_rate(t))) for t in mixture.tasks]
    if mixture_or_task_name in _SPECS:
        return [(_SPECS[mixture_or_task_name], 1.0)]
    known = sorted(set(_SPECS) | set(seqio.MixtureRegistry.names()))
    hint = did_you_mean(mixture_or_task_name, known) or f"; registered: {known}"
    raise ImpError(f"unknown mixture or task '{mixture_or_task_name}'{hint}")
