"""Multi-label emotions (GoEmotions) beside topic and sentiment in one model, and adding a task to a trained model.

    python -m benchmarks.emotion --data_dir ../shared/data --output_dir runs/emotion

Reads `{topic,sentiment}_{train,dev}.jsonl` (text + label) and `emotion_{train,dev}.jsonl` (text + labels: a list of
the 28 GoEmotions labels) from --data_dir; nothing is copied into the repository. Every system is one
`python train.py ARGS.json` run (benchmarks/common.py) with the same encoder, hyper-parameters and data per task; no
best-epoch selection (the model after the last epoch is kept); train.py tunes the emotion thresholds on the emotion
dev set at the end, as it always does.

1. One model or several: (a) topic + sentiment, (b) emotion alone, (c) topic + sentiment + emotion. Targets: emotion
   macro-F1 of (c) at least that of (b); topic and sentiment accuracy of (c) within 0.5 points of (a).
2. Adding emotion to the trained (a): (d) encoder and old heads frozen, only the new head trains (at
   --probe_learning_rate: a linear probe needs a larger step); (e) encoder unfrozen, old heads frozen. Each trains on
   the emotion data only. (f) nothing frozen, trained on all three tasks' data (the old tasks' data rehearsed beside
   the new one), one task per batch (--batch_by_task), and the old tasks' outputs distilled from (a) on every row
   (--distill_weight, learning without forgetting): a three-task model like (c) that starts from (a), so it is held
   to (c)'s targets too, at the cost of (a)'s training plus its own. (g) nothing frozen, the emotion data alone, with
   --distill_weight, for when the old tasks' data is not at hand. Reported: wall time, trainable parameters, and the old tasks' dev accuracy before
   (a) and after.
3. Thresholds: each system's emotion dev macro-F1 with every threshold at 0.5, with thresholds tuned on the dev set
   itself (what train.py reports: optimistic), and cross-fitted (tuned on one half of the dev set, scored on the
   other, both ways): the honest gain of tuning. The published anchor, BERT-base at macro-F1 0.46 on the GoEmotions
   test set (Demszky et al., 2020), is printed beside it; the test set is not given here, so that comparison is rough.

--max_train_samples / --max_eval_samples cap each task's files (the same capped rows for every system, written to
OUTPUT_DIR/data) and --epochs shortens runs, for smoke runs. CUDA is used when available. Writes results.json (every
figure and every run's metrics) and results.md to --output_dir and prints the table.

Each finished system is kept in OUTPUT_DIR/systems/KEY.json (with its model folder) and read back when the benchmark
is run again with the same settings, so a run that was stopped continues with the systems it had not finished.
--parallel N runs up to N systems at once (each its own train.py process: (a), (b), (c) together, then (d) to (g),
which start from (a)); for a GPU with room for several small models. Wall times are then contended.
--three_task_options adds train.py options to (c) and (f), the systems trained on all three tasks' data.
"""

import argparse
import json
import logging
import platform
import random
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import add_subset_arguments, load_saved_model, run_train, task_logits, train_options_json
from configuration_multitask import DEFAULT_TASKS
from modeling_multitask import MultiTaskModel
from multitask_data import load_split
from trainer_multitask import (
    BUNDLED,
    MIN_POSITIVES_TO_TUNE,
    MultiLabelTaskMetric,
    best_thresholds,
    freeze,
    labelled_rows,
    sigmoid,
)

