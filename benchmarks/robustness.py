"""Robustness: accuracy on text unlike the training data, for the ways of fine-tuning without forgetting.

    python -m benchmarks.robustness --data_dir ../shared/data --output_dir runs/robustness

Every method is `train.py` (run as a command, through an arguments file) on both training sets at once
(`topic_train.jsonl` and `sentiment_train.jsonl` as TASK=PATH entries) with train.py's defaults, WiSE-FT off
(`--wise_ft_alpha 1`: plain fine-tuning, `baseline`), plus the method's options; `wise_ft_0.8` is train.py's defaults
as they are. Each runs for --epochs epochs, once per seed (--seeds of them: 42, 43, ...; --first_seed moves the
start). The baselines are two single-task recipes, one model per task each, also train.py runs with plain
fine-tuning: A (lr 1e-4, batch 16, train.py's recipe) and B (lr 5e-5, batch 32). Every run reports four dev columns: topic and sentiment x in-distribution dev (`*_dev.jsonl`, train.py's
`validation` set) and other-source dev (`*_dev_ood.jsonl`, the named set `ood`). Best-model selection is train.py's
default for every run (each epoch, by the mean of the two sets' mean F1), so all runs are chosen alike; the
selection sees the other-source dev sets, which makes every figure a little optimistic, the same for all.

With --wise_ft_sweep ALPHA ..., the selected model of every run of --wise_ft_sweep_methods (default: baseline,
gentle) is also evaluated with its encoder interpolated towards the pretrained one (WiSE-FT) at each ALPHA, after
training: what `--wise_ft_alpha ALPHA` gives (train.py interpolates the selected model at the end, before its final
evaluation), without one training per alpha. Those rows are named METHOD+wise_ft_ALPHA; alpha 1 is evaluated too,
and the largest difference from train.py's own figures is logged, as a check that the evaluation here is train.py's.

Prints a line per run and then the table (accuracy, mean ± half the range over seeds) and writes results.md and
results.json (every run's figures, F1 too) to --output_dir. Each finished run is kept in OUTPUT_DIR/runs/NAME.json
and read back when the benchmark is run again with the same settings, so an interrupted benchmark continues where
it stopped. CUDA is used when available; the models are deleted after evaluation unless --keep_models.
"""

import argparse
import json
import logging
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import load_saved_model, run_train, task_logits
from configuration_multitask import DEFAULT_TASKS
from modeling_multitask import IGNORE_INDEX, MultiTaskModel
from multitask_data import load_split
from trainer_multitask import BUNDLED, TaskMetric, resolve_backbone, wise_ft

logger = logging.getLogger("benchmarks.robustness")

