"""Does the text normalisation matter? Saved models on each dev set, read with and without `--text_normalization ptb`.

    python -m benchmarks.text_forms --data_dir ../shared/data runs/robustness-ptb/models/*

The training data is Penn Treebank tokenised ("does n't"), the other-source dev sets are not ("doesn't"). Each
saved train.py model is evaluated on each dev column (topic, sentiment x `*_dev.jsonl`, `*_dev_ood.jsonl`) twice:
with the encoder's own tokenizer (`none`: what train.py saves by default) and with that tokenizer plus the `ptb`
normalisation (`text_normalization.py`, what train.py saves with `--text_normalization ptb`). The model and the
sentences are the same in both, so the difference is the normalisation's alone, with no training seed in it. Prints
each model's figures, then the mean over the models of each column and of the paired difference (with its standard
error over the models).
"""

import argparse
from pathlib import Path

import numpy as np
from transformers import AutoTokenizer

from benchmarks.common import load_saved_model
from benchmarks.robustness import dev_figures
from modeling_multitask import IGNORE_INDEX
from multitask_data import load_split
from text_normalization import add_text_normalization, ptb_normalizer
from trainer_multitask import BUNDLED, resolve_backbone

SETS = ("dev", "dev_ood")


def evaluate(model_dir, data_dir, tokenizers):
    """`{(task, set): {"changed": n, name: accuracy for each of tokenizers}}` for one saved model."""
    model, _ = load_saved_model(model_dir)
    tasks = model.config.tasks
    normalize = ptb_normalizer().normalize_str
    figures = {(task, name): {} for task in tasks for name in SETS}
    for name in SETS:
        # read as the robustness benchmark reads a set: every task's file in one split, by the project's reader
        split = load_split([f"{task}={Path(data_dir) / f'{task}_{name}.jsonl'}" for task in tasks], tasks)
        changed = [normalize(text) != text for text in split["text"]]
        for task in tasks:
            rows = zip(changed, split[f"labels_{task}"], strict=True)
            figures[task, name]["changed"] = sum(change for change, label in rows if label != IGNORE_INDEX)
        for tok_name, tokenizer in tokenizers.items():
            accuracy = dev_figures(model, tokenizer, {name: split})
            for task in tasks:
                figures[task, name][tok_name] = accuracy[task][name][0]
    return figures


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", required=True, help="Folder with {task}_{dev,dev_ood}.jsonl for each task.")
    parser.add_argument("--backbone", default=BUNDLED, help="The models' encoder, whose own tokenizer is `none`.")
    parser.add_argument("models", nargs="+", help="train.py output folders.")
    args = parser.parse_args(argv)
    own = AutoTokenizer.from_pretrained(resolve_backbone(args.backbone))
    tokenizers = {"none": own, "ptb": add_text_normalization(own, "ptb")}
    header = "| task | dev set | sentences changed | none | ptb | ptb - none (pts) |"
    rule = "| --- | --- | ---: | ---: | ---: | ---: |"
    per_model = [evaluate(model_dir, args.data_dir, tokenizers) for model_dir in args.models]
    for model_dir, figures in zip(args.models, per_model, strict=True):
        print(f"\n{model_dir}\n\n{header}\n{rule}")
        for (task, name), cell in figures.items():
            gain = 100 * (cell["ptb"] - cell["none"])
            print(f"| {task} | {name} | {cell['changed']} | {cell['none']:.4f} | {cell['ptb']:.4f} | {gain:+.2f} |")
    print(f"\nMean over {len(per_model)} model(s), ± half the range; the difference ± its standard error\n")
    print(f"{header}\n{rule}")
    for key in per_model[0]:
        cells = [figures[key] for figures in per_model if key in figures]
        none, ptb = (np.array([c[t] for c in cells]) for t in ("none", "ptb"))
        gain = 100 * (ptb - none)
        se = f" ± {gain.std(ddof=1) / np.sqrt(len(gain)):.2f}" if len(gain) > 1 else ""
        print(
            f"| {key[0]} | {key[1]} | {cells[0]['changed']} | {none.mean():.4f} ± {np.ptp(none) / 2:.4f} | "
            f"{ptb.mean():.4f} ± {np.ptp(ptb) / 2:.4f} | {gain.mean():+.2f}{se} |"
        )


if __name__ == "__main__":
    main()
