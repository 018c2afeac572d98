"""Accuracy on real data: one multi-task model vs one model per task vs logistic regression on frozen embeddings.

    python -m benchmarks.accuracy --data_dir ../shared/data --output_dir runs/accuracy

Reads `{topic,sentiment}_{train,dev,dev_ood}.jsonl` (text + label) from --data_dir; nothing is copied into the
repository. Every system is evaluated on four dev columns: each task's in-distribution dev set (`*_dev.jsonl`) and
its other-source dev set (`*_dev_ood.jsonl`, cased, punctuated text of other outlets; see the data's SOURCES.md).
(a) MultiTaskModel trained jointly on both train files (single-task files mixed, the other task's label masked),
    saved to OUTPUT_DIR/multitask; (b) one AutoModelForSequenceClassification per task with a plain Trainer;
    (c) scikit-learn logistic regression on frozen, mean-pooled, normalised embeddings. All use the same encoder
    and every system gets the same search budget: one run per point of the --learning_rates x --epochs grid,
    the best chosen by in-distribution dev macro-F1 as before (for (a), the mean over the two tasks; (c) searches
    C); the other-source columns take no part in the choice. There is no separate test split here, so the
    in-distribution dev figures are slightly optimistic for all systems alike.
Prints a markdown table (accuracy / macro-F1 per task and dev set, examples processed, wall time) and writes it, with
the raw figures, to OUTPUT_DIR/results.md and results.json.
"""

import argparse
import itertools
import json
import logging
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    Trainer,
    TrainingArguments,
    set_seed,
)

from benchmarks.common import add_subset_arguments, run_train, train_options_json
from configuration_multitask import DEFAULT_TASKS
from modeling_multitask import MultiTaskModel
from multitask_data import load_split
from trainer_multitask import BUNDLED, TaskMetric, make_compute_metrics, resolve_backbone

logger = logging.getLogger("benchmarks.accuracy")


SYSTEMS = {  # --systems name: row title
    "multitask": "(a) multi-task (ours)",
    "single": "(b) one model per task",
    "logreg": "(c) logistic regression, frozen embeddings",
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", required=True, help="Folder with {topic,sentiment}_{train,dev,dev_ood}.jsonl.")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--backbone", default=BUNDLED, help="Encoder for every system.")
    parser.add_argument("--learning_rates", type=float, nargs="+", default=[5e-5, 1e-4], help="Search grid.")
    parser.add_argument("--epochs", type=float, nargs="+", default=[2.0, 3.0], help="Search grid.")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--logreg_C", type=float, nargs="+", default=[1.0, 10.0], help="Search grid of (c).")
    parser.add_argument("--max_train_samples", type=int, default=None, help="Per task; for smoke runs.")
    parser.add_argument("--max_eval_samples", type=int, default=None, help="Per task; for smoke runs.")
    parser.add_argument("--seed", type=int, default=42)
    add_subset_arguments(
        parser,
        SYSTEMS,
        "The systems to run, of multitask single logreg (default all).",
        "--multitask_options",
        "train.py options for every multi-task run, on top of the search's, as a JSON object, e.g. "
        "'{\"wise_ft_alpha\": 1.0}': how another train.py default would fare.",
    )
    args = parser.parse_args(argv)
    args.multitask_options = train_options_json(parser, "--multitask_options", args.multitask_options)
    return args


def files(args, task, split):
    return str(Path(args.data_dir) / f"{task}_{split}.jsonl")


def grid(args):
    """Every (learning rate, epochs) point of the search; each system gets one run per point."""
    return list(itertools.product(args.learning_rates, args.epochs))


def common_training(args, hp, output_dir):
    lr, epochs = hp
    return {
        "output_dir": str(output_dir),
        "learning_rate": lr,
        "num_train_epochs": epochs,
        "per_device_train_batch_size": args.batch_size,
        "per_device_eval_batch_size": 128,
        "eval_strategy": "no",
        "save_strategy": "no",
        "load_best_model_at_end": False,
        "logging_steps": 50,
        "report_to": "none",
        "seed": args.seed,
        "use_cpu": not torch.cuda.is_available(),
        "train_sampling_strategy": "group_by_length",
    }


