"""Each user error ends with one line naming the culprit and exit code 2, no traceback, and is
found while the experiment is built: before any data is read or graph compiled."""

import json

import gin
import pytest
from conftest import WORLD_IMAGES

from imp import cli


def _fails(argv, capsys) -> str:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("imp: error:") and "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize(
    "argv, culprit",
    [
        (["train", "--gin.Experiment.trian_steps=3"], "trian_steps"),
        (["train", "--gin.Experiment.trian_steps=3"], "did you mean train_steps"),
        (["train", "--gin.trian.checkpoint_every=3"], "unknown configurable 'trian'"),
        (["train", "--gin.TRAIN_STPES=3"], "did you mean TRAIN_STEPS"),
        (["train", "--gin.TRAIN_STEPS=(3"], "TRAIN_STEPS = (3"),
        (["train", "--gin_bindings", "Experiment.train_steps 3"], "Experiment.train_steps 3"),
        (["train", "--gin.=3"], "--gin.=3"),
        (["train", "--gin_file", "no/such/file.gin"], "no/such/file.gin"),
        (["model-info", "--gin.ImpModel.d_modle=8"], "did you mean d_model"),
        (["model-info", "--gin.ImpModel.num_heads=3"], "ImpModel.num_heads = 3 does not divide"),
        (["train", "--gin_file", "models/imp_b.gin"], "add a run file, e.g. --gin_file runs/"),
    ],
)
def test_gin_errors_name_the_culprit(argv, culprit, capsys):
    assert culprit in _fails(argv, capsys)


def _demo(tmp_path, world_dir, *flags) -> list[str]:
    return [
        "train",
        f"--gin.MODEL_DIR={tmp_path}/run",
        f"--gin.prepare_demo.data_dir={world_dir}",
        f"--gin.prepare_demo.num_images={WORLD_IMAGES}",
        "--gin.TRAIN_STEPS=1",  # should a case not fail, it ends soon
        "--gin.train.evaluate_at_end=False",
        *flags,
    ]


@pytest.mark.parametrize(
    "flags, culprit",
    [
        (["--gin.TRAIN_STEPS=abc"], "Experiment.train_steps (TRAIN_STEPS) = 'abc': expected an"),
        (["--gin.TRAIN_STEPS=-5"], "Experiment.train_steps (TRAIN_STEPS) = -5: expected an"),
        (["--gin.train.checkpoint_every=0"], "train.checkpoint_every = 0: expected a number >= 1"),
        (["--gin.train.best_metric='digit_videos_cls/top1'"], "needs periodic evaluation"),
        (
            ["--gin.train.eval_every=5", "--gin.train.best_metric='digit_videos_cls/top3'"],
            "'digit_videos_cls/top3' is not among the metrics",
        ),
        (["--gin.train.end_evaluations=['zero_shoot']"], "did you mean zero_shot"),
        (["--gin.ImpModel.num_heads=3"], "ImpModel.num_heads = 3 does not divide ImpModel.d_model"),
        (["--gin.ImpModel.d_model=abc"], "ImpModel.d_model = 'abc': expected an integer"),
        (
            ["--gin.ImpModel.vision_patch=(3,8,8)"],
            "training input: vision frames x height x width 8x32x32 is not divisible by "
            "ImpModel.vision_patch=(3, 8, 8)",
        ),
        (["--gin.ImpModel.vision_patch='(3,8,8)'"], "ImpModel.vision_patch = '(3,8,8)': expected"),
        (
            ["--gin.ImpModel.vision_max_grid=(4,2,2)"],
            "makes a grid of 1x4x4 patches, larger than the position tables "
            "ImpModel.vision_max_grid=(4, 2, 2)",
        ),
        (["--gin.ImpModel.max_text_length=8"], "text of 24 tokens is longer than ImpModel.max_t"),
        (["--gin.ImpModel.vocab_size=10"], "ImpModel.vocab_size = 10 is smaller than"),
        (["--gin.ImpModel.towers='shard'"], "ImpModel.towers = 'shard' is not known; did you mean"),
        (["--gin.ImpModel.remat_policy='ful'"], "did you mean full"),
        (
            ["--gin.ImpModel.num_experts=4", "--gin.ImpModel.num_layers=3"],
            "num_layers=3 is not a multiple of moe_every=2",
        ),
        (
            ["--gin.ImpModel.num_experts=600"],
            "its 512 tokens split evenly into MoE groups of only 512 tokens",
        ),
        (
            ["--gin.Schedule.name='sumed'"],
            "Schedule.name = 'sumed' is not a schedule; did you mean",
        ),
        (["--gin.TaskLoss.compute_dtype='fp16'"], "TaskLoss.compute_dtype = 'fp16': choose from"),
        (["--gin.make_optimizer.learning_rate=-1"], "make_optimizer.learning_rate = -1"),
        (["--gin.prepare_demo.num_images=3"], "prepare_demo.num_images = 3: the train and valid"),
        (
            ["--gin.MIXTURE_OR_TASK_NAME=demo_all_multires", "--gin.prepare_demo.batch_size=2"],
            "task 'digit_images_cls_double_res' (variant double_res): batch_size = 0",
        ),
        (
            ["--gin.Experiment.task_options={'digit_images_cls': {'lr': 2}}"],
            "task_options['digit_images_cls']: unknown fields ['lr']",
        ),
        (
            ["--gin.Experiment.task_options={'nope': {'loss_weight': 2.0}}"],
            "task_options names tasks outside the mixture: ['nope']",
        ),
        (["--gin.MIXTURE_OR_TASK_NAME=digit_vidoe_cls"], "did you mean digit_videos_cls"),
        (["--gin.Partitioner.num_partitions=3"], "does not divide the 1 devices"),
        (
            ["--gin.Partitioner.logical_axis_rules=[('batch', 'data'), ('mlp', 'modle')]"],
            "names mesh axis 'modle'",
        ),
        (["--gin.Partitioner.logical_axis_rules=[('batch', 'data')]"], "has no rule"),
    ],
)
def test_bad_values_stop_before_anything_runs(flags, culprit, tmp_path, world_dir, capsys):
    assert culprit in _fails(_demo(tmp_path, world_dir, *flags), capsys)
    assert not (tmp_path / "run").exists()  # nothing was created, read or compiled


