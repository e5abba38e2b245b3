"""seqio Tasks and the mixture over the embedded demo world (see `imp.data.demo_world`).

Tasks (seed 004 §3.2 objectives): image-text and video-text NCE, video-audio-text NCE over
all three pairs, and image and video classification with softmax cross-entropy. With
`prepare_demo.unit`, UniT's tasks (seed 002): detection of the digits in a scene, visual
questions about it, and a caption's digit from the text alone, in the mixture `unit_demo`.
"""

from pathlib import Path

import gin

from imp import validation
from imp.data import demo_world
from imp.tasks import datasets, registry

MIXTURE = "demo_all"
UNIT_MIXTURE = "unit_demo"
# UniT's tasks on the demo world: data set -> task suffix -> (objective, model inputs), and
# each task's sampling probability in `unit_demo`. Seed 002 Table A.2 gives detection about
# two thirds of the steps when it trains with VQA; the demo gives it 0.8, since its classes are
# the slowest thing to learn (at 0.6, AP50 0.181 after 2000 steps; at 0.8, 0.474).
# The captions' data set reads the image data set's files.
_UNIT_TASKS = {
    "digit_scenes": ("scenes", {"detection": ("detection", ("vision",))}),
    "digit_questions": ("questions", {"vqa": ("softmax", ("vision", "text"))}),
    "digit_captions": ("image", {"cls": ("softmax", ("text",))}),
}
# The LiT decoder's tasks (seed 003) on the demo world, over frozen features: captions of
# images and videos, a digit's class as text, and answers to the scenes' questions, each after
# its prompt (`demo_world.PROMPTS`), in the mixture `lit_demo` (weighted by examples, seed 003's
# "concat images"). The images' two tasks share their inputs: only the prompt tells them apart.
LIT_MIXTURE = "lit_demo"
_LIT_TASKS = {
    "lit_images": ("image", ("caption", "captions"), ("classify", "labels")),
    "lit_videos": ("video", ("caption", "captions")),
    "lit_questions": ("questions", ("answer", "labels")),
}
UNIT_WEIGHTS = {
    "digit_scenes_detection": 0.8,
    "digit_questions_vqa": 0.15,
    "digit_captions_cls": 0.05,
}
# Per data set: task suffix -> (objective, model inputs).
_TASKS = {
    "image": {"text": ("nce", ("vision", "text")), "cls": ("softmax", ("vision",))},
    "video": {
        "text": ("nce", ("vision", "text")),
        "audio_text": ("nce", ("vision", "waveform", "text")),
        "cls": ("softmax", ("vision",)),
    },
}


def default_data_dir(seed: int = 0) -> Path:
    return Path("~/.cache/imp").expanduser() / f"demo_world-seed{seed}"


@gin.configurable
def prepare_demo(
    data_dir: str | None = None,
    seed: int = 0,
    batch_size: int = 32,
    text_length: int = 24,  # the longest demo caption has 19 tokens
    num_images: int | None = None,
    label_text: bool = False,
    audio_classification: bool = False,
    unit: bool = False,
    lit: bool = False,
    lit_prompts: bool = True,
) -> None:
    """Generates the demo world if needed, then registers its tasks and `demo_all`.

    `num_images` limits the world to the first N digit images (tests); None uses all.
    `label_text` adds `digit_images_label_text`: NCE between an image and a prompt of its
    digit's name (seed 004 §4.1's label-based NCE), and with it the mixture
    `demo_digit_images_labels` of the two tasks the labels train (Table 2's setting).
    `audio_classification` adds `digit_videos_audio_cls`: a clip's class from its sound alone
    (log-mel spectrogram), so `demo_classification` holds an image, a video and an audio
    classification task, PolyViT's three modalities (seed 000). `unit` registers UniT's tasks
    and their mixture `unit_demo` (seed 002; see the module docstring). `lit` registers the LiT
    decoder's tasks and `lit_demo` (seed 003); without `lit_prompts`, they have no prompts
    (seed 003 Table 1's unconditioned decoder).
    """
    for name, value in (("batch_size", batch_size), ("text_length", text_length), ("seed", seed)):
        validation.at_least(f"prepare_demo.{name}", value, 0 if name == "seed" else 1)
    validation.require(
        data_dir is None or isinstance(data_dir, str),
        f"prepare_demo.data_dir = {data_dir!r}: expected a path",
    )
    flags = (
        ("label_text", label_text),
        ("audio_classification", audio_classification),
        ("unit", unit),
        ("lit", lit),
        ("lit_prompts", lit_prompts),
    )
    for name, flag in flags:
        validation.require(
            isinstance(flag, bool), f"prepare_demo.{name} = {flag!r}: expected a bool"
        )
    root = Path(data_dir).expanduser() if data_dir else default_data_dir(seed)
    manifest = demo_world.ensure(root, seed, num_images)
    register_demo(root, manifest, batch_size, text_length, label_text, audio_classification, unit)
    if lit:
        _register_lit(root, manifest, batch_size, text_length, lit_prompts)


