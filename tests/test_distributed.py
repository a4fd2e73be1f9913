"""Pruning with several JAX processes (keras.distribution): identical masks, recovery from a lost process.

Two processes on 127.0.0.1 train one model with `DataParallel` over gloo CPU collectives (the worker
is `distributed_pruning.py jax-worker`). Every process runs `UpdatePruningStep`; the masks agree
because each computes them from the same replicated weights.
"""

import contextlib
import importlib.util
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest
from distributed_pruning import EPOCHS, SCHEDULE, STEPS_PER_EPOCH

WORKER = os.path.join(os.path.dirname(__file__), "distributed_pruning.py")
TIME_LIMIT = 240  # seconds for one pair of processes, startup included (2 shared CPU cores in CI)

pytestmark = pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="jax is not installed")


def _free_port() -> int:
    with contextlib.closing(socket.socket()) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _start(workdir, die_at_step=None):
    port = _free_port()
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(os.path.dirname(WORKER)), env.get("PYTHONPATH", "")])
    processes = []
    for process_id in (0, 1):
        command = [sys.executable, WORKER, "jax-worker", "--process-id", str(process_id), "--port", str(port)]
        command += ["--workdir", str(workdir)]
        if die_at_step is not None and process_id == 1:
            command += ["--die-at-step", str(die_at_step)]
        processes.append(
            subprocess.Popen(
                command,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
                start_new_session=True,  # its own process group, so cleanup reaches its children
            )
        )
    return processes


def _stop(processes):
    for process in processes:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.communicate()


@contextlib.contextmanager
def _running(workdir, die_at_step=None):
    processes = _start(workdir, die_at_step)
    try:
        yield processes
    finally:
        _stop(processes)


def _wait(processes, until_exits=2):
    """Waits until `until_exits` processes exited, or one failed, or the time limit passed."""
    deadline = time.monotonic() + TIME_LIMIT
    while time.monotonic() < deadline:
        codes = [process.poll() for process in processes]
        if sum(code is not None for code in codes) >= until_exits or any(codes):
            return
        time.sleep(0.2)
    raise AssertionError(f"the processes did not finish within {TIME_LIMIT} s")


def _facts(processes):
    """Waits for both processes; returns each one's JSON facts (or fails with a failing one's log)."""
    _wait(processes)
    facts = []
    for process in processes:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        out, err = process.communicate()
        assert process.returncode == 0, err[-3000:]
        facts.append(json.loads(out.strip().splitlines()[-1]))
    return facts


def _log(workdir, process_id):
    with open(os.path.join(workdir, f"steps_{process_id}.jsonl")) as log:
        return [json.loads(line) for line in log]


def test_two_jax_processes_prune_to_identical_masks_and_resume_after_losing_one():
    # Not pytest's tmp_path: parallel pytest runs rotate its folders away during this long test.
    with tempfile.TemporaryDirectory() as folder:
        _check_identical_masks_and_resume(pathlib.Path(folder))


def _check_identical_masks_and_resume(tmp_path):
    total_steps = EPOCHS * STEPS_PER_EPOCH
    # An uninterrupted run: both processes end with the same masks and weights, at the target.
    reference_dir = tmp_path / "uninterrupted"
    reference_dir.mkdir()
    with _running(reference_dir) as processes:
        reference = _facts(processes)
    assert [f["process_id"] for f in reference] == [0, 1]
    assert reference[0]["devices"] == 2
    for layer_0, layer_1 in zip(reference[0]["layers"], reference[1]["layers"]):
        assert layer_0["step"] == layer_1["step"] == total_steps
        assert layer_0["mask"] == layer_1["mask"]
        assert layer_0["kernel"] == layer_1["kernel"]
        mask = np.array(layer_0["mask"])
        assert (mask == 0).sum() == round(SCHEDULE["final_sparsity"] * mask.size)
        assert (np.array(layer_0["kernel"])[mask == 0] == 0).all()

    # Process 1 is killed (SIGKILL) at step 10, in the third epoch; process 0 is left hanging in a
    # collective and is stopped too. The last backup was written at the end of the second epoch.
    crash_dir = tmp_path / "crash"
    crash_dir.mkdir()
    die_at_step = 2 * STEPS_PER_EPOCH + 2
    with _running(crash_dir, die_at_step=die_at_step) as processes:
        _wait(processes, until_exits=1)
        assert processes[1].returncode == -signal.SIGKILL, processes[1].stderr.read()[-3000:]
    completed = [entry["epoch"] for entry in _log(crash_dir, 1) if entry["event"] == "epoch_end"]
    assert completed == [0, 1]

    # Both restart from the backup: the schedule goes on from step 8, nothing is lost or repeated,
    # and the run ends exactly where the uninterrupted one did.
    with _running(crash_dir) as processes:
        resumed = _facts(processes)
    for process_id in (0, 1):
        log = _log(crash_dir, process_id)
        starts = [entry["step"] for entry in log if entry["event"] == "start"]
        assert starts == [0, 2 * STEPS_PER_EPOCH]
        # Every epoch ended once, at the step it should: none lost, none repeated.
        epoch_steps = [entry["steps"] for entry in log if entry["event"] == "epoch_end"]
        assert epoch_steps == [[STEPS_PER_EPOCH * (epoch + 1)] * 2 for epoch in range(EPOCHS)]
    for process_facts in resumed:
        for layer, expected in zip(process_facts["layers"], reference[0]["layers"]):
            assert layer["step"] == total_steps
            assert layer["mask"] == expected["mask"]
            np.testing.assert_allclose(layer["kernel"], expected["kernel"], rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch is not installed")
def test_two_torch_ddp_processes_prune_to_identical_masks_in_a_custom_loop():
    env = dict(os.environ, KERAS_BACKEND="torch", TF_CPP_MIN_LOG_LEVEL="3")
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(os.path.dirname(WORKER)), env.get("PYTHONPATH", "")])
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    command += ["--master_port", str(_free_port()), WORKER, "torch-ddp"]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=TIME_LIMIT)
    assert done.returncode == 0, done.stderr[-3000:]
    facts = sorted((json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")), key=str)
    assert sorted(f["process_id"] for f in facts) == [0, 1]
    for layer_0, layer_1 in zip(facts[0]["layers"], facts[1]["layers"]):
        assert layer_0["step"] == layer_1["step"] == EPOCHS * STEPS_PER_EPOCH
        assert layer_0["mask"] == layer_1["mask"]
        assert layer_0["kernel"] == layer_1["kernel"]
        mask = np.array(layer_0["mask"])
        assert (mask == 0).sum() == round(SCHEDULE["final_sparsity"] * mask.size)
