"""The embedded demo world: a small multimodal data set made from scikit-learn's digits.

Each of the 1797 8x8 handwritten digits (values 0..16) is upscaled to 24x24 and painted in a
random bright colour on a dark noisy 32x32 canvas. The `video` data set moves it 1 px per frame
in one of `DIRECTIONS` for 8 frames and pairs each clip with a tone whose pitch encodes the digit
and whose pitch or loudness contour encodes the direction; the `image` data set shows each digit
once, still. Every example carries two template captions. The `scenes` and `questions` data
sets place several digits on a larger canvas, for detection and visual questions
(`imp.data.scenes`). A SentencePiece vocabulary is trained on all captions and questions, and
on the task prompts of the LiT decoder's demo tasks (`PROMPTS`).
Everything derives from one seed, so the same seed gives byte-identical files.

On disk (DMVR convention, as read by VATT/IMP): TFRecord shards of `tf.train.SequenceExample`
with context `clip/label/index`, `clip/label/string`, `caption/string`, `clip/label/digit`,
`clip/label/direction` (video only), `clip/source_index` (row of `load_digits`), and feature
lists `image/encoded` (one JPEG per frame) and, for video, `WAVEFORM/feature/floats` (one step
holding the whole waveform). `manifest.json` describes counts, file patterns and shapes.
"""

import io
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import sentencepiece as spm
import tensorflow as tf
from sklearn.datasets import load_digits

from imp.data import dmvr, scenes
from imp.errors import ImpError

# 2: 24 px glyphs moving 1 px per frame; 3: NFKC vocabulary; 4: scenes and questions;
# 5: 24 px digits in the scenes; 6: the vocabulary spells the LiT decoder's prompts
FORMAT_VERSION = 6
# The task prompts of the LiT decoder's demo tasks (seed 003), which the vocabulary learns too.
PROMPTS = {"caption": "caption:", "classify": "classify:", "answer": "question: {text} answer:"}
DIRECTIONS = ("left", "right", "up", "down")
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

MANIFEST = "manifest.json"
VOCABULARY = "spm.model"
SPLITS = ("train", "validation")
VALIDATION_FRACTION = 0.2
NUM_SHARDS = {"train": 4, "validation": 1}
# Two clips per training image double the training videos; one per held-out image suffices.
CLIPS_PER_IMAGE = {"train": 2, "validation": 1}

FRAMES = 8
FPS = 25
CANVAS = 32  # height = width of every frame
GLYPH = 24  # side of the upscaled digit: large on the canvas, so position varies little
STEP_PX = 1  # motion per frame
SAMPLE_RATE = 8000
NUM_SAMPLES = SAMPLE_RATE * FRAMES // FPS  # 2560: the sound lasts exactly as long as the clip
VOCAB_SIZE = 64
# The sklearn digits are quantised to 0..16, not 0..255.
DIGIT_MAX = 16.0

# Per-frame (dy, dx); rows grow downwards, so "up" lowers the row index.
_VELOCITY = {
    "left": (0, -STEP_PX),
    "right": (0, STEP_PX),
    "up": (-STEP_PX, 0),
    "down": (STEP_PX, 0),
}


