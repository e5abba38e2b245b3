"""Data: DMVR round trips per modality, preprocessing against numpy, multi-resolution
variants, host sharding, and every data error's message."""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf
from conftest import WORLD_IMAGES

from imp.data import dmvr, feeding, preprocessing
from imp.errors import ImpError
from imp.modeling.model import ImpModel, tokens_per_example
from imp.tasks import datasets, demo, registry

SAMPLE_RATE = 8000


def _frames(num_frames: int, size: int = 16) -> np.ndarray:
    """Flat frames whose brightness is 10 x the frame index: JPEG keeps them almost exact."""
    return np.stack([np.full((size, size, 3), 10 * k, np.uint8) for k in range(num_frames)])


def _write(path, records) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for record in records:
            writer.write(record)


def _dataset(tmp_path, records, name="synthetic", shards=1, vocabulary="", **fields):
    """A Dataset over `records` written as `shards` train files and one validation file."""
    for shard in range(shards):
        _write(tmp_path / name / f"train-{shard}.tfrecord", records[shard::shards])
    _write(tmp_path / name / "validation-0.tfrecord", records)
    defaults = dict(
        name=name,
        file_patterns={
            "train": str(tmp_path / name / "train-*"),
            "validation": str(tmp_path / name / "validation-*"),
        },
        num_examples={"train": len(records), "validation": len(records)},
        tasks={"cls": ("softmax", ("vision",))},
        class_names=tuple(f"class {i}" for i in range(len(records))),
        batch_size=len(records),
        vocabulary=vocabulary,
        multi_resolution=False,
    )
    return datasets.Dataset(**{**defaults, **fields})


def _eval_batch(dataset, **kwargs):
    specs = [spec for spec, _ in datasets.register_dataset(dataset)]
    spec = max(specs, key=lambda s: len(s.modalities))  # keeps the most features
    kwargs = {"with_labels": True, "with_captions": True, "batch_size": 64, **kwargs}
    return next(feeding.batches(spec, dataset.eval_split, 0, train=False, **kwargs))


@pytest.fixture(scope="module")
def vocabulary(world_dir):
    return str(world_dir / "spm.model")


def test_round_trip_every_modality(tmp_path, vocabulary):
    rng = np.random.default_rng(0)
    waveform = rng.uniform(-1, 1, 2560).astype(np.float32)
    captions = ["a handwritten seven", "the digit 7 moves up"]
    record = dmvr.encode(_frames(8), waveform, captions=captions, labels=[1], label_strings=["b"])
    dataset = _dataset(
        tmp_path,
        [record, record],
        tasks={
            "cls": ("softmax", ("vision",)),
            "all": ("nce", ("vision", "waveform", "spectrogram", "text")),
        },
        vocabulary=vocabulary,
        frames=8,
        height=16,
        width=16,
        fps=25.0,
        sample_rate=SAMPLE_RATE,
        num_samples=2560,
        mel_frame_length=200,
        mel_frame_step=80,
        mel_bins=16,
        max_captions=2,
        text_length=24,
    )
    batch = _eval_batch(dataset)
    expected = _frames(8).astype(np.float32) / 127.5 - 1.0
    np.testing.assert_allclose(batch["vision"][0], expected, atol=2 / 127.5)
    np.testing.assert_array_equal(batch["waveform"][0], waveform)
    assert batch["spectrogram"].shape == (2, 32, 16)
    import seqio

    spm = seqio.SentencePieceVocabulary(vocabulary)
    assert [spm.decode(row.tolist()) for row in batch["captions"][0]] == captions
    assert spm.decode(batch["text"][0].tolist()) == captions[0]
    assert batch["label"].tolist() == [1, 1]


