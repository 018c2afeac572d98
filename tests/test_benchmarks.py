"""Smoke tests: each benchmark script runs end to end on a tiny encoder and a few rows (not a measurement)."""

import json
import os
import subprocess
import sys

from helpers import REPO


def tiny_data_dir(tmp_path):
    """{topic,sentiment}_{train,dev}.jsonl in the layout of the real data, made from the bundled data."""
    rows = [json.loads(line) for line in (REPO / "data" / "train.jsonl").read_text().splitlines()]
    for split, part in (("train", rows[:48]), ("dev", rows[48:72])):
        for task in ("topic", "sentiment"):
            lines = [json.dumps({"text": r["text"], "label": r[task]}) for r in part]
            (tmp_path / f"{task}_{split}.jsonl").write_text("\n".join(lines) + "\n")
    return tmp_path


def run(args):
    """`python -m benchmarks.NAME ARGS` from the repository root, as the README runs it."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, cwd=REPO, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_accuracy_benchmark_runs(backbone_dir, tmp_path):
    (tmp_path / "data").mkdir()
    data = tiny_data_dir(tmp_path / "data")
    out = tmp_path / "out"
    stdout = run(["benchmarks.accuracy", "--data_dir", str(data), "--output_dir", str(out),
                  "--backbone", backbone_dir, "--epochs", "1", "--learning_rates", "1e-3"])  # fmt: skip
    assert "| (a) multi-task (ours) | 1 |" in stdout and "| (b) one model per task | 2 |" in stdout
    assert (out / "results.md").is_file() and (out / "multitask" / "config.json").is_file()
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [r["examples"] for r in rows[:2]] == [96, 96]  # the same training examples for (a) and (b)


def test_speed_benchmark_runs(backbone_dir, tmp_path):
    data = tiny_data_dir(tmp_path)
    stdout = run(["benchmarks.speed", "--data_dir", str(data), "--encoder", backbone_dir,
                  "--train_sentences", "16", "--infer_sentences", "32", "--batch_size", "8", "--rounds", "1",
                  "--memory_lines", "200", "--gpu_config_check"])  # fmt: skip
    for marker in ("1. training throughput", "2. inference", "3. encode", "4. padding", "5. predict.py", "6. bf16"):
        assert marker in stdout, stdout
