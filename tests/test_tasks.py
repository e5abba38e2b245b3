import numpy as np
import pytest
from conftest import WORLD_IMAGES

from imp.data import feeding
from imp.errors import ImpError
from imp.tasks import demo, registry

EXPECTED = {
    "digit_images_text": {"vision": (4, 1, 32, 32, 3), "text": (4, 24)},
    "digit_images_cls": {"vision": (4, 1, 32, 32, 3), "label": (4,)},
    "digit_videos_text": {"vision": (4, 8, 32, 32, 3), "text": (4, 24)},
    "digit_videos_audio_text": {
        "vision": (4, 8, 32, 32, 3),
        "waveform": (4, 2560),
        "text": (4, 24),
    },
    "digit_videos_cls": {"vision": (4, 8, 32, 32, 3), "label": (4,)},
}


@pytest.fixture(scope="module")
def registered(world_dir):
    demo.prepare_demo(data_dir=str(world_dir), batch_size=4, num_images=WORLD_IMAGES)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_task_batch_shapes(registered, name):
    batch = next(feeding.batches(registry.spec(name), "train", 0, train=True))
    assert {k: v.shape for k, v in batch.items()} == EXPECTED[name]
    assert batch["vision"].min() >= -1.0 and batch["vision"].max() <= 1.0
    if "text" in batch:
        assert (batch["text"][:, 0] > 0).all()  # every caption has tokens, then padding (0)


def test_mixture_rates_are_example_counts(registered, world_dir):
    from imp.data import demo_world

    counts = {
        k: v["splits"]["train"]["num_examples"]
        for k, v in demo_world.load_manifest(world_dir)["datasets"].items()
    }
    rates = {spec.name: rate for spec, rate in registry.resolve(demo.MIXTURE)}
    assert rates == {
        name: counts[spec_dataset]
        for name, spec_dataset in [(n, "image" if "image" in n else "video") for n in EXPECTED]
    }


def test_polyvit_demo_adds_audio_classification(world_dir):
    """`audio_classification`: a clip's class from its log-mel spectrogram, trained at its
    base (a task without vision has no resolution variants), with the image and video tasks
    in `demo_classification`."""
    demo.prepare_demo(
        data_dir=str(world_dir), batch_size=4, num_images=WORLD_IMAGES, audio_classification=True
    )
    try:
        rates = {spec.name: rate for spec, rate in registry.resolve("demo_classification")}
        assert set(rates) == {"digit_images_cls", "digit_videos_cls", "digit_videos_audio_cls"}
        assert rates["digit_videos_audio_cls"] == rates["digit_videos_cls"] > 0
        spec = registry.spec("digit_videos_audio_cls")
        batch = next(feeding.batches(spec, "train", 0, train=True))
        assert {k: v.shape for k, v in batch.items()} == {"spectrogram": (4, 32, 32), "label": (4,)}
        assert np.all(np.isfinite(batch["spectrogram"]))
    finally:
        demo.prepare_demo(data_dir=str(world_dir), batch_size=4, num_images=WORLD_IMAGES)


def test_streams_are_deterministic_and_skippable(registered):
    spec = registry.spec("digit_videos_text")
    first = list(zip(range(3), feeding.batches(spec, "train", 0, train=True), strict=False))
    skipped = next(feeding.batches(spec, "train", 0, train=True, skip_batches=2))
    np.testing.assert_array_equal(first[2][1]["vision"], skipped["vision"])
    np.testing.assert_array_equal(first[2][1]["text"], skipped["text"])


def test_unknown_task_names_nearest(registered):
    with pytest.raises(ImpError, match="did you mean digit_videos_cls"):
        registry.resolve("digit_vidos_cls")
