"""`imp ablation NAME`: the verdict and statistics on hand-made numbers, every study's gin, and
one tiny real study (2 seeds, 1 step) end to end, resumed without retraining."""

import dataclasses
import json
import math

import numpy as np
import pytest
from conftest import SHARED, TINY, WORLD_IMAGES

from imp import cli, config
from imp.errors import ImpError
from imp.training import ablation, loop, studies
from imp.training.ablation import AGREES, DISAGREES, NOT_MEASURED, ONE_SEED, WITHIN_SPREAD
from imp.training.studies import Column, Variant


def test_help_lists_every_study(capsys):
    with pytest.raises(SystemExit):
        cli.main(["ablation", "--help"])
    shown = capsys.readouterr().out
    for name in ("objectives", "moe", "multires", "towers", "schedules"):
        assert f"    {name}" in shown
    assert "seed 004 Fig. 4" in shown and "seed 000 Table 1" in shown


def test_mean_and_sample_std():
    assert ablation.mean_std([0.2, 0.4, 0.9]) == pytest.approx((0.5, math.sqrt(0.13)))
    assert ablation.mean_std([0.3]) == (0.3, 0.0)


@pytest.mark.parametrize(
    "better, worse, verdict",
    [
        ([0.50, 0.52, 0.54], [0.40, 0.42, 0.44], AGREES),  # 0.52 vs 0.42, stds 0.02 + 0.02
        ([0.40, 0.42, 0.44], [0.50, 0.52, 0.54], DISAGREES),
        ([0.50, 0.52, 0.54], [0.47, 0.49, 0.51], WITHIN_SPREAD),  # 0.03 apart < 0.04
        ([0.50, 0.54], [0.51, 0.53], WITHIN_SPREAD),  # means apart by 0
        ([0.9], [0.1], ONE_SEED),
        (None, [0.1, 0.2], NOT_MEASURED),
    ],
)
def test_compare(better, worse, verdict):
    assert ablation.compare(better, worse) == verdict


@pytest.mark.parametrize(
    "verdicts, expected",
    [
        ([AGREES, AGREES], AGREES),
        ([AGREES, DISAGREES, WITHIN_SPREAD], DISAGREES),
        ([AGREES, WITHIN_SPREAD], WITHIN_SPREAD),
        ([ONE_SEED, ONE_SEED], ONE_SEED),
        ([NOT_MEASURED, WITHIN_SPREAD], WITHIN_SPREAD),
        ([], NOT_MEASURED),
    ],
)
def test_overall(verdicts, expected):
    assert ablation.overall(verdicts) == expected


def _summary(**heldout) -> dict:
    return {
        "tasks": {
            t: {"heldout": {m: {"value": v} for m, v in ms.items()}} for t, ms in heldout.items()
        }
    }


def test_row_takes_the_first_task_reporting_a_metric_and_means_of_columns():
    columns = (
        Column("probe", "linear_probe_top1/vision", ("b", "a")),
        Column("zero-shot", "zero_shot_top1/vision", ("a",)),
        Column("cls", "top1", ("b",)),
        Column("mean", mean_of=("probe", "zero-shot")),
        Column("mean with cls", mean_of=("probe", "cls")),
    )
    summary = _summary(
        a={"linear_probe_top1/vision": 0.2, "zero_shot_top1/vision": 0.6},
        b={"linear_probe_top1/vision": 0.4},
    )
    assert ablation.row(summary, columns) == {
        "probe": 0.4,
        "zero-shot": 0.6,
        "cls": None,
        "mean": pytest.approx(0.5),
        "mean with cls": None,
    }
    # A data set evaluates under its first variant's name when its base task is not trained.
    variant = _summary(a_half_res={"zero_shot_top1/vision": 0.7}, b={"top1": 0.3})
    got = ablation.row(variant, columns, base_names={"a_half_res": "a"})
    assert got["zero-shot"] == 0.7 and got["cls"] == 0.3
    with pytest.raises(ImpError, match="zero-shot = nan; a non-finite metric is no score"):
        ablation.row(_summary(a={"zero_shot_top1/vision": float("nan")}), columns)


def test_a_steps_rule_rebuilds_with_the_steps_it_gives():
    calls = []

    class Built:
        tasks = ("x", "y")
        train_steps = 30

    def build(bindings):
        calls.append(bindings)
        return "options", Built()

    variant = Variant("twice", ("Schedule.name = 'round_robin'",), studies._times_tasks)
    run = ablation._build(build, variant, 2, ablation.Path("/tmp/study/twice/seed2"))
    assert run.run_dir.name == "seed2" and variant.slug == "twice"
    assert calls[0] == [
        "Schedule.name = 'round_robin'",
        "Experiment.seed = 2",
        "Experiment.model_dir = '/tmp/study/twice/seed2'",
    ]
    assert calls[1] == [*calls[0], "Experiment.train_steps = 60"]


