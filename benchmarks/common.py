"""What the benchmarks share: running `train.py` the way a user does (a command, not an import of the script)."""

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from transformers import AutoTokenizer

from modeling_multitask import MultiTaskModel

REPO = Path(__file__).resolve().parent.parent


def add_subset_arguments(parser, systems, systems_help, options_flag, options_help):
    """`--systems` (a subset of `systems`, default all) and `options_flag` (train.py options as a JSON object; read
    it with `train_options_json`), as the benchmarks that compare several systems take them."""
    parser.add_argument(
        "--systems", nargs="+", default=list(systems), choices=list(systems), metavar="SYSTEM", help=systems_help
    )
    parser.add_argument(options_flag, default="{}", metavar="JSON", help=options_help)


def train_options_json(parser, flag, text):
    """The value of a `--FLAG JSON` option holding train.py options: a dict, or a parser error naming the flag."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        parser.error(f"{flag} is not JSON ({error}): {text}")
    if not isinstance(value, dict):
        parser.error(f"{flag} must be a JSON object of train.py options (name: value), got {text}")
    return value


def run_train(options):
    """Run `python train.py ARGS.json` with `options` (train.py's arguments as a dict, `output_dir` among them, as
    in an arguments file) and return the run's metrics (OUTPUT_DIR/all_results.json). Bad input (train.py's one-line
    error, exit 1) ends the benchmark with that line; any other failure raises with the end of train.py's stderr."""
    with tempfile.TemporaryDirectory() as tmp:
        args_file = Path(tmp) / "args.json"
        args_file.write_text(json.dumps(options), encoding="utf-8")
        command = [sys.executable, str(REPO / "train.py"), str(args_file)]
        result = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    last = result.stderr.strip().splitlines()[-1:] or [""]
    if result.returncode == 1 and last[0].startswith("error: "):  # train.py's one-line error for bad input: pass it on
        raise SystemExit(f"{last[0]} (train.py run for {options['output_dir']})")
    if result.returncode != 0:
        raise RuntimeError(
            f"train.py {json.dumps(options)} failed (exit {result.returncode}):\n{result.stderr[-3000:]}"
        )
    return json.loads((Path(options["output_dir"]) / "all_results.json").read_text(encoding="utf-8"))


def load_saved_model(model_dir):
    """A train.py output folder as `(model, tokenizer)`: the model on CUDA when available, in eval mode."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = MultiTaskModel.from_pretrained(model_dir).to(device).eval()
    # config= keeps AutoTokenizer from reading the multi-task config.json (remote code) just to find the class
    return model, AutoTokenizer.from_pretrained(model_dir, config=model.config.backbone_config)


def task_logits(model, tokenizer, texts, batch_size=128):
    """`{task: (len(texts), n_labels) float32 array}`: every task's logits, rows in the order of `texts`."""
    logits = {
        task: np.zeros((len(texts), len(labels)), dtype=np.float32) for task, labels in model.config.tasks.items()
    }
    with torch.inference_mode():
        for idx, batch_logits, _ in model.iter_batches(texts, tokenizer, batch_size=batch_size):
            for task in logits:
                logits[task][idx] = batch_logits[task].float().cpu().numpy()
    return logits