# Each method is plain fine-tuning (train.py's defaults with WiSE-FT off, alpha 1: the recipe before WiSE-FT 0.8 became
# the default) plus these options; `wise_ft_0.8` is train.py's defaults as they are now.
PLAIN = {"wise_ft_alpha": 1.0}
METHODS = {
    name: {**PLAIN, **options}
    for name, options in {
        "baseline": {},
        "low_lr": {"learning_rate": 5e-5},
        "high_lr": {"learning_rate": 2e-4},  # further from the pretrained encoder: more for WiSE-FT to interpolate
        "gentle": {"learning_rate": 5e-5, "per_device_train_batch_size": 32},  # single-task recipe B's settings
        "batch32": {"per_device_train_batch_size": 32},  # about 16 rows of each task per step, as one task at 16
        "batch32_high_lr": {"per_device_train_batch_size": 32, "learning_rate": 2e-4},  # half the steps, twice the rate
        "label_smoothing": {"label_smoothing_factor": 0.1},
        "frozen_embeddings": {"freeze_embeddings": True},  # words rare in training keep their pretrained vectors
        "batch_by_task": {"batch_by_task": True},  # every step one task's 16 rows, as in single-task training
        # Static task weights (--loss_weights): under Adam the ratio is what counts (gradient clipping aside): it sets
        # each task's share of the encoder's update
        "weight_topic2": {"loss_weights": "topic=2"},  # topic gained in-distribution with a higher rate, sentiment lost
        "weight_topic1.5": {"loss_weights": "topic=1.5"},
        "weight_sentiment2": {"loss_weights": "sentiment=2"},
        "head_mlp": {"head_hidden_size": 384},  # a hidden layer per task: room for task-specific features
        "freeze_lower": {"freeze_layers": 3},  # the lower half of the encoder's layers keeps its pretrained weights
        "head_lr": {"head_learning_rate": 1e-3},
        "llrd": {"layerwise_lr_decay": 0.8},
        "wise_ft_0.5": {"wise_ft_alpha": 0.5},
        "wise_ft_0.8": {"wise_ft_alpha": 0.8},  # train.py's default
    }.items()
}
# One model per task, trained with the same train.py on that task's data alone: the two recipes, plain
# fine-tuning (`--wise_ft_sweep_methods single_A` shows what WiSE-FT does to them).
SINGLE_TASK = {
    "single_A": {**PLAIN, "learning_rate": 1e-4, "per_device_train_batch_size": 16},
    "single_B": {**PLAIN, "learning_rate": 5e-5, "per_device_train_batch_size": 32},
}
OPTIONS = {**METHODS, **SINGLE_TASK}  # every method, multi-task or single-task, by name
TASKS = list(DEFAULT_TASKS)
SETS = {"validation": "dev", "ood": "dev_ood"}  # train.py's set name -> data file suffix
COLUMNS = [(task, name) for task in TASKS for name in SETS]  # topic dev, topic ood, sentiment dev, sentiment ood
COLUMN_TITLES = {"validation": "dev", "ood": "other-source dev"}
# In-distribution dev accuracy of the multi-task model today (README Results, benchmarks/accuracy.py): the new
# defaults must not fall below it.
TODAY = {"topic": 0.889, "sentiment": 0.8945}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", required=True, help="Folder with {topic,sentiment}_{train,dev,dev_ood}.jsonl.")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--backbone", default=BUNDLED, help="Encoder of every run.")
    parser.add_argument("--epochs", type=float, default=2.0, help="Training epochs of every run.")
    parser.add_argument("--seeds", type=int, default=2, help="Runs per method, seeds FIRST_SEED, FIRST_SEED + 1, ...")
    parser.add_argument(
        "--first_seed", type=int, default=42, help="The first seed (e.g. 43 with --seeds 1: one process per seed)."
    )
    parser.add_argument(
        "--methods",
        nargs="+",
        default=list(OPTIONS),
        choices=list(OPTIONS),
        metavar="METHOD",
        help=f"Methods to run (default all): {', '.join(OPTIONS)}.",
    )
    parser.add_argument("--max_train_samples", type=int, default=None, help="Per task; for smoke runs.")
    parser.add_argument("--max_eval_samples", type=int, default=None, help="Per task and set; for smoke runs.")
    parser.add_argument("--keep_models", action="store_true", help="Keep every run's model in OUTPUT_DIR/models.")
    parser.add_argument(
        "--wise_ft_sweep",
        nargs="+",
        type=float,
        default=[],
        metavar="ALPHA",
        help="Also evaluate the models of --wise_ft_sweep_methods with WiSE-FT at these alphas (rows METHOD+wise_ft_ALPHA).",
    )
    parser.add_argument(
        "--wise_ft_sweep_methods",
        nargs="+",
        default=None,
        choices=[m for m, options in OPTIONS.items() if options["wise_ft_alpha"] == 1.0],
        metavar="METHOD",
        help="The methods whose models --wise_ft_sweep evaluates (default: baseline gentle); a single-task recipe's "
        "rows interpolate each of its models.",
    )
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error(f"--seeds must be >= 1, got {args.seeds}")
    for alpha in args.wise_ft_sweep:
        if not 0.0 <= alpha < 1.0:
            parser.error(f"--wise_ft_sweep: every alpha must be in [0, 1), got {alpha:g}")
    if args.wise_ft_sweep_methods is None:
        args.wise_ft_sweep_methods = ["baseline", "gentle"]
    else:  # named on purpose: a sweep that would not run is a mistake, not a no-op
        if not args.wise_ft_sweep:
            parser.error("--wise_ft_sweep_methods needs --wise_ft_sweep ALPHA [ALPHA ...] (the alphas to evaluate)")
        absent = [m for m in args.wise_ft_sweep_methods if m not in args.methods]
        if absent:
            parser.error(f"--wise_ft_sweep_methods {' '.join(absent)}: not in --methods, so there is no run to sweep")
    return args


