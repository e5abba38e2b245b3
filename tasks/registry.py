"""Task descriptions for the AGD loop, registered together with their seqio Tasks.

A `TaskSpec` says everything the loop needs to build one graph: the objective, which
modalities feed the model, per-task batch size and input shapes, and the classifier head.
"""

import dataclasses

import seqio

from imp.errors import ImpError, did_you_mean

OBJECTIVES = ("nce", "softmax")
MODALITIES = ("vision", "waveform", "spectrogram", "text")


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    name: str
    dataset: str  # the data set; names the classifier head shared by its tasks
    objective: str  # "nce" (contrastive over modality pairs) or "softmax"
    modalities: tuple[str, ...]  # model inputs, a subset of MODALITIES
    num_examples: int  # training examples
    batch_size: int  # global batch
    frames: int = 1
    height: int = 32
    width: int = 32
    num_samples: int = 0  # waveform samples per example
    text_length: int = 16
    vocab_size: int = 0  # of the text vocabulary; 0 without text
    drop_rate: float = 0.0  # DropToken ratio (seed 004 §3.4)
    class_names: tuple[str, ...] = ()
    class_prompts: tuple[tuple[str, ...], ...] = ()  # per class, captions for zero-shot

    def __post_init__(self):
        if self.objective not in OBJECTIVES:
            raise ImpError(f"task '{self.name}': objective '{self.objective}' not in {OBJECTIVES}")
        unknown = set(self.modalities) - set(MODALITIES)
        if unknown:
            raise ImpError(f"task '{self.name}': unknown modalities {sorted(unknown)}")
        if self.objective == "softmax" and not self.class_names:
            raise ImpError(f"task '{self.name}': a softmax task needs class_names")

    @property
    def head(self) -> str:
        return self.dataset

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


_SPECS: dict[str, TaskSpec] = {}


def register(spec: TaskSpec, source: seqio.DataSource, preprocessors, output_features) -> None:
    """Registers `spec` and its seqio Task under `spec.name` (replacing an earlier one)."""
    if spec.name in seqio.TaskRegistry.names():
        seqio.TaskRegistry.remove(spec.name)
    seqio.TaskRegistry.add(
        spec.name, source=source, preprocessors=preprocessors, output_features=output_features
    )
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