def test_log_mel_matches_numpy(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.normal(size=1000).astype(np.float32)
    length, step, bins = 200, 80, 16
    got = preprocessing.log_mel(tf.constant(x), SAMPLE_RATE, bins, length, step).numpy()
    fft = 256
    frames = -(-len(x) // step)
    padded = np.pad(x, (0, (frames - 1) * step + length - len(x)))
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(length) / length)  # periodic Hann
    power = np.stack(
        [
            np.abs(np.fft.rfft(padded[i * step : i * step + length] * window, fft)) ** 2
            for i in range(frames)
        ]
    )
    # The mel filter bank is TF's (HTK scale); the test checks framing, window and power.
    mel = tf.signal.linear_to_mel_weight_matrix(
        bins, fft // 2 + 1, SAMPLE_RATE, 0.0, SAMPLE_RATE / 2
    )
    np.testing.assert_allclose(got, np.log(power @ mel.numpy() + 1e-6), rtol=1e-3, atol=1e-3)


def test_multi_clip_eval_takes_evenly_spaced_clips(tmp_path):
    record = dmvr.encode(_frames(20), labels=[0])
    dataset = _dataset(tmp_path, [record], frames=4, stride=2, height=16, width=16, eval_clips=3)
    batch = _eval_batch(dataset)
    assert batch["vision"].shape == (1, 3, 4, 16, 16, 3)
    # Span 7 of 20 frames: room 13, starts 0, round(6.5) = 6 (half to even), 13.
    first_frames = (batch["vision"][0, :, :, 0, 0, 0] + 1.0) * 127.5 / 10
    np.testing.assert_allclose(
        first_frames, [[0, 2, 4, 6], [6, 8, 10, 12], [13, 15, 17, 19]], atol=0.3
    )


def test_multi_view_eval_takes_spatial_crops_of_each_clip(tmp_path):
    """2 clips x 3 crops of a 16x32 video at 16x16: clip-major views; the crops start at
    columns 0, 8 and 16 (left, centre, right)."""
    columns = np.arange(32, dtype=np.uint8)[None, None, :, None] * 6  # brightness 6 x column
    frames = np.broadcast_to(columns, (8, 16, 32, 3))
    record = dmvr.encode(np.ascontiguousarray(frames), labels=[0])
    dataset = _dataset(
        tmp_path, [record], frames=2, height=16, width=16, eval_clips=2, eval_crops=3
    )
    batch = _eval_batch(dataset)
    assert batch["vision"].shape == (1, 6, 2, 16, 16, 3)
    left_columns = (batch["vision"][0, :, 0, 8, 0, 0] + 1.0) * 127.5 / 6  # [views]
    np.testing.assert_allclose(left_columns, [0, 8, 16, 0, 8, 16], atol=0.5)


def test_training_clips_are_random_strided_and_cropped(tmp_path):
    records = [dmvr.encode(_frames(20, size=24), labels=[0]) for _ in range(8)]
    dataset = _dataset(
        tmp_path, records, frames=4, stride=2, height=16, width=16, class_names=("a",)
    )
    spec = datasets.register_dataset(dataset)[0][0]
    batch = next(feeding.batches(spec, "train", 0, train=True))
    index = np.round((batch["vision"][:, :, 8, 8, 0] + 1.0) * 127.5 / 10)  # [batch, T]
    np.testing.assert_array_equal(np.diff(index, axis=1), 2)  # stride 2 within each clip
    assert len(set(index[:, 0].tolist())) > 1  # random starts
    assert batch["vision"].shape == (8, 4, 16, 16, 3)


def test_multi_hot_labels_for_multi_label_tasks(tmp_path):
    records = [dmvr.encode(_frames(1), labels=[1, 3]), dmvr.encode(_frames(1), labels=[0])]
    dataset = _dataset(
        tmp_path, records, tasks={"tags": ("bce", ("vision",))}, class_names=tuple("abcd")
    )
    spec = datasets.register_dataset(dataset)[0][0]
    batch = next(feeding.batches(spec, "train", 0, train=False, with_labels=True))
    np.testing.assert_array_equal(batch["labels"], [[0, 1, 0, 1], [1, 0, 0, 0]])


@pytest.fixture(scope="module")
def multires(world_dir):
    demo.prepare_demo(data_dir=str(world_dir), num_images=WORLD_IMAGES)
    return {spec.name: (spec, rate) for spec, rate in registry.resolve("demo_all_multires")}


def _vision_tokens(spec) -> int:
    model = ImpModel(vision_patch=(2, 8, 8), vision_max_grid=(8, 16, 16))
    tokens = tokens_per_example(model, spec.input_shapes(), spec.drop_rate)
    return tokens["vision"] * spec.batch_size


def test_variants_keep_tokens_per_batch_equal(multires):
    """Seed 004: T_F = 4, so a base video batch has 4x the image tokens; every video variant
    brings it back to the image base, which sits out the multi-resolution mixture; the image
    variants keep it or quarter it."""
    image = _vision_tokens(multires["digit_images_cls"][0])
    assert _vision_tokens(registry.spec("digit_videos_cls")) == 4 * image
    for variant in ("half_res", "quarter_batch", "droptoken"):
        assert _vision_tokens(multires[f"digit_videos_cls_{variant}"][0]) == image
    assert _vision_tokens(multires["digit_images_cls_double_res"][0]) == image
    assert _vision_tokens(multires["digit_images_cls_droptoken"][0]) == image // 4
    video = [spec for spec, _ in multires.values() if spec.frames > 1]
    assert len(video) == 9 and all(_vision_tokens(spec) <= image for spec in video)


def test_the_video_base_trains_among_the_variants_only_when_asked(tmp_path):
    records = [dmvr.encode(_frames(8), labels=[i % 2]) for i in range(8)]
    dataset = _dataset(
        tmp_path, records, frames=8, height=16, width=16, multi_resolution=True, batch_size=8
    )
    for video_base, expected in ((False, [0.0, 8 / 3, 8 / 3, 8 / 3]), (True, [2.0] * 4)):
        registered = datasets.register_dataset(dataclasses.replace(dataset, video_base=video_base))
        assert [spec.variant for spec, _ in registered] == [
            "base",
            "half_res",
            "quarter_batch",
            "droptoken",
        ]
        assert [weight for _, weight in registered] == pytest.approx(expected)


def test_every_variant_feeds_its_shapes(multires):
    """Every variant of the richest video task (vision, sound, text) and image task."""
    for name, (spec, _) in multires.items():
        if not name.startswith(("digit_videos_audio_text", "digit_images_text")):
            continue
        batch = next(feeding.batches(spec, "train", 0, train=True))
        assert batch["vision"].shape == (
            spec.batch_size,
            spec.frames,
            spec.height,
            spec.width,
            3,
        ), name


def test_variants_share_their_tasks_weight(multires):
    weights = {}
    for spec, rate in multires.values():
        base = spec.name.removesuffix(f"_{spec.variant}")
        weights[base] = weights.get(base, 0.0) + rate
    assert weights == {
        "digit_images_cls": 48,
        "digit_images_text": 48,
        "digit_videos_cls": 96,
        "digit_videos_text": 96,
        "digit_videos_audio_text": 96,
    }


def test_standard_mixtures(multires):
    def names(mixture):
        return sorted(spec.name for spec, _ in registry.resolve(mixture))

    assert names("demo_image_text") == ["digit_images_text"]
    assert names("demo_video_text") == ["digit_videos_text"]
    assert names("demo_video_audio_text") == ["digit_videos_audio_text"]
    assert names("demo_classification") == ["digit_images_cls", "digit_videos_cls"]
    assert len(names("demo_all")) == 5 and len(names("demo_all_multires")) == 15


def test_hosts_read_disjoint_files_covering_the_data(tmp_path):
    records = [dmvr.encode(_frames(1), labels=[i]) for i in range(12)]
    dataset = _dataset(tmp_path, records, shards=4)
    spec = datasets.register_dataset(dataset)[0][0]
    seen = [
        sorted(
            int(label)
            for batch in feeding.batches(
                spec, "train", 0, train=False, with_labels=True, shard=(host, 2)
            )
            for label in batch["label"]
        )
        for host in range(2)
    ]
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == list(range(12))
    with pytest.raises(ImpError, match="4 files for split 'train' cannot be shared by 8 hosts"):
        feeding.dataset(spec, "train", 0, train=True, shard=(0, 8), batch_size=8)


def test_missing_file_pattern(tmp_path):
    dataset = _dataset(tmp_path, [dmvr.encode(_frames(1), labels=[0])])
    dataset = dataclasses.replace(
        dataset, file_patterns={**dataset.file_patterns, "train": str(tmp_path / "nope-*")}
    )
    with pytest.raises(ImpError, match="data set 'synthetic': no files match the 'train' pattern"):
        datasets.register_dataset(dataset)


def test_empty_file(tmp_path):
    dataset = _dataset(tmp_path, [dmvr.encode(_frames(1), labels=[0])])
    (tmp_path / "synthetic" / "train-9.tfrecord").write_bytes(b"")
    spec = datasets.register_dataset(dataset)[0][0]
    with pytest.raises(ImpError, match="empty file .*train-9.tfrecord"):
        feeding.dataset(spec, "train", 0, train=True)


def test_corrupt_record_names_the_file(tmp_path):
    records = [dmvr.encode(_frames(1), labels=[i % 2]) for i in range(4)]
    dataset = _dataset(tmp_path, records, shards=2, class_names=("a", "b"), batch_size=2)
    path = tmp_path / "synthetic" / "train-1.tfrecord"
    path.write_bytes(path.read_bytes()[:-30])
    spec = datasets.register_dataset(dataset)[0][0]
    with pytest.raises(ImpError, match=r"corrupt record in .*train-1\.tfrecord"):
        for _ in zip(range(10), feeding.batches(spec, "train", 0, train=True), strict=False):
            pass


def test_missing_feature_names_task_feature_and_file(tmp_path, vocabulary):
    records = [
        dmvr.encode(_frames(1), captions=["a seven"], labels=[0]),
        dmvr.encode(_frames(1), labels=[0]),
    ]
    dataset = _dataset(
        tmp_path,
        records,
        tasks={"text": ("nce", ("vision", "text"))},
        vocabulary=vocabulary,
        class_names=("a",),
    )
    spec = datasets.register_dataset(dataset)[0][0]
    with pytest.raises(
        ImpError,
        match=r"task 'synthetic_text' .*missing feature caption/string in file .*train-0\.tfrecord",
    ):
        next(feeding.batches(spec, "train", 0, train=True))


def test_wrong_label_shape(tmp_path):
    records = [dmvr.encode(_frames(1), labels=[0, 1]), dmvr.encode(_frames(1), labels=[1])]
    dataset = _dataset(tmp_path, records, class_names=("a", "b"))
    spec = datasets.register_dataset(dataset)[0][0]
    with pytest.raises(ImpError, match="clip/label/index must hold one label .*train-0"):
        next(feeding.batches(spec, "train", 0, train=True))


def test_missing_vocabulary_file(tmp_path):
    dataset = _dataset(
        tmp_path,
        [dmvr.encode(_frames(1), captions=["x"], labels=[0])],
        tasks={"text": ("nce", ("vision", "text"))},
        vocabulary=str(tmp_path / "missing.model"),
    )
    with pytest.raises(ImpError, match="vocabulary file .*missing.model does not exist"):
        datasets.register_dataset(dataset)


@pytest.mark.parametrize(
    "boxes, labels, message",
    [
        ([(0.1, 0.1, 0.5, 0.5)], [0], None),  # a good record: the batch holds its object
        ([(0.1, 0.1, 1.2, 0.5)], [0], r"a box of .* is not inside \[0, 1\] with min < max"),
        ([(0.5, 0.1, 0.1, 0.5)], [0], r"a box of .* is not inside \[0, 1\] with min < max"),
        ([(0.1, 0.1, 0.5, 0.5)], [2], r"image/object/class/label out of range \[0, 2\)"),
        ([(0.1, 0.1, 0.2, 0.2)] * 3, [0, 1, 0], "more objects than Dataset.max_objects = 2"),
    ],
)
def test_detection_records_are_checked_and_padded(tmp_path, boxes, labels, message):
    records = [dmvr.encode(_frames(1), boxes=boxes, box_labels=labels)]
    dataset = _dataset(
        tmp_path,
        records,
        tasks={"det": ("detection", ("vision",))},
        class_names=("a", "b"),
        max_objects=2,
    )
    spec = datasets.register_dataset(dataset)[0][0]
    if message is None:
        batch = next(feeding.batches(spec, "train", 0, train=True))
        np.testing.assert_array_equal(batch["object_labels"], [[0, -1]])
        np.testing.assert_allclose(batch["object_boxes"][0, 0], [0.3, 0.3, 0.4, 0.4])
        return
    with pytest.raises(ImpError, match=rf"task 'synthetic_det' .*{message} in file .*train-0"):
        next(feeding.batches(spec, "train", 0, train=True))
