"""The studies of `imp ablation`: each a paper's claim, its run file, and the tables of
variants, columns and comparisons that test it (see `imp.training.ablation` for how a study
runs and how its verdict is reached).

A `Study` is one claim of a paper (a sentence and its source), a base run file
(`gin/runs/ablation_<name>.gin`, sized so that every variant at 3 seeds finishes within
30 minutes on 2 CPU cores; flags scale it up), and one or more `Table`s: variants (each a list
of extra gin bindings), the columns to report (a held-out metric of a task, or the mean of
other columns), and the comparisons the claim predicts (`Comparison`: variant A above
variant B in a column). Adding a study is adding one `Study` here and its run file.
"""

import dataclasses
import re
from collections.abc import Callable, Sequence


@dataclasses.dataclass(frozen=True)
class Column:
    """A held-out metric (`summary["tasks"][task]["heldout"][metric]`) of the first of `tasks`
    that reports it, or with `mean_of`, the mean of those columns of the same run."""

    label: str
    metric: str = ""
    tasks: tuple[str, ...] = ()
    mean_of: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Variant:
    """A run: extra gin bindings, and optionally its steps as a function of the configured
    steps and the number of tasks (e.g. equal examples seen as a joint schedule)."""

    label: str
    bindings: tuple[str, ...] = ()
    steps: Callable[[int, int], int] | None = None

    @property
    def slug(self) -> str:
        return re.sub(r"[^a-z0-9]+", "-", self.label.lower()).strip("-")


@dataclasses.dataclass(frozen=True)
class Comparison:
    """The claim predicts `better` above `worse` in `column` (higher is better)."""

    better: str
    worse: str
    column: str


@dataclasses.dataclass(frozen=True)
class Table:
    title: str
    variants: tuple[Variant, ...]
    columns: tuple[Column, ...]
    comparisons: tuple[Comparison, ...]


@dataclasses.dataclass(frozen=True)
class Study:
    name: str
    help: str  # one line for `imp ablation --help`
    claim: str  # one sentence, with its source
    tables: tuple[Table, ...]
    # A task whose forward FLOPs per example each variant reports (models of different cost).
    flops_task: str = ""

    @property
    def run_file(self) -> str:
        return f"runs/ablation_{self.name}.gin"

    @property
    def variants(self) -> list[Variant]:
        return [v for table in self.tables for v in table.variants]


# Held-out columns of the five demo tasks (tasks/demo.py).
_ZERO_SHOT = (
    # A data set evaluates once, under one of its tasks (with label-text NCE, that task).
    Column(
        "image zero-shot", "zero_shot_top1/vision", ("digit_images_text", "digit_images_label_text")
    ),
    Column("video zero-shot", "zero_shot_top1/vision", ("digit_videos_text",)),
    Column("audio zero-shot", "zero_shot_top1/waveform", ("digit_videos_audio_text",)),
)
_CLS = (
    Column("image cls", "top1", ("digit_images_cls",)),
    Column("video cls", "top1", ("digit_videos_cls",)),
)
_MEAN_ZERO_SHOT = Column("mean zero-shot", mean_of=tuple(c.label for c in _ZERO_SHOT))
_MEAN = Column("mean", mean_of=tuple(c.label for c in _ZERO_SHOT + _CLS))
DEMO_COLUMNS = (*_ZERO_SHOT, *_CLS, _MEAN_ZERO_SHOT, _MEAN)


def _times_tasks(steps: int, tasks: int) -> int:
    return steps * tasks


def _per_task(steps: int, tasks: int) -> int:
    return max(1, round(steps / tasks))


def _versus(better: str, worse: Sequence[str], columns: Sequence[str]) -> tuple:
    return tuple(Comparison(better, w, c) for w in worse for c in columns)


