"""Tests for imp.data.demo_world on a 60-image world (48 train, 12 validation images)."""

import io
import json
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm
import tensorflow as tf
from PIL import Image

from imp.data import demo_world
from imp.errors import ImpError

NUM_IMAGES = 60
# 20% of 60 images are held out; train images make 2 clips each, held-out images 1.
EXPECTED_COUNTS = {
    ("video", "train"): 96,
    ("video", "validation"): 12,
    ("image", "train"): 48,
    ("image", "validation"): 12,
}
DATASET_SPLITS = sorted(EXPECTED_COUNTS)
WORD_TO_DIGIT = {word: digit for digit, word in enumerate(demo_world.NUMBER_WORDS)}
# Centroid shift (rows, cols) over 8 frames at 2 px per frame; rows grow downwards.
EXPECTED_SHIFT = {"left": (0, -7), "right": (0, 7), "up": (-7, 0), "down": (7, 0)}  # 1 px x 7 steps


@pytest.fixture(scope="module")
def worlds(tmp_path_factory) -> dict[str, Path]:
    """Two worlds from seed 0 and one from seed 1, each in its own directory."""
    root = tmp_path_factory.mktemp("worlds")
    for name, seed in (("a", 0), ("b", 0), ("other_seed", 1)):
        demo_world.generate(root / name, seed=seed, num_images=NUM_IMAGES)
    return {name: root / name for name in ("a", "b", "other_seed")}


@pytest.fixture(scope="module")
def records(worlds) -> dict[tuple[str, str], list[tf.train.SequenceExample]]:
    """Parsed records of world "a" per (dataset, split), read through the manifest's patterns."""
    manifest = demo_world.load_manifest(worlds["a"])
    parsed = {}
    for dataset, split in DATASET_SPLITS:
        pattern = manifest["datasets"][dataset]["splits"][split]["file_pattern"]
        files = sorted(str(p) for p in worlds["a"].glob(pattern))
        parsed[dataset, split] = [
            tf.train.SequenceExample.FromString(r)
            for r in tf.data.TFRecordDataset(files).as_numpy_iterator()
        ]
    return parsed


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def _ints(example: tf.train.SequenceExample, key: str) -> list[int]:
    return list(example.context.feature[key].int64_list.value)


def _frames(example: tf.train.SequenceExample) -> np.ndarray:
    """Decoded frames [T, H, W, 3] uint8."""
    steps = example.feature_lists.feature_list["image/encoded"].feature
    return np.stack([np.asarray(Image.open(io.BytesIO(s.bytes_list.value[0]))) for s in steps])


def _waveform(example: tf.train.SequenceExample) -> np.ndarray:
    steps = example.feature_lists.feature_list["WAVEFORM/feature/floats"].feature
    assert len(steps) == 1
    return np.array(steps[0].float_list.value)


def _centroid(frame: np.ndarray) -> np.ndarray:
    """(row, col) centre of mass of the pixels brighter than the dark background."""
    brightness = frame.astype(np.float64).mean(axis=-1)
    weights = np.maximum(brightness - 80, 0)
    rows, cols = np.indices(brightness.shape)
    return np.array([(rows * weights).sum(), (cols * weights).sum()]) / weights.sum()


def test_same_seed_gives_identical_bytes(worlds):
    files_a, files_b = _files(worlds["a"]), _files(worlds["b"])
    shards = [f"train-0000{i}-of-00004.tfrecord" for i in range(4)]
    shards.append("validation-00000-of-00001.tfrecord")
    datasets = ("image", "questions", "scenes", "video")
    assert sorted(files_a) == sorted(
        ["manifest.json", "spm.model", *(f"{d}/{s}" for d in datasets for s in shards)]
    )
    assert files_a == files_b


def test_different_seed_gives_different_records(worlds):
    files_a, files_other = _files(worlds["a"]), _files(worlds["other_seed"])
    for name in files_a:
        if name.endswith(".tfrecord"):
            assert files_a[name] != files_other[name], name


