"""`imp bench throughput` at a trivial size: its JSON report has the expected rows and claim,
with the PyTorch peer or without it (no timing assertions)."""

import json

import pytest

from imp import cli
from imp.bench import torch_peer

TINY = ["--d_model", "32", "--layers", "1", "--heads", "2", "--batch", "2", "--frames", "2"]
TINY += ["--size", "16", "--text_length", "4", "--matmul", "128", "--repeats", "1"]


def _report(capsys, args):
    assert cli.main(["bench", "throughput", "--json", *TINY, *args]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.mark.skipif(not torch_peer.available(), reason="PyTorch is not installed")
def test_jax_and_pytorch_parts_are_paired(capsys):
    report = _report(capsys, [])
    assert [(r["part"], r["framework"]) for r in report["rows"]] == [
        (p, fw) for p in ("matmul", "step") for fw in ("jax", "torch")
    ]
    for row in report["rows"]:
        assert {"min_s", "median_s"} <= set(row)
        if row["framework"] == "torch":
            assert row["jax/torch"] > 0
    step = [r for r in report["rows"] if r["part"] == "step"]
    assert all({"tokens/s", "GFLOP/s", "MFU"} <= set(r) for r in step)
    (claim,) = report["claims"]
    assert {"claim", "paper", "measured", "verdict"} <= set(claim)
    assert claim["verdict"] in ("met", "not met")


def test_without_pytorch_the_peer_is_reported_missing(capsys, monkeypatch):
    monkeypatch.setattr(torch_peer, "available", lambda: False)
    report = _report(capsys, ["--profile"])
    parts = ["matmul", "step", "forward", "forward+backward", "update"]
    missing = "torch not installed (pip install torch)"
    assert [(r["part"], r["framework"]) for r in report["rows"]] == [
        (p, fw) for p in parts for fw in ("jax", missing)
    ]
    assert report["claims"][0]["verdict"] == "not measured"
    step = next(r for r in report["rows"] if r["part"] == "step")
    assert step["MFU"] > 0 and step["tokens/s"] > 0