_LABELS = "MIXTURE_OR_TASK_NAME = 'demo_digit_images_labels'"
_NO_PROBE = "train.end_evaluations = ('classification', 'zero_shot')"  # its table has none
_ALTERNATING = "NCE + softmax, alternating"
_ALL_ALTERNATING = "all tasks, NCE + softmax, alternating (AGD)"
_OBJECTIVES = Study(
    "objectives",
    "seed 004 Table 2: NCE only vs softmax only vs both summed vs both alternating (AGD)",
    "seed 004 Table 2: combining the NCE and softmax objectives beats either alone, and "
    "alternating them (AGD) beats summing them into one loss, at the same number of steps.",
    (
        Table(
            "One labelled data set (digit images), seed 004 Table 2's setting",
            (
                Variant("NCE only", ("MIXTURE_OR_TASK_NAME = 'digit_images_label_text'",)),
                Variant("softmax only", ("MIXTURE_OR_TASK_NAME = 'digit_images_cls'",)),
                Variant("NCE + softmax, summed", (_LABELS, "Schedule.name = 'summed'")),
                # Each objective exactly half of the steps, as in Table 2.
                Variant(_ALTERNATING, (_LABELS, "Schedule.name = 'round_robin'")),
                Variant(
                    "NCE + softmax, alternating, 2x steps (equal examples)",
                    (_LABELS, "Schedule.name = 'round_robin'"),
                    _times_tasks,
                ),
            ),
            (
                Column(
                    "linear probe",
                    "linear_probe_top1/vision",
                    ("digit_images_cls", "digit_images_label_text"),
                ),
                Column(
                    "image-to-text zero-shot", "zero_shot_top1/vision", ("digit_images_label_text",)
                ),
            ),
            (
                *_versus(
                    _ALTERNATING,
                    ["NCE + softmax, summed", "NCE only"],
                    ["linear probe", "image-to-text zero-shot"],
                ),
                Comparison(_ALTERNATING, "softmax only", "linear probe"),
            ),
        ),
        Table(
            "Every demo task: the NCE tasks only, or NCE and softmax tasks summed or alternating",
            (
                Variant(
                    "all tasks, NCE only",
                    ("MIXTURE_OR_TASK_NAME = 'demo_contrastive'", _NO_PROBE),
                ),
                Variant(
                    "all tasks, NCE + softmax, summed",
                    ("MIXTURE_OR_TASK_NAME = 'demo_all'", "Schedule.name = 'summed'", _NO_PROBE),
                ),
                Variant(_ALL_ALTERNATING, ("MIXTURE_OR_TASK_NAME = 'demo_all'", _NO_PROBE)),
            ),
            DEMO_COLUMNS,
            (
                Comparison(_ALL_ALTERNATING, "all tasks, NCE + softmax, summed", "mean"),
                Comparison(_ALL_ALTERNATING, "all tasks, NCE only", "mean zero-shot"),
            ),
        ),
    ),
)

_MOE = Study(
    "moe",
    "seed 004 Fig. 4: dense vs experts-choose MoE with 4 and 16 experts",
    "seed 004 Fig. 4: at equal parameters per token, an experts-choose MoE encoder with 4 "
    "experts improves accuracy over dense, most on zero-shot, and 16 experts improve further "
    "across all evaluations.",
    (
        Table(
            "Dense vs MoE (experts choose, capacity factor 1, every other FFN)",
            (
                Variant("dense", ("ImpModel.num_experts = 0",)),
                Variant("MoE, 4 experts", ("ImpModel.num_experts = 4",)),
                Variant("MoE, 16 experts", ("ImpModel.num_experts = 16",)),
            ),
            DEMO_COLUMNS,
            (
                Comparison("MoE, 4 experts", "dense", "mean zero-shot"),
                Comparison("MoE, 16 experts", "MoE, 4 experts", "mean"),
            ),
        ),
    ),
)

_MULTIRES = Study(
    "multires",
    "seed 004 Fig. 3: base resolution only vs with the multi-resolution variants",
    "seed 004 Fig. 3 / Table 3: adding resolution variants (batch size x resolution x "
    "DropToken) to the training mixture improves downstream results at the same number of "
    "steps.",
    (
        Table(
            "Base resolution vs multi-resolution mixture, equal steps",
            (
                Variant("base resolution", ("MIXTURE_OR_TASK_NAME = 'demo_all'",)),
                Variant(
                    "with resolution variants", ("MIXTURE_OR_TASK_NAME = 'demo_all_multires'",)
                ),
            ),
            DEMO_COLUMNS,
            (Comparison("with resolution variants", "base resolution", "mean"),),
        ),
    ),
)

