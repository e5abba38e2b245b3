"""`imp data convert` on a small folder of real media files (made here with PyAV and Pillow),
one of them corrupt; and the catalog's real-data entries on synthetic shards."""

import json

import av
import numpy as np
import pytest
from PIL import Image

from imp import cli
from imp.data import convert, dmvr, feeding
from imp.errors import ImpError
from imp.tasks import catalog, registry

FPS = 10
SAMPLE_RATE = 16000


def _video(path, seconds: float = 1.0, audio: bool = True) -> None:
    """An mp4 whose frame k has brightness 20 k (mpeg4 video, AAC audio tone)."""
    with av.open(str(path), "w") as container:
        video = container.add_stream("mpeg4", rate=FPS)
        video.width, video.height, video.pix_fmt = 32, 32, "yuv420p"
        sound = container.add_stream("aac", rate=SAMPLE_RATE) if audio else None
        for k in range(int(seconds * FPS)):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 20 * k, np.uint8), "rgb24")
            container.mux(video.encode(frame))
        container.mux(video.encode())
        if sound:
            t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
            tone = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None]
            frame = av.AudioFrame.from_ndarray(tone, format="fltp", layout="mono")
            frame.sample_rate = SAMPLE_RATE
            container.mux(sound.encode(frame))
            container.mux(sound.encode())


def _wav(path, seconds: float = 0.5) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=SAMPLE_RATE, layout="mono")
        samples = (np.sin(np.arange(int(seconds * SAMPLE_RATE)) / 5) * 3000).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(samples[None], format="s16", layout="mono")
        frame.sample_rate = SAMPLE_RATE
        container.mux(stream.encode(frame))
        container.mux(stream.encode())


