"""Each `imp bench` runs at a trivial size and emits a JSON report with the expected keys
(speed and memory figures live in docs/benchmarks.md, never in assertions)."""

import json

import pytest
from conftest import TINY, WORLD_IMAGES

from imp import cli
from imp.bench import BENCHMARKS

TINY_MODEL = ["--repeats", "1"]
CASES = {
    "scan_compile": ["--depths", "1", "--d_model", "16", "--batch", "2"],
    "remat": [
        "--size",
        "micro",
        "--batch",
        "2",
        "--frames",
        "2",
        "--resolution",
        "16",
        "--policies",
        "none,full",
    ],
    "graph_table": ["--size", "micro", "--structures", "1", "--steps_per_task", "1"],
    "agd_vs_mixed": [
        "--size",
        "micro",
        "--image_batch",
        "4",
        "--video_batch",
        "2",
        "--frames",
        "2",
        "--resolution",
        "16",
        "--samples",
        "512",
    ],
    "decode": ["--size", "micro", "--batch", "2", "--length", "8", "--prompt", "2", "--beams", "2"],
}
ROW_KEYS = {
    "scan_compile": {"layers", "scan_median_s", "unrolled_median_s", "speedup"},
    "remat": {"policy", "peak_MiB", "temp_MiB", "step_median_s", "memory_saved"},
    "graph_table": {"compilation", "compile_s"},
    "agd_vs_mixed": {"step", "useful_tokens", "useful_tokens_per_s", "peak_MiB"},
    "decode": {"decoding", "cache", "median_s", "tokens_per_s"},
}


def _report(capsys, name, args):
    assert cli.main(["bench", name, "--json", *TINY_MODEL, *args]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.mark.parametrize("name", sorted(CASES))
def test_benchmark_emits_its_report(capsys, name):
    report = _report(capsys, name, CASES[name])
    assert report["name"] == name and report["rows"] and report["claims"]
    for row in report["rows"]:
        assert ROW_KEYS[name] <= set(row), row
    for claim in report["claims"]:
        assert {"claim", "paper", "measured", "verdict"} <= set(claim)
    if name == "decode":  # greedy with and without the cache chose the same tokens
        assert "same tokens: True" in report["claims"][0]["measured"]


def test_moe_overhead_and_its_expert_layout_child(capsys, monkeypatch):
    """The benchmark starts `imp bench moe_overhead --sharded_child` with N virtual devices and
    reads its JSON report; here the child runs in this process (one device), so its command
    line and report are checked without a second cold start."""
    import subprocess

    real_run = subprocess.run

    def run(argv, *args, **kwargs):
        if argv[1:4] != ["-m", "imp.cli", "bench"]:
            return real_run(argv, *args, **kwargs)
        assert "--xla_force_host_platform_device_count=2" in kwargs["env"]["XLA_FLAGS"]
        assert cli.main(argv[3:]) == 0
        return subprocess.CompletedProcess(argv, 0, stdout=capsys.readouterr().out, stderr="")

    monkeypatch.setattr(subprocess, "run", run)
    args = ["--sizes", "micro", "--experts", "2", "--batch", "2", "--devices", "2"]
    report = _report(capsys, "moe_overhead", args)
    assert [r["model"] for r in report["rows"]] == [
        "dense",
        "moe experts_choose",
        "moe tokens_choose",
        "experts sharded 1-way",
        "experts replicated",
    ]
    for row in report["rows"]:
        assert {"size", "model", "step_median_s", "GFLOP", "peak_MiB"} <= set(row), row
    (claim,) = report["claims"]
    assert claim["measured"].startswith("micro: 1.") and "x FLOPs" in claim["measured"]


def test_input_pipeline_on_the_demo_world(capsys, world_dir):
    report = _report(
        capsys,
        "input_pipeline",
        [
            "--mixture=digit_videos_cls",
            "--batches=2",
            f"--gin.prepare_demo.data_dir='{world_dir}'",
            f"--gin.prepare_demo.num_images={WORLD_IMAGES}",
            "--gin.prepare_demo.batch_size=4",
            *(f"--gin_bindings={b}" for b in TINY),
        ],
    )
    assert [r["task"] for r in report["rows"]] == ["digit_videos_cls"]
    assert all(
        r["pipeline_examples_per_s"] > 0 and r["step_examples_per_s"] > 0 for r in report["rows"]
    )


def test_gin_flags_are_refused_where_a_benchmark_has_none(capsys):
    assert cli.main(["bench", "remat", "--gin.X=1"]) == 2
    assert "imp bench remat takes no gin flags" in capsys.readouterr().err


def test_bench_help_lists_every_benchmark(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["bench", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert all(name in out for name in BENCHMARKS)
