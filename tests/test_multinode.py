"""Training across machines (docs/training.md#training-across-machines): two `accelerate launch` commands on this
host, each one "machine" with one process, train as one group of world size 2 and give the weights that one launch
of two processes gives. The two machines share the output directory, as on a cluster with a shared file system."""

import json
import os
import socket
import subprocess
import sys
import time

import psutil
import pytest
import torch
from helpers import REPO, tiny_args
from safetensors.torch import load_file

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
# `--multi_gpu` is accelerate's torchrun launcher, and train.py's --use_cpu makes the group gloo. `--cpu` would take
# the simple launcher, which gives the script no rank and no world size: each machine would train alone.
LAUNCH = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
          "--mixed_precision", "no", "--dynamo_backend", "no"]  # fmt: skip
TIMEOUT = 180  # seconds for each step of the test: the one launch, then the two launched together


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kill(child):
    """Kill a launcher and its workers (torch's launcher starts each worker in a session of its own)."""
    try:
        launcher = psutil.Process(child.pid)
        processes = [launcher, *launcher.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for process in processes:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(processes, timeout=30)


def run_together(commands):
    """Start the commands ({log file: command}) at once and wait for all of them (at most TIMEOUT seconds); when one
    fails or time runs out, kill them all, so that no process is left behind. Returns the logs' texts."""
    children = {}
    try:
        for log, command in commands.items():
            with open(log, "w") as f:
                children[log] = subprocess.Popen(command, env=ENV, stdout=f, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + TIMEOUT
        while any(child.poll() is None for child in children.values()):
            failed = [log for log, child in children.items() if child.poll() not in (None, 0)]
            assert not failed, f"{failed[0]}:\n{failed[0].read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"still running after {TIMEOUT} s: {list(commands)}"
            time.sleep(0.2)
        for log, child in children.items():
            assert child.returncode == 0, f"{log}:\n{log.read_text()[-3000:]}"
    finally:
        for child in children.values():
            if child.poll() is None:  # (an ended launcher's pid may already be another process's)
                kill(child)
    return [log.read_text() for log in commands]


@pytest.mark.slow  # real processes: three accelerate launches
def test_two_machines_train_as_one_group_and_give_the_weights_of_two_processes(backbone_dir, tmp_path):
    def args(out):
        return [str(REPO / "train.py"), *tiny_args(backbone_dir, out, "--num_train_epochs", "2",
                                                   "--per_device_train_batch_size", "4")]  # fmt: skip

    (one_launch,) = run_together({tmp_path / "one.log": [*LAUNCH, "--num_machines", "1", *args(tmp_path / "one")]})
    assert "process 0 of 2 (world size 2)" in one_launch

    port = free_port()
    machines = {
        tmp_path / f"machine-{rank}.log": [
            *LAUNCH, "--num_machines", "2", "--machine_rank", str(rank),
            "--main_process_ip", "127.0.0.1", "--main_process_port", str(port),
            *args(tmp_path / "two"),  # the same output directory: a file system both machines share
        ]
        for rank in (0, 1)
    }  # fmt: skip
    logs = run_together(machines)
    for rank, log in enumerate(logs):  # each machine ran one process of the group of two
        lines = [line for line in log.splitlines() if "(world size" in line]
        assert len(lines) == 1 and f"process {rank} of 2 (world size 2)" in lines[0], log[-3000:]
        # the shared output directory: machine 1 reads the best checkpoint that machine 0 wrote
        assert "Could not locate the best model" not in log, log[-3000:]

    steps = [json.loads((tmp_path / run / "trainer_state.json").read_text())["global_step"] for run in ("one", "two")]
    assert steps == [16, 16]  # 64 examples, 2 epochs, 4 per process and step
    one, two = load_file(tmp_path / "one" / "model.safetensors"), load_file(tmp_path / "two" / "model.safetensors")
    assert one.keys() == two.keys()
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=0, atol=1e-6, msg=name)