logger = logging.getLogger("benchmarks.emotion")
# The GoEmotions taxonomy in its official order (emotions.txt; ../shared/data/SOURCES.md).
EMOTIONS = [
    "admiration", "amusement", "anger", "annoyance", "approval", "caring", "confusion", "curiosity", "desire",
    "disappointment", "disapproval", "disgust", "embarrassment", "excitement", "fear", "gratitude", "grief", "joy",
    "love", "nervousness", "optimism", "pride", "realization", "relief", "remorse", "sadness", "surprise", "neutral",
]  # fmt: skip
SYSTEMS = {
    "a": "(a) topic + sentiment",
    "b": "(b) emotion alone",
    "c": "(c) topic + sentiment + emotion",
    "d": "(d) add emotion to (a), encoder frozen",
    "e": "(e) add emotion to (a), encoder unfrozen",
    "f": "(f) add emotion to (a), trained on all three tasks",
    "g": "(g) add emotion to (a), encoder unfrozen, distilled",
}
CONTINUES_A = ("d", "e", "f", "g")  # the systems that start from (a)'s saved model
ANCHOR = 0.46  # BERT-base, macro-F1 over the 28 labels on the GoEmotions test set (Demszky et al., ACL 2020)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", required=True, help="Folder with {topic,sentiment,emotion}_{train,dev}.jsonl.")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--backbone", default=BUNDLED, help="Encoder of every system.")
    parser.add_argument("--epochs", type=float, default=3.0)
    parser.add_argument("--learning_rate", type=float, default=1e-4)
    parser.add_argument("--probe_learning_rate", type=float, default=1e-3, help="(d): only the new head trains.")
    parser.add_argument(
        "--distill_weight",
        type=float,
        default=1.0,
        help="(f) and (g): train.py's --distill_weight (learning without forgetting).",
    )
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--max_train_samples", type=int, default=None, help="Per task; for smoke runs.")
    parser.add_argument("--max_eval_samples", type=int, default=None, help="Per task; for smoke runs.")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--parallel", type=int, default=1, help="Systems trained at once (train.py processes).")
    add_subset_arguments(
        parser,
        SYSTEMS,
        "The systems to run, of a b c d e f g (default all); (d) to (g) start from (a), which then runs too.",
        "--three_task_options",
        "train.py options for the systems trained on all three tasks' data, (c) and (f), on top of the others, as a "
        "JSON object, e.g. "
        '\'{"batch_by_task": true}\' or \'{"loss_weights": "emotion=0.5"}\'.',
    )
    args = parser.parse_args(argv)
    if args.parallel < 1:
        parser.error(f"--parallel must be >= 1, got {args.parallel}")
    args.three_task_options = train_options_json(parser, "--three_task_options", args.three_task_options)
    return args


def data_files(args, out):
    """`{(task, split): path}`: the files of --data_dir, or (with a cap) their first N rows after a seeded shuffle,
    written once to OUTPUT_DIR/data so that every system trains and is scored on the same rows."""
    files = {}
    for task in ("topic", "sentiment", "emotion"):
        for split, cap in (("train", args.max_train_samples), ("dev", args.max_eval_samples)):
            source = Path(args.data_dir) / f"{task}_{split}.jsonl"
            if cap is None:
                files[task, split] = str(source)
                continue
            lines = source.read_text(encoding="utf-8").splitlines()
            random.Random(args.seed).shuffle(lines)
            capped = out / "data" / source.name
            capped.parent.mkdir(parents=True, exist_ok=True)
            capped.write_text("\n".join(lines[:cap]) + "\n", encoding="utf-8")
            files[task, split] = str(capped)
    return files


def schema(tasks):
    """train.py's --tasks JSON for `tasks` (emotion is multi-label)."""
    specs = {
        task: {"labels": EMOTIONS, "multi_label": True} if task == "emotion" else DEFAULT_TASKS[task] for task in tasks
    }
    return json.dumps(specs)


def options(args, files, output_dir, train_tasks, eval_tasks, **extra):
    return {
        "train_file": [f"{task}={files[task, 'train']}" for task in train_tasks],
        "validation_file": [f"{task}={files[task, 'dev']}" for task in eval_tasks],
        "test_file": [],
        "output_dir": str(output_dir),
        "overwrite_output_dir": True,
        "learning_rate": args.learning_rate,
        "num_train_epochs": args.epochs,
        "per_device_train_batch_size": args.batch_size,
        "per_device_eval_batch_size": 256,
        "eval_strategy": "no",
        "save_strategy": "no",
        "load_best_model_at_end": False,
        "logging_steps": 50,
        "report_to": "none",
        "seed": args.seed,
        "use_cpu": not torch.cuda.is_available(),
        # plain fine-tuning: the question here is the mix of tasks, and WiSE-FT (train.py's default) would pull the
        # encoder of (e) back towards (a)'s
        "wise_ft_alpha": 1.0,
        **extra,
    }


