"""`Experiment`: everything a command needs to know about a run, assembled and validated before
any data is read or any graph compiled.

An experiment holds the run directory, the training tasks (with their `task_options`), the
model with one classifier head per classification data set, the partitioner and its mesh, the
optimizer and learning-rate schedule, the loss and the task schedule, the train-state
shardings and the abstract train state. Constructing one checks every task variant's training
and evaluation inputs against the model (patch sizes dividing the inputs, grids within the
position tables, text within `max_text_length`, the vocabulary, batches that split over the
mesh, MoE routing groups), so a wrong value costs seconds and names its binding.

`imp train`, `imp eval`, `imp data inspect`, `imp ablation` and `imp bench` receive one. gin
binds the recipe under the name `Experiment` and the parts under their own names:

    Experiment.model_dir = %MODEL_DIR
    Experiment.train_steps = %TRAIN_STEPS
    Experiment.mixture_or_task_name = %MIXTURE_OR_TASK_NAME
    Experiment.prepare_data = @prepare_demo
    ImpModel.d_model = 128            # Partitioner.*, make_optimizer.*, TaskLoss.*, Schedule.*

`Experiment.from_gin()` reads all of them once; nothing below reads gin again. Benchmarks and
tests build one in code: `Experiment(tasks=..., model=ImpModel(...))`.
"""

import dataclasses
import functools
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import gin
import jax
import optax

from imp import validation
from imp.errors import ImpError
from imp.modeling.heads import HEAD_INITS
from imp.modeling.model import (
    ImpModel,
    adaptor_stack,
    check_config,
    check_routing_groups,
    needs_token_grid,
    supports_drop_path,
    tokens_per_example,
)
from imp.partitioning.partitioner import Partitioner
from imp.tasks.spec import CLASSIFICATION, DETECTION, GENERATION, TaskSpec
from imp.training import train_state
from imp.training.initialise import InitFrom
from imp.training.optimizer import StepSize, make_optimizer
from imp.training.samplers import JOINT, Sampler, Schedule
from imp.training.step import TaskLoss
from imp.training.train_state import TrainState

EVAL_ROWS = 64  # rows of one evaluation forward call, before rounding to the mesh
TASK_OPTIONS = {
    "loss_weight": float,
    "lr_multiplier": float,
    "warmup_steps": int,
    "weight_decay": float,
    "head_name": str,
    "mixup": float,
    "stochastic_depth": float,
    "head_init": str,
    "queries": int,
    "beams": int,
}
_NO_RUN = (
    "no run is configured ({missing} unbound): the gin files given describe a model, not what "
    "to train; add a run file, e.g. --gin_file runs/demo.gin, or gin/data/my_videos.gin for "
    "your own data"
)


@gin.register("Experiment")
def _recipe(
    model_dir: str | None = None,
    train_steps: int | None = None,
    mixture_or_task_name: str | None = None,
    prepare_data: Callable[[], object] | None = None,
    task_options: dict | None = None,
    seed: int = 0,
    init_from: InitFrom | None = None,
    mix_in_batch: bool = False,
) -> dict:
    """What gin binds as `Experiment.*`: the run directory, its length, what it trains (the
    hook `prepare_data` registers the tasks first), per-task options `{task: {loss_weight,
    lr_multiplier, warmup_steps, weight_decay, head_name, mixup, stochastic_depth,
    head_init, queries, beams}}`, the seed of initialisation, sampling and data order, and
    another run's checkpoint to start from (`@InitFrom()`, `imp.training.initialise`).
    `mix_in_batch` mixes the generation tasks that share their input shapes inside each batch
    (seed 003's batches), rather than alternating them by step."""
    return dict(
        model_dir=model_dir,
        train_steps=train_steps,
        mixture_or_task_name=mixture_or_task_name,
        prepare_data=prepare_data,
        task_options=task_options,
        seed=seed,
        init_from=init_from,
        mix_in_batch=mix_in_batch,
    )


