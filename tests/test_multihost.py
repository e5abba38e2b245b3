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
from conftest import demo_bindings, with_devices

from imp import cli

MIXTURE = "demo_image_text"  # one contrastive task: zero-shot, retrieval and a linear probe
# 65 held-out images: over 2 processes reading 32 rows at a time, the first has a second batch
# (of one) when the second has none left, and must still meet it in every forward call.
NUM_IMAGES = 325
EVALUATIONS = ("classification", "zero_shot", "retrieval", "linear_probe")


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
            "XLA_FLAGS": with_devices(1),
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


def _train(run_dir, steps, world_dir, *extra) -> list[str]:
    bindings = demo_bindings(run_dir, steps, world_dir, MIXTURE, NUM_IMAGES)
    bindings += ["train.checkpoint_every = 1000", "train.evaluate_at_end = False", *extra]
    return ["train", *(f"--gin_bindings={b}" for b in bindings)]


def _steps(run_dir) -> list[int]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line)["step"] for line in path.open()] if path.exists() else []


@pytest.fixture(scope="module")
def stopped_and_resumed(tmp_path_factory):
    """Two processes train until the second gets SIGTERM; both resume for 3 more steps and
    evaluate at the end (every process encodes its share of the held-out examples)."""
    from imp.data import demo_world

    world_dir = tmp_path_factory.mktemp("uneven_world") / "demo"
    demo_world.generate(world_dir, seed=0, num_images=NUM_IMAGES)
    run_dir = tmp_path_factory.mktemp("two_hosts")
    procs = _start(_train(run_dir, 1000, world_dir))
    deadline = time.time() + 300
    while time.time() < deadline and len(_steps(run_dir)) < 4:
        assert all(p.poll() is None for p in procs), procs[0].communicate()[1].decode()[-2000:]
        time.sleep(0.2)
    procs[1].send_signal(signal.SIGTERM)  # the second process only
    stopped = _finish(procs)
    saved = sorted(int(p.name) for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit())
    evaluate = ["train.evaluate_at_end = True", f"train.end_evaluations = {EVALUATIONS}"]
    resumed = _finish(_start(_train(run_dir, saved[-1] + 3, world_dir, *evaluate)))
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


def test_evaluation_over_two_processes_gathers_every_example(stopped_and_resumed, tmp_path):
    """The two processes' end-of-run evaluation equals `imp eval` of the same checkpoint in
    one process: neither process scored only its own share."""
    run_dir, _, saved, _ = stopped_and_resumed
    two = json.loads((run_dir / "report" / "summary.json").read_text())
    two = two["tasks"]["digit_images_text"]["heldout"]
    assert cli.main(["eval", f"--checkpoint_dir={run_dir}", f"--out={tmp_path}"]) == 0
    one = json.loads((tmp_path / "eval.json").read_text())
    assert one["step"] == saved[0] + 3
    one = one["tasks"]["digit_images_text"]
    assert {
        "zero_shot_top1/vision",
        "retrieval/text_to_vision/R@1",
        "linear_probe_top1/vision",
    } <= set(one)
    assert set(two) == set(one)
    for name, m in one.items():
        assert two[name]["value"] == pytest.approx(m["value"], abs=1e-6), name