def run(name, train_options, freezing):
    """One train.py run: its metrics, wall time and trainable parameters (counted on the saved model with the same
    freezing, through the same `freeze` that train.py calls)."""
    logger.info("%s: training", name)
    start = time.perf_counter()
    metrics = run_train(train_options)
    wall = time.perf_counter() - start
    model = MultiTaskModel.from_pretrained(train_options["output_dir"])
    freeze(model, **freezing)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"system": name, "metrics": metrics, "wall": wall, "train_runtime": metrics["train_runtime"],
            "trainable_parameters": trainable, "output_dir": train_options["output_dir"]}  # fmt: skip


def system(out, key, name, trains, train_options, freezing, files, seed, start=None):
    """One system's row: stored in OUTPUT_DIR/systems/KEY.json by an earlier run with the same options (and its
    model still there, and finished after `start`, the row of the model it continues), or trained now and stored."""
    path = out / "systems" / f"{key}.json"
    if path.is_file() and (Path(train_options["output_dir"]) / "config.json").is_file():
        row = json.loads(path.read_text(encoding="utf-8"))
        if row["train_options"] == train_options and (start is None or row["finished"] > start["finished"]):
            logger.info("%s: stored result (%s)", name, path)
            return row
    row = {**run(name, train_options, freezing), "trains": trains, "train_options": train_options}
    if any(entry.startswith("emotion=") for entry in train_options["train_file"]):
        row["thresholds"] = threshold_figures(*emotion_dev(train_options["output_dir"], files["emotion", "dev"]), seed)
    row["finished"] = time.time()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(row, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)
    return row


def emotion_dev(model_dir, dev_file):
    """(logits, labels) of the emotion dev set under the saved model: `(n, 28)` each."""
    model, tokenizer = load_saved_model(model_dir)
    dev = load_split([f"emotion={dev_file}"], {"emotion": EMOTIONS}, multi_label=["emotion"])
    logits = task_logits(model, tokenizer, dev["text"], batch_size=256)["emotion"]
    return logits, np.array(dev["labels_emotion"], dtype=np.float32)


def macro_f1(scores, labels, thresholds):
    predictions = (scores >= np.asarray(thresholds)).astype(np.int64)
    result = MultiLabelTaskMetric(keep_in_memory=True).compute(predictions=predictions, references=labels)
    return result["f1"]


def threshold_figures(logits, labels, seed):
    """Emotion dev macro-F1 at 0.5, tuned on the dev set itself, and cross-fitted over two seeded halves; plus the
    number of labels whose threshold stayed at 0.5 for want of positives."""
    keep = labelled_rows(labels)
    scores, labels = sigmoid(logits[keep]), labels[keep].astype(np.int64)
    tuned = best_thresholds(scores, labels)
    halves = np.array_split(np.random.default_rng(seed).permutation(len(labels)), 2)
    predictions = np.zeros_like(labels)
    for fit, score in ((halves[0], halves[1]), (halves[1], halves[0])):
        thresholds = np.asarray(best_thresholds(scores[fit], labels[fit]))
        predictions[score] = scores[score] >= thresholds
    cross = MultiLabelTaskMetric(keep_in_memory=True).compute(predictions=predictions, references=labels)["f1"]
    return {
        "fixed_0.5": macro_f1(scores, labels, [0.5] * len(EMOTIONS)),
        "tuned_on_dev": macro_f1(scores, labels, tuned),
        "cross_fitted": cross,
        "untuned_labels": int((labels.sum(axis=0) < MIN_POSITIVES_TO_TUNE).sum()),
    }


