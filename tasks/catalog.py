"""The public data sets of IMP's evaluation (seed 004 §4), ready to register from a data root.

DMVR data sets live under `{data_dir}/{name}/` as `{split}-*.tfrecord*` shards, with an
optional `dataset_info.json` (written by `imp data convert`: example counts and class names)
and an optional `classes.txt` (one class name per line). TFDS data sets (`cifar100`,
`imagenet2012`) are read through seqio's TFDS source from a prepared TFDS `data_dir`; nothing
is downloaded. Shapes are the paper's base resolutions (video 16x224x224 in 4x16x16 tubelets,
so T_F = 4; images 224x224). Data sets that only have labels also train the common space
through label-text NCE (seed 004 §4.1) when a vocabulary is given: their text is a prompt of
the class name; AudioSet's trains spectrogram-text NCE, so zero-shot audio (ESC-50) has a
trained path. The zero-shot evaluation sets (`ZERO_SHOT_SETS`) stay out of the pre-training
mixtures (`imp_all`, ...), as in the paper; their tasks train in `imp_downstream` and their
own `imp_<name>_labels`. Override any field per data set:

    prepare_catalog.data_dir = '/data'
    prepare_catalog.names = ['kinetics400', 'msrvtt']
    prepare_catalog.overrides = {'kinetics400': {'frames': 8, 'height': 112, 'width': 112}}
"""

import json
import os
from collections.abc import Sequence

import gin
import tensorflow as tf

from imp.data.convert import CLASSES, INFO
from imp.errors import ImpError, did_you_mean
from imp.tasks import datasets, registry
from imp.tasks.spec import TaskSpec

VIDEO_TEMPLATES = ("a video of {}.", "a video of a person {}.", "{}")
IMAGE_TEMPLATES = ("a photo of a {}.", "a picture of a {}.", "{}")
AUDIO_TEMPLATES = ("the sound of {}.", "{}")

_VIDEO = dict(frames=16, stride=2, height=224, width=224, frame_tokens=4)
# DropToken on video only, as IMP's reference code (seed 004 also lists an image variant).
_IMAGE = dict(height=224, width=224, image_droptoken=False)
# 1.28 s of 16 kHz audio (16 frames, stride 2, at 25 fps): 128 log-mel frames of 10 ms.
_AUDIO = dict(sample_rate=16000, num_samples=20480)
_LABEL_TEXT = {"label_text": ("nce", ("vision", "text"), "labels")}
_VIDEO_TEXT = {
    "text": ("nce", ("vision", "text")),
    "audio_text": ("nce", ("vision", "waveform", "text")),
}

ENTRIES: dict[str, dict] = {
    **{
        f"kinetics{n}": dict(
            tasks={"cls": ("softmax", ("vision",)), **_LABEL_TEXT},
            class_templates=VIDEO_TEMPLATES,
            **_VIDEO,
        )
        for n in (400, 600, 700)
    },
    "audioset": dict(
        tasks={
            "cls": ("bce", ("spectrogram",)),
            "video_audio": ("nce", ("vision", "waveform")),
            "label_text": ("nce", ("spectrogram", "text"), "labels"),
        },
        class_templates=AUDIO_TEMPLATES,
        eval_split="eval",
        **_VIDEO,
        **_AUDIO,
    ),
    "msrvtt": dict(
        tasks=_VIDEO_TEXT,
        eval_split="test",
        max_captions=20,
        **_VIDEO,
        **_AUDIO,
    ),
    "esc50": dict(
        tasks={
            "cls": ("softmax", ("spectrogram",)),
            "label_text": ("nce", ("spectrogram", "text"), "labels"),
        },
        class_templates=AUDIO_TEMPLATES,
        eval_split="test",
        sample_rate=16000,
        num_samples=81920,  # 5.12 s: the 5 s clips, zero-padded; 512 log-mel frames
        multi_resolution=False,
    ),
    "cc3m": dict(tasks={"text": ("nce", ("vision", "text"))}, **_IMAGE),
    "cifar100": dict(
        tasks={"cls": ("softmax", ("vision",)), **_LABEL_TEXT},
        tfds_name="cifar100:3.*.*",
        class_templates=IMAGE_TEMPLATES,
        eval_split="test",
        height=32,
        width=32,
        image_droptoken=False,
    ),
    "imagenet2012": dict(
        tasks={"cls": ("softmax", ("vision",)), **_LABEL_TEXT},
        tfds_name="imagenet2012:5.*.*",
        class_templates=IMAGE_TEMPLATES,
        **_IMAGE,
    ),
}


# Zero-shot evaluation sets of seed 004 Table 1 (UCF101 and HMDB51 are not in the catalog).
ZERO_SHOT_SETS = ("kinetics400", "kinetics600", "kinetics700", "esc50", "cifar100", "imagenet2012")


