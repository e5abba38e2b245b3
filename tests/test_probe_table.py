"""`imp probe-table` (seed 000 Table 9): which embedder conversion each run needs, the table,
and its refusals (the probes themselves are `imp eval`'s, tested in test_eval.py; the
conversions in test_cross_modal.py)."""

import pytest

from imp.errors import ImpError
from imp.evaluation import probe_table
from imp.tasks.spec import TaskSpec


def _task(name, *modalities):
    return TaskSpec(name, name, "softmax", modalities, 10, 4, class_names=("a", "b"))


IMAGES = _task("images", "vision")
AUDIO = _task("audio", "spectrogram")
CAPTIONS = _task("captions", "vision", "text")


def test_a_run_converts_from_what_it_trained_to_what_it_never_did():
    assert probe_table.trained_modalities([CAPTIONS]) == {"vision"}
    probed = probe_table.trained_modalities([IMAGES, AUDIO])
    assert probe_table.conversion({"vision"}, probed) == ("vision", "spectrogram")
    assert probe_table.conversion({"spectrogram"}, probed) == ("spectrogram", "vision")
    assert probe_table.conversion({"vision", "spectrogram"}, probed) is None
    assert probe_table.conversion({"vision"}, {"vision"}) is None
    with pytest.raises(ImpError, match="the run trained none of"):
        probe_table.conversion(set(), probed)


def test_the_table_marks_cross_modal_probes_and_gives_chance():
    def cell(value, moved=False):
        return {"value": value, "chance": 0.5, "cross_modal": moved}

    rows = [
        {
            "label": "img",
            "trained": ["vision"],
            "tasks": {"images": cell(0.9), "audio": cell(0.6, True)},
        },
        {
            "label": "both",
            "trained": ["spectrogram", "vision"],
            "tasks": {"images": cell(0.8), "audio": cell(0.7)},
        },
    ]
    lines = probe_table.format_table(rows).splitlines()
    assert lines[0] == "| run | trained | images | audio |"
    assert lines[2] == "| img | vision | 0.900 | 0.600* |"
    assert lines[3] == "| both | spectrogram, vision | 0.800 | 0.700 |"
    assert lines[4] == "| chance | | 0.500 | 0.500 |"
