"""Sharded training equals the 1-device run: meshes on 8 virtual CPU devices, expert
parallelism, 2 processes x 4 devices, and checkpoints restored onto other meshes.

`tests/partitioning_worker.py` runs in one subprocess per device count (and per process for
the 2-host run), each training on several meshes; the three start together.
"""

import json
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

WORKER = Path(__file__).with_name("partitioning_worker.py")
# The worker trains with plain SGD: the first update is -lr x the gradient. Updates agree up to
# float32 reassociation across shards (scatter-adds into the embedding table: ~1e-6 on values
# ~1e-3); a sum where a mean belongs, or the reverse, would be off by the shard count.
RTOL, SCALED_ATOL = 1e-3, 1e-3  # atol relative to each leaf's largest magnitude


def _start(out, devices, runs, processes=1):
    argv = [sys.executable, WORKER, "--out", out, "--devices", str(devices)]
    argv += ["--runs", json.dumps(runs)]
    if processes == 1:
        return [subprocess.Popen(argv, stderr=subprocess.PIPE)]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return [
        subprocess.Popen(
            [*argv, "--num_processes", str(processes), "--process_id", str(i), "--port", str(port)],
            stderr=subprocess.PIPE,
        )
        for i in range(processes)
    ]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("partitioning")
    ckpt = str(tmp / "ckpt")
    workers = {
        "one": _start(
            tmp / "one.json",
            1,
            [
                {"name": "single", "mesh": [1, 1, 1]},
                {"name": "moe_single", "mesh": [1, 1, 1], "moe": True},
            ],
        ),
        "eight": _start(
            tmp / "eight.json",
            8,
            [
                {"name": "8x1", "mesh": [1, 8, 1]},
                {"name": "4x2", "mesh": [1, 4, 2], "save": ckpt},
                {"name": "2x4", "mesh": [1, 2, 4], "constraints": True},
                {"name": "moe_experts", "mesh": [2, 4, 1], "moe": True},
                {"name": "restored_2x2", "mesh": [1, 2, 2], "devices": 4, "restore": ckpt},
                {"name": "restored_1", "mesh": [1, 1, 1], "devices": 1, "restore": ckpt},
            ],
        ),
        "hosts": _start(tmp / "hosts.json", 4, [{"name": "two_hosts", "mesh": [1, 8, 1]}], 2),
    }
    results = {"_imports": {}}
    for name, processes in workers.items():
        for p in processes:
            _, err = p.communicate(timeout=600)
            assert p.returncode == 0, err.decode()[-3000:]
        result = json.loads((tmp / f"{name}.json").read_text())
        results["_imports"][name] = result.pop("_imports")
        results.update(result)
    return results


def _assert_close(a: dict, b: dict, rtol=0.0, atol=0.0, scaled=False):
    """Leaf by leaf; with `scaled`, `atol` is relative to the leaf's largest magnitude."""
    assert a.keys() == b.keys()
    for key in a:
        x, y = np.asarray(a[key]), np.asarray(b[key])
        tolerance = atol * np.abs(y).max() if scaled else atol
        np.testing.assert_allclose(x, y, rtol=rtol, atol=tolerance, err_msg=key)


def _assert_same_training(a: dict, b: dict):
    np.testing.assert_allclose(a["losses"], b["losses"], rtol=1e-5)
    _assert_close(a["first_update"], b["first_update"], rtol=RTOL, atol=SCALED_ATOL, scaled=True)
    _assert_close(a["params"], b["params"], rtol=RTOL, atol=SCALED_ATOL, scaled=True)


@pytest.mark.parametrize("mesh", ["8x1", "4x2", "2x4", "two_hosts"])
def test_meshes_match_one_device(runs, mesh):
    _assert_same_training(runs[mesh], runs["single"])


def test_expert_parallel_moe_matches_one_device_and_uses_all_to_all(runs):
    sharded, single = runs["moe_experts"], runs["moe_single"]
    _assert_same_training(sharded, single)
    assert sharded["extra"]["all_to_all"]
    assert not single["extra"]["all_to_all"]
    wi = "['encoder']['segment_0']['moe_1']['moe']['wi']"
    assert sharded["specs"][wi] == "P(None, 'expert', None, 'model')"


@pytest.mark.parametrize(
    "param, spec",
    [
        ("['encoder']['segment_0']['dense_0']['mlp']['wi']['kernel']", "(None, None, 'model')"),
        ("['encoder']['segment_0']['dense_0']['mlp']['wo']['kernel']", "(None, 'model', None)"),
        (
            "['encoder']['segment_0']['dense_0']['attention']['qkv_kernel']",
            "(None, None, None, 'model', None)",
        ),
        ("['embedders_text']['embedding']", "('model', None)"),
        ("['embedders_vision']['pos']['axis_0']", "(None, None)"),
    ],
)
def test_parameter_shardings_follow_the_rules(runs, param, spec):
    assert runs["2x4"]["specs"][param] == f"P{spec}"


def test_activation_constraints_reach_the_lowered_step(runs):
    lines = runs["2x4"]["extra"]["constraint_axes"]
    assert any('[{"expert", "data"}, {}, {"model"}]' in line for line in lines)  # MLP hidden
    # attention output [batch, heads, length, kv]: heads on `model`
    assert any('[{"expert", "data"}, {"model"}, {}, {}]' in line for line in lines)


@pytest.mark.parametrize("target", ["restored_2x2", "restored_1"])
def test_checkpoint_restores_onto_another_mesh(runs, target):
    _assert_close(runs[target]["params"], runs["4x2"]["params"], atol=0)


def test_the_train_step_imports_no_tensorflow(runs):
    assert runs["_imports"] == dict.fromkeys(["one", "eight", "hosts"], {"tensorflow": False})