def run_multitask(args, hp, output_dir):
    tasks = list(DEFAULT_TASKS)
    start = time.perf_counter()
    metrics = run_train(
        {
            "backbone": args.backbone,
            "train_file": [f"{task}={files(args, task, 'train')}" for task in tasks],
            "validation_file": [f"{task}={files(args, task, 'dev')}" for task in tasks],
            "eval_file": [f"ood:{task}={files(args, task, 'dev_ood')}" for task in tasks],
            "test_file": [],
            "max_train_samples": args.max_train_samples and args.max_train_samples * len(tasks),
            "max_eval_samples": args.max_eval_samples and args.max_eval_samples * len(tasks),
            **common_training(args, hp, output_dir),
            **args.multitask_options,
        }
    )
    wall = time.perf_counter() - start
    examples = round(metrics["train_samples_per_second"] * metrics["train_runtime"])
    # per task: (dev accuracy, dev F1, other-source accuracy, other-source F1)
    dev = {
        task: tuple(metrics[f"eval_{s}_{task}_{m}"] for s in ("validation", "ood") for m in ("accuracy", "f1"))
        for task in tasks
    }
    return dev, examples, wall


def load_task_split(args, task, split):
    """One task's train, dev or dev_ood file as columns text + labels_<task>, capped (shuffled first) for smoke runs."""
    cap = args.max_train_samples if split == "train" else args.max_eval_samples
    entry = f"{task}={files(args, task, split)}"
    return load_split([entry], {task: DEFAULT_TASKS[task]}, cap, seed=args.seed)


def run_single_task(args, task, hp, output_dir, encoder):
    labels = DEFAULT_TASKS[task]
    tokenizer = AutoTokenizer.from_pretrained(encoder)
    splits = {}
    for split in ("train", "dev", "dev_ood"):
        ds = load_task_split(args, task, split).rename_column(f"labels_{task}", "labels")
        splits[split] = ds.map(lambda b: tokenizer(b["text"], truncation=True, max_length=128), batched=True)
    set_seed(args.seed)
    model = AutoModelForSequenceClassification.from_pretrained(
        encoder, num_labels=len(labels), id2label=dict(enumerate(labels)), label2id={v: i for i, v in enumerate(labels)}
    )
    compute = make_compute_metrics([task])
    trainer = Trainer(
        model=model,
        args=TrainingArguments(**common_training(args, hp, output_dir)),
        train_dataset=splits["train"],
        eval_dataset=splits["dev"],
        processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=lambda p: compute(type(p)(predictions=(p.predictions,), label_ids=(p.label_ids,))),
    )
    start = time.perf_counter()
    result = trainer.train()
    wall = time.perf_counter() - start
    metrics = trainer.evaluate({"dev": splits["dev"], "ood": splits["dev_ood"]})
    examples = round(result.metrics["train_samples_per_second"] * result.metrics["train_runtime"])
    return tuple(metrics[f"eval_{s}_{task}_{m}"] for s in ("dev", "ood") for m in ("accuracy", "f1")), examples, wall


def run_logreg(args, encoder):
    tokenizer = AutoTokenizer.from_pretrained(encoder)
    model = MultiTaskModel.from_backbone(encoder)
    start = time.perf_counter()
    data = {}
    for task in DEFAULT_TASKS:
        for split in ("train", "dev", "dev_ood"):
            ds = load_task_split(args, task, split)
            emb = model.encode(ds["text"], tokenizer, batch_size=128, normalize=True).numpy()
            data[task, split] = (emb, np.array(ds[f"labels_{task}"]))
    embed_wall = time.perf_counter() - start
    results, walls = {}, {}
    for task in DEFAULT_TASKS:
        (x_train, y_train), (x_dev, y_dev) = data[task, "train"], data[task, "dev"]
        best = None
        for c in args.logreg_C:
            start = time.perf_counter()
            clf = LogisticRegression(C=c, max_iter=2000).fit(x_train, y_train)
            walls[task] = walls.get(task, 0.0) + time.perf_counter() - start
            pred = clf.predict(x_dev)
            metric = TaskMetric(keep_in_memory=True).compute(predictions=pred, references=y_dev)
            if best is None or metric["f1"] > best[1]:  # chosen on in-distribution dev
                x_ood, y_ood = data[task, "dev_ood"]
                ood = TaskMetric(keep_in_memory=True).compute(predictions=clf.predict(x_ood), references=y_ood)
                best = (metric["accuracy"], metric["f1"], ood["accuracy"], ood["f1"], c)
        results[task] = best
    examples = sum(len(data[t, "train"][1]) for t in DEFAULT_TASKS)
    return results, examples, embed_wall + sum(walls.values())