_TOWERS = Study(
    "towers",
    "seed 004 §4: one shared encoder vs one dense tower per modality (and shared MoE)",
    "seed 004 §4 (Fig. 6): at the same compute, a multi-tower dense encoder is more accurate "
    "than one shared dense encoder (at more parameters), and a shared MoE encoder beats both.",
    (
        Table(
            "Shared vs per-modality towers, same blocks and steps",
            (
                Variant("shared dense", ("ImpModel.towers = 'shared'",)),
                Variant("multi-tower dense", ("ImpModel.towers = 'per_modality'",)),
                Variant(
                    "shared MoE, 4 experts",
                    ("ImpModel.towers = 'shared'", "ImpModel.num_experts = 4"),
                ),
            ),
            DEMO_COLUMNS,
            (
                Comparison("multi-tower dense", "shared dense", "mean"),
                Comparison("shared MoE, 4 experts", "multi-tower dense", "mean"),
            ),
        ),
    ),
)


def _schedule(label: str, name: str, *extra: str, steps=None) -> Variant:
    return Variant(label, (f"Schedule.name = '{name}'", *extra), steps)


_WEIGHTED = "weighted"
_SCHEDULES = Study(
    "schedules",
    "seed 000 Table 1: task_by_task, alternating, uniform, weighted, accumulated, IMP, interval",
    "seed 000 Table 1: task-by-task training forgets and does worst; weighted task sampling "
    "does best, ahead of uniform, alternating and accumulated gradients.",
    (
        Table(
            "Task schedules over the five demo tasks, equal steps (accumulated: equal examples)",
            (
                _schedule("task by task", "task_by_task"),
                _schedule("alternating", "round_robin"),
                _schedule("uniform", "uniform"),
                # Weights stand in for PolyViT's single-task step budgets: the 40-class video
                # tasks get twice the 10-class image tasks' share.
                _schedule(
                    _WEIGHTED,
                    "weighted",
                    "Schedule.weights = {'digit_images_text': 1.0, 'digit_images_cls': 1.0, "
                    "'digit_videos_text': 2.0, 'digit_videos_audio_text': 2.0, "
                    "'digit_videos_cls': 2.0}",
                ),
                # PolyViT sets U = sum(U_j) / T: each step sees every task.
                _schedule("accumulated", "accumulated", steps=_per_task),
                _schedule("proportional (IMP)", "proportional"),
                # The reference code's loop; the image tasks train on every other turn.
                _schedule(
                    "interval (reference code)",
                    "interval",
                    "Schedule.intervals = {'digit_images_text': 2, 'digit_images_cls': 2}",
                ),
            ),
            DEMO_COLUMNS,
            _versus(_WEIGHTED, ["task by task", "alternating", "uniform", "accumulated"], ["mean"]),
        ),
    ),
)

_FACTORISED_ENCODER = "Model 2: factorised encoder"
_VIDEO_ENCODERS = Study(
    "video_encoders",
    "seed 001: ViViT Models 1-4 (joint, factorised encoder, self-attention, dot-product), "
    "TokenLearner, MTV",
    "seed 001 (ViViT): on a small video data set the factorised encoder (Model 2) works best, "
    "as it overfits less; the unfactorised Model 1 needs the most computation.",
    (
        Table(
            "ViViT Models 1-4 on video classification (digit and direction), equal steps",
            (
                Variant("Model 1: joint space-time"),
                # 3 spatial + 1 temporal layers: the depth of the 4-layer Model 1.
                Variant(
                    _FACTORISED_ENCODER,
                    ("ImpModel.num_layers = 3", "ImpModel.temporal_layers = 1"),
                ),
                Variant(
                    "Model 3: factorised self-attention",
                    ("ImpModel.attention = 'factorised_self_attention'",),
                ),
                Variant(
                    "Model 4: factorised dot-product",
                    ("ImpModel.attention = 'factorised_dot_product'",),
                ),
                # 8 learned tokens for each frame's 16 after layer 2 of 4.
                Variant(
                    "Model 1 + TokenLearner at layer 2",
                    (
                        "ImpModel.token_learner = 'v1.1'",
                        "ImpModel.token_learner_layer = 2",
                        "ImpModel.token_learner_tokens = 8",
                    ),
                ),
                # models/mtv_tiny.gin: 3 views, then a 1-layer global encoder.
                Variant(
                    "MTV: views of 8, 4 and 2 frames",
                    (
                        "ImpModel.views = ((8, 8, 8), (4, 8, 8), (2, 8, 8))",
                        "ImpModel.view_widths = (32, 64, 128)",
                        "ImpModel.view_layers = 3",
                        "ImpModel.num_layers = 1",
                    ),
                ),
            ),
            (Column("video cls", "top1", ("digit_videos_cls",)),),
            _versus(
                _FACTORISED_ENCODER,
                [
                    "Model 1: joint space-time",
                    "Model 3: factorised self-attention",
                    "Model 4: factorised dot-product",
                ],
                ["video cls"],
            ),
        ),
    ),
    flops_task="digit_videos_cls",
)


