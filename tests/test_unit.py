"""UniT on the demo world (seed 002): the scenes and questions data, detection AP by
pycocotools, and `runs/unit_demo.gin` trained for two steps and evaluated by `imp eval`
(AP, AP50, AP75, VQA accuracy and the figure of predicted boxes)."""

import json

import numpy as np
import pytest
import tensorflow as tf
from conftest import SHARED, TINY, small_run

from imp import cli
from imp.data import dmvr, scenes
from imp.errors import ImpError
from imp.evaluation import checkpoint_eval, metrics


def _read(world_dir, name, split):
    files = sorted((world_dir / name).glob(f"{split}-*"))
    for record in tf.data.TFRecordDataset([str(f) for f in files]):
        example = tf.train.SequenceExample.FromString(record.numpy()).context.feature
        yield {key: list(getattr(f, f.WhichOneof("kind")).value) for key, f in example.items()}


def test_scenes_hold_apart_digits_in_their_boxes_and_held_out_glyphs_stay_held_out(world_dir):
    sources = {}
    for split in ("train", "validation"):
        sources[split] = set()
        for record in _read(world_dir, "scenes", split):
            labels, corners = record[dmvr.BOX_LABEL], np.array([record[k] for k in dmvr.BOX]).T
            assert 1 <= len(labels) <= scenes.MAX_OBJECTS and labels == record["clip/label/digit"]
            assert (
                corners.shape == (len(labels), 4) and (corners >= 0).all() and (corners <= 1).all()
            )
            np.testing.assert_allclose(
                corners[:, 2:] - corners[:, :2], scenes.GLYPH / scenes.CANVAS
            )
            for i in range(len(corners)):  # no two boxes overlap
                for j in range(i):
                    low = np.maximum(corners[i, :2], corners[j, :2])
                    high = np.minimum(corners[i, 2:], corners[j, 2:])
                    assert (high <= low + 1e-6).any()
            sources[split] |= set(record["clip/source_index"])
    assert sources["train"] and sources["validation"]
    assert not sources["train"] & sources["validation"]


def test_every_question_has_its_scene_s_answer(world_dir):
    answers = {"yes": 0, "no": 0}
    for record in _read(world_dir, "questions", "train"):
        (question,), (answer,) = record[dmvr.CAPTION], record[dmvr.LABEL_STRING]
        digits = record["clip/label/digit"]
        question, answer = question.decode(), answer.decode()
        assert scenes.ANSWERS[record[dmvr.LABEL][0]] == answer
        if question.startswith("how many"):
            assert answer == scenes.COUNTS[len(digits) - 1]
        else:
            asked = question.removeprefix("is there a ")
            from imp.data.demo_world import NUMBER_WORDS

            assert answer == ("yes" if NUMBER_WORDS.index(asked) in digits else "no")
            answers[answer] += 1
    assert min(answers.values()) > 0.3 * sum(answers.values())  # both answers are common


def _one_hot_logits(classes, num_classes, confidence=10.0):
    logits = np.zeros((*classes.shape, num_classes + 1), np.float32)
    logits[..., -1] = 0.0
    np.put_along_axis(logits, np.maximum(classes, 0)[..., None], confidence, -1)
    logits[classes < 0, -1] = 2 * confidence  # padding queries predict no object
    return logits


def test_detection_ap_by_pycocotools():
    rng = np.random.default_rng(0)
    labels = np.array([[3, 1, -1], [7, -1, -1], [2, 2, 5]])
    boxes = np.concatenate([rng.uniform(0.2, 0.8, (3, 3, 2)), np.full((3, 3, 2), 0.2)], -1)
    perfect = metrics.detection_ap(_one_hot_logits(labels, 10), boxes, labels, boxes, 10)
    assert perfect == {
        "AP": pytest.approx(1.0),
        "AP50": pytest.approx(1.0),
        "AP75": pytest.approx(1.0),
    }
    swapped = np.where(labels >= 0, (labels + 1) % 10, -1)
    wrong_class = metrics.detection_ap(_one_hot_logits(swapped, 10), boxes, labels, boxes, 10)
    assert wrong_class["AP50"] == 0.0
    shifted = boxes.copy()
    shifted[..., 0] += 0.1  # IoU 1/3 with boxes 0.2 wide
    assert (
        metrics.detection_ap(_one_hot_logits(labels, 10), shifted, labels, boxes, 10)["AP50"] == 0.0
    )
    nan = _one_hot_logits(labels, 10)
    nan[0, 0, 0] = np.nan
    with pytest.raises(ImpError, match="detection scores and boxes: 1 of .* not finite"):
        metrics.detection_ap(nan, boxes, labels, boxes, 10)


def test_unit_demo_trains_and_imp_eval_reports_ap_and_vqa_accuracy(world_dir, tmp_path, capsys):
    run_dir = tmp_path / "unit"
    bindings = [
        *small_run(run_dir, world_dir),
        "QueryDecoder.width = 32",
        "QueryDecoder.num_layers = 1",
        "QueryDecoder.num_heads = 2",
        "QueryDecoder.mlp_dim = 64",
        *SHARED,
        *TINY,
    ]
    flags = [f"--gin_bindings={b}" for b in bindings]
    assert cli.main(["train", "--gin_file=runs/unit_demo.gin", *flags]) == 0
    capsys.readouterr()
    assert cli.main(["eval", f"--checkpoint_dir={run_dir}", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    detection = summary["tasks"]["digit_scenes_detection"]
    assert set(detection) == {"AP", "AP50", "AP75"}
    assert all(0 <= m["value"] <= 1 and m["chance"] is None for m in detection.values())
    vqa = summary["tasks"]["digit_questions_vqa"]
    assert vqa["top1"]["chance"] == pytest.approx(1 / len(scenes.ANSWERS))
    assert "top1" in summary["tasks"]["digit_captions_cls"]
    assert (run_dir / "eval" / "step_2" / "detections_digit_scenes_detection.png").is_file()
    rows = checkpoint_eval.format_table(summary).splitlines()
    ap50 = next(r for r in rows if r.startswith("digit_scenes_detection") and "AP50" in r)
    assert ap50.endswith("       -")  # AP has no chance level


def test_the_unit_study_shares_steps_as_the_mixture_samples():
    from imp.tasks import demo
    from imp.training import studies

    shares = {task: share for _, task, share, _ in studies._UNIT_TASKS}  # noqa: SLF001
    assert shares == demo.UNIT_WEIGHTS