def data_file(args, task, suffix):
    return str(Path(args.data_dir) / f"{task}_{suffix}.jsonl")


def run_options(args, options, tasks, seed, output_dir):
    """train.py's arguments (as in an arguments file) of one run on `tasks`."""
    cap = lambda n: n and n * len(tasks)  # noqa: E731  (caps are per task; a run's splits mix its tasks)
    return {
        "backbone": args.backbone,
        **({"tasks": json.dumps({task: DEFAULT_TASKS[task] for task in tasks})} if len(tasks) < len(TASKS) else {}),
        "train_file": [f"{task}={data_file(args, task, 'train')}" for task in tasks],
        "validation_file": [f"{task}={data_file(args, task, SETS['validation'])}" for task in tasks],
        "eval_file": [f"ood:{task}={data_file(args, task, SETS['ood'])}" for task in tasks],
        "test_file": [],
        "max_train_samples": cap(args.max_train_samples),
        "max_eval_samples": cap(args.max_eval_samples),
        "num_train_epochs": args.epochs,
        "seed": seed,
        "per_device_eval_batch_size": 128,
        "logging_steps": 50,
        "use_cpu": not torch.cuda.is_available(),
        "output_dir": str(output_dir),
        "overwrite_output_dir": True,  # a run cut short earlier is started again
        **options,
    }


def dev_figures(model, tokenizer, sets):
    """`{task: {set: [accuracy, macro-F1]}}` of `model` on `sets` (`{set: loaded split}`), each task on its rows."""
    figures = {}
    for name, split in sets.items():
        logits = task_logits(model, tokenizer, split["text"])
        for task in logits:
            labels = np.asarray(split[f"labels_{task}"])
            keep = labels != IGNORE_INDEX
            result = TaskMetric(keep_in_memory=True).compute(
                predictions=logits[task][keep].argmax(-1), references=labels[keep]
            )
            figures.setdefault(task, {})[name] = [result["accuracy"], result["f1"]]
    return figures


def sweep_wise_ft(args, record, alphas):
    """Evaluate the run's saved model with WiSE-FT at each of `alphas` (and 1, the model as saved) into
    `record["wise_ft_sweep"]` (`{"ALPHA": dev figures}`); returns the alphas it evaluated."""
    settings = record["settings"]
    sweep = record.setdefault("wise_ft_sweep", {})
    missing = [a for a in [1.0, *alphas] if f"{a:g}" not in sweep]
    if not missing:
        return []
    model_dir = Path(settings["output_dir"])
    if not (model_dir / "config.json").is_file():
        raise SystemExit(
            f"error: {model_dir}: the model of this run is gone, so its WiSE-FT sweep ({', '.join(map(str, missing))}) "
            "cannot be evaluated; delete its record in OUTPUT_DIR/runs to train it again"
        )
    model, tokenizer = load_saved_model(model_dir)
    # what train.py interpolates towards: the encoder as train.py built it before training (same keys, no pooler)
    source = resolve_backbone(settings["backbone"])
    start = MultiTaskModel.from_backbone(source, tasks=model.config.tasks)
    initial = start.encoder_state_dict()
    fine_tuned = {name: t.detach().clone() for name, t in model.encoder_state_dict().items()}
    tasks = {task: labels for task, labels in DEFAULT_TASKS.items() if task in model.config.tasks}
    sets = {"validation": settings["validation_file"], "ood": [e.split(":", 1)[1] for e in settings["eval_file"]]}
    sets = {name: load_split(entries, tasks, settings["max_eval_samples"]) for name, entries in sets.items()}
    for alpha in missing:
        with torch.no_grad():
            for name, tensor in model.encoder_state_dict().items():
                tensor.copy_(fine_tuned[name])
        wise_ft(model, initial, alpha)
        sweep[f"{alpha:g}"] = dev_figures(model, tokenizer, sets)
    if 1.0 in missing:  # the model as train.py evaluated it: the same figures, up to batching noise
        record["sweep_check"] = max(
            abs(sweep["1"][task][s][0] - record["dev"][task][s][0]) for task in record["dev"] for s in SETS
        )
        logger.info("%s: alpha 1 vs train.py's own evaluation, largest accuracy difference %.4f", model_dir.name,
                    record["sweep_check"])  # fmt: skip
    return missing


