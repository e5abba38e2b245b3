"""Bring your own data: one description of a DMVR data set registers all its seqio Tasks.

A `Dataset` names the files per split, what the examples hold, the tasks to train on them
(objective and model inputs) and the input shapes. `register_dataset` turns it into

* one training Task per (task, resolution variant), named `{dataset}_{task}[_{variant}]`,
  with the multi-resolution variants of seed 004 ("Multi-Resolution Strategy"): for video,
  half spatial resolution, a quarter of the batch, and DropToken 1 - 1/T_F, each at the
  image base's tokens per batch; for images, the base, a quarter of the batch at twice the
  spatial size, and DropToken 0.75 (`Dataset.image_droptoken`). The variants of one task
  share its sampling weight equally ("the same weight" per variant). The paper trains video
  only through its three variants: the full-token video base (4x the image budget per batch)
  joins the multi-resolution mixtures only with `Dataset.video_base = True`, and otherwise
  trains only in the base-resolution mixtures;
* one evaluation Task, `{dataset}_eval`: central (or several evenly spaced) clips, a central
  crop, and every caption.

In gin (see `gin/data/*.gin`):

    prepare_datasets.datasets = [@msrvtt/Dataset()]
    msrvtt/Dataset.name = 'msrvtt'
    msrvtt/Dataset.file_patterns = {'train': '/data/msrvtt/train-*', 'test': '/data/...'}
    ...
"""

import dataclasses
import functools
from collections.abc import Sequence

import gin
import seqio
import tensorflow as tf

from imp import validation
from imp.data import dmvr, preprocessing
from imp.decoding import EOS, START
from imp.errors import ImpError
from imp.tasks import registry
from imp.tasks.spec import (
    CLASSIFICATION,
    DETECTION,
    GENERATION,
    PROMPT_TEXT,
    TEXT_SOURCES,
    TaskSpec,
)

AUDIO = ("waveform", "spectrogram")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class Dataset:
    """A DMVR data set (see `imp.data.dmvr`) and the tasks to train on it.

    `tasks` maps a task suffix to `(objective, model inputs)`, e.g.
    `{"text": ("nce", ("vision", "text")), "cls": ("softmax", ("vision",))}`, or to
    `(objective, model inputs, "labels")` for a task whose text is a prompt of the example's
    class name rather than a caption (label-based NCE, seed 004 §4.1: label-only data such as
    ImageNet or Kinetics then trains the common space). Shapes are the
    base variant's; `frames == 1` makes an image data set. `weight` (default: training
    examples) is the sampling weight each task of the data set gets in a mixture.
    """

    name: str
    tasks: dict[str, tuple]  # suffix -> (objective, model inputs[, text source])
    file_patterns: dict[str, str] = dataclasses.field(default_factory=dict)  # split -> glob
    num_examples: dict[str, int] = dataclasses.field(default_factory=dict)  # split -> count
    tfds_name: str = ""  # read a TFDS image data set ("cifar100:3.*.*") instead of files
    tfds_data_dir: str | None = None
    vocabulary: str = ""  # SentencePiece model path; required with text
    class_names: Sequence[str] = ()
    class_templates: Sequence[str] = ("{}",)  # zero-shot prompts, "{}" = class name
    class_prompts: Sequence[Sequence[str]] = ()  # per class; overrides class_templates
    batch_size: int = 32
    frames: int = 1
    stride: int = 1  # between sampled frames
    height: int = 32
    width: int = 32
    crop_scale: tuple[float, float] = (0.3, 1.0)  # random resized crop's area range
    flip: bool = True  # random left-right flip in training
    fps: float = 25.0
    sample_rate: int = 16000
    num_samples: int = 0  # audio window; 0 without audio
    mel_bins: int = 128
    mel_frame_length: int = 400  # 25 ms at 16 kHz
    mel_frame_step: int = 160  # 10 ms at 16 kHz
    text_length: int = 16
    train_split: str = "train"
    eval_split: str = "validation"
    # Multi-view evaluation (seed 001's 4 x 3 views): evenly spaced clips x spatial crops
    # along the frame (`preprocessing.spatial_crops`), their predictions averaged.
    eval_clips: int = 1
    eval_crops: int = 1
    # Evaluation resolution; 0 = the training height / width (factorised position tables
    # serve any grid up to `ImpModel.vision_max_grid`).
    eval_height: int = 0
    eval_width: int = 0
    max_captions: int = 1  # captions kept per example in evaluation
    multi_resolution: bool = True
    video_base: bool = False  # the full-token video base also trains among the variants
    # The image DropToken variant: seed 004 lists it; IMP's reference code drops no image
    # tokens (the catalog follows the code).
    image_droptoken: bool = True
    frame_tokens: int = 4  # T_F: tubelets along time in a base clip (seed 004 keeps it 4)
    weight: float | None = None
    # Detection (`dmvr.BOX`): objects per example, padded to this in a batch. Detection frames
    # are resized whole, with no crop or flip, so the boxes stay where they are.
    max_objects: int = 0
    # Generation (the LiT decoder, seed 003): each generation task's prompt (task suffix ->
    # text; default "<suffix>:"; "" for none), where "{text}" stands for the example's question
    # (its first caption), and the tokens of prompt and answer together, padded.
    prompts: dict[str, str] = dataclasses.field(default_factory=dict)
    decoder_length: int = 48

    @property
    def is_video(self) -> bool:
        return self.frames > 1

    @property
    def spectrogram_frames(self) -> int:
        return preprocessing.num_spectrogram_frames(self.num_samples, self.mel_frame_step)