@pytest.fixture(scope="module")
def media_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("media")
    _video(root / "walk.mp4")
    _video(root / "run.mp4", audio=False)
    _wav(root / "beep.wav")
    Image.fromarray(np.full((48, 64, 3), 200, np.uint8)).save(root / "still.png")
    good = (root / "walk.mp4").read_bytes()
    (root / "broken.mp4").write_bytes(good[: len(good) // 3])  # truncated copy
    (root / "captions.csv").write_text(
        "path,caption,label\n"
        "walk.mp4,a person walking,walking\n"
        "walk.mp4,someone walks by,walking\n"
        "run.mp4,a person running,running;moving\n"
        "broken.mp4,broken,walking\n"
        "beep.wav,a beep,beeping\n"
        "still.png,a grey square,still\n"
    )
    return root


def test_convert_reports_corrupt_file_and_writes_the_rest(media_dir, tmp_path, capsys):
    argv = [
        "data",
        "convert",
        f"--media_dir={media_dir}",
        f"--annotations={media_dir / 'captions.csv'}",
        f"--out={tmp_path / 'out'}",
        f"--fps={FPS}",
        "--short_side=32",
        "--examples_per_shard=2",
    ]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "4 examples written in 2 shards" in out and "1 skipped" in out
    assert "skipped broken.mp4:" in out
    assert (tmp_path / "out" / "errors-train.txt").read_text().startswith("broken.mp4\t")
    info = json.loads((tmp_path / "out" / "dataset_info.json").read_text())
    assert info["splits"]["train"]["num_examples"] == 4
    assert info["class_names"] == ["beeping", "moving", "running", "still", "walking"]

    import tensorflow as tf

    files = sorted((tmp_path / "out").glob("train-*.tfrecord"))
    parsed = [dmvr.parse(r, waveform=True) for f in files for r in tf.data.TFRecordDataset(str(f))]
    by_caption = {p["captions"].numpy()[0].decode(): p for p in parsed}
    walk = by_caption["a person walking"]
    assert [c.decode() for c in walk["captions"].numpy()] == [
        "a person walking",
        "someone walks by",
    ]
    assert walk["label"].numpy().tolist() == [4]
    assert len(walk["frames"]) == FPS  # one second at FPS
    brightness = [tf.io.decode_jpeg(f).numpy().mean() for f in walk["frames"]]
    assert np.all(np.diff(brightness) > 10)  # frames in order
    assert abs(len(walk["waveform"]) - SAMPLE_RATE) < 2048  # one second of audio
    assert by_caption["a person running"]["label"].numpy().tolist() == [2, 1]
    assert len(by_caption["a person running"]["waveform"]) == 0  # no audio track
    beep = by_caption["a beep"]
    assert len(beep["frames"]) == 0 and abs(len(beep["waveform"]) - SAMPLE_RATE // 2) < 2048
    still = tf.io.decode_jpeg(by_caption["a grey square"]["frames"][0]).numpy()
    assert still.shape == (32, 43, 3)  # shorter side resized to 32


def test_convert_strict_stops_at_the_corrupt_file(media_dir, tmp_path):
    with pytest.raises(ImpError, match="cannot convert .*broken.mp4"):
        convert.convert(
            media_dir,
            media_dir / "captions.csv",
            tmp_path / "out",
            options=None,
            strict=True,
            progress=False,
        )
    assert not list((tmp_path / "out").glob("train-*"))  # nothing half-written


def _convert(media_dir, out, **kwargs):
    return convert.convert(
        media_dir,
        media_dir / "captions.csv",
        out,
        options=convert.media.Options(fps=FPS, short_side=32),
        progress=False,
        **kwargs,
    )


def _shards(out, split="train"):
    return {p.name: p.read_bytes() for p in sorted(out.glob(f"{split}-*.tfrecord"))}


def test_a_failed_conversion_keeps_the_split_it_would_replace(media_dir, tmp_path):
    out = tmp_path / "out"
    _convert(media_dir, out, examples_per_shard=1)
    before = _shards(out)
    assert len(before) == 4
    with pytest.raises(ImpError, match="cannot convert .*broken.mp4"):
        _convert(media_dir, out, examples_per_shard=2, strict=True)
    assert _shards(out) == before
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []
    _convert(media_dir, out, examples_per_shard=3)  # a complete conversion replaces it
    assert sorted(_shards(out)) == [
        "train-00000-of-00002.tfrecord",
        "train-00001-of-00002.tfrecord",
    ]


def test_labels_of_earlier_splits_are_never_renumbered(media_dir, tmp_path):
    out = tmp_path / "out"
    _convert(media_dir, out)
    train = _shards(out)
    reordered = ["walking", "still", "running", "moving", "beeping"]
    with pytest.raises(
        ImpError, match=r"--classes differs from the classes of the splits \['train'\]"
    ):
        _convert(media_dir, out, split="validation", classes=reordered)
    assert _shards(out) == train and not _shards(out, "validation")
    info = json.loads((out / "dataset_info.json").read_text())
    _convert(media_dir, out, split="validation")  # the earlier order, kept
    assert json.loads((out / "dataset_info.json").read_text())["class_names"] == info["class_names"]


@pytest.mark.parametrize("flag", ["--workers=0", "--examples_per_shard=0"])
def test_counts_below_one_are_refused(media_dir, tmp_path, flag, capsys):
    argv = ["data", "convert", f"--media_dir={media_dir}", f"--out={tmp_path}"]
    argv += [f"--annotations={media_dir / 'captions.csv'}", flag]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{flag.split('=')[0]} = 0: expected an integer" in err


def test_convert_rejects_bad_annotations(media_dir, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("file,caption\nwalk.mp4,x\n")
    with pytest.raises(ImpError, match="needs a 'path' column"):
        convert.convert(media_dir, bad, tmp_path / "out", progress=False)


def _kinetics_shards(root, classes=("a", "b", "c")):
    out = root / "kinetics400"
    out.mkdir(parents=True)
    frames = np.zeros((6, 20, 20, 3), np.uint8)
    for split in ("train", "validation"):
        records = [dmvr.encode(frames, labels=[i % 3]) for i in range(6)]
        for shard in range(2):
            path = out / f"{split}-{shard:05d}-of-00002.tfrecord"
            import tensorflow as tf

            with tf.io.TFRecordWriter(str(path)) as writer:
                for record in records[shard::2]:
                    writer.write(record)
    (out / "classes.txt").write_text("\n".join(classes))


def test_catalog_entry_on_synthetic_shards(tmp_path):
    _kinetics_shards(tmp_path)
    assert catalog.available(str(tmp_path)) == ["kinetics400"]
    registered = catalog.prepare_catalog(
        str(tmp_path),
        overrides={"kinetics400": {"frames": 4, "stride": 1, "height": 16, "width": 16}},
        mixture_prefix="k",
    )
    names = sorted(spec.name for spec, _ in registered)
    assert names == [
        "kinetics400_cls",
        "kinetics400_cls_droptoken",
        "kinetics400_cls_half_res",
        "kinetics400_cls_quarter_batch",
    ]
    spec = registry.spec("kinetics400_cls_half_res")
    assert spec.class_names == ("a", "b", "c") and spec.num_examples == 6
    batch = next(feeding.batches(spec, "train", 0, train=True, batch_size=4))
    assert batch["vision"].shape == (4, 4, 8, 8, 3)


def test_label_only_data_trains_label_text_nce_out_of_the_pretraining_mixtures(tmp_path, world_dir):
    import seqio

    from imp.data import demo_world

    classes = ("one", "two", "three")  # words the demo vocabulary spells
    _kinetics_shards(tmp_path, classes=classes)
    vocabulary = str(world_dir / demo_world.VOCABULARY)
    catalog.prepare_catalog(
        str(tmp_path),
        vocabulary=vocabulary,
        overrides={
            "kinetics400": {
                **{"frames": 4, "stride": 1, "height": 16, "width": 16},
                "class_templates": ("a video of {}", "{}"),  # no '.': not in the vocabulary
            }
        },
        mixture_prefix="z",
    )
    spec = registry.spec("kinetics400_label_text")
    assert spec.text_source == "labels" and spec.modalities == ("vision", "text")
    batch = next(feeding.batches(spec, "train", 0, train=True, batch_size=6))
    prompts = {p.format(c) for c in classes for p in ("a video of {}", "{}")}
    texts = seqio.SentencePieceVocabulary(vocabulary).decode_tf(batch["text"]).numpy()
    assert {t.decode() for t in texts} <= prompts

    def names(mixture):
        return sorted(s.name for s, _ in registry.resolve(mixture))

    assert names("z_kinetics400_labels") == ["kinetics400_cls", "kinetics400_label_text"]
    assert "kinetics400_label_text_half_res" in names("z_downstream_multires")
    with pytest.raises(ImpError, match="unknown mixture or task 'z_all'"):
        registry.resolve("z_all")  # a zero-shot evaluation set stays out of pre-training


def test_catalog_names_missing_paths(tmp_path):
    with pytest.raises(ImpError, match=r"data set 'msrvtt': no files match .*msrvtt/train-"):
        catalog.prepare_catalog(str(tmp_path), names=["msrvtt"], vocabulary="x.model")
    with pytest.raises(ImpError, match="no prepared TFDS data at .*cifar100"):
        catalog.prepare_catalog(str(tmp_path), names=["cifar100"])
    with pytest.raises(ImpError, match="unknown catalog data set 'kinetics40'; did you mean"):
        catalog.prepare_catalog(str(tmp_path), names=["kinetics40"])


def test_catalog_tfds_entry(tmp_path):
    import tensorflow_datasets as tfds

    (tmp_path / "cifar100").mkdir()
    with tfds.testing.mock_data(num_examples=8):
        registered = catalog.prepare_catalog(
            str(tmp_path),
            names=["cifar100"],
            mixture_prefix="c",
            # Mocked TFDS data carry no split sizes; prepared data sets do.
            overrides={"cifar100": {"num_examples": {"train": 8, "test": 8}}},
        )
        spec = registry.spec("cifar100_cls")
        assert (
            spec.num_classes == 100 and len(registered) == 2
        )  # base, double_res: no image DropToken
        batch = next(feeding.batches(spec, "train", 0, train=True, batch_size=4))
    assert batch["vision"].shape == (4, 1, 32, 32, 3) and batch["label"].shape == (4,)


def test_own_data_trains_from_the_gin_template(media_dir, tmp_path, world_dir):
    """convert -> `gin/data/my_videos.gin` -> a few training steps, as docs/data.md says."""
    from conftest import SHARED, TINY

    from imp import config
    from imp.training import loop

    (tmp_path / "videos.csv").write_text(
        "path,caption,label\nwalk.mp4,a person walking,walking\nrun.mp4,a person running,running\n"
    )
    out = tmp_path / "my_videos"
    for split in ("train", "validation"):
        convert.convert(
            media_dir,
            tmp_path / "videos.csv",
            out,
            split=split,
            options=convert.media.Options(fps=FPS, short_side=32),
            progress=False,
        )
    from imp.experiment import Experiment

    config.parse(
        ["models/tiny.gin", "data/my_videos.gin"],
        [
            f"MODEL_DIR = '{tmp_path / 'run'}'",
            "TRAIN_STEPS = 4",
            f"VOCABULARY = '{world_dir / 'spm.model'}'",
            f"my_videos/Dataset.file_patterns = {{'train': '{out}/train-*', "
            f"'validation': '{out}/validation-*'}}",
            "my_videos/Dataset.num_examples = {'train': 2, 'validation': 2}",
            "my_videos/Dataset.class_names = ['running', 'walking']",
            "my_videos/Dataset.batch_size = 4",
            "my_videos/Dataset.height = 32",
            "my_videos/Dataset.width = 32",
            "train.evaluate_at_end = False",
            *SHARED,
            *TINY,
        ],
    )
    summary = loop.train(Experiment.from_gin(), loop.TrainOptions.from_gin())
    assert sum(t["steps"] for t in summary["tasks"].values()) == 4
    assert set(summary["tasks"]) <= {
        f"my_videos_{task}{variant}"
        for task in ("text", "cls")
        for variant in ("", "_half_res", "_quarter_batch", "_droptoken")
    }
