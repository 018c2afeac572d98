"""Plain helpers shared by the test modules: constants, argument lists, file writers, a fresh-interpreter runner.
Fixtures live in conftest.py; test modules import neither fixtures nor helpers from each other."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TASKS = {"topic": ["Finance/Tech", "Health/Lifestyle", "Entertainment/Sports"], "sentiment": ["Negative", "Positive"]}
# The word-level vocabulary of the tiny BERT checkpoint (conftest's backbone_dir).
BACKBONE_WORDS = (
    "the a is was of and to in it for on with this that movie film stock market bank app phone health diet sleep "
    "game team win lost great bad good awful love hate price shares tech sports music show fun boring slow fast"
).split()


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return str(path)


def tiny_args(backbone_dir, out, *extra):
    """train.py arguments for a quick run of the tiny BERT on 64 bundled sentences."""
    data = REPO / "data"
    return [
        "--backbone", backbone_dir,
        "--train_file", str(data / "train.jsonl"),
        "--validation_file", str(data / "validation.jsonl"),
        "--test_file", str(data / "test.jsonl"),
        "--max_train_samples", "64",
        "--max_eval_samples", "32",
        "--per_device_train_batch_size", "8",
        "--learning_rate", "1e-3",
        "--logging_steps", "1",
        "--output_dir", str(out),
        "--use_cpu",
        *extra,
    ]  # fmt: skip


def run_child(code, cwd):
    """Run `code` in a fresh interpreter outside the repository, offline, with the repository not importable."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


# predict.py with every window slowed down (SLOW_PREDICT_DELAY seconds, default 0.05), so that a test can kill or
# interrupt it mid-run whatever the machine's speed: `python -c SLOW_PREDICT ARGS`, with the repository on PYTHONPATH.
SLOW_PREDICT = """
import os, sys, time
import labelling, predict
real = labelling.predict_window
def slow(*args, **kwargs):
    time.sleep(float(os.environ.get("SLOW_PREDICT_DELAY", "0.05")))
    return real(*args, **kwargs)
labelling.predict_window = slow
sys.exit(predict.main(sys.argv[1:]))
"""