def train_and_evaluate(args, name, options, tasks, seed):
    """One train.py run (or its stored result): `{"dev": {task: {set: [acc, f1]}}, "wall", ...}`; with
    --wise_ft_sweep, a multi-task run also gets its `"wise_ft_sweep"` figures (see `sweep_wise_ft`)."""
    out = Path(args.output_dir)
    run_name = f"{name}-{'+'.join(tasks)}-seed{seed}"
    record_path = out / "runs" / f"{run_name}.json"
    settings = run_options(args, options, tasks, seed, out / "models" / run_name)
    sweep = args.wise_ft_sweep if name in args.wise_ft_sweep_methods else []
    if record_path.is_file():
        record = json.loads(record_path.read_text(encoding="utf-8"))
        if record["settings"] == settings:
            if sweep and sweep_wise_ft(args, record, sweep):
                record_path.write_text(json.dumps(record, indent=1), encoding="utf-8")
            if sweep and not args.keep_models:
                shutil.rmtree(settings["output_dir"], ignore_errors=True)
            return record, True
    start = time.perf_counter()
    metrics = run_train(settings)
    wall = time.perf_counter() - start
    dev = {
        task: {s: [metrics[f"eval_{s}_{task}_accuracy"], metrics[f"eval_{s}_{task}_f1"]] for s in SETS}
        for task in tasks
    }
    record = {
        "settings": settings,
        "dev": dev,
        "wall": wall,
        "train_runtime": metrics["train_runtime"],
        "train_samples_per_second": metrics["train_samples_per_second"],
        "train_examples": round(metrics["train_samples_per_second"] * metrics["train_runtime"]),
    }
    if sweep:
        sweep_wise_ft(args, record, sweep)
    record_path.parent.mkdir(parents=True, exist_ok=True)
    record_path.write_text(json.dumps(record, indent=1), encoding="utf-8")
    if not args.keep_models:
        shutil.rmtree(settings["output_dir"], ignore_errors=True)
    return record, False


def runs_of(args):
    """(method, options, tasks of one model, seed) of every run, multi-task methods first."""
    seeds = [args.first_seed + i for i in range(args.seeds)]
    plan = []
    for method in args.methods:
        for seed in seeds:
            if method in METHODS:
                plan.append((method, METHODS[method], TASKS, seed))
            else:
                plan.extend((method, SINGLE_TASK[method], [task], seed) for task in TASKS)
    return plan


def mean_spread(values):
    """(mean, half the range) of a list of figures."""
    return float(np.mean(values)), float((max(values) - min(values)) / 2)


def summarise(method, records, options=None):
    """One row: per column the accuracies and F1 over seeds (a single-task recipe's columns come from its two models)."""
    options = options if options is not None else OPTIONS[method]
    row = {"method": method, "options": options, "columns": {}}
    for task, name in COLUMNS:
        accs = [r["dev"][task][name][0] for r in records if task in r["dev"]]
        f1s = [r["dev"][task][name][1] for r in records if task in r["dev"]]
        row["columns"][f"{task}/{name}"] = {
            "accuracy": mean_spread(accs),
            "f1": mean_spread(f1s),
            "seeds": len(accs),
            "accuracy_sd": float(np.std(accs, ddof=1)) if len(accs) > 1 else None,  # sample standard deviation
        }
    seeds = {r["settings"]["seed"] for r in records}
    row["wall"] = sum(r["wall"] for r in records) / len(seeds)  # per seed: both models of a single-task recipe
    row["train_examples"] = sum(r["train_examples"] for r in records) // len(seeds)
    return row


def shown_options(options):
    return (
        " ".join(f"--{k} {v:g}" if isinstance(v, float) else f"--{k} {v}" for k, v in options.items()) or "(defaults)"
    )