@pytest.mark.parametrize("dataset, split", DATASET_SPLITS)
def test_manifest_counts_match_records(worlds, records, dataset, split):
    manifest = demo_world.load_manifest(worlds["a"])
    assert manifest["datasets"][dataset]["splits"][split]["num_examples"] == len(
        records[dataset, split]
    )
    assert len(records[dataset, split]) == EXPECTED_COUNTS[dataset, split]


@pytest.mark.parametrize("dataset, split", DATASET_SPLITS)
def test_labels_agree_with_captions(worlds, records, dataset, split):
    class_names = demo_world.load_manifest(worlds["a"])["datasets"][dataset]["class_names"]
    for example in records[dataset, split]:
        captions = [c.decode() for c in example.context.feature["caption/string"].bytes_list.value]
        assert len(captions) == 2
        words = " ".join(captions).split()
        digits = {WORD_TO_DIGIT[w] for w in words if w in WORD_TO_DIGIT}
        digits |= {int(w) for w in words if w.isdigit()}
        (digit,) = digits  # the word and the numeral name the same digit
        directions = {w for w in words if w in demo_world.DIRECTIONS}
        (index,) = _ints(example, "clip/label/index")
        assert _ints(example, "clip/label/digit") == [digit]
        if dataset == "video":
            (direction,) = directions
            direction_index = demo_world.DIRECTIONS.index(direction)
            assert _ints(example, "clip/label/direction") == [direction_index]
            assert index == digit * 4 + direction_index
            assert class_names[index] == f"{digit} moving {direction}"
        else:
            assert not directions
            assert "clip/label/direction" not in example.context.feature
            assert index == digit
            assert class_names[index] == str(digit)
        label_string = example.context.feature["clip/label/string"].bytes_list.value
        assert [s.decode() for s in label_string] == [class_names[index]]


@pytest.mark.parametrize("dataset, num_frames", [("video", 8), ("image", 1)])
def test_frames_decode_to_rgb_canvas(records, dataset, num_frames):
    for example in records[dataset, "validation"]:
        frames = _frames(example)
        assert frames.shape == (num_frames, 32, 32, 3)
        assert frames.dtype == np.uint8


def test_digit_moves_in_labelled_direction(records):
    for example in records["video", "train"] + records["video", "validation"]:
        direction = demo_world.DIRECTIONS[_ints(example, "clip/label/direction")[0]]
        frames = _frames(example)
        shift = _centroid(frames[-1]) - _centroid(frames[0])
        np.testing.assert_allclose(shift, EXPECTED_SHIFT[direction], atol=2.0, err_msg=direction)


def test_waveform_matches_digit_and_direction(records):
    for example in records["video", "train"] + records["video", "validation"]:
        wave = _waveform(example)
        assert wave.shape == (2560,)
        assert np.all(np.abs(wave) <= 1.0)
        digit = _ints(example, "clip/label/digit")[0]
        direction = demo_world.DIRECTIONS[_ints(example, "clip/label/direction")[0]]
        first, last = wave[:640], wave[-640:]  # first and last 80 ms
        frequency_ratio = _peak_frequency(last) / _peak_frequency(first)
        loudness_ratio = np.std(last) / np.std(first)
        if direction in ("left", "right"):
            # Pitch sweeps linearly by 25%; each 80 ms quarter sounds at its mid-point pitch.
            sweep = -0.25 if direction == "left" else 0.25
            expected_ratio = (1 + sweep * 7 / 8) / (1 + sweep / 8)
            assert frequency_ratio == pytest.approx(expected_ratio, abs=0.05)
            assert loudness_ratio == pytest.approx(1.0, abs=0.15)
        else:
            assert _peak_frequency(wave) == pytest.approx(300 + 80 * digit, abs=5)
            assert (loudness_ratio > 3) == (direction == "up")
            assert (loudness_ratio < 1 / 3) == (direction == "down")


