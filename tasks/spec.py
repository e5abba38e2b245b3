"""What the training loop knows of a task: `TaskSpec`, free of seqio and TensorFlow, so the train
step, the partitioning workers and the benchmarks import it without an input pipeline.

A `TaskSpec` says everything needed to build one graph: the objective, which modalities feed the
model, the global batch and the per-example input shapes (in training and in evaluation), and
the classifier head.
"""

import dataclasses

from imp.errors import ImpError

CLASSIFICATION = ("softmax", "bce")  # single-label, multi-label (sigmoid)
# Set prediction of objects' classes and boxes (UniT, seed 002 §3.4, as DETR): always through
# the query decoder.
DETECTION = "detection"
# Text written by the LiT decoder (seed 003) after a task prompt: the example's caption, or its
# class name (classification, and answers to questions, as text).
GENERATION = "generation"
OBJECTIVES = ("nce", *CLASSIFICATION, DETECTION, GENERATION)
# Where a prompt takes the example's own text (its first caption: a question).
PROMPT_TEXT = "{text}"
# Query embeddings of a decoded task when it does not set `queries` (seed 002 §3.3).
DEFAULT_QUERIES = {DETECTION: 100, "softmax": 25}
MODALITIES = ("vision", "waveform", "spectrogram", "text")
# Where a task's text comes from: the example's captions, or a prompt of one of its labels'
# class names (seed 004 §4.1: label-based vision-text NCE on JFT / I21K, as BASIC).
TEXT_SOURCES = ("captions", "labels")


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    name: str
    dataset: str  # the data set; names the classifier head shared by its tasks
    objective: str  # "nce" (contrastive over modality pairs), "softmax" or "bce"
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
    spectrogram: tuple[int, ...] = ()  # (time frames, mel bins) of the log-mel input
    variant: str = "base"  # multi-resolution variant (see `imp.tasks.datasets.variants`)
    eval_task: str = ""  # seqio Task with the data set's evaluation inputs; "" = this one
    eval_split: str = "validation"
    eval_height: int = 0  # evaluation frame size; 0 = `height` / `width`
    eval_width: int = 0
    eval_views: int = 1  # views (clips x spatial crops) per evaluation example, averaged
    loss_weight: float = 1.0
    lr_multiplier: float = 1.0  # of the run's peak learning rate
    warmup_steps: int | None = None  # of its learning rate; None = the run's
    weight_decay: float | None = None  # decoupled, on kernels; None = the run's
    mixup: float = 0.0  # Mixup's alpha in training (a classification task's); 0 = none
    stochastic_depth: float = 0.0  # per-layer drop rate of residual branches in training
    head_init: str = ""  # the classifier head's initialiser (`HEAD_INITS`); "" = ImpModel's
    head_name: str = ""  # the classifier head; "" = one per data set
    text_source: str = "captions"  # one of TEXT_SOURCES
    # UniT's query decoder: the task's query embeddings; 0 = no decoder (the head reads the
    # pooled tokens), except detection, which always decodes (`DEFAULT_QUERIES`).
    queries: int = 0
    max_objects: int = 0  # detection: objects per example in a batch (padded)
    # Generation: the prompt (`PROMPT_TEXT` marks the example's question), its token ids
    # before and after the question, the length of prompt and answer together, and the
    # vocabulary's file (to read the answers).
    prompt: str = ""
    prompt_ids: tuple[tuple[int, ...], tuple[int, ...]] = ((), ())
    decoder_length: int = 0
    vocabulary: str = ""
    beams: int = 0  # of its evaluation's beam search (1: greedy); 0 = `num_beams`' default
    # Tasks whose examples this one mixes inside each training batch, and their weights
    # (seed 003's batches; `Experiment.mix_in_batch`); each evaluates as itself.
    members: tuple["TaskSpec", ...] = ()
    member_weights: tuple[float, ...] = ()

    def __post_init__(self):
        if self.objective not in OBJECTIVES:
            raise ImpError(f"task '{self.name}': objective '{self.objective}' not in {OBJECTIVES}")
        unknown = set(self.modalities) - set(MODALITIES)
        if unknown:
            raise ImpError(f"task '{self.name}': unknown modalities {sorted(unknown)}")
        if self.objective == GENERATION and not (self.decoder_length and self.vocab_size):
            raise ImpError(
                f"task '{self.name}': a generation task needs a vocabulary and decoder_length"
            )
        if self.objective in (*CLASSIFICATION, DETECTION) and not self.class_names:
            raise ImpError(f"task '{self.name}': a {self.objective} task needs class_names")
        if self.queries and self.objective not in ("softmax", DETECTION):
            raise ImpError(
                f"task '{self.name}': only single-label classification and detection decode "
                f"queries (objective {self.objective!r}, queries {self.queries})"
            )
        if self.text_source not in TEXT_SOURCES:
            raise ImpError(
                f"task '{self.name}': text source '{self.text_source}' not in {TEXT_SOURCES}"
            )
        if self.objective == GENERATION:
            if self.text_source == "labels" and not self.class_names:
                raise ImpError(f"task '{self.name}': writing class names needs class_names")
            if self.asks and self.text_source == "captions":
                raise ImpError(
                    f"task '{self.name}': a prompt with the example's question "
                    f"({PROMPT_TEXT}) is answered by a class name (text source 'labels')"
                )
        elif self.text_source == "labels" and not (
            "text" in self.modalities and self.class_prompts
        ):
            raise ImpError(
                f"task '{self.name}': text from labels needs a text input and class names"
            )

    @property
    def head(self) -> str:
        return self.head_name or self.dataset

    @property
    def output_head(self) -> str | None:
        """The head whose outputs the task reads (a classifier on pooled tokens or a decoded
        head); None for a contrastive task, which reads its projections."""
        if self.objective == GENERATION:
            return None  # one text decoder for every task; the prompt names the task
        return self.head if self.decoded or self.objective in CLASSIFICATION else None

    @property
    def decoded(self) -> bool:
        """Whether the task's head reads the query decoder (UniT) rather than pooled tokens."""
        return self.objective == DETECTION or self.queries > 0

    @property
    def num_queries(self) -> int:
        if not self.decoded:
            return 0
        return self.queries or DEFAULT_QUERIES[self.objective]

    @property
    def asks(self) -> bool:
        """Whether the task's prompt holds the example's question (`PROMPT_TEXT`)."""
        return PROMPT_TEXT in self.prompt

    @property
    def num_beams(self) -> int:
        """Beams of the evaluation's decoding: `beams`, else seed 003 §5.8's, beam search with
        4 beams for captions and greedy (1) for class names and answers."""
        return self.beams or (4 if self.text_source == "captions" else 1)

    @property
    def has_captions(self) -> bool:
        """Whether the task reads the data set's captions (retrieval can then be measured)."""
        return "text" in self.modalities and self.text_source == "captions"

    @property
    def reads_captions(self) -> bool:
        """Whether the task's examples need captions: as text input, or a generation task's
        answers or questions."""
        generated = self.objective == GENERATION and (self.text_source == "captions" or self.asks)
        return self.has_captions or generated

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def input_shapes(self, train: bool = True) -> dict[str, tuple[int, ...]]:
        """Per-example shape of each model input, in training or in evaluation (where frames
        may have another size; several clips are flattened into the batch)."""
        height, width = self.height, self.width
        if not train:
            height, width = self.eval_height or height, self.eval_width or width
        shapes = {
            "vision": (self.frames, height, width, 3),
            "waveform": (self.num_samples,),
            "spectrogram": tuple(self.spectrogram),
            "text": (self.text_length,),
        }
        return {m: shapes[m] for m in self.modalities}