def fmt(value, digits=4):
    return "-" if value is None else f"{value:.{digits}f}"


def markdown(rows):
    lines = [
        "| system | tasks trained | trainable params | wall (s) | train (s) | topic acc | sentiment acc "
        "| emotion macro-F1, 0.5 | tuned on dev | cross-fitted | emotion micro-F1 |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        m, t = r["metrics"], r.get("thresholds", {})
        lines.append(
            f"| {r['system']} | {r['trains']} | {r['trainable_parameters']:,} | {r['wall']:.0f} | {r['train_runtime']:.0f} "
            f"| {fmt(m.get('eval_topic_accuracy'))} | {fmt(m.get('eval_sentiment_accuracy'))} "
            f"| {fmt(t.get('fixed_0.5'))} | {fmt(t.get('tuned_on_dev'))} | {fmt(t.get('cross_fitted'))} "
            f"| {fmt(m.get('eval_emotion_micro_f1'))} |"
        )
    return "\n".join(lines)


def summary(rows):
    """The targets and the other findings, for the systems in `rows` (a subset runs fewer lines)."""
    points = lambda x, y: 100 * (x - y)  # noqa: E731
    a, b, c = rows.get("a"), rows.get("b"), rows.get("c")
    lines = []
    for key in (key for key in "cfg" if key in rows):  # the three-task models against the targets
        r, label = rows[key], f"({key})"
        if b:
            lines.append(
                f"- Emotion macro-F1, three-task {label} vs emotion alone (b), thresholds tuned on dev: "
                f"{r['thresholds']['tuned_on_dev']:.4f} vs {b['thresholds']['tuned_on_dev']:.4f} "
                f"({points(r['thresholds']['tuned_on_dev'], b['thresholds']['tuned_on_dev']):+.2f} points; "
                f"cross-fitted {points(r['thresholds']['cross_fitted'], b['thresholds']['cross_fitted']):+.2f}; "
                "target: >= 0)."
            )
        for task in ("topic", "sentiment") if a else ():
            before, after = a["metrics"][f"eval_{task}_accuracy"], r["metrics"][f"eval_{task}_accuracy"]
            lines.append(
                f"- {task} accuracy, three-task {label} vs two-task (a): {after:.4f} vs {before:.4f} "
                f"({points(after, before):+.2f} points; target: within 0.5)."
            )
    for r in (rows[key] for key in CONTINUES_A if key in rows):
        old = ", ".join(
            f"{task} {a['metrics'][f'eval_{task}_accuracy']:.4f} -> {r['metrics'][f'eval_{task}_accuracy']:.4f}"
            for task in ("topic", "sentiment")
        )
        lines.append(
            f"- Adding emotion to (a), {r['system']}: old tasks' dev accuracy {old}; emotion macro-F1 "
            f"{r['thresholds']['tuned_on_dev']:.4f}; {r['trainable_parameters']:,} trainable parameters, "
            f"{r['train_runtime']:.0f} s of training ({r['wall']:.0f} s in all)."
        )
    if c:
        lines.append(
            f"- Anchor: BERT-base reaches macro-F1 {ANCHOR:.2f} on the GoEmotions test set (Demszky et al., 2020); "
            f"ours, (c) on dev: {c['thresholds']['tuned_on_dev']:.4f} tuned on dev, "
            f"{c['thresholds']['cross_fitted']:.4f} cross-fitted, {c['thresholds']['fixed_0.5']:.4f} at 0.5 (dev, not "
            "test: a rough comparison)."
        )
        lines.append(
            f"- Tuned thresholds over a fixed 0.5, (c): "
            f"{points(c['thresholds']['tuned_on_dev'], c['thresholds']['fixed_0.5']):+.2f} points tuned on dev "
            f"(optimistic), {points(c['thresholds']['cross_fitted'], c['thresholds']['fixed_0.5']):+.2f} cross-fitted; "
            f"{c['thresholds']['untuned_labels']} of 28 labels had fewer than {MIN_POSITIVES_TO_TUNE} dev positives and "
            "kept 0.5."
        )
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", level=logging.INFO)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = data_files(args, out)
    two, three, emotion = ["topic", "sentiment"], ["topic", "sentiment", "emotion"], ["emotion"]
    new = {"backbone": args.backbone}
    added = {"model_name_or_path": str(out / "a-two-task"), "add_tasks": schema(emotion), "freeze_heads": two}
    probe = {"freeze_backbone": True, "learning_rate": args.probe_learning_rate}
    systems = [  # key, what trains, train.py options (train tasks, validation tasks), freezing
        ("a", "topic, sentiment", options(args, files, out / "a-two-task", two, two, tasks=schema(two), **new), {}),
        ("b", "emotion", options(args, files, out / "b-emotion", emotion, emotion, tasks=schema(emotion), **new), {}),
        ("c", "topic, sentiment, emotion",
         {**options(args, files, out / "c-three-task", three, three, tasks=schema(three), **new),
          **args.three_task_options}, {}),
        ("d", "emotion head",
         options(args, files, out / "d-add-frozen", emotion, three, **added, **probe), {"backbone": True, "heads": two}),
        ("e", "encoder, emotion head",
         options(args, files, out / "e-add-unfrozen", emotion, three, **added), {"heads": two}),
        ("f", "encoder, all heads",
         {**options(args, files, out / "f-add-all-data", three, three, **{**added, "freeze_heads": []},
                    batch_by_task=True, distill_weight=args.distill_weight), **args.three_task_options}, {}),
        ("g", "encoder, all heads",
         options(args, files, out / "g-add-distilled", emotion, three, **{**added, "freeze_heads": []},
                 distill_weight=args.distill_weight), {}),
    ]  # fmt: skip
    wanted = set(args.systems) | ({"a"} if set(CONTINUES_A) & set(args.systems) else set())
    with ThreadPoolExecutor(max_workers=args.parallel) as pool:  # (d) to (g) start from (a): submitted after it
        futures = {}
        for key, trains, train_options, freezing in (system for system in systems if system[0] in wanted):
            name = SYSTEMS[key]
            start = futures["a"].result() if key in CONTINUES_A else None
            futures[key] = pool.submit(system, out, key, name, trains, train_options, freezing, files, args.seed, start)
        rows = {key: future.result() for key, future in futures.items()}

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else (platform.processor() or "CPU")
    capped = args.max_train_samples is not None or args.max_eval_samples is not None
    header = (
        f"Dev-set results, {time.strftime('%Y-%m-%d')}, {device}, torch {torch.__version__}; encoder {args.backbone}, "
        f"{args.epochs:g} epochs, lr {args.learning_rate:g} ((d): {args.probe_learning_rate:g}), (f), (g): distill weight "
        f"{args.distill_weight:g}, batch "
        f"{args.batch_size}, seed {args.seed}"
        + (f"; (c) and (f) with {json.dumps(args.three_task_options)}" if args.three_task_options else "")
        + (f"; {args.parallel} systems at a time (contended wall times)" if args.parallel > 1 else "")
        + (f"; SMOKE RUN, capped at {args.max_train_samples} train / {args.max_eval_samples} dev rows per task" if capped else "")
        + f".\nCommand: python -m benchmarks.emotion {' '.join(argv if argv is not None else sys.argv[1:])}\n"
    )  # fmt: skip
    table, notes = markdown(rows.values()), summary(rows)
    (out / "results.md").write_text(f"{header}\n{table}\n\n{notes}\n", encoding="utf-8")
    raw = {"args": vars(args), "device": device, "anchor_test_macro_f1": ANCHOR, "rows": list(rows.values())}
    (out / "results.json").write_text(json.dumps(raw, indent=2) + "\n", encoding="utf-8")
    print(header)
    print(table)
    print()
    print(notes)
    return rows


if __name__ == "__main__":
    main()
