"""Freezing scenarios on the bundled data: full fine-tuning vs frozen backbone vs partial freezing.

    python -m benchmarks.freezing --output_dir runs/freezing

Each scenario is one `train.py` run with the defaults (bundled data and encoder, 5 epochs, best epoch by
validation mean F1) plus the scenario's options; the table gives test accuracy per task, trainable parameters
and training wall time. Extra arguments after `--` go to every run (e.g. `-- --train_file ...`).
"""

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import REPO
from modeling_multitask import MultiTaskModel
from trainer_multitask import BUNDLED, freeze, resolve_backbone

SCENARIOS = {
    "full fine-tuning": [],
    "frozen backbone (heads only, head lr 1e-3)": ["--freeze_backbone", "--head_learning_rate", "1e-3"],
    "embeddings + lowest 3 of 6 layers frozen": ["--freeze_layers", "3"],
    "full, head lr 1e-3, layer-wise decay 0.8": ["--head_learning_rate", "1e-3", "--layerwise_lr_decay", "0.8"],
    "topic head frozen (random), rest trains": ["--freeze_heads", "topic"],
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("extra", nargs="*", help="Arguments passed to every train.py run (after --).")
    args = parser.parse_args(argv)
    rows = []
    for i, (name, options) in enumerate(SCENARIOS.items()):
        out = Path(args.output_dir) / f"scenario-{i}"
        start = time.perf_counter()
        command = [
            sys.executable,
            str(REPO / "train.py"),
            *options,
            "--output_dir",
            str(out),
            "--save_total_limit",
            "1",
        ]
        subprocess.run([*command, *args.extra], check=True, stdout=subprocess.DEVNULL)
        metrics = json.loads((out / "all_results.json").read_text(encoding="utf-8"))
        wall = time.perf_counter() - start
        model = MultiTaskModel.from_backbone(resolve_backbone(BUNDLED))
        freeze(
            model,
            backbone="--freeze_backbone" in options,
            layers=int(options[options.index("--freeze_layers") + 1]) if "--freeze_layers" in options else 0,
            heads=[options[options.index("--freeze_heads") + 1]] if "--freeze_heads" in options else (),
        )
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        rows.append(
            f"| {name} | `{shlex.join(options)}` | {trainable:,} | {metrics['test_topic_accuracy']:.4f} | "
            f"{metrics['test_sentiment_accuracy']:.4f} | {metrics['eval_mean_accuracy']:.4f} | {wall:.0f} |"
        )
    table = "\n".join(
        [
            "| scenario | options | trainable params | test topic acc | test sentiment acc | val mean acc | wall (s) |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
            *rows,
        ]
    )
    Path(args.output_dir, "results.md").write_text(table + "\n", encoding="utf-8")
    print(table)


if __name__ == "__main__":
    main()
