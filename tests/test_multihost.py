"""Two `imp` processes on localhost as one JAX cluster (gloo collectives): SIGTERM to one of
them stops both at the same step with one consistent checkpoint that resumes, and `imp eval`
over both gathers every process's examples before computing a metric."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from conftest import demo_bindings

from imp import cli

MIXTURE = "demo_image_text"  # one contrastive task: zero-shot, retrieval and a linear probe


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(command: list[str], processes: int = 2) -> list[subprocess.Popen]:
    port = _port()
    procs = []
    for i in range(processes):
        env = {
            **os.environ,
            "IMP_COORDINATOR_ADDRESS": f"127.0.0.1:{port}",
            "IMP_NUM_PROCESSES": str(processes),
            "IMP_PROCESS_ID": str(i),
            "XLA_FLAGS": "--xla_force_host_platform_device_count=1",
        }
        argv = [sys.executable, "-m", "imp.cli", *command]
        procs.append(
            subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        )
    return procs


def _finish(procs) -> list[str]:
    errs = []
    for p in procs:
        _, err = p.communicate(timeout=300)
        errs.append(err.decode())
        assert p.returncode == 0, err.decode()[-3000:]
    return errs


def _train(run_dir, steps, world_dir) -> list[str]:
    bindings = demo_bindings(run_dir, steps, world_dir, MIXTURE)
    bindings += ["train.checkpoint_every = 1000", "train.evaluate_at_end = False"]
    return ["train", *(f"--gin_bindings={b}" for b in bindings)]


def _steps(run_dir) -> list[int]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line)["step"] for line in path.open()] if path.exists() else []


@pytest.fixture(scope="module")
def stopped_and_resumed(tmp_path_factory, world_dir):
    run_dir = tmp_path_factory.mktemp("two_hosts")
    procs = _start(_train(run_dir, 1000, world_dir))
    deadline = time.time() + 300
    while time.time() < deadline and len(_steps(run_dir)) < 4:
        assert all(p.poll() is None for p in procs), procs[0].communicate()[1].decode()[-2000:]
        time.sleep(0.2)
    procs[1].send_signal(signal.SIGTERM)  # the second process only
    stopped = _finish(procs)
    saved = sorted(int(p.name) for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit())
    resumed = _finish(_start(_train(run_dir, saved[-1] + 3, world_dir)))
    return run_dir, stopped, saved, resumed


def test_sigterm_to_one_process_stops_both_at_one_step(stopped_and_resumed):
    run_dir, stopped, saved, _ = stopped_and_resumed
    assert len(saved) == 1 and 4 <= saved[0] < 1000
    k = saved[0]
    assert f"another process was stopped: saved step {k}, exiting" in stopped[0]
    assert f"SIGTERM received: saved step {k}, exiting" in stopped[1]


def test_the_checkpoint_resumes_with_every_step_logged_once(stopped_and_resumed):
    run_dir, _, saved, resumed = stopped_and_resumed
    k = saved[0]
    assert f"at step {k}" in resumed[0]
    assert _steps(run_dir) == list(range(1, k + 4))
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == [str(k), str(k + 3)]


def test_eval_over_two_processes_gathers_every_example(stopped_and_resumed, tmp_path, capsys):
    run_dir, _, saved, _ = stopped_and_resumed
    step = saved[0] + 3
    _finish(_start(["eval", f"--checkpoint_dir={run_dir}", f"--out={tmp_path / 'two'}"]))
    two = json.loads((tmp_path / "two" / "eval.json").read_text())
    assert cli.main(["eval", f"--checkpoint_dir={run_dir}", f"--out={tmp_path / 'one'}"]) == 0
    one = json.loads((tmp_path / "one" / "eval.json").read_text())
    assert two["step"] == one["step"] == step and two["devices"] == 2
    metrics = one["tasks"]["digit_images_text"]
    assert {"zero_shot_top1/vision", "retrieval/text_to_vision/R@1"} <= set(metrics)
    for name, m in metrics.items():
        assert two["tasks"]["digit_images_text"][name]["value"] == pytest.approx(
            m["value"], abs=1e-6
        ), name