def name(hp):
    return f"lr={hp[0]:g} ep={hp[1]:g}"


def markdown(rows):
    """Each task's figures are (dev accuracy, dev F1, other-source accuracy, other-source F1)."""
    lines = [
        "| system | encoders trained | topic dev acc / F1 | topic other-source acc / F1 | sentiment dev acc / F1 | "
        "sentiment other-source acc / F1 | train examples | train wall (s) | chosen |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        cells = [f"{r[task][i]:.4f} / {r[task][i + 1]:.4f}" for task in DEFAULT_TASKS for i in (0, 2)]
        lines.append(
            f"| {r['system']} | {r['encoders']} | {' | '.join(cells)} | {r['examples']:,} | {r['wall']:.0f} | "
            f"{r['chosen']} |"
        )
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", level=logging.INFO)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    encoder = resolve_backbone(args.backbone)
    mean_f1 = lambda res: np.mean([res[t][1] for t in DEFAULT_TASKS])  # noqa: E731
    rows, search = [], []

    if "multitask" in args.systems:
        best = None
        for hp in grid(args):
            run_dir = out / f"multitask-lr{hp[0]:g}-ep{hp[1]:g}"
            res, examples, wall = run_multitask(args, hp, run_dir)
            search.append(
                {"system": "multitask", "lr": hp[0], "epochs": hp[1], "dev": res, "examples": examples, "wall": wall}
            )
            if best is None or mean_f1(res) > mean_f1(best[0]):
                if best is not None:
                    shutil.rmtree(best[3])
                best = (res, examples, wall, run_dir, hp)
            else:
                shutil.rmtree(run_dir)
        shutil.rmtree(out / "multitask", ignore_errors=True)
        best[3].rename(out / "multitask")
        rows.append({"system": SYSTEMS["multitask"], "encoders": 1, "topic": best[0]["topic"],
                     "sentiment": best[0]["sentiment"], "examples": best[1], "wall": best[2],
                     "chosen": name(best[4])})  # fmt: skip

    if "single" in args.systems:
        single = {"examples": 0, "wall": 0.0, "chosen": []}
        for task in DEFAULT_TASKS:
            best_task = None
            for hp in grid(args):
                res, examples, wall = run_single_task(args, task, hp, out / f"single-{task}", encoder)
                search.append({"system": f"single-{task}", "lr": hp[0], "epochs": hp[1], "dev": res,
                               "examples": examples, "wall": wall})  # fmt: skip
                if best_task is None or res[1] > best_task[0][1]:
                    best_task = (res, examples, wall, hp)
            shutil.rmtree(out / f"single-{task}", ignore_errors=True)
            single[task] = best_task[0]
            single["examples"] += best_task[1]
            single["wall"] += best_task[2]
            single["chosen"].append(f"{task} {name(best_task[3])}")
        rows.append({"system": SYSTEMS["single"], "encoders": 2, **single, "chosen": ", ".join(single["chosen"])})

    if "logreg" in args.systems:
        res, examples, wall = run_logreg(args, encoder)
        rows.append({"system": SYSTEMS["logreg"], "encoders": 0, "topic": res["topic"][:4],
                     "sentiment": res["sentiment"][:4], "examples": examples, "wall": wall,
                     "chosen": ", ".join(f"{t} C={res[t][4]:g}" for t in DEFAULT_TASKS)})  # fmt: skip

    machine = (
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    )
    table = markdown(rows)
    header = (
        f"Dev-set results, {time.strftime('%Y-%m-%d')}, {machine}; "
        f"grid: lr {args.learning_rates} x epochs {args.epochs}, batch={args.batch_size}, seed={args.seed}; "
        + (f"multi-task runs with {json.dumps(args.multitask_options)}; " if args.multitask_options else "")
        + "each system's best run by in-distribution dev macro-F1.\n"
        f"Command: python -m benchmarks.accuracy {' '.join(argv if argv is not None else sys.argv[1:])}\n"
    )
    (out / "results.md").write_text(header + "\n" + table + "\n", encoding="utf-8")
    (out / "results.json").write_text(json.dumps({"rows": rows, "search": search}, indent=2), encoding="utf-8")
    print(header)
    print(table)
    return rows


if __name__ == "__main__":
    main()