def variants(dataset: Dataset, spec: TaskSpec) -> list[TaskSpec]:
    """The base task and its multi-resolution variants (only vision tasks other than
    detection have variants)."""
    if not dataset.multi_resolution or "vision" not in spec.modalities or _detects(dataset):
        return [spec]
    b, h, w = spec.batch_size, spec.height, spec.width
    if dataset.is_video:
        changes = {
            "half_res": dict(height=h // 2, width=w // 2),
            "quarter_batch": dict(batch_size=b // 4),
            "droptoken": dict(drop_rate=1.0 - 1.0 / dataset.frame_tokens),
        }
    else:
        changes = {"double_res": dict(batch_size=b // 4, height=2 * h, width=2 * w)}
        if dataset.image_droptoken:
            changes["droptoken"] = dict(drop_rate=0.75)
    return [spec] + [
        dataclasses.replace(spec, name=f"{spec.name}_{variant}", variant=variant, **change)
        for variant, change in changes.items()
    ]


def register_dataset(dataset: Dataset) -> list[tuple[TaskSpec, float]]:
    """Registers the data set's training Tasks (every variant) and its evaluation Task;
    returns the training tasks with their sampling weights."""
    _check(dataset)
    vocabulary = _vocabulary(dataset)
    source = _source(dataset)
    eval_task = f"{dataset.name}_eval"
    registry.register_task(
        eval_task,
        source,
        [functools.partial(_eval_example, source=dataset, vocabulary=vocabulary)],
        _output_features(vocabulary, views=dataset.eval_clips * dataset.eval_crops),
    )
    features = _output_features(vocabulary, views=1)
    num_train = _num_examples(dataset, source)
    weight = dataset.weight or num_train
    registered = []
    for suffix, (objective, modalities, text_source) in task_entries(dataset).items():
        base = TaskSpec(
            name=f"{dataset.name}_{suffix}",
            dataset=dataset.name,
            objective=objective,
            modalities=tuple(modalities),
            num_examples=num_train,
            text_source=text_source,
            **_shapes(dataset, vocabulary),
            **(_prompt(dataset, suffix, vocabulary) if objective == GENERATION else {}),
            eval_task=eval_task,
        )
        family = variants(dataset, base)
        # The video base sits out the multi-resolution mixtures unless asked for (weight 0),
        # where it has variants to train instead: a task without vision (a clip's sound) has
        # none, and trains at its base.
        sharing = [
            s for s in family if s.variant != "base" or _trains_base(dataset) or len(family) == 1
        ]
        for spec in family:
            preprocessors = [
                functools.partial(_train_example, source=dataset, spec=spec, vocabulary=vocabulary),
                functools.partial(seqio.preprocessors.tokenize, copy_pretokenized=False),
            ]
            registry.register(spec, source, preprocessors, features)
            registered.append((spec, weight / len(sharing) if spec in sharing else 0.0))
    return registered


def task_entries(dataset: Dataset) -> dict[str, tuple[str, tuple[str, ...], str]]:
    """`Dataset.tasks` as `suffix -> (objective, model inputs, text source)`, checked."""
    entries = {}
    for suffix, entry in dataset.tasks.items():
        where = f"{dataset.name}/Dataset.tasks['{suffix}'] = {entry!r}"
        validation.require(
            isinstance(entry, (tuple, list))
            and len(entry) in (2, 3)
            and isinstance(entry[1], (tuple, list)),
            f"{where}: expected (objective, model inputs) or (objective, model inputs, "
            "text source)",
        )
        text_source = entry[2] if len(entry) == 3 else "captions"
        validation.require(
            text_source in TEXT_SOURCES, f"{where}: text source must be one of {TEXT_SOURCES}"
        )
        validation.require(
            text_source == "captions" or "text" in entry[1] or entry[0] == GENERATION,
            f"{where}: text from labels needs 'text' among the model inputs",
        )
        entries[suffix] = (entry[0], tuple(entry[1]), text_source)
    return entries


def _detects(dataset: Dataset) -> bool:
    return any(objective == DETECTION for objective, _, _ in task_entries(dataset).values())


def _trains_base(dataset: Dataset) -> bool:
    """Whether the base resolution trains in the multi-resolution mixtures."""
    return not (dataset.multi_resolution and dataset.is_video) or dataset.video_base


def _source(dataset: Dataset) -> seqio.DataSource:
    if dataset.tfds_name:
        return seqio.TfdsDataSource(
            dataset.tfds_name,
            tfds_data_dir=dataset.tfds_data_dir,
            splits=list(dataset.num_examples) or None,
        )
    return seqio.FileDataSource(
        read_file_fn=dmvr.read_file,
        split_to_filepattern=dict(dataset.file_patterns),
        num_input_examples=dict(dataset.num_examples),
    )


def _num_examples(dataset: Dataset, source: seqio.DataSource) -> int:
    """Training examples: as described, else as the source knows (TFDS metadata)."""
    if dataset.train_split in dataset.num_examples:
        return dataset.num_examples[dataset.train_split]
    return source.num_input_examples(dataset.train_split)


def _shapes(dataset: Dataset, vocabulary) -> dict:
    """The TaskSpec fields every task of the data set shares."""
    audio = dataset.num_samples > 0
    return dict(
        batch_size=dataset.batch_size,
        frames=dataset.frames,
        height=dataset.height,
        width=dataset.width,
        num_samples=dataset.num_samples,
        spectrogram=(dataset.spectrogram_frames, dataset.mel_bins) if audio else (),
        text_length=dataset.text_length,
        vocab_size=vocabulary.vocab_size if vocabulary else 0,
        class_names=tuple(dataset.class_names),
        class_prompts=_class_prompts(dataset),
        eval_split=dataset.eval_split,
        # Variants train at other sizes; every one evaluates on the data set's evaluation Task.
        eval_height=dataset.eval_height or dataset.height,
        eval_width=dataset.eval_width or dataset.width,
        eval_views=dataset.eval_clips * dataset.eval_crops,
        max_objects=dataset.max_objects,
    )


def _prompt_of(dataset: Dataset, suffix: str) -> str:
    """A generation task's prompt: `Dataset.prompts`, else "<suffix>:"."""
    return dataset.prompts.get(suffix, f"{suffix}:")


def _prompt(dataset: Dataset, suffix: str, vocabulary) -> dict:
    """A generation task's prompt and its token ids before and after the question, checked to
    be spelt by the vocabulary."""
    prompt = _prompt_of(dataset, suffix)
    where = f"{dataset.name}/Dataset.prompts['{suffix}'] = {prompt!r}"
    validation.require(
        isinstance(prompt, str) and prompt.count(PROMPT_TEXT) <= 1,
        f'{where}: expected text ("" for none), with at most one {PROMPT_TEXT} (the '
        "example's question)",
    )
    parts = prompt.split(PROMPT_TEXT) + [""]
    ids = tuple(
        tuple(vocabulary.encode(part.strip())) if part.strip() else () for part in parts[:2]
    )
    unknown = getattr(vocabulary, "unk_id", None)
    validation.require(
        unknown is None or all(unknown not in part for part in ids),
        f"{where}: the vocabulary {dataset.vocabulary} cannot spell it (unknown pieces); "
        "choose words it knows, or train it on the prompts too",
    )
    return dict(
        prompt=prompt,
        prompt_ids=ids,
        decoder_length=dataset.decoder_length,
        vocabulary=dataset.vocabulary,
    )


def _class_prompts(dataset: Dataset) -> tuple[tuple[str, ...], ...]:
    if dataset.class_prompts:
        return tuple(tuple(p) for p in dataset.class_prompts)
    return tuple(tuple(t.format(c) for t in dataset.class_templates) for c in dataset.class_names)


def _check(dataset: Dataset) -> None:
    where = f"data set '{dataset.name}'"
    validation.check_fields(dataset, f"{dataset.name}/Dataset", scalars_only=True)
    for field in (
        "batch_size",
        "frames",
        "stride",
        "height",
        "width",
        "frame_tokens",
        "eval_clips",
        "eval_crops",
        "mel_bins",
        "mel_frame_length",
        "mel_frame_step",
        "text_length",
        "max_captions",
        "decoder_length",
    ):
        validation.at_least(f"{dataset.name}/Dataset.{field}", getattr(dataset, field), 1)
    for field in ("num_samples", "eval_height", "eval_width", "max_objects"):
        validation.at_least(f"{dataset.name}/Dataset.{field}", getattr(dataset, field), 0)
    low, high = dataset.crop_scale
    validation.require(
        0 < low <= high <= 1,
        f"{dataset.name}/Dataset.crop_scale = {dataset.crop_scale}: expected 0 < low <= high <= 1",
    )
    for split in () if dataset.tfds_name else (dataset.train_split, dataset.eval_split):
        if split not in dataset.file_patterns:
            raise ImpError(f"{where}: no file pattern for split '{split}'")
        if split not in dataset.num_examples:
            raise ImpError(f"{where}: no example count for split '{split}'")
    for split, pattern in dataset.file_patterns.items():
        if not tf.io.gfile.glob(pattern):
            raise ImpError(f"{where}: no files match the '{split}' pattern {pattern}")
    entries = task_entries(dataset)
    used = {m for _, modalities, _ in entries.values() for m in modalities}
    for suffix, (objective, modalities, text_source) in entries.items():
        if objective == DETECTION and not (
            dataset.max_objects and tuple(modalities) == ("vision",) and not dataset.is_video
        ):
            raise ImpError(
                f"{where}: task '{suffix}' (detection) takes images alone, (\"vision\",), "
                "and Dataset.max_objects >= 1 (objects per example)"
            )
        if objective == DETECTION and dataset.eval_clips * dataset.eval_crops > 1:
            raise ImpError(f"{where}: task '{suffix}' (detection) evaluates one view per image")
        if objective in (*CLASSIFICATION, DETECTION) and not dataset.class_names:
            raise ImpError(f"{where}: task '{suffix}' ({objective}) needs class_names")
        if text_source == "labels" and not dataset.class_names:
            raise ImpError(f"{where}: task '{suffix}' takes its text from labels: set class_names")
        if objective == GENERATION and dataset.eval_clips * dataset.eval_crops > 1:
            raise ImpError(f"{where}: task '{suffix}' (generation) evaluates one view per example")
        if objective == GENERATION and not dataset.vocabulary:
            raise ImpError(
                f"{where}: task '{suffix}' (generation) writes text: set Dataset.vocabulary "
                "(a SentencePiece model path)"
            )
    unknown = set(dataset.prompts) - {s for s, e in entries.items() if e[0] == GENERATION}
    if unknown:
        raise ImpError(
            f"{dataset.name}/Dataset.prompts names {sorted(unknown)}, which are not generation "
            f"tasks of the data set ({sorted(entries)})"
        )
    if used & set(AUDIO) and not dataset.num_samples:
        raise ImpError(f"{where}: audio inputs need num_samples (the audio window)")
    if "text" in used and not dataset.vocabulary:
        raise ImpError(f"{where}: text inputs need a vocabulary (a SentencePiece model path)")


def _vocabulary(dataset: Dataset) -> seqio.Vocabulary | None:
    if not dataset.vocabulary:
        return None
    if not tf.io.gfile.exists(dataset.vocabulary):
        raise ImpError(
            f"data set '{dataset.name}': vocabulary file {dataset.vocabulary} does not exist"
        )
    return seqio.SentencePieceVocabulary(dataset.vocabulary)


def _output_features(vocabulary, views: int) -> dict[str, seqio.Feature]:
    """Every Task declares every feature (a seqio Mixture needs equal feature sets); none is
    required, since each variant produces only its task's inputs. Several evaluation views
    (clips x crops) add a leading view axis to the vision and audio features."""
    extra = int(views > 1)

    def continuous(dtype, rank):
        return seqio.ContinuousFeature(dtype=dtype, rank=rank, required=False)

    vocabulary = vocabulary or seqio.PassThroughVocabulary(size=0)
    return {
        "vision": continuous(tf.float32, 4 + extra),
        "waveform": continuous(tf.float32, 1 + extra),
        "spectrogram": continuous(tf.float32, 2 + extra),
        "text": seqio.Feature(vocabulary, add_eos=False, required=False),
        "captions": continuous(tf.int32, 2),
        "label": continuous(tf.int32, 0),
        "labels": continuous(tf.float32, 1),
        "object_labels": continuous(tf.int32, 1),
        "object_boxes": continuous(tf.float32, 2),
        "decoder_tokens": continuous(tf.int32, 1),
        "prompt_length": continuous(tf.int32, 0),
    }


def _require(condition: tf.Tensor, source_file: tf.Tensor, message: str) -> tf.Operation:
    """An assertion whose failure names the file; `feeding` turns it into an ImpError."""
    return tf.debugging.Assert(condition, [f"{registry.CHECK_MARK}{message} in file", source_file])


def _checked(
    dataset: Dataset, example: dict, source_file, modalities, objective, captions=True
) -> dict:
    """Stops the stream on an example that lacks what the task needs: never a silent skip.
    Text comes from the captions (`captions`), else from the labels (then checked like a
    single-label task's)."""
    checks = []
    if "vision" in modalities:
        checks.append(
            _require(tf.size(example["frames"]) > 0, source_file, f"missing feature {dmvr.FRAMES}")
        )
    if set(modalities) & set(AUDIO):
        present = tf.size(example["waveform"]) > 0
        checks.append(_require(present, source_file, f"missing feature {dmvr.WAVEFORM}"))
    if "text" in modalities and captions:
        present = tf.size(example["captions"]) > 0
        checks.append(_require(present, source_file, f"missing feature {dmvr.CAPTION}"))
    if "text" in modalities and not captions and objective not in CLASSIFICATION:
        objective = "bce"  # labels are checked present and in range
    if objective == DETECTION:
        checks += _object_checks(dataset, example, source_file)
    if objective in CLASSIFICATION:
        labels = example["label"]
        checks.append(_require(tf.size(labels) > 0, source_file, f"missing feature {dmvr.LABEL}"))
        if objective == "softmax":
            one = tf.size(labels) == 1
            message = f"feature {dmvr.LABEL} must hold one label (single-label task)"
            checks.append(_require(one, source_file, message))
        in_range = tf.reduce_all((labels >= 0) & (labels < len(dataset.class_names)))
        message = f"feature {dmvr.LABEL} out of range [0, {len(dataset.class_names)})"
        checks.append(_require(in_range, source_file, message))
    with tf.control_dependencies(checks):
        return {k: tf.identity(v) for k, v in example.items()}


def _object_checks(dataset: Dataset, example: dict, source_file) -> list[tf.Operation]:
    labels, boxes = example["object_labels"], example["object_boxes"]
    count = tf.size(labels)
    low, high = boxes[:, :2], boxes[:, 2:]
    rules = (
        (tf.shape(boxes)[0] == count, f"features {dmvr.BOX} must hold one box per object"),
        (
            count <= dataset.max_objects,
            f"more objects than Dataset.max_objects = {dataset.max_objects}",
        ),
        (
            tf.reduce_all((labels >= 0) & (labels < len(dataset.class_names))),
            f"feature {dmvr.BOX_LABEL} out of range [0, {len(dataset.class_names)})",
        ),
        (
            tf.reduce_all((low >= 0) & (high <= 1) & (low < high)),
            f"a box of {dmvr.BOX} is not inside [0, 1] with min < max",
        ),
    )
    return [_require(condition, source_file, message) for condition, message in rules]


def _objects(dataset: Dataset, example: dict) -> dict[str, tf.Tensor]:
    """Objects padded to `max_objects`: classes (-1: none) and boxes `(cx, cy, w, h)`."""
    labels = tf.cast(example["object_labels"], tf.int32)
    corners = example["object_boxes"]
    centred = tf.concat([(corners[:, :2] + corners[:, 2:]) / 2, corners[:, 2:] - corners[:, :2]], 1)
    pad = dataset.max_objects - tf.size(labels)
    return {
        "object_labels": tf.ensure_shape(
            tf.pad(labels, [[0, pad]], constant_values=-1), [dataset.max_objects]
        ),
        "object_boxes": tf.ensure_shape(
            tf.pad(centred, [[0, pad], [0, 0]]), [dataset.max_objects, 4]
        ),
    }


def _vision(dataset, spec_shape, frames, starts, seed) -> tf.Tensor:
    """Sampled, cropped clips `[views, T, H, W, 3]` in [-1, 1] from `[frames]` JPEG bytes or
    `[frames, H, W, 3]` pixels: in training one random crop of the one clip; in evaluation
    `eval_crops` spatial crops of each clip (clip-major). A video shorter than a clip loops, as
    in DMVR."""
    num_frames, height, width = spec_shape
    total = tf.shape(frames)[0]
    indices = (starts[:, None] + tf.range(num_frames)[None] * dataset.stride) % total
    clips = tf.gather(frames, indices)  # [clips, T] JPEG bytes, or [clips, T, H, W, 3] pixels
    if frames.dtype == tf.string:  # decode only the sampled frames
        clips = tf.map_fn(
            preprocessing.decode_frames,
            clips,
            fn_output_signature=tf.TensorSpec([num_frames, None, None, 3], tf.uint8),
        )
    if _detects(dataset):  # the whole frame, boxes unmoved
        out = tf.map_fn(
            lambda clip: tf.image.resize(
                tf.cast(clip, tf.float32), (height, width), antialias=True
            ),
            clips,
            fn_output_signature=tf.TensorSpec([num_frames, height, width, 3], tf.float32),
        )
    elif seed is None:
        crops = dataset.eval_crops
        out = tf.map_fn(
            lambda clip: preprocessing.spatial_crops(clip, height, width, crops),
            clips,
            fn_output_signature=tf.TensorSpec([crops, num_frames, height, width, 3], tf.float32),
        )
        out = tf.reshape(out, [-1, num_frames, height, width, 3])
    else:
        crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
        clip = preprocessing.random_resized_crop(
            clips[0], height, width, crop_seed, scale=dataset.crop_scale
        )
        if dataset.flip:
            clip = preprocessing.random_flip(clip, flip_seed)
        out = clip[None]
    return tf.ensure_shape(preprocessing.to_unit_range(out), [None, num_frames, height, width, 3])


def _audio(dataset: Dataset, waveform: tf.Tensor, starts: tf.Tensor) -> dict[str, tf.Tensor]:
    """Per clip: the aligned waveform window and its log-mel spectrogram."""
    windows = tf.map_fn(
        lambda start: preprocessing.waveform_window(
            waveform, start, dataset.fps, dataset.sample_rate, dataset.num_samples
        ),
        starts,
        fn_output_signature=tf.TensorSpec([dataset.num_samples], tf.float32),
    )
    spectrogram = preprocessing.log_mel(
        windows,
        dataset.sample_rate,
        dataset.mel_bins,
        dataset.mel_frame_length,
        dataset.mel_frame_step,
    )
    return {"waveform": windows, "spectrogram": spectrogram}


def _labels(dataset: Dataset, objective: str, labels: tf.Tensor) -> dict[str, tf.Tensor]:
    labels = tf.cast(labels, tf.int32)
    if objective == "bce":
        return {"labels": preprocessing.multi_hot(labels, len(dataset.class_names))}
    return {"label": labels[0]}


def _read(
    dataset: Dataset, element: dict, audio: bool, objects: bool = False
) -> tuple[dict, tf.Tensor]:
    """A source element -> `{frames, label, captions[, waveform]}` and what to name it by:
    a DMVR record (frames still JPEG-encoded) or a TFDS image (decoded, one frame)."""
    if dataset.tfds_name:
        example = {
            "frames": element["image"][None],
            "label": tf.reshape(tf.cast(element["label"], tf.int64), [1]),
            "captions": tf.zeros([0], tf.string),
        }
        return example, tf.constant(f"tfds:{dataset.tfds_name}")
    parsed = dmvr.parse(element["serialized"], waveform=audio, objects=objects)
    return parsed, element["source_file"]


@seqio.map_over_dataset(num_seeds=3)
def _train_example(element, seeds, source: Dataset, spec: TaskSpec, vocabulary=None) -> dict:
    """A training example of `spec`: one random clip, crop, flip, caption (or, to generate,
    the prompt and answer's tokens)."""
    dataset = source  # (seqio's wrapper reserves the name `dataset`)
    clip_seed, vision_seed, text_seed = seeds
    wants_audio = bool(set(spec.modalities) & set(AUDIO))
    detection = spec.objective == DETECTION
    example, source_file = _read(dataset, element, wants_audio, detection)
    generation = spec.objective == GENERATION
    example = _checked(
        dataset,
        example,
        source_file,
        spec.modalities + (("text",) if generation and spec.reads_captions else ()),
        ("softmax" if spec.text_source == "labels" else None) if generation else spec.objective,
        spec.reads_captions,
    )
    starts = preprocessing.clip_starts(
        tf.shape(example["frames"])[0], spec.frames, dataset.stride, 1, clip_seed
    )
    out = {}
    if "vision" in spec.modalities:
        shape = (spec.frames, spec.height, spec.width)
        out["vision"] = _vision(dataset, shape, example["frames"], starts, vision_seed)[0]
    if wants_audio:
        audio = _audio(dataset, example["waveform"], starts)
        out.update({m: audio[m][0] for m in AUDIO if m in spec.modalities})
    if spec.has_captions:
        out["text"] = preprocessing.pick_caption(example["captions"], text_seed)
    elif "text" in spec.modalities:
        out["text"] = _label_prompt(spec.class_prompts, example["label"], text_seed)
    if spec.objective in CLASSIFICATION:
        out.update(_labels(dataset, spec.objective, example["label"]))
    if detection:
        out.update(_objects(dataset, example))
    if generation:
        out.update(_prompt_and_answer(spec, vocabulary, example, text_seed, source_file))
    return out


def _prompt_and_answer(spec: TaskSpec, vocabulary, example, seed, source_file) -> dict:
    """`decoder_tokens` `[decoder_length]`: the prompt (around the example's first caption when
    it asks one), then the answer (a random caption, or the class name) and EOS, then zeros;
    and `prompt_length`. Too long a sequence stops the stream, naming the task and file."""
    before, after = (tf.constant(ids, tf.int32, shape=[len(ids)]) for ids in spec.prompt_ids)
    prompt = [before]
    if spec.asks:
        question = tf.cast(vocabulary.encode_tf(example["captions"][0]), tf.int32)
        prompt += [question, after]
    prompt = tf.concat(prompt, 0)
    if spec.text_source == "captions":
        answer = preprocessing.pick_caption(example["captions"], seed)
    else:
        answer = tf.gather(tf.constant(spec.class_names), example["label"][0])
    answer = tf.cast(vocabulary.encode_tf(answer), tf.int32)
    tokens = tf.concat([prompt, answer, [EOS]], 0)
    fits = _require(
        tf.size(tokens) <= spec.decoder_length,
        source_file,
        f"task '{spec.name}': prompt and answer longer than Dataset.decoder_length = "
        f"{spec.decoder_length} tokens",
    )
    with tf.control_dependencies([fits]):
        padded = tf.pad(tokens, [[0, spec.decoder_length - tf.size(tokens)]], constant_values=START)
    return {
        "decoder_tokens": tf.ensure_shape(padded, [spec.decoder_length]),
        "prompt_length": tf.size(prompt),
    }


def _label_prompt(class_prompts, labels: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """A random prompt of a random one of the example's `labels`: "a photo of a {class}"."""
    label_seed, prompt_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    label = preprocessing.pick_caption(labels, label_seed)
    return preprocessing.pick_caption(tf.ragged.constant(class_prompts)[label], prompt_seed)


@seqio.map_over_dataset
def _eval_example(element, source: Dataset, vocabulary) -> dict:
    """An evaluation example with every input the data set has: `dataset.eval_clips`
    evenly spaced clips (a leading clip axis only when more than one), central crops, the
    first caption as `text`, up to `max_captions` tokenised captions, and the labels."""
    dataset = source
    entries = task_entries(dataset).values()
    used = {m for _, modalities, _ in entries for m in modalities}
    # Captions: text inputs, or what a generation task writes or is asked.
    captioned = any(
        (text == "captions" and "text" in m)
        or (
            objective == GENERATION
            and (text == "captions" or PROMPT_TEXT in _prompt_of(dataset, suffix))
        )
        for suffix, (objective, m, text) in task_entries(dataset).items()
    )
    if captioned:
        used.add("text")
    else:
        used.discard("text")  # text from labels: zero-shot reads the class prompts instead
    objectives = {objective for objective, _, _ in entries}
    detection = DETECTION in objectives
    example, source_file = _read(dataset, element, bool(used & set(AUDIO)), detection)
    writes_labels = any(o == GENERATION and t == "labels" for o, _, t in entries)
    labelled = next((o for o in (*CLASSIFICATION, DETECTION) if o in objectives), None)
    labelled = labelled or ("softmax" if writes_labels else None)
    example = _checked(dataset, example, source_file, tuple(used), labelled)
    clips, crops = dataset.eval_clips, dataset.eval_crops
    starts = preprocessing.clip_starts(
        tf.shape(example["frames"])[0], dataset.frames, dataset.stride, clips, None
    )

    def per_view(x):  # [clips * crops, ...], or one view without the leading axis
        return x if clips * crops > 1 else x[0]

    out = {}
    if "vision" in used:
        height, width = dataset.eval_height or dataset.height, dataset.eval_width or dataset.width
        shape = (dataset.frames, height, width)
        out["vision"] = per_view(_vision(dataset, shape, example["frames"], starts, None))
    if used & set(AUDIO):
        audio = _audio(dataset, example["waveform"], starts).items()
        # Every spatial crop of a clip hears that clip's sound.
        out.update({m: per_view(tf.repeat(v, crops, axis=0)) for m, v in audio})
    if "text" in used:
        tokens = vocabulary.encode_tf(example["captions"][: dataset.max_captions])
        out["captions"] = tokens.to_tensor(shape=[dataset.max_captions, dataset.text_length])
        out["text"] = out["captions"][0]
    if detection:
        out.update(_objects(dataset, example))
    elif dataset.class_names:
        label = example["label"]
        if "bce" in objectives:
            out["labels"] = preprocessing.multi_hot(
                tf.cast(label, tf.int32), len(dataset.class_names)
            )
        out["label"] = tf.cast(tf.concat([label, [-1]], 0)[0], tf.int32)
    return out


@gin.configurable
def prepare_datasets(
    datasets: Sequence[Dataset] = (), mixture_prefix: str | None = None
) -> list[tuple[TaskSpec, float]]:
    """Registers every data set's Tasks and, under `mixture_prefix`, the standard mixtures
    (`registry.register_mixtures`). The `Experiment.prepare_data` hook for your own data."""
    registered = [entry for dataset in datasets for entry in register_dataset(dataset)]
    if mixture_prefix:
        registry.register_mixtures(mixture_prefix, registered)
    return registered


def count_records(file_pattern: str) -> int:
    """Records in the files matching `file_pattern` (one pass; for small data sets)."""
    files = sorted(tf.io.gfile.glob(file_pattern))
    return int(sum(1 for _ in tf.data.TFRecordDataset(files))) if files else 0