def worst_gap(row, singles):
    """(column, gap, standard error) of `row`'s worst column against the better single-task recipe there, in points.
    The standard error of the difference of two seed means, `sqrt(sd1^2 / n1 + sd2^2 / n2)` from the sample standard
    deviations over seeds, is None with one seed; it leaves out the dev sets' own sampling error, shared by both
    means, and that the better recipe is the larger of two noisy means (which favours the recipes)."""
    gaps = []
    for task, name in COLUMNS:
        column = f"{task}/{name}"
        best = max(singles, key=lambda single: single["columns"][column]["accuracy"][0])["columns"][column]
        own = row["columns"][column]
        sds = (own["accuracy_sd"], best["accuracy_sd"])
        se = None if None in sds else float(np.sqrt(sds[0] ** 2 / own["seeds"] + sds[1] ** 2 / best["seeds"]))
        gaps.append((column, 100 * (own["accuracy"][0] - best["accuracy"][0]), None if se is None else 100 * se))
    return min(gaps, key=lambda gap: gap[1])


def markdown(rows):
    accuracy = lambda row, column: row["columns"][column]["accuracy"][0]  # noqa: E731
    columns = [f"{task}/{name}" for task, name in COLUMNS]
    singles = [row for row in rows if row["method"] in SINGLE_TASK]
    head = " | ".join(f"{task} {COLUMN_TITLES[name]}" for task, name in COLUMNS)
    lines = [
        f"| method | train.py options | {head} | mean of 4 | worst column vs better single-task (pts) | "
        "in-distribution dev vs today (pts) | train wall per seed (s) |",
        "| --- | --- | " + "---: | " * 4 + "---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        cells = []
        for column in columns:
            mean, spread = row["columns"][column]["accuracy"]
            cells.append(f"{mean:.4f} ± {spread:.4f}")
        mean4 = np.mean([accuracy(row, c) for c in columns])
        worst = "-"
        if singles and row["method"] not in SINGLE_TASK:
            _, gap, se = worst_gap(row, singles)
            worst = f"{gap:+.2f}" if se is None else f"{gap:+.2f} (SE {se:.2f})"
        today = min(100 * (accuracy(row, f"{task}/validation") - TODAY[task]) for task in TASKS)
        options = shown_options(row["options"])
        lines.append(
            f"| {row['method']} | `{options}` | {' | '.join(cells)} | {mean4:.4f} | {worst} | {today:+.2f} | "
            f"{row['wall']:.0f} |"
        )
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", level=logging.INFO)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = f"cuda ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else "cpu"
    plan = runs_of(args)
    logger.info("%d train.py runs on %s: %s x %d seed(s)", len(plan), device, ", ".join(args.methods), args.seeds)
    records = {}
    for i, (method, options, tasks, seed) in enumerate(plan, start=1):
        record, stored = train_and_evaluate(args, method, options, tasks, seed)
        records.setdefault(method, []).append(record)
        figures = ", ".join(
            f"{task} {COLUMN_TITLES[name]} {record['dev'][task][name][0]:.4f}" for task in tasks for name in SETS
        )
        logger.info(
            "[%d/%d] %s (%s) seed %d: %s; %.0f s, %.1f train examples/s%s",
            i, len(plan), method, "+".join(tasks), seed, figures, record["wall"], record["train_samples_per_second"],
            " (stored result)" if stored else "",
        )  # fmt: skip

    rows = []
    for method in args.methods:
        rows.append(summarise(method, records[method]))
        for alpha in args.wise_ft_sweep if method in args.wise_ft_sweep_methods else []:
            swept = [{**r, "dev": r["wise_ft_sweep"][f"{alpha:g}"]} for r in records[method]]
            rows.append(summarise(f"{method}+wise_ft_{alpha:g}", swept, {**OPTIONS[method], "wise_ft_alpha": alpha}))
    table = markdown(rows)
    machine = f"{device}, {platform.processor() or platform.machine()}, torch {torch.__version__}"
    header = (
        f"Dev accuracy, mean ± half the range over {args.seeds} seed(s) ({args.first_seed}...); {args.epochs:g} epochs; "
        f"{time.strftime('%Y-%m-%d')}, {machine}.\n"
        f"Today's multi-task in-distribution dev accuracy: topic {TODAY['topic']}, sentiment {TODAY['sentiment']}.\n"
        f"Command: python -m benchmarks.robustness {' '.join(argv if argv is not None else sys.argv[1:])}\n"
    )
    (out / "results.md").write_text(header + "\n" + table + "\n", encoding="utf-8")
    (out / "results.json").write_text(json.dumps({"rows": rows, "runs": records}, indent=1), encoding="utf-8")
    print(header)
    print(table)
    return rows


if __name__ == "__main__":
    main()