def register_demo(
    root: Path,
    manifest: dict,
    batch_size: int = 32,
    text_length: int = 24,
    label_text: bool = False,
    audio_classification: bool = False,
    unit: bool = False,
) -> None:
    """Registers the demo data sets through `datasets.register_dataset`, like any user data,
    and the standard mixtures under the prefix `demo` (`demo_all`, `demo_video_text`, ...);
    with `unit`, UniT's tasks and `unit_demo` too."""
    registered = []
    for name, tasks in _TASKS.items():
        if label_text and name == "image":
            tasks = {**tasks, "label_text": ("nce", ("vision", "text"), "labels")}
        if audio_classification and name == "video":
            tasks = {**tasks, "audio_cls": ("softmax", ("spectrogram",))}
        info = manifest["datasets"][name]
        dataset = _dataset(
            root,
            manifest,
            name,
            f"digit_{name}s",
            batch_size,
            text_length,
            tasks=tasks,
            class_prompts=_class_prompts(name),
            fps=info.get("fps", 25.0),
            sample_rate=info.get("sample_rate", 16000),
            num_samples=info.get("num_samples", 0),
            mel_frame_length=200,
            mel_frame_step=80,
            mel_bins=32,
            max_captions=2,
        )
        registered += datasets.register_dataset(dataset)
    registry.register_mixtures("demo", registered)
    if unit:
        _register_unit(root, manifest, batch_size, text_length)


def _register_unit(root: Path, manifest: dict, batch_size: int, text_length: int) -> None:
    """UniT's data sets and tasks (`_UNIT_TASKS`) and `unit_demo`."""
    names = []
    for name, (files, tasks) in _UNIT_TASKS.items():
        info = manifest["datasets"][files]
        dataset = _dataset(
            root,
            manifest,
            files,
            name,
            batch_size,
            text_length,
            tasks=tasks,
            multi_resolution=False,
            max_objects=info.get("max_objects", 0),
        )
        names += [spec.name for spec, _ in datasets.register_dataset(dataset)]
    registry.register_mixture(UNIT_MIXTURE, [(n, UNIT_WEIGHTS[n]) for n in names])


def _register_lit(
    root: Path, manifest: dict, batch_size: int, text_length: int, prompts: bool
) -> None:
    """The LiT decoder's data sets and tasks (`_LIT_TASKS`) and `lit_demo`."""
    registered = []
    for name, (files, *tasks) in _LIT_TASKS.items():
        dataset = _dataset(
            root,
            manifest,
            files,
            name,
            batch_size,
            text_length,
            tasks={suffix: ("generation", ("vision",), text) for suffix, text in tasks},
            prompts={s: demo_world.PROMPTS[s] if prompts else "" for s, _ in tasks},
            multi_resolution=False,
            max_captions=2,
        )
        registered += datasets.register_dataset(dataset)
    registry.register_mixture(LIT_MIXTURE, [(spec.name, w) for spec, w in registered])


def _dataset(
    root: Path,
    manifest: dict,
    files: str,
    name: str,
    batch_size: int,
    text_length: int,
    **fields,
) -> datasets.Dataset:
    """A `Dataset` named `name` over the demo world's data set `files`, with its shapes,
    classes and vocabulary, mild crops and no flips (mirroring would swap "left" and "right"
    and mirror the digits), and `fields`."""
    info = manifest["datasets"][files]
    return datasets.Dataset(
        name=name,
        file_patterns={s: str(root / v["file_pattern"]) for s, v in info["splits"].items()},
        num_examples={s: v["num_examples"] for s, v in info["splits"].items()},
        vocabulary=str(root / manifest["vocabulary"]),
        class_names=tuple(info["class_names"]),
        batch_size=batch_size,
        frames=info["frames"],
        height=info["height"],
        width=info["width"],
        crop_scale=(0.8, 1.0),
        flip=False,
        text_length=text_length,
        **fields,
    )


def _class_prompts(dataset: str) -> tuple[tuple[str, ...], ...]:
    if dataset == "video":
        return tuple(
            tuple(demo_world.captions(digit, direction))
            for digit in range(10)
            for direction in demo_world.DIRECTIONS
        )
    return tuple(tuple(demo_world.captions(digit)) for digit in range(10))