def test_unwritable_model_dir(tmp_path, capsys, world_dir):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    argv = _demo(tmp_path, world_dir)
    argv[1] = f"--gin.MODEL_DIR={blocker}/run"
    assert f"MODEL_DIR '{blocker}/run' is not writable" in _fails(argv, capsys)


def test_model_info_counts_parameters(capsys):
    assert cli.main(["model-info", "--gin_file", "models/tiny.gin", "--json"]) == 0
    info = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert info["total_parameters"] == sum(info["components"].values())
    # One pre-LN layer of width 128 and MLP 512: qkv + out + 2 MLP + 2 LN (+ biases).
    d, m = 128, 512
    per_layer = (d * 3 * d + 3 * d) + (d * d + d) + (d * m + m) + (m * d + d) + 4 * d
    assert info["components"]["encoder"] == 4 * per_layer + 2 * d


def test_model_info_reports_the_paper_moe_options(capsys):
    """IMP-MoE-B as IMP's reference code: qk-LayerNorm, per-pair MLP heads into a 1024-wide
    common space, per-pair temperatures starting at 1.0."""
    assert cli.main(["model-info", "--gin_file", "models/imp_moe_b.gin", "--json"]) == 0
    info = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert info["config"]["qk_layernorm"] is True
    assert info["config"]["contrastive_head"] == "mlp"
    assert info["config"]["temperature"] == "per_pair"
    assert info["config"]["temperature_init"] == 1.0
    assert info["config"]["embed_dim"] == 1024
    assert "projections_vision_to_text" in info["components"]
    assert info["components"]["temperature_text_vision"] == 1


def test_includes_are_found_with_a_runs_folder_in_the_working_directory(tmp_path, monkeypatch):
    # After the demo, the working directory holds runs/; `include 'runs/demo.gin'` must still
    # find the project's file (gin's package reader took runs/ for a Python package).
    (tmp_path / "runs" / "demo").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    args = cli.build_parser().parse_args(["train", "--gin_file", "runs/ablation_objectives.gin"])
    cli._configure(args, [])
    assert gin.query_parameter("%MODEL_DIR") == "runs/ablation_objectives"


