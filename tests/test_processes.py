"""Runs that really use 2 processes: DDP training on CPU (gloo) and predict.py sharing one input between processes.

accelerate's simple launcher ignores --num_processes with --cpu and starts one process; `--multi_gpu` on a machine
without GPUs starts N processes, and `--use_cpu` makes them one gloo group. Each test asserts the evidence that two
processes ran (world size, half the optimizer steps, both processes' parts), not only the exit status."""

import json
import os
import subprocess
import sys
import time

import psutil
import pytest
from helpers import REPO, SLOW_PREDICT, tiny_args, write_jsonl

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


@pytest.mark.slow  # real processes (accelerate launch, SIGKILL)
def test_prediction_shared_by_two_processes_killed_and_resumed_equals_one_process(saved_tiny_model, tmp_path):
    words = "the a movie film good bad great stock market bank money health doctor food team match win lost".split()
    texts = [" ".join(words[(i * 7 + j) % len(words)] for j in range(1 + i % 13)) for i in range(3000)]
    source = tmp_path / "in.txt"
    source.write_text("".join(t + "\n" for t in texts), encoding="utf-8")
    options = ["--model", str(saved_tiny_model[2]), "--input", str(source), "--window", "50", "--batch_size", "25"]
    assert subprocess.run([sys.executable, str(REPO / "predict.py"), *options, "--output", str(tmp_path / "one.jsonl")],
                          env=ENV, capture_output=True).returncode == 0  # fmt: skip

    script = tmp_path / "slow_predict.py"
    script.write_text(SLOW_PREDICT)
    output = tmp_path / "two.jsonl"
    command = [*LAUNCH, str(script), *options, "--output", str(output)]
    env = {**ENV, "PYTHONPATH": str(REPO), "SLOW_PREDICT_DELAY": "0.1"}
    child = subprocess.Popen(command, env=env, cwd=tmp_path, start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    parts = [output.with_name("two.jsonl.parts") / f"part-{r}-of-2.jsonl" for r in (0, 1)]
    deadline = time.monotonic() + 180
    while not all(p.exists() and p.read_bytes().count(b"\n") >= 100 for p in parts):
        assert child.poll() is None, "the shared run ended before it could be killed"
        assert time.monotonic() < deadline, "the two processes did not both write within 180 s"
        time.sleep(0.02)
    # the launcher and both processes, mid-run: torch's launcher starts each worker in a session of its own, so that
    # killing the launcher's process group would leave the workers running (and finishing the output)
    workers = psutil.Process(child.pid).children(recursive=True)
    assert len([w for w in workers if "slow_predict" in " ".join(w.cmdline())]) == 2
    for process in [psutil.Process(child.pid), *workers]:
        process.kill()
    child.wait()
    psutil.wait_procs(workers, timeout=30)
    assert not output.exists()
    labelled = {
        p.name: [json.loads(line)["line"] for line in p.read_text().splitlines() if line.endswith("}")] for p in parts
    }
    for (
        name,
        lines,
    ) in labelled.items():  # both processes labelled their own windows: 1-50, 101-150, ... and 51-100, ...
        rank = int(name.split("-")[1])
        assert lines and all(((line - 1) // 50) % 2 == rank for line in lines), name

    # one process may not continue it (its lines and the parts' would both be merged: duplicates, out of order)
    before = {p.name: p.read_bytes() for p in parts}
    alone = subprocess.run([sys.executable, str(REPO / "predict.py"), *options, "--output", str(output)],
                           env=ENV, capture_output=True, text=True)  # fmt: skip
    assert alone.returncode == 1 and "Traceback" not in alone.stderr, alone.stderr[-3000:]
    assert alone.stderr.strip().splitlines()[-1] == (
        f"error: {output}: a run shared among 2 processes stopped before it finished ({output}.parts holds its "
        "parts); run it again with 2 processes to finish it, or --overwrite to start over"
    )
    assert {p.name: p.read_bytes() for p in parts} == before and not output.exists()

    resumed = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert not output.with_name("two.jsonl.parts").exists()
    assert output.read_bytes() == (tmp_path / "one.jsonl").read_bytes()  # the output one process writes, byte for byte
