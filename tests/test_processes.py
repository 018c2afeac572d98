"""Runs that really use 2 processes: DDP training on CPU (gloo), and predict.py refusing a launch of two (an input is
shared among processes with --engine ray, tests/test_ray.py).

accelerate's simple launcher ignores --num_processes with --cpu and starts one process; `--multi_gpu` on a machine
without GPUs starts N processes, and `--use_cpu` makes them one gloo group. Each test asserts the evidence that two
processes ran (world size, half the optimizer steps, both processes' refusals), not only the exit status."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO, tiny_args, write_jsonl

import train

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
LAUNCH = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
          "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]  # fmt: skip


@pytest.mark.slow  # real processes (accelerate launch, SIGKILL)
def test_training_with_two_processes_takes_half_the_steps_of_one(backbone_dir, tmp_path):
    # single-task files mixed: with batches of 4, some batches hold no label of one task (its head gets a zero
    # gradient, which DDP must accept)
    rows = [json.loads(line) for line in (REPO / "data" / "train.jsonl").read_text().splitlines()[:64]]
    topic = write_jsonl(tmp_path / "t.jsonl", [{"text": r["text"], "label": r["topic"]} for r in rows[:32]])
    sentiment = write_jsonl(tmp_path / "s.jsonl", [{"text": r["text"], "label": r["sentiment"]} for r in rows[32:]])

    def args(out):
        a = tiny_args(backbone_dir, out, "--num_train_epochs", "1", "--per_device_train_batch_size", "4")
        a[a.index("--train_file") + 1 : a.index("--train_file") + 2] = [f"topic={topic}", f"sentiment={sentiment}"]
        return a

    train.main(args(tmp_path / "one"))
    result = subprocess.run(
        [*LAUNCH, str(REPO / "train.py"), *args(tmp_path / "two")], capture_output=True, text=True, env=ENV
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "process 0 of 2 (world size 2)" in result.stderr, result.stderr[-3000:]
    one = json.loads((tmp_path / "one" / "trainer_state.json").read_text())["global_step"]
    two = json.loads((tmp_path / "two" / "trainer_state.json").read_text())["global_step"]
    assert (one, two) == (16, 8)  # 64 examples, 4 per process and step
    assert (tmp_path / "two" / "model.safetensors").is_file() and not (tmp_path / "two" / ".tmp-final-model").exists()


@pytest.mark.slow  # real processes (accelerate launch)
def test_a_launch_of_two_prediction_processes_is_refused_by_each(saved_tiny_model, tmp_path):
    # predict.py shares an input among processes with --engine ray (tests/test_ray.py); two launched processes would
    # each write the whole output
    source = tmp_path / "in.txt"
    source.write_text("a good film\nrates went up\n", encoding="utf-8")
    output = tmp_path / "out.jsonl"
    command = [*LAUNCH, str(REPO / "predict.py"), "--model", str(saved_tiny_model[2]), "--input", str(source),
               "--output", str(output)]  # fmt: skip
    result = subprocess.run(command, env=ENV, cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode != 0
    refusal = (
        "error: predict.py runs as one process, not 2 (WORLD_SIZE=2); to share an input among processes or machines, "
        "run it once with --engine ray --num_workers N"
    )
    assert result.stderr.count(refusal) == 2, result.stderr[-3000:]  # said by both processes
    assert not output.exists() and not Path(f"{output}.resume.json").exists()