def generate(out_dir: str | os.PathLike, seed: int = 0, num_images: int | None = None) -> dict:
    """Writes the demo world under out_dir and returns the manifest (also in manifest.json).

    Args:
      out_dir: target directory; replaced if it holds an older demo world, refused if it holds
        anything else.
      seed: seeds every random choice; the same seed and num_images give identical bytes.
      num_images: use only the first N digit images (for fast tests); None uses all 1797.
    """
    out_dir = Path(out_dir)
    _check_replaceable(out_dir)
    glyphs, digits = _load_glyphs(num_images)  # [n, GLYPH, GLYPH] in [0, 1], [n]
    split_rng, video_rng, image_rng, order_rng, scene_rng = np.random.default_rng(seed).spawn(5)
    sources = _split_sources(len(digits), split_rng)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    staging.chmod(0o755)  # mkdtemp's 0o700 would hide the world from other users
    try:
        manifest = {"format_version": FORMAT_VERSION, "seed": seed, "num_images": len(digits)}
        all_captions = []
        datasets = {}
        for name, make, rng in (
            ("video", _video_records, video_rng),
            ("image", _image_records, image_rng),
        ):
            splits = {}
            for split in SPLITS:
                records, split_captions = make(glyphs, digits, sources[split], split, rng)
                splits[split] = _write_shards(records, staging, name, split, order_rng)
                all_captions += split_captions
            datasets[name] = {**_dataset_info(name), "splits": splits}
        made = {
            split: _scene_records(glyphs, digits, sources[split], scene_rng) for split in SPLITS
        }
        for index, name in enumerate(("scenes", "questions")):
            splits = {
                split: _write_shards(made[split][index], staging, name, split, order_rng)
                for split in SPLITS
            }
            datasets[name] = {**_dataset_info(name), "splits": splits}
        all_captions += scenes.questions(NUMBER_WORDS)
        all_captions += [p.replace("{text}", "") for p in PROMPTS.values()] * 20
        (staging / VOCABULARY).write_bytes(_train_vocabulary(all_captions))
        manifest["vocabulary"] = VOCABULARY
        manifest["datasets"] = datasets
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        _move_into_place(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest


def ensure(out_dir: str | os.PathLike, seed: int = 0, num_images: int | None = None) -> dict:
    """Returns the manifest of the demo world in out_dir, generating it first if needed.

    It is (re)generated when missing, unreadable, or made with another seed, image count or
    format version; otherwise the existing files are reused untouched.
    """
    wanted = {
        "format_version": FORMAT_VERSION,
        "seed": seed,
        "num_images": _num_images(num_images, len(load_digits().target)),
    }
    try:
        manifest = load_manifest(out_dir)
    except (FileNotFoundError, json.JSONDecodeError):
        return generate(out_dir, seed, num_images)
    if any(manifest.get(key) != value for key, value in wanted.items()):
        return generate(out_dir, seed, num_images)
    return manifest


def load_manifest(out_dir: str | os.PathLike) -> dict:
    """Reads out_dir/manifest.json; FileNotFoundError names the fix when there is none."""
    path = Path(out_dir) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(
            f"No demo world at {out_dir} ({path} is missing): run `imp data demo --out {out_dir}`."
        )
    return json.loads(path.read_text())


def _num_images(num_images: int | None, available: int) -> int:
    if num_images is None:
        return available
    # Five images is the fewest that leave one for the held-out split and one per train shard.
    if not isinstance(num_images, int) or not 5 <= num_images <= available:
        raise ImpError(
            f"prepare_demo.num_images = {num_images!r}: the train and validation splits need "
            f"between 5 and {available} digit images (or None for all)"
        )
    return num_images


def _load_glyphs(num_images: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Returns glyphs [n, GLYPH, GLYPH] float in [0, 1] (digit opacity) and digits [n] int."""
    data = load_digits()
    n = _num_images(num_images, len(data.target))
    glyphs = np.kron(data.images[:n] / DIGIT_MAX, np.ones((1, GLYPH // 8, GLYPH // 8)))
    return glyphs, data.target[:n].astype(np.int64)


def _split_sources(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Splits source rows 0..n-1 into disjoint sorted index arrays per split."""
    order = rng.permutation(n)
    num_validation = round(n * VALIDATION_FRACTION)
    return {
        "train": np.sort(order[num_validation:]),
        "validation": np.sort(order[:num_validation]),
    }


def _scene_records(glyphs, digits, sources, rng) -> tuple[list[bytes], list[bytes]]:
    return scenes.records(glyphs, digits, sources, NUMBER_WORDS, rng)


def _dataset_info(name: str) -> dict:
    if name in ("scenes", "questions"):
        class_names = [str(d) for d in range(10)] if name == "scenes" else list(scenes.ANSWERS)
        shape = {"frames": 1, "height": scenes.CANVAS, "width": scenes.CANVAS}
        objects = {"max_objects": scenes.MAX_OBJECTS} if name == "scenes" else {}
        return {"num_classes": len(class_names), "class_names": class_names, **shape, **objects}
    if name == "video":
        class_names = [f"{d} moving {direction}" for d in range(10) for direction in DIRECTIONS]
        shape = {"frames": FRAMES, "height": CANVAS, "width": CANVAS}
        audio = {"fps": FPS, "sample_rate": SAMPLE_RATE, "num_samples": NUM_SAMPLES}
        return {"num_classes": len(class_names), "class_names": class_names, **shape, **audio}
    class_names = [str(d) for d in range(10)]
    shape = {"frames": 1, "height": CANVAS, "width": CANVAS}
    return {"num_classes": len(class_names), "class_names": class_names, **shape}


def captions(digit: int, direction: str | None = None) -> list[str]:
    word = NUMBER_WORDS[digit]
    if direction is None:
        return [f"a handwritten {word}", f"a picture of the digit {digit}"]
    return [f"a handwritten {word} moving {direction}", f"the digit {digit} moves {direction}"]


def _video_records(
    glyphs: np.ndarray,
    digits: np.ndarray,
    sources: np.ndarray,
    split: str,
    rng: np.random.Generator,
) -> tuple[list[bytes], list[str]]:
    """Serialised clips, CLIPS_PER_IMAGE[split] per source row, and all their captions."""
    records, all_captions = [], []
    for source in np.repeat(sources, CLIPS_PER_IMAGE[split]):
        digit = int(digits[source])
        direction_index = int(rng.integers(len(DIRECTIONS)))
        direction = DIRECTIONS[direction_index]
        positions = _track(direction, rng)  # [FRAMES, 2]
        frames = _paint(glyphs[source], positions, rng)  # [FRAMES, H, W, 3]
        texts = captions(digit, direction)
        extra = {
            "clip/label/digit": [digit],
            "clip/label/direction": [direction_index],
            "clip/source_index": [int(source)],
        }
        waveform = _waveform(digit, direction, rng)  # [NUM_SAMPLES]
        records.append(
            dmvr.encode(
                frames,
                waveform,
                captions=texts,
                labels=[digit * len(DIRECTIONS) + direction_index],
                label_strings=[f"{digit} moving {direction}"],
                extra_context=extra,
            )
        )
        all_captions += texts
    return records, all_captions


def _image_records(
    glyphs: np.ndarray,
    digits: np.ndarray,
    sources: np.ndarray,
    split: str,
    rng: np.random.Generator,
) -> tuple[list[bytes], list[str]]:
    """Serialised 1-frame stills, one per source row, and all their captions."""
    del split  # every image appears once whatever the split
    records, all_captions = [], []
    for source in sources:
        digit = int(digits[source])
        position = rng.integers(CANVAS - GLYPH + 1, size=(1, 2))
        frames = _paint(glyphs[source], position, rng)  # [1, H, W, 3]
        texts = captions(digit)
        extra = {"clip/label/digit": [digit], "clip/source_index": [int(source)]}
        records.append(
            dmvr.encode(
                frames,
                captions=texts,
                labels=[digit],
                label_strings=[str(digit)],
                extra_context=extra,
            )
        )
        all_captions += texts
    return records, all_captions


def _track(direction: str, rng: np.random.Generator) -> np.ndarray:
    """Top-left glyph corners [FRAMES, 2] (row, col) for a start that keeps it on the canvas."""
    velocity = np.array(_VELOCITY[direction])
    travel = velocity * (FRAMES - 1)
    room = CANVAS - GLYPH
    low, high = np.maximum(0, -travel), np.minimum(room, room - travel)
    start = rng.integers(low, high + 1)
    return start + np.arange(FRAMES)[:, None] * velocity


def _paint(glyph: np.ndarray, positions: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Frames [T, H, W, 3] uint8: the glyph [GLYPH, GLYPH] at positions [T, 2] over dark noise."""
    num_frames = len(positions)
    background = rng.uniform(0, 48, size=3)
    frames = background + rng.normal(0, 8, size=(num_frames, CANVAS, CANVAS, 3))
    colour = rng.uniform(128, 256, size=3)
    for frame, (row, col) in zip(frames, positions, strict=True):
        alpha = glyph[:, :, None]  # [GLYPH, GLYPH, 1]
        patch = frame[row : row + GLYPH, col : col + GLYPH]
        patch[:] = patch * (1 - alpha) + colour * alpha
    return np.clip(np.round(frames), 0, 255).astype(np.uint8)


def _waveform(digit: int, direction: str, rng: np.random.Generator) -> np.ndarray:
    """A tone [NUM_SAMPLES] float32 in [-1, 1] whose pitch names the digit.

    Left/right sweep the pitch down/up by 25%; up/down ramp the loudness up/down.
    """
    ramp = np.linspace(0.0, 1.0, NUM_SAMPLES)
    steady = np.ones(NUM_SAMPLES)
    pitch = {"left": 1 - 0.25 * ramp, "right": 1 + 0.25 * ramp}.get(direction, steady)
    frequency = (300 + 80 * digit) * pitch  # Hz; at most 1275, far below Nyquist
    loudness = {"up": 0.1 + 0.8 * ramp, "down": 0.9 - 0.8 * ramp}.get(direction, 0.6 * steady)
    phase = rng.uniform(0, 2 * np.pi) + 2 * np.pi * np.cumsum(frequency) / SAMPLE_RATE
    wave = loudness * np.sin(phase) + rng.normal(0, 0.02, size=NUM_SAMPLES)
    return np.clip(wave, -1, 1).astype(np.float32)


def _write_shards(
    records: list[bytes], root: Path, name: str, split: str, rng: np.random.Generator
) -> dict:
    """Shuffles records, deals them round-robin into shards and returns the split's manifest."""
    num_shards = NUM_SHARDS[split]
    (root / name).mkdir(exist_ok=True)
    order = rng.permutation(len(records))
    for shard in range(num_shards):
        path = root / name / f"{split}-{shard:05d}-of-{num_shards:05d}.tfrecord"
        with tf.io.TFRecordWriter(str(path)) as writer:
            for index in order[shard::num_shards]:
                writer.write(records[index])
    return {
        "num_examples": len(records),
        "num_shards": num_shards,
        "file_pattern": f"{name}/{split}-*-of-{num_shards:05d}.tfrecord",
    }


def _train_vocabulary(captions: list[str]) -> bytes:
    """A serialised SentencePiece model with seqio's ids: pad 0, eos 1, unk 2, no bos."""
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(captions),
        model_writer=model,
        model_type="unigram",
        vocab_size=VOCAB_SIZE,
        # Tiny subsets have fewer distinct pieces than VOCAB_SIZE; take what there is.
        hard_vocab_limit=False,
        character_coverage=1.0,
        # NFKC changes nothing in ASCII captions, but an empty ("identity") normaliser makes
        # every loader, TF-Text's included, log a line each time the model is opened.
        normalization_rule_name="nmt_nfkc",
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        # One thread and no sampling keep the model byte-identical between runs.
        num_threads=1,
        shuffle_input_sentence=False,
        minloglevel=2,
    )
    return model.getvalue()


def _check_replaceable(out_dir: Path) -> None:
    """Refuses to replace a path unless it is absent, an empty folder, or a demo world holding
    its own files and nothing else: a folder of the user's is never deleted."""
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise ImpError(f"{out_dir} exists and is not a folder; pass a new or empty directory")
    if not any(out_dir.iterdir()):
        return
    try:
        ours = _own_files(out_dir, json.loads((out_dir / MANIFEST).read_text()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise ImpError(
            f"{out_dir} is not a demo world (no readable {MANIFEST}); pass a new or empty directory"
        ) from None
    others = sorted(
        str(p.relative_to(out_dir)) for p in out_dir.rglob("*") if p.is_file() and p not in ours
    )
    if others:
        shown = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
        raise ImpError(
            f"{out_dir} holds files that are not part of its demo world ({shown}); nothing was "
            "changed: pass a new or empty directory"
        )


def _own_files(out_dir: Path, manifest: dict) -> set[Path]:
    """The files a demo world's manifest accounts for: itself, the vocabulary, the shards."""
    files = {out_dir / MANIFEST, out_dir / manifest.get("vocabulary", VOCABULARY)}
    for dataset in manifest.get("datasets", {}).values():
        for split in dataset["splits"].values():
            files.update(out_dir.glob(split["file_pattern"]))
    return files


def _move_into_place(staging: Path, out_dir: Path) -> None:
    """Renames staging to out_dir, so readers see either the old world, none, or the new one."""
    if not out_dir.exists():
        staging.rename(out_dir)
        return
    # rename cannot overwrite a non-empty directory: move the old world aside first.
    graveyard = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
    out_dir.rename(graveyard / out_dir.name)
    staging.rename(out_dir)
    shutil.rmtree(graveyard)
