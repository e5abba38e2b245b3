"""seqio Tasks and the mixture over the embedded demo world (see `imp.data.demo_world`).

Tasks (seed 004 §3.2 objectives): image-text and video-text NCE, video-audio-text NCE over
all three pairs, and image and video classification with softmax cross-entropy.
"""

import functools
from pathlib import Path

import gin
import seqio
import tensorflow as tf

from imp.data import demo_world, dmvr
from imp.tasks import registry

MIXTURE = "demo_all"

# (task, data set, objective, modalities)
_TASKS = (
    ("demo_image_text", "image", "nce", ("vision", "text")),
    ("demo_image_cls", "image", "softmax", ("vision",)),
    ("demo_video_text", "video", "nce", ("vision", "text")),
    ("demo_video_audio_text", "video", "nce", ("vision", "waveform", "text")),
    ("demo_video_cls", "video", "softmax", ("vision",)),
)


def default_data_dir(seed: int = 0) -> Path:
    return Path("~/.cache/imp").expanduser() / f"demo_world-seed{seed}"


@gin.configurable
def prepare_demo(
    data_dir: str | None = None,
    seed: int = 0,
    batch_size: int = 32,
    text_length: int = 16,
    num_images: int | None = None,
) -> None:
    """Generates the demo world if needed, then registers its tasks and `demo_all`.

    `num_images` limits the world to the first N digit images (tests); None uses all.
    """
    root = Path(data_dir) if data_dir else default_data_dir(seed)
    manifest = demo_world.ensure(root, seed, num_images)
    register_demo(root, manifest, batch_size, text_length)


def register_demo(root: Path, manifest: dict, batch_size: int = 32, text_length: int = 16) -> None:
    vocabulary = seqio.SentencePieceVocabulary(str(root / manifest["vocabulary"]))
    for name, dataset, objective, modalities in _TASKS:
        info = manifest["datasets"][dataset]
        spec = registry.TaskSpec(
            name=name,
            dataset=f"demo_{dataset}",
            objective=objective,
            modalities=modalities,
            num_examples=info["splits"]["train"]["num_examples"],
            batch_size=batch_size,
            frames=info["frames"],
            height=info["height"],
            width=info["width"],
            num_samples=info.get("num_samples", 0),
            text_length=text_length,
            vocab_size=vocabulary.vocab_size,
            class_names=tuple(info["class_names"]),
            class_prompts=_class_prompts(dataset),
        )
        source = seqio.FileDataSource(
            read_file_fn=tf.data.TFRecordDataset,
            split_to_filepattern={
                split: str(root / s["file_pattern"]) for split, s in info["splits"].items()
            },
            num_input_examples={split: s["num_examples"] for split, s in info["splits"].items()},
        )
        output_features = _output_features(spec, vocabulary)
        preprocessors = [
            functools.partial(_to_features, spec=spec),
            functools.partial(seqio.preprocessors.tokenize, copy_pretokenized=False),
        ]
        registry.register(spec, source, preprocessors, output_features)
    registry.register_mixture(MIXTURE, [t[0] for t in _TASKS])


def _class_prompts(dataset: str) -> tuple[tuple[str, ...], ...]:
    if dataset == "video":
        return tuple(
            tuple(demo_world.captions(digit, direction))
            for digit in range(10)
            for direction in demo_world.DIRECTIONS
        )
    return tuple(tuple(demo_world.captions(digit)) for digit in range(10))


def _output_features(spec: registry.TaskSpec, vocabulary) -> dict[str, seqio.Feature]:
    """Every task declares every feature (a seqio Mixture needs equal feature sets); the ones
    this task does not produce are optional."""
    produced = {*spec.modalities, "label"}
    return {
        "vision": seqio.ContinuousFeature(dtype=tf.float32, rank=4, required="vision" in produced),
        "waveform": seqio.ContinuousFeature(
            dtype=tf.float32, rank=1, required="waveform" in produced
        ),
        "text": seqio.Feature(vocabulary, add_eos=False, required="text" in produced),
        "label": seqio.ContinuousFeature(dtype=tf.int32, rank=0, required="label" in produced),
    }


@seqio.map_over_dataset(num_seeds=2)
def _to_features(serialized: tf.Tensor, seeds, spec: registry.TaskSpec) -> dict[str, tf.Tensor]:
    """Serialised SequenceExample -> the task's features (frames, waveform, caption, label)."""
    clip_seed, caption_seed = seeds
    example = dmvr.parse(serialized, waveform="waveform" in spec.modalities)
    out = {}
    if "vision" in spec.modalities:
        frames = dmvr.sample_clip(example["frames"], spec.frames, 1, clip_seed)
        out["vision"] = dmvr.decode_frames(frames, spec.height, spec.width)
    if "waveform" in spec.modalities:
        out["waveform"] = tf.ensure_shape(
            example["waveform"][: spec.num_samples], [spec.num_samples]
        )
    if "text" in spec.modalities:
        captions = example["captions"]
        pick = tf.random.stateless_uniform([], caption_seed, 0, tf.shape(captions)[0], tf.int32)
        out["text"] = captions[pick]
    out["label"] = tf.cast(example["label"][0], tf.int32)  # also scores zero-shot evaluation
    return out