def describe(name: str, data_dir: str, vocabulary: str = "", **overrides) -> datasets.Dataset:
    """The `Dataset` of catalog entry `name` under `data_dir`; fails naming the missing path
    when its files are not there. Without a vocabulary, label-text tasks are left out (a
    caption task still needs one)."""
    if name not in ENTRIES:
        hint = did_you_mean(name, ENTRIES) or f"; known: {sorted(ENTRIES)}"
        raise ImpError(f"unknown catalog data set '{name}'{hint}")
    fields = {**ENTRIES[name], **overrides}
    if not vocabulary:
        fields["tasks"] = {k: v for k, v in fields["tasks"].items() if v[2:] != ("labels",)}
    uses_text = any("text" in entry[1] for entry in fields["tasks"].values())
    if uses_text and not vocabulary:
        raise ImpError(f"data set '{name}': its tasks read text; set prepare_catalog.vocabulary")
    fields["vocabulary"] = vocabulary if uses_text else ""
    if fields.get("tfds_name"):
        return _describe_tfds(name, data_dir, fields)
    root = os.path.join(data_dir, name)
    info = _read_info(root)
    splits = ("train", fields.get("eval_split", "validation"))
    patterns = {split: os.path.join(root, f"{split}-*.tfrecord*") for split in splits}
    for split, pattern in patterns.items():
        if not tf.io.gfile.glob(pattern):
            raise ImpError(f"data set '{name}': no files match {pattern} (split '{split}')")
    counts = {
        split: info.get("splits", {}).get(split, {}).get("num_examples")
        or datasets.count_records(pattern)
        for split, pattern in patterns.items()
    }
    fields.setdefault("class_names", _class_names(root, info))
    return datasets.Dataset(
        name=name,
        file_patterns=patterns,
        num_examples=counts,
        **fields,
    )


def _describe_tfds(name: str, data_dir: str, fields: dict) -> datasets.Dataset:
    import tensorflow_datasets as tfds

    base = fields["tfds_name"].split(":")[0]
    if not tf.io.gfile.exists(os.path.join(data_dir, base)):
        raise ImpError(
            f"data set '{name}': no prepared TFDS data at {os.path.join(data_dir, base)} "
            "(prepare it with tfds on a machine with the source files)"
        )
    builder = tfds.builder(fields["tfds_name"], data_dir=data_dir)
    fields.setdefault("class_names", tuple(builder.info.features["label"].names))
    if "num_examples" not in fields:
        splits = builder.info.splits
        if not splits:
            raise ImpError(f"data set '{name}': TFDS data at {builder.data_dir} has no splits")
        fields["num_examples"] = {split: splits[split].num_examples for split in splits}
    return datasets.Dataset(name=name, tfds_data_dir=data_dir, **fields)


def _read_info(root: str) -> dict:
    path = os.path.join(root, INFO)
    if not tf.io.gfile.exists(path):
        return {}
    try:
        return json.loads(tf.io.gfile.GFile(path).read())
    except json.JSONDecodeError as error:
        raise ImpError(f"{path} is not valid JSON: {error}") from None


def _class_names(root: str, info: dict) -> tuple[str, ...]:
    path = os.path.join(root, CLASSES)
    if tf.io.gfile.exists(path):
        lines = tf.io.gfile.GFile(path).read().splitlines()
        return tuple(line.strip() for line in lines if line.strip())
    return tuple(info.get("class_names", ()))


def available(data_dir: str) -> list[str]:
    """The catalog entries whose files are under `data_dir`."""
    found = []
    for name, fields in ENTRIES.items():
        base = fields["tfds_name"].split(":")[0] if "tfds_name" in fields else name
        if tf.io.gfile.exists(os.path.join(data_dir, base)):
            found.append(name)
    return found


@gin.configurable
def prepare_catalog(
    data_dir: str = gin.REQUIRED,
    names: Sequence[str] | None = None,
    vocabulary: str = "",
    mixture_prefix: str = "imp",
    overrides: dict[str, dict] | None = None,
    downstream: Sequence[str] = ZERO_SHOT_SETS,
) -> list[tuple[TaskSpec, float]]:
    """Registers catalog data sets and the standard mixtures (`{mixture_prefix}_all`, ...).

    With `names`, each named data set must be present (else a clear error); without, every
    entry found under `data_dir` is registered and the others are left out. The `downstream`
    data sets stay out of the pre-training mixtures (see `registry.register_mixtures`).
    """
    chosen = list(names) if names is not None else available(data_dir)
    if not chosen:
        raise ImpError(f"no catalog data set found under {data_dir} (known: {sorted(ENTRIES)})")
    overrides = overrides or {}
    registered = []
    for name in chosen:
        description = describe(name, data_dir, vocabulary, **overrides.get(name, {}))
        registered += datasets.register_dataset(description)
    registry.register_mixtures(mixture_prefix, registered, downstream)
    return registered