@dataclasses.dataclass(frozen=True)
class Experiment:
    """A validated run: see the module docstring. Parts left as None take their defaults
    (equal rates, `Partitioner()`, `make_optimizer(train_steps)`, `TaskLoss()`, `Schedule()`)."""

    tasks: tuple[TaskSpec, ...]
    model: ImpModel
    train_steps: int = 1000
    rates: tuple[float, ...] | None = None
    partitioner: Partitioner | None = None
    tx: optax.GradientTransformation | None = None
    step_size: StepSize | None = None
    loss: TaskLoss = TaskLoss()
    schedule: Schedule = Schedule()
    seed: int = 0
    init_from: InitFrom | None = None
    run_dir: Path | None = None
    config: str = ""  # the operative gin config it was built from
    # False for evaluation only (`imp eval`, on any mesh): training batches need not split
    # over this mesh.
    training: bool = True
    shardings: TrainState = dataclasses.field(init=False, repr=False)
    abstract_state: TrainState = dataclasses.field(init=False, repr=False)

    def __post_init__(self):
        def put(name, value):
            object.__setattr__(self, name, value)

        _check_steps(self.train_steps)
        _check_seed(self.seed)
        validation.require(bool(self.tasks), "the experiment has no tasks")
        put("tasks", tuple(self.tasks))
        put("rates", tuple(float(r) for r in self.rates or [1.0] * len(self.tasks)))
        if self.partitioner is None:
            put("partitioner", Partitioner())
        validation.require(
            (self.tx is None) == (self.step_size is None),
            "an Experiment takes the optimizer and its step size together",
        )
        if self.tx is None:
            tx, step_size = make_optimizer(self.train_steps)
            put("tx", tx)
            put("step_size", step_size)
        check_config(self.model)
        put(
            "model",
            self.model.clone(
                heads=_heads(self.tasks),
                decoded=_decoded(self.tasks),
                **_text_decoder(self.model, self.tasks, self.step_size),
            ),
        )
        self.new_sampler()  # checks the schedule against the tasks
        for spec in self.tasks:
            self._check_task(spec)
        put("shardings", train_state.state_shardings(self.model, self.tx, self.partitioner))
        put("abstract_state", train_state.abstract(self.shardings, self.model, self.tx))
        if self.init_from is not None and self.training:
            validation.require(
                isinstance(self.init_from, InitFrom),
                f"Experiment.init_from = {self.init_from!r}: expected @InitFrom()",
            )
            if not self.resumes:
                self.init_from.check(self.abstract_state["params"], self.model)

    @property
    def resumes(self) -> bool:
        """Whether the run directory holds checkpoints (a run resumes from them)."""
        checkpoints = self.run_dir / "checkpoints" if self.run_dir else None
        return bool(checkpoints and checkpoints.is_dir()) and any(
            p.name.isdigit() for p in checkpoints.iterdir()
        )

    @classmethod
    def from_gin(cls, *, writable: bool = True, training: bool = True, **overrides) -> "Experiment":
        """The experiment the parsed gin config describes, with `overrides` of the recipe
        (e.g. `model_dir=` for `imp eval`, `mixture_or_task_name=` for `imp data inspect`).
        With `writable`, the run directory must be creatable; without `training`, the
        experiment only evaluates (see the field)."""
        recipe = gin.get_configurable(_recipe)()
        assert set(overrides) <= set(recipe), overrides
        recipe.update({k: v for k, v in overrides.items() if v is not None})
        missing = [f"Experiment.{k}" for k in ("model_dir", "train_steps") if recipe[k] is None]
        if recipe["mixture_or_task_name"] is None:
            missing.append("Experiment.mixture_or_task_name")
        if missing:
            raise ImpError(_NO_RUN.format(missing=", ".join(missing)))
        for name, value, expected in (
            ("model_dir", recipe["model_dir"], str),
            ("mixture_or_task_name", recipe["mixture_or_task_name"], str),
        ):
            validation.require(
                isinstance(value, expected) and value,
                f"Experiment.{name} = {value!r}: expected a non-empty string",
            )
        run_dir = Path(recipe["model_dir"]).expanduser()
        if writable:
            _check_creatable(run_dir)
        # Everything that needs no data first: a typo costs no data preparation.
        train_steps = _check_steps(recipe["train_steps"])
        _check_seed(recipe["seed"])
        model = gin.get_configurable(ImpModel)()
        check_config(model)
        tx, step_size = gin.get_configurable(make_optimizer)(train_steps)
        parts = dict(
            partitioner=gin.get_configurable(Partitioner)(),
            loss=gin.get_configurable(TaskLoss)(),
            schedule=gin.get_configurable(Schedule)(),
        )
        if recipe["prepare_data"] is not None:
            validation.require(
                callable(recipe["prepare_data"]),
                f"Experiment.prepare_data = {recipe['prepare_data']!r}: expected a function "
                "reference such as @prepare_demo",
            )
            recipe["prepare_data"]()
        from imp.tasks import registry  # seqio: only experiments of registered tasks need it

        resolved = registry.resolve(recipe["mixture_or_task_name"])
        # Another mixture than the run's (`imp data inspect --mixture`): options of the run's
        # tasks that are not in it do not apply.
        strict = "mixture_or_task_name" not in overrides or not overrides["mixture_or_task_name"]
        tasks = _with_options([spec for spec, _ in resolved], recipe["task_options"], strict)
        rates = [rate for _, rate in resolved]
        validation.require(
            isinstance(recipe["mix_in_batch"], bool),
            f"Experiment.mix_in_batch = {recipe['mix_in_batch']!r}: expected a bool",
        )
        if recipe["mix_in_batch"]:
            tasks, rates = mixed_in_batch(tasks, rates)
        return cls(
            tasks=tuple(tasks),
            rates=tuple(rates),
            model=model,
            train_steps=train_steps,
            tx=tx,
            step_size=step_size,
            **parts,
            seed=recipe["seed"],
            init_from=recipe["init_from"],
            run_dir=run_dir,
            config=gin.operative_config_str(),
            training=training,
        )

    @property
    def specs(self) -> dict[str, TaskSpec]:
        return {spec.name: spec for spec in self.tasks}

    def new_sampler(self) -> Sampler:
        """A fresh sampler of the task schedule (its state goes into every checkpoint)."""
        return self.schedule.sampler(
            [s.name for s in self.tasks], self.rates, self.train_steps, self.seed
        )

    def tokens_per_example(self, spec: TaskSpec, train: bool = True) -> int:
        """Encoder tokens of one example of `spec`, all inputs together."""
        shapes = spec.input_shapes(train)
        return sum(tokens_per_example(self.model, shapes, spec.drop_rate if train else 0).values())

    def metric_names(self, evaluations: Sequence[str]) -> dict[str, list[str]]:
        """Per evaluated task, the names of the metrics `evaluations` will report."""
        evaluator = _evaluator()
        return {
            name: evaluator.metric_names(spec, evaluations)
            for name, spec in evaluator.tasks_to_evaluate(self.tasks).items()
        }

    def evaluate(
        self, params, evaluations: Sequence[str], figure_dir: Path | None = None
    ) -> dict[str, dict]:
        """`{task: {metric: {value, chance}}}` on the held-out data of every data set
        (collective: every process calls it); figures, where a task has one, to
        `figure_dir`."""
        return _evaluator().evaluate(self, params, evaluations, figure_dir)

    @property
    def eval_batch_size(self) -> int:
        """Rows of one evaluation forward call over all processes: `EVAL_ROWS`, rounded up to
        a multiple of the data-parallel devices and of the processes."""
        unit = math.lcm(self.partitioner.data_parallelism, jax.process_count())
        return -(-EVAL_ROWS // unit) * unit

    @functools.cached_property
    def compiled_forwards(self) -> dict:
        """The evaluator's compiled forward passes, kept across evaluations of this
        experiment (periodic evaluation during training compiles each once)."""
        return {}

    def make_run_dir(self) -> Path:
        """Creates the run directory (checked writable when the experiment was built)."""
        assert self.run_dir is not None, "an experiment built without a run directory"
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ImpError(f"MODEL_DIR '{self.run_dir}' is not writable ({e.strerror})") from None
        return self.run_dir

    def _check_task(self, spec: TaskSpec) -> None:
        where = f"task '{spec.name}'" + (
            f" (variant {spec.variant})" if spec.variant != "base" else ""
        )
        validation.require(
            isinstance(spec.batch_size, int) and spec.batch_size >= 1,
            f"{where}: batch_size = {spec.batch_size}; every variant needs a batch of at least "
            "1 (a quarter-batch variant divides the data set's batch_size by 4)",
        )
        shards = self.partitioner.data_parallelism
        validation.require(
            not self.training
            or (spec.batch_size % shards == 0 and spec.batch_size % jax.process_count() == 0),
            f"{where}: batch {spec.batch_size} does not split over the {shards} data-parallel "
            f"devices of {jax.process_count()} process(es) (Partitioner mesh "
            f"{dict(self.partitioner.mesh.shape)})",
        )
        validation.require(
            not spec.stochastic_depth or supports_drop_path(self.model),
            f"{where}: Experiment.task_options stochastic_depth goes along the layers of the "
            "plain encoder, not ViViT's factorised encoder, TokenLearner or MTV "
            "(ImpModel.temporal_layers, token_learner, views)",
        )
        own = [f for f in ("warmup_steps", "weight_decay") if getattr(spec, f) is not None]
        validation.require(
            not own or self.schedule.name not in JOINT,
            f"{where}: Experiment.task_options {own} set a task's own step, and Schedule.name = "
            f"{self.schedule.name!r} takes one update from every task's gradient; use an "
            "alternating schedule, or lr_multiplier (which scales the task's gradient there)",
        )
        validation.require(
            not spec.decoded or self.model.decoder is not None,
            f"{where} decodes (UniT: detection, or Experiment.task_options queries = "
            f"{spec.queries}): bind ImpModel.decoder = @QueryDecoder()",
        )
        validation.require(
            not spec.decoded or not spec.drop_rate,
            f"{where}: DropToken (rate {spec.drop_rate}) removes tokens whose places the query "
            "decoder reads; a decoded task keeps them all",
        )
        validation.require(
            not spec.decoded or not spec.mixup,
            f"{where}: Experiment.task_options mixup mixes inputs of a classifier on pooled "
            "tokens, not of a decoded task",
        )
        validation.require(
            not spec.mixup or spec.objective in CLASSIFICATION,
            f"{where}: Experiment.task_options mixup = {spec.mixup} mixes labels, and this task "
            f"has none (objective {spec.objective!r})",
        )
        validation.require(
            spec.vocab_size <= self.model.vocab_size,
            f"ImpModel.vocab_size = {self.model.vocab_size} is smaller than the vocabulary of "
            f"{where} ({spec.vocab_size} ids); bind ImpModel.vocab_size >= {spec.vocab_size}",
        )
        validation.require(
            not needs_token_grid(self.model)
            or not spec.drop_rate
            or "vision" not in spec.modalities,
            f"{where}: DropToken (rate {spec.drop_rate}) removes video tokens, and the encoder "
            f"(ImpModel.attention = {self.model.attention!r}, temporal_layers = "
            f"{self.model.temporal_layers}, token_learner = {self.model.token_learner!r}) reads "
            f"them as a full grid of frames and positions; use a joint encoder or a variant "
            f"without DropToken (Dataset.image_droptoken / the video droptoken variant)",
        )
        missing = [m for m in spec.modalities if not adaptor_stack(self.model, m, spec.frames)]
        validation.require(
            not self.model.adaptor_layers or not missing,
            f"{where} reads {missing}, which ImpModel.adaptor_modalities = "
            f"{tuple(self.model.adaptor_modalities)} has no adaptor layers for: add them",
        )
        for train, label in ((True, "training input"), (False, "evaluation input")):
            try:
                tokens = tokens_per_example(
                    self.model, spec.input_shapes(train), spec.drop_rate if train else 0.0
                )
            except ImpError as error:
                hint = "" if train else " (Dataset.eval_height / eval_width)"
                raise ImpError(f"{where}, {label}{hint}: {error.message}") from None
            if not self.model.num_experts:
                continue
            rows = spec.batch_size if train else self.eval_batch_size
            for modality, count in tokens.items():
                check_routing_groups(self.model, count * rows, f"{where}, {label} {modality}")


def _evaluator():
    """`imp.evaluation.evaluator`, imported on first use: it reads data (TensorFlow), which an
    experiment that only trains synthetic batches (a benchmark) never needs."""
    from imp.evaluation import evaluator

    return evaluator


def _check_steps(train_steps) -> int:
    validation.require(
        isinstance(train_steps, int) and not isinstance(train_steps, bool) and train_steps >= 1,
        f"Experiment.train_steps (TRAIN_STEPS) = {train_steps!r}: expected an integer >= 1",
    )
    return train_steps


def _check_seed(seed) -> None:
    validation.require(
        isinstance(seed, int) and not isinstance(seed, bool),
        f"Experiment.seed = {seed!r}: expected an integer",
    )


def _heads(tasks: Sequence[TaskSpec]) -> tuple[tuple, ...]:
    """One classifier head per name (`head_name`, default the data set) with its classes and,
    where a task sets one, its initialiser; tasks sharing a head must agree on both."""

    def entry(spec):
        if spec.objective not in CLASSIFICATION or spec.decoded:
            return None
        return (spec.head, spec.num_classes, *([spec.head_init] if spec.head_init else []))

    return _one_per_head(tasks, entry, "classifier head", "classes, initialiser")


def _decoded(tasks: Sequence[TaskSpec]) -> tuple[tuple, ...]:
    """`ImpModel.decoded`: `(head, kind, classes, queries)` per head of the tasks that decode
    (UniT); tasks sharing a head must agree, and a head decodes or reads pooled tokens."""
    pooled = {s.head for s in tasks if s.objective in CLASSIFICATION and not s.decoded}
    for spec in (s for s in tasks if s.decoded):
        validation.require(
            spec.head not in pooled,
            f"task '{spec.name}' decodes its head '{spec.head}', which another task reads from "
            "pooled tokens; give it its own head_name in Experiment.task_options",
        )

    def entry(spec):
        if not spec.decoded:
            return None
        kind = "detection" if spec.objective == DETECTION else "classification"
        return (spec.head, kind, spec.num_classes, spec.num_queries)

    return _one_per_head(tasks, entry, "decoded head", "kind, classes, queries")


def _text_decoder(model: ImpModel, tasks: Sequence[TaskSpec], step_size: StepSize) -> dict:
    """The LiT decoder's vocabulary (the generation tasks', when `TextDecoder.vocab_size` is
    0) and whether the encoder is frozen (`make_optimizer.encoder_lr_multiplier = 0`)."""
    writers = [s for s in tasks if s.objective == GENERATION]
    decoder = model.text_decoder
    validation.require(
        not writers or decoder is not None,
        f"the tasks {[s.name for s in writers]} write text (the LiT decoder): bind "
        "ImpModel.text_decoder = @TextDecoder()",
    )
    validation.require(
        step_size.encoder_multiplier == 1.0 or decoder is not None,
        f"make_optimizer.encoder_lr_multiplier = {step_size.encoder_multiplier} scales the "
        "encoder's rate under a text decoder, and ImpModel.text_decoder is not bound",
    )
    if decoder is None:
        return {}
    vocabularies = sorted({s.vocab_size for s in writers})
    validation.require(
        len(vocabularies) <= 1,
        f"the generation tasks {[s.name for s in writers]} have vocabularies of "
        f"{vocabularies} ids; one text decoder writes with one vocabulary",
    )
    vocab = decoder.vocab_size or (vocabularies[0] if vocabularies else 0)
    validation.require(
        vocab >= 1 and all(v <= vocab for v in vocabularies),
        f"TextDecoder.vocab_size = {decoder.vocab_size}: the generation tasks' vocabulary has "
        f"{vocabularies} ids (0 takes theirs)",
    )
    for spec in writers:
        validation.require(
            spec.decoder_length <= decoder.max_length,
            f"task '{spec.name}': prompt and answer take up to {spec.decoder_length} tokens "
            f"(Dataset.decoder_length), beyond TextDecoder.max_length = {decoder.max_length}",
        )
    return {
        "text_decoder": decoder.clone(vocab_size=vocab),
        "frozen_encoder": step_size.frozen_encoder,
    }


def _one_per_head(tasks, entry_of, what: str, fields: str) -> tuple[tuple, ...]:
    """The entries `entry_of(task)` (None: the task has none), one per head name; tasks
    sharing a head must give the same entry."""
    entries: dict[str, tuple] = {}
    for spec in tasks:
        entry = entry_of(spec)
        if entry is not None and entries.setdefault(spec.head, entry) != entry:
            raise ImpError(
                f"task '{spec.name}' shares the {what} '{spec.head}' with another task, as "
                f"{entries[spec.head][1:]} ({fields}) against {entry[1:]}; give it its own "
                "head_name in Experiment.task_options"
            )
    return tuple(sorted(entries.values()))


def mixed_in_batch(tasks: list[TaskSpec], rates: list[float]) -> tuple[list[TaskSpec], list[float]]:
    """The generation tasks with equal inputs (modalities, shapes, batch, sequence length)
    merged into one task per group, whose batches draw each example from a member by the
    members' rates (seed 003 §5.3 mixes tasks inside its batches); the group trains at their
    summed rate. The other tasks stay as they are."""
    groups: dict[tuple, list[int]] = {}
    for i, spec in enumerate(tasks):
        if spec.objective == GENERATION:
            shapes = tuple(spec.input_shapes().items())
            key = (shapes, spec.batch_size, spec.decoder_length, spec.vocab_size)
            groups.setdefault(key, []).append(i)
    merged = {ids[0]: ids for ids in groups.values() if len(ids) > 1}
    validation.require(
        bool(merged),
        f"Experiment.mix_in_batch = True: no two tasks of the mixture can share a batch "
        f"(generation tasks with equal inputs; the mixture has {[s.name for s in tasks]})",
    )
    in_group = {i for ids in merged.values() for i in ids}
    out_tasks, out_rates = [], []
    for i, spec in enumerate(tasks):
        if i in merged:
            members = tuple(tasks[j] for j in merged[i])
            total = sum(rates[j] for j in merged[i])
            out_tasks.append(
                dataclasses.replace(
                    spec,
                    name="+".join(m.name for m in members),
                    num_examples=sum(m.num_examples for m in members),
                    prompt="",
                    prompt_ids=((), ()),
                    members=members,
                    member_weights=tuple(rates[j] / total for j in merged[i]),
                )
            )
            out_rates.append(total)
        elif i not in in_group:
            out_tasks.append(spec)
            out_rates.append(rates[i])
    return out_tasks, out_rates


def _with_options(tasks: list[TaskSpec], options: dict | None, strict: bool) -> list[TaskSpec]:
    """`Experiment.task_options` (task -> {loss_weight, lr_multiplier, warmup_steps,
    weight_decay, head_name, mixup, stochastic_depth, head_init, queries, beams}) applied; with
    `strict`, each task named must be one of `tasks`."""
    if options is None:
        return tasks
    validation.require(
        isinstance(options, dict),
        f"Experiment.task_options = {options!r}: expected a dict of task -> options",
    )
    names = {spec.name for spec in tasks}
    unknown = sorted(set(options) - names)
    validation.require(
        not (strict and unknown),
        f"Experiment.task_options names tasks outside the mixture: {unknown}",
    )
    for name, fields in options.items():
        where = f"Experiment.task_options['{name}']"
        validation.require(isinstance(fields, dict), f"{where} = {fields!r}: expected a dict")
        extra = sorted(set(fields) - set(TASK_OPTIONS))
        validation.require(
            not extra, f"{where}: unknown fields {extra}; allowed: {sorted(TASK_OPTIONS)}"
        )
        for field, value in fields.items():
            mismatch = validation.describe_mismatch(value, TASK_OPTIONS[field])
            validation.require(not mismatch, f"{where}['{field}'] = {value!r}: expected {mismatch}")
        validation.at_least(f"{where}['loss_weight']", fields.get("loss_weight", 1.0), 0.0)
        validation.at_least(f"{where}['lr_multiplier']", fields.get("lr_multiplier", 1.0), 0.0)
        validation.at_least(f"{where}['warmup_steps']", fields.get("warmup_steps", 0), 0)
        validation.at_least(f"{where}['weight_decay']", fields.get("weight_decay", 0.0), 0.0)
        validation.at_least(f"{where}['mixup']", fields.get("mixup", 0.0), 0.0)
        validation.at_least(f"{where}['queries']", fields.get("queries", 0), 0)
        validation.at_least(f"{where}['beams']", fields.get("beams", 0), 0)
        validation.require(
            fields.get("head_init", "zeros") in HEAD_INITS,
            f"{where}['head_init'] = {fields.get('head_init')!r}: choose from {tuple(HEAD_INITS)}",
        )
        depth = fields.get("stochastic_depth", 0.0)
        validation.require(
            0.0 <= depth < 1.0, f"{where}['stochastic_depth'] = {depth}: expected a rate in [0, 1)"
        )
    return [dataclasses.replace(spec, **options.get(spec.name, {})) for spec in tasks]


def _check_creatable(run_dir: Path) -> None:
    """The run directory exists as a writable folder, or its nearest existing parent is one."""
    existing = run_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        reason = "not a directory" if not existing.is_dir() else "permission denied"
        raise ImpError(f"MODEL_DIR '{run_dir}' is not writable ({existing}: {reason})")