def _peak_frequency(wave: np.ndarray) -> float:
    """Frequency in Hz of the strongest bin of the zero-padded spectrum."""
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave)), n=1 << 16))
    return float(np.argmax(spectrum) * 8000 / (1 << 16))


def test_validation_images_never_appear_in_train(records):
    def sources(dataset, split):
        return {_ints(e, "clip/source_index")[0] for e in records[dataset, split]}

    for dataset in ("video", "image"):
        train, validation = sources(dataset, "train"), sources(dataset, "validation")
        assert len(validation) == 12
        assert not train & validation
        assert train | validation == set(range(NUM_IMAGES))
    assert sources("video", "validation") == sources("image", "validation")


def test_vocabulary_uses_seqio_ids_and_covers_captions(worlds, records):
    vocab = spm.SentencePieceProcessor(model_file=str(worlds["a"] / "spm.model"))
    assert (vocab.pad_id(), vocab.eos_id(), vocab.unk_id(), vocab.bos_id()) == (0, 1, 2, -1)
    for example in records["video", "validation"] + records["image", "validation"]:
        for caption in example.context.feature["caption/string"].bytes_list.value:
            assert vocab.unk_id() not in vocab.encode(caption.decode())


def _stamps(root: Path) -> dict[str, tuple[int, int]]:
    """(inode, mtime) per file: unchanged only if nothing was rewritten."""
    return {str(p): (p.stat().st_ino, p.stat().st_mtime_ns) for p in root.rglob("*")}


def test_ensure_reuses_matching_world(tmp_path):
    out = tmp_path / "world"
    assert demo_world.ensure(out, seed=0, num_images=NUM_IMAGES)["seed"] == 0
    written = _stamps(out)
    assert demo_world.ensure(out, seed=0, num_images=NUM_IMAGES) == demo_world.load_manifest(out)
    assert _stamps(out) == written


@pytest.mark.parametrize(
    "stale_key, stale_value", [("seed", 1), ("num_images", 30), ("format_version", 0)]
)
def test_ensure_regenerates_stale_world(tmp_path, stale_key, stale_value):
    out = tmp_path / "world"
    stale = {"seed": 0, "num_images": NUM_IMAGES, stale_key: stale_value}
    manifest = demo_world.generate(out, seed=stale["seed"], num_images=stale["num_images"])
    manifest[stale_key] = stale_value  # a no-op unless the key is format_version
    (out / "manifest.json").write_text(json.dumps(manifest))

    regenerated = demo_world.ensure(out, seed=0, num_images=NUM_IMAGES)
    assert (regenerated["format_version"], regenerated["seed"], regenerated["num_images"]) == (
        demo_world.FORMAT_VERSION,
        0,
        NUM_IMAGES,
    )
    assert demo_world.load_manifest(out) == regenerated
    assert sorted(p.name for p in tmp_path.iterdir()) == ["world"]  # no staging left behind


def test_failed_generation_keeps_previous_world(tmp_path, monkeypatch):
    out = tmp_path / "world"
    demo_world.generate(out, seed=0, num_images=NUM_IMAGES)
    before = _files(out)

    def crash(captions):
        raise RuntimeError("killed mid-generation")

    monkeypatch.setattr(demo_world, "_train_vocabulary", crash)
    with pytest.raises(RuntimeError, match="killed"):
        demo_world.generate(out, seed=1, num_images=NUM_IMAGES)
    assert _files(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["world"]


def test_generate_refuses_directory_that_is_not_a_world(tmp_path):
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(ImpError, match="not a demo world"):
        demo_world.generate(tmp_path, num_images=NUM_IMAGES)
    assert (tmp_path / "notes.txt").read_text() == "keep me"


def test_load_manifest_names_missing_world(tmp_path):
    with pytest.raises(FileNotFoundError, match="imp data demo"):
        demo_world.load_manifest(tmp_path)