@pytest.mark.parametrize(
    "size, warmup, peak", [("b", 25000, 1e-3), ("moe_b", 25000, 1e-3), ("l", 50000, 5e-4)]
)
def test_paper_runs_follow_the_reference_schedule(size, warmup, peak):
    import optax

    from imp.modeling.model import ImpModel, check_config
    from imp.training.optimizer import make_optimizer

    args = cli.build_parser().parse_args(["train", "--gin_file", f"runs/paper_imp_{size}.gin"])
    cli._configure(args, [])
    assert gin.query_parameter("%MIXTURE_OR_TASK_NAME") == "imp_all_multires"
    tx, schedule = gin.get_configurable(make_optimizer)(gin.query_parameter("%TRAIN_STEPS"))
    assert float(schedule(warmup)) == pytest.approx(peak)
    assert float(schedule(warmup // 2)) == pytest.approx(peak / 2)
    assert isinstance(tx, optax.GradientTransformation)
    model = gin.get_configurable(ImpModel)()
    check_config(model)
    assert (model.contrastive_head, model.temperature) == ("mlp", "per_pair")
    assert model.qk_layernorm == size.startswith("moe")


def test_bare_string_flags_are_quoted():
    from imp.config import flag_to_binding

    assert flag_to_binding("MODEL_DIR", "/tmp/run") == "MODEL_DIR = '/tmp/run'"
    assert flag_to_binding("MODEL_DIR", "'/tmp/run'") == "MODEL_DIR = '/tmp/run'"
    assert flag_to_binding("TRAIN_STEPS", "30") == "TRAIN_STEPS = 30"
    assert flag_to_binding("x.flag", "True") == "x.flag = True"
    assert flag_to_binding("x.fn", "@prepare_demo") == "x.fn = @prepare_demo"


def test_data_demo_writes_a_world_and_refuses_a_folder_it_did_not_make(tmp_path, capsys):
    out = tmp_path / "world"
    argv = ["data", "demo", "--out", str(out), "--seed", "3", "--num_images", "20"]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "video: train 32, validation 4 examples, 40 classes" in printed
    assert f"demo world in {out}" in printed
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["seed"] == 3 and manifest["num_images"] == 20
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    assert cli.main(argv) == 0  # the same world: reused untouched
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before
    capsys.readouterr()

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "manifest.json").write_text(json.dumps({"format_version": 0}))
    (mine / "notes.txt").write_text("my notes")
    err = _fails(["data", "demo", "--out", str(mine)], capsys)
    assert "notes.txt" in err
    assert sorted(p.name for p in mine.iterdir()) == ["manifest.json", "notes.txt"]
    assert (mine / "notes.txt").read_text() == "my notes"


def test_model_info_of_the_video_encoders(capsys):
    """ViViT Models 1-4 at demo size: each file selects its model; on the same clip, Model 4
    (half the heads within frames, half along positions) costs fewer FLOPs than Model 1, and
    a TokenLearner at the middle layer about half."""
    infos = {}
    for name, attention, temporal in (
        ("vivit_tiny", "joint", 0),
        ("vivit_tiny_factorised_encoder", "joint", 1),
        ("vivit_tiny_factorised_self_attention", "factorised_self_attention", 0),
        ("vivit_tiny_factorised_dot_product", "factorised_dot_product", 0),
    ):
        assert cli.main(["model-info", "--gin_file", f"models/{name}.gin", "--json"]) == 0
        info = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert (info["config"]["attention"], info["config"]["temporal_layers"]) == (
            attention,
            temporal,
        )
        infos[name] = info
    model_1, model_4 = infos["vivit_tiny"], infos["vivit_tiny_factorised_dot_product"]
    assert model_4["flops_per_token"] < model_1["flops_per_token"]
    assert model_4["total_parameters"] == model_1["total_parameters"]
    # TokenLearner after layer 2 of 4: the later layers see 8 tokens a frame, not 256.
    assert cli.main(["model-info", "--gin_file", "models/token_learner_tiny.gin", "--json"]) == 0
    learned = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert learned["config"]["token_learner"] == "v1.1"
    assert 0.4 < learned["flops_per_token"] / model_1["flops_per_token"] < 0.6