@pytest.mark.parametrize("name", list(studies.STUDIES))
def test_every_variant_parses_and_its_labels_make_distinct_folders(name):
    import gin

    from imp.modeling.model import ImpModel, check_config
    from imp.training.samplers import Schedule

    study = studies.STUDIES[name]
    assert len({v.slug for v in study.variants}) == len(study.variants)
    for table in study.tables:
        labels = {c.label for c in table.columns}
        for c in table.comparisons:
            assert {c.better, c.worse} <= {v.label for v in table.variants} and c.column in labels
    cli._configure(cli.build_parser().parse_args(["ablation", name]), [])
    for variant in study.variants:
        config.parse([study.run_file], list(variant.bindings))
        check_config(gin.get_configurable(ImpModel)())
        gin.get_configurable(Schedule)()


def test_a_finished_run_of_another_configuration_is_an_error(tmp_path):
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "summary.json").write_text('{"tasks": {}}')
    (tmp_path / "config.gin").write_text("ImpModel.d_model = 32\n")

    class Built:
        config = "ImpModel.d_model = 32\n"

    run = ablation._Run(Variant("a"), 0, tmp_path, None, Built())
    assert ablation._finished(run) == {"tasks": {}}
    Built.config = "ImpModel.d_model = 64\n"
    with pytest.raises(ImpError, match="holds a finished run of another configuration"):
        ablation._finished(run)
    assert (
        ablation._finished(ablation._Run(Variant("a"), 0, tmp_path / "new", None, Built())) is None
    )


def test_a_tiny_study_end_to_end_then_resumed(world_dir, tmp_path, capsys, monkeypatch):
    """`towers` without its MoE variant (its compiles would double the time), on one task at
    1 step, 2 seeds; then again, with training forbidden."""
    towers = studies.STUDIES["towers"]
    (table,) = towers.tables
    table = dataclasses.replace(
        table, variants=table.variants[:2], comparisons=table.comparisons[:1]
    )
    towers = dataclasses.replace(towers, tables=(table,), flops_task="digit_images_text")
    monkeypatch.setitem(studies.STUDIES, "towers", towers)
    flags = [
        f"prepare_demo.data_dir='{world_dir}'",
        f"prepare_demo.num_images={WORLD_IMAGES}",
        "prepare_demo.batch_size=8",
        "TRAIN_STEPS=1",
        "MIXTURE_OR_TASK_NAME='digit_images_text'",
        "train.end_evaluations=('zero_shot',)",
        *SHARED,
        *TINY,
    ]
    argv = ["ablation", "towers", "--seeds=2", f"--out={tmp_path}"]
    argv += [f"--gin_bindings={f}" for f in flags]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    report = (tmp_path / "report.md").read_text()
    assert (tmp_path / "towers.png").stat().st_size > 0
    assert towers.claim in report and "imp ablation towers --seeds=2" in report

    results = json.loads((tmp_path / "results.json").read_text())
    (got,) = results["tables"]
    assert list(got["variants"]) == ["shared dense", "multi-tower dense"]
    for variant in table.variants:
        values = []
        for seed in (0, 1):
            run_dir = tmp_path / variant.slug / f"seed{seed}"
            summary = json.loads((run_dir / "report" / "summary.json").read_text())
            heldout = summary["tasks"]["digit_images_text"]["heldout"]
            values.append(heldout["zero_shot_top1/vision"]["value"])
            assert f"Experiment.seed = {seed}" in (run_dir / "config.gin").read_text()
        mean, std = np.mean(values), np.std(values, ddof=1)
        stats = got["variants"][variant.label]
        assert stats["mean"]["image zero-shot"] == pytest.approx(mean)
        assert stats["std"]["image zero-shot"] == pytest.approx(std)
        assert stats["mean"]["video cls"] is None  # not trained: no value, no NaN
        assert stats["mean"]["step ms"] is None  # its one step compiled
        assert stats["gflops"] == pytest.approx(got["variants"]["shared dense"]["gflops"])
        assert stats["gflops"] > 0
        assert f"| {variant.label} | 1 | " in printed
        assert f"| {stats['gflops']:.3f} | " in printed
        assert f"{mean:.3f} ± {std:.3f}" in report
    assert [c["verdict"] for c in got["comparisons"]] == [NOT_MEASURED]  # "mean": 5 tasks
    assert f"Study verdict against the paper's claim: **{NOT_MEASURED}**" in report

    def no_training(*args):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(loop, "train", no_training)
    assert cli.main(argv) == 0
    assert json.loads((tmp_path / "results.json").read_text())["tables"] == results["tables"]