def _share(fraction: float) -> Callable[[int, int], int]:
    """A single-task baseline's steps: its task's share of the co-trained run's."""
    return lambda steps, _: max(1, round(steps * fraction))


# Tasks sampled in proportion to their training examples (1438 images, 2876 clips for each of
# the video and audio tasks): the single-task runs together take the co-trained run's steps.
_POLYVIT_TASKS = (
    ("images", "digit_images_cls", 0.2),
    ("videos", "digit_videos_cls", 0.4),
    ("audio", "digit_videos_audio_cls", 0.4),
)
_COTRAINED = "co-trained, L_adapt = 0"
_COTRAINED_ADAPT = "co-trained, L_adapt = L/2"
_POLYVIT = Study(
    "polyvit",
    "seed 000: single-task baselines vs PolyViT co-trained on image, video and audio "
    "classification, with L_adapt = 0 and L/2",
    "seed 000 (PolyViT, Table 2): one model co-trained on image, video and audio "
    "classification comes within about 1% of the single-task models with a third of their "
    "parameters (L_adapt = 0), and modality-adaptor layers (L_adapt = L/2) add capacity.",
    (
        Table(
            "Single-task baselines vs co-training at equal total steps",
            tuple(
                Variant(
                    f"single-task: {label}",
                    (
                        f"MIXTURE_OR_TASK_NAME = '{task}'",
                        *(() if label == "audio" else ("Experiment.task_options = None",)),
                    ),
                    _share(share),
                )
                for label, task, share in _POLYVIT_TASKS
            )
            + (
                Variant(_COTRAINED),
                Variant(_COTRAINED_ADAPT, ("ImpModel.adaptor_layers = 2",)),
            ),
            tuple(Column(f"{label} cls", "top1", (task,)) for label, task, _ in _POLYVIT_TASKS),
            tuple(
                Comparison(cotrained, f"single-task: {label}", f"{label} cls")
                for cotrained in (_COTRAINED, _COTRAINED_ADAPT)
                for label, _, _ in _POLYVIT_TASKS
            ),
        ),
    ),
)

# UniT's tasks and their shares of the shared run's steps (`unit_demo`'s sampling weights,
# `tasks.demo.UNIT_WEIGHTS`, which a test holds them to).
_UNIT_TASKS = (
    ("detection", "digit_scenes_detection", 0.8, 20),
    ("VQA", "digit_questions_vqa", 0.15, 25),
    ("captions", "digit_captions_cls", 0.05, 25),
)
_SHARED = "shared decoder, all tasks"
_UNIT = Study(
    "unit",
    "seed 002 Table 1: each task alone vs one shared decoder on detection, VQA and text, and "
    "updating unused parameters",
    "seed 002 Table 1 and Appendix A: a shared decoder trained on detection and VQA together "
    "keeps detection near its single-task score and helps VQA, and updating the parameters a "
    "step does not use (with zero gradients) makes joint training worse.",
    (
        Table(
            "Single-task runs vs one shared model at equal total steps",
            tuple(
                Variant(
                    f"single-task: {label}",
                    (
                        f"MIXTURE_OR_TASK_NAME = '{task}'",
                        f"Experiment.task_options = {{'{task}': {{'queries': {queries}}}}}",
                    ),
                    _share(share),
                )
                for label, task, share, queries in _UNIT_TASKS
            )
            + (
                Variant(_SHARED),
                Variant(
                    f"{_SHARED}, unused parameters updated", ("train.freeze_untouched = False",)
                ),
            ),
            (
                Column("detection AP50", "AP50", ("digit_scenes_detection",)),
                Column("VQA top-1", "top1", ("digit_questions_vqa",)),
                Column("captions top-1", "top1", ("digit_captions_cls",)),
            ),
            (
                Comparison(_SHARED, "single-task: VQA", "VQA top-1"),
                Comparison(_SHARED, f"{_SHARED}, unused parameters updated", "VQA top-1"),
                Comparison(_SHARED, f"{_SHARED}, unused parameters updated", "detection AP50"),
            ),
        ),
    ),
)

STUDIES = {
    s.name: s
    for s in (_OBJECTIVES, _MOE, _MULTIRES, _TOWERS, _SCHEDULES, _VIDEO_ENCODERS, _POLYVIT, _UNIT)
}
