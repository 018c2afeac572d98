"""Distilled students against their teacher: accuracy on the four dev columns and speed, torch fp32 and ONNX int8.

    python -m benchmarks.student --data_dir ../shared/data --output_dir runs/student --teacher runs/teacher

The teacher is a train.py model of the bundled encoder on both training sets (--teacher DIR; without it, the benchmark
trains one with train.py's defaults into OUTPUT_DIR/teacher). For each student depth (--layers, default 3 2), layer
choice (--layer_choices, default lowest) and seed (--seeds), up to three train.py runs with the same options:

- `distilled`: `--teacher DIR --student_layers N` on the labelled training data (the teacher's answers on every row
  plus the gold labels);
- `unlabelled`: the same plus --unlabelled_rows GoEmotions comments (`emotion_train.jsonl`, read as text only) as an
  `unlabelled=PATH` entry;
- `gold`: the control, the same student trained on the gold labels alone (`--distill_weight 0`), the same budget.

Every run reports the four dev columns: topic and sentiment, in-distribution (`*_dev.jsonl`) and other-source
(`*_dev_ood.jsonl`), accuracy. Then speed, teacher and one student per depth taking turns in one process
(benchmarks.onnx_speed.interleaved): `predict` on real sentences at batch 32 and at batch 1, each model in torch fp32
and in ONNX int8 (exported by onnx_multitask.export into MODEL/onnx/, the teacher's too), as sentences/s and as
ratios to the teacher in torch fp32. Targets (the default depth, 3): at most 1.0 point below the teacher on each
in-distribution column and 1.5 on each other-source one, at least 1 point above the gold-only control on the mean of
the four, torch fp32 >= 1.8x the teacher, ONNX int8 >= 6x the teacher in torch fp32.

Each finished run writes OUTPUT_DIR/runs/NAME.json and is read back by a re-run with the same settings (an
interrupted benchmark goes on where it stopped). The students of the first seed and variant are kept in
OUTPUT_DIR/models for the speed runs; the others are deleted unless --keep_models. Prints the tables and writes
results.md and results.json to --output_dir.
"""

import argparse
import json
import logging
import os
import random
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.common import load_saved_model, run_train, train_options_json
from benchmarks.onnx_speed import interleaved
from benchmarks.robustness import COLUMN_TITLES, COLUMNS, SETS, TASKS, data_file, dev_figures, run_options
from benchmarks.speed import machine, real_sentences
from distillation import DEFAULT_LAYER_CHOICE, LAYER_CHOICES
from multitask_data import load_split
from onnx_multitask import OnnxMultiTaskModel, export, has_onnx, model_fingerprint, read_manifest
from trainer_multitask import BUNDLED

logger = logging.getLogger("benchmarks.student")
VARIANTS = ("distilled", "unlabelled", "gold")
DEFAULT_DEPTH = 3  # the targets are the default student's
TARGETS = {"validation": 1.0, "ood": 1.5}  # most points below the teacher per column


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", required=True, help="Folder with {topic,sentiment}_{train,dev,dev_ood}.jsonl.")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--teacher", default=None, help="A trained model (train.py); default: trained here.")
    parser.add_argument("--backbone", default=BUNDLED, help="Encoder of the teacher trained here (no --teacher).")
    parser.add_argument("--layers", nargs="+", type=int, default=[3, 2], help="Student depths.")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS, metavar="VARIANT",
                        help=f"Runs per depth and seed: {', '.join(VARIANTS)}.")  # fmt: skip
    parser.add_argument("--seeds", nargs="+", type=int, default=[42, 43])
    parser.add_argument("--layer_choices", nargs="+", default=[DEFAULT_LAYER_CHOICE], metavar="CHOICE",
                        help=f"train.py --student_layer_choice values to compare: {', '.join(LAYER_CHOICES)} or "
                        "indices such as 0,2,4 (one depth then).")  # fmt: skip
    parser.add_argument("--unlabelled_rows", type=int, default=10_000,
                        help="GoEmotions comments (emotion_train.jsonl) read as unlabelled text.")  # fmt: skip
    parser.add_argument("--epochs", type=float, default=5.0, help="Training epochs of every run (train.py's default).")
    parser.add_argument("--student_options", default="{}", metavar="JSON",
                        help="More train.py options for every student run, as a JSON object.")  # fmt: skip
    parser.add_argument("--max_train_samples", type=int, default=None, help="Per task; for smoke runs.")
    parser.add_argument("--max_eval_samples", type=int, default=None, help="Per task and set; for smoke runs.")
    parser.add_argument("--speed_sentences", type=int, default=2000, help="Real sentences at batch 32; 0: no speed.")
    parser.add_argument("--latency_sentences", type=int, default=200, help="Real sentences at batch 1.")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--keep_models", action="store_true", help="Keep every student in OUTPUT_DIR/models.")
    args = parser.parse_args(argv)
    args.student_options = train_options_json(parser, "--student_options", args.student_options)
    for name in ("unlabelled_rows", "rounds", "batch_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if min(args.layers) < 1:
        parser.error(f"--layers: every depth must be >= 1, got {args.layers}")
    return args


def unlabelled_file(args):
    """OUTPUT_DIR/unlabelled.jsonl: --unlabelled_rows GoEmotions comments (a seeded sample), text only."""
    path = Path(args.output_dir) / f"unlabelled-{args.unlabelled_rows}.jsonl"
    if not path.is_file():
        source = Path(args.data_dir) / "emotion_train.jsonl"
        if not source.is_file():
            raise SystemExit(f"error: {source}: not found; the unlabelled variant reads its comments as text")
        with open(source, encoding="utf-8") as f:
            texts = [json.loads(line)["text"] for line in f if line.strip()]
        texts = random.Random(0).sample(texts, min(args.unlabelled_rows, len(texts)))
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
        os.replace(tmp, path)
    return path


def teacher_dir(args):
    """The teacher's folder: --teacher, or OUTPUT_DIR/teacher trained here with train.py's defaults (once)."""
    if args.teacher:
        return Path(args.teacher)
    out = Path(args.output_dir) / "teacher"
    if not (out / "config.json").is_file():
        logger.info("training the teacher (train.py's defaults) into %s", out)
        run_train({**run_options(args, {}, TASKS, args.seeds[0], out), "eval_file": []})
    return out


def student_runs(args):
    """(name, train.py options, seed) of every student run, in the order they run."""
    plan = []
    for depth in args.layers:
        for choice in args.layer_choices:
            for seed in args.seeds:
                for variant in args.variants:
                    options = {"student_layers": depth, "student_layer_choice": choice, **args.student_options}
                    if variant == "gold":
                        options["distill_weight"] = 0.0
                    name = f"{variant}-L{depth}-{choice.replace(',', '_')}-seed{seed}"
                    plan.append((name, variant, depth, choice, options, seed))
    return plan


def train_student(args, teacher, name, variant, options, seed, keep):
    """One student's train.py run, or its stored result: `{"dev": {task: {set: [acc, f1]}}, "wall", ...}`."""
    out = Path(args.output_dir)
    record_path = out / "runs" / f"{name}.json"
    settings = run_options(args, {"backbone": BUNDLED, "teacher": str(teacher), **options}, TASKS, seed,
                           out / "models" / name)  # fmt: skip
    if variant == "unlabelled":
        settings["train_file"] = [*settings["train_file"], f"unlabelled={unlabelled_file(args)}"]
    model_dir = Path(settings["output_dir"])
    if record_path.is_file():
        record = json.loads(record_path.read_text(encoding="utf-8"))
        if record["settings"] == settings and (not keep or (model_dir / "config.json").is_file()):
            return record, True
    start = time.perf_counter()
    metrics = run_train(settings)
    record = {
        "settings": settings,
        "dev": {t: {s: [metrics[f"eval_{s}_{t}_accuracy"], metrics[f"eval_{s}_{t}_f1"]] for s in SETS} for t in TASKS},
        "wall": time.perf_counter() - start,
        "train_examples": round(metrics["train_samples_per_second"] * metrics["train_runtime"]),
    }
    record_path.parent.mkdir(parents=True, exist_ok=True)
    record_path.write_text(json.dumps(record, indent=1), encoding="utf-8")
    if not keep:
        shutil.rmtree(model_dir, ignore_errors=True)
    return record, False


def teacher_figures(args, teacher):
    """The teacher's four dev columns, as the students' are evaluated (the same files and caps)."""
    model, tokenizer = load_saved_model(teacher)
    cap = args.max_eval_samples and args.max_eval_samples * len(TASKS)
    tasks = dict(model.config.tasks)
    sets = {
        "validation": [f"{t}={data_file(args, t, SETS['validation'])}" for t in TASKS],
        "ood": [f"{t}={data_file(args, t, SETS['ood'])}" for t in TASKS],
    }
    return dev_figures(model, tokenizer, {name: load_split(entries, tasks, cap) for name, entries in sets.items()})


def accuracy_table(teacher_dev, records):
    """Markdown: one row per run (and per group, the mean over seeds), the four columns, their mean."""
    head = " | ".join(f"{task} {COLUMN_TITLES[s]}" for task, s in COLUMNS)
    lines = [
        f"| model | layers | layer choice | seed | {head} | mean of 4 |",
        "| --- | ---: | --- | ---: |" + " ---: |" * 5,
    ]

    def row(label, depth, choice, seed, dev):
        cells = [dev[task][s][0] for task, s in COLUMNS]
        return (
            f"| {label} | {depth} | {choice} | {seed} | "
            + " | ".join(f"{c:.4f}" for c in cells)
            + f" | {np.mean(cells):.4f} |"
        )

    lines.append(row("teacher", "all", "-", "-", teacher_dev))
    for (variant, depth, choice), runs in records.items():
        for seed, record in runs:
            lines.append(row(variant, depth, choice, seed, record["dev"]))
        if len(runs) > 1:
            lines.append(row(f"**{variant}, mean**", depth, choice, "all", mean_dev([r for _, r in runs])))
    return "\n".join(lines)


def mean_dev(records):
    return {t: {s: [float(np.mean([r["dev"][t][s][i] for r in records])) for i in (0, 1)] for s in SETS} for t in TASKS}


def targets(teacher_dev, records, depth):
    """The accuracy targets of the default depth's students, one line each."""
    lines = []
    means = {key[0]: mean_dev([r for _, r in runs]) for key, runs in records.items() if key[1] == depth}
    four = lambda dev: 100 * np.mean([dev[t][s][0] for t, s in COLUMNS])  # noqa: E731
    for variant in ("distilled", "unlabelled"):
        if variant not in means:
            continue
        gaps = {f"{t} {COLUMN_TITLES[s]}": 100 * (means[variant][t][s][0] - teacher_dev[t][s][0]) for t, s in COLUMNS}
        worst = [f"{c} {g:+.2f}" for c, g in gaps.items() if g < -TARGETS["ood" if "other" in c else "validation"]]
        lines.append(f"target {variant} L{depth} vs teacher (<= 1.0 below in-distribution, 1.5 other-source): "
                     f"{'met' if not worst else 'NOT met (' + ', '.join(worst) + ')'}; "
                     + ", ".join(f"{c} {g:+.2f}" for c, g in gaps.items()))  # fmt: skip
        if "gold" in means:
            gain = four(means[variant]) - four(means["gold"])
            lines.append(f"target {variant} L{depth} vs gold-only control (mean of 4 >= +1.0 point): {gain:+.2f}, "
                         f"{'met' if gain >= 1.0 else 'NOT met'}")  # fmt: skip
    return lines


def ensure_onnx(model_dir):
    manifest = read_manifest(model_dir)
    if not has_onnx(model_dir, quantized=True) or manifest["source"] != model_fingerprint(model_dir):
        export(model_dir)


def speed(args, teacher, students):
    """Sentences/s of `predict` at batch --batch_size and at batch 1, the teacher and `students` ({depth: folder})
    taking turns, in torch fp32 and ONNX int8. Returns (markdown, target lines, {system: {batch: sentences/s}})."""
    models = {"teacher": Path(teacher), **{f"student L{depth}": Path(d) for depth, d in students.items()}}
    for model_dir in models.values():
        ensure_onnx(model_dir)
    _, tokenizer = load_saved_model(teacher)
    systems = {}
    for name, model_dir in models.items():
        systems[f"{name}, torch fp32"] = load_saved_model(model_dir)[0].to("cpu")
        systems[f"{name}, onnx int8"] = OnnxMultiTaskModel.from_pretrained(model_dir, quantized=True)
    texts = real_sentences(args.data_dir, args.speed_sentences, 0)
    bs = args.batch_size
    for model in systems.values():  # warm-up: first calls allocate
        model.predict(texts[:bs], tokenizer, batch_size=bs)
    chunks = [texts[i : i + 8 * bs] for i in range(0, len(texts), 8 * bs)]
    calls = {name: (lambda chunk, m=m: m.predict(chunk, tokenizer, batch_size=bs)) for name, m in systems.items()}
    batched = interleaved(args.rounds, chunks, calls)
    singles = [[t] for t in texts[: args.latency_sentences]]
    ones = {name: (lambda piece, m=m: m.predict(piece, tokenizer, batch_size=1)) for name, m in systems.items()}
    single = interleaved(args.rounds, singles, ones)
    rates = {name: {bs: len(texts) / batched[name], 1: len(singles) / single[name]} for name in systems}
    base = rates["teacher, torch fp32"]
    lines = [
        f"| system | batch {bs} (sentences/s) | x teacher torch fp32 | batch 1 (sentences/s) | x teacher torch fp32 |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, rate in rates.items():
        lines.append(
            f"| {name} | {rate[bs]:,.1f} | {rate[bs] / base[bs]:.2f} | {rate[1]:,.1f} | {rate[1] / base[1]:.2f} |"
        )
    checks = []
    if DEFAULT_DEPTH in students:
        for system, target in (
            (f"student L{DEFAULT_DEPTH}, torch fp32", 1.8),
            (f"student L{DEFAULT_DEPTH}, onnx int8", 6.0),
        ):
            ratio = rates[system][bs] / base[bs]
            checks.append(f"target {system} >= {target}x teacher torch fp32 at batch {bs}: {ratio:.2f}x, "
                          f"{'met' if ratio >= target else 'NOT met'} (batch 1: {rates[system][1] / base[1]:.2f}x)")  # fmt: skip
    return "\n".join(lines), checks, rates


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", level=logging.INFO)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    teacher = teacher_dir(args)
    plan = student_runs(args)
    logger.info("teacher %s; %d student runs", teacher, len(plan))
    records, speed_models = {}, {}
    for i, (name, variant, depth, choice, options, seed) in enumerate(plan, start=1):
        keep = args.keep_models or (depth not in speed_models and choice == args.layer_choices[0])
        record, stored = train_student(args, teacher, name, variant, options, seed, keep)
        if keep and depth not in speed_models:
            speed_models[depth] = record["settings"]["output_dir"]
        records.setdefault((variant, depth, choice), []).append((seed, record))
        figures = ", ".join(f"{t} {COLUMN_TITLES[s]} {record['dev'][t][s][0]:.4f}" for t, s in COLUMNS)
        logger.info("[%d/%d] %s: %s; %.0f s%s", i, len(plan), name, figures, record["wall"],
                    " (stored result)" if stored else "")  # fmt: skip
    teacher_dev = teacher_figures(args, teacher)
    table = accuracy_table(teacher_dev, records)
    checks = targets(teacher_dev, records, DEFAULT_DEPTH) if DEFAULT_DEPTH in args.layers else []
    speed_table, rates = "", {}
    if args.speed_sentences:
        speed_table, speed_checks, rates = speed(args, teacher, speed_models)
        checks += speed_checks
    header = (
        f"Students of {teacher} ({', '.join(args.variants)}), {args.epochs:g} epochs, seeds {args.seeds}; "
        f"{time.strftime('%Y-%m-%d')}, {machine()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}.\n"
        f"Command: python -m benchmarks.student {' '.join(argv if argv is not None else sys.argv[1:])}\n"
    )
    speed_part = (
        f"\nSpeed, `predict` on {args.speed_sentences:,} real sentences (batch {args.batch_size}) and "
        f"{args.latency_sentences:,} (batch 1), systems taking turns, median of {args.rounds} rounds:\n\n{speed_table}\n"
        if speed_table
        else ""
    )
    text = f"{header}\nDev accuracy:\n\n{table}\n{speed_part}\n" + "\n".join(checks) + "\n"
    (out / "results.md").write_text(text, encoding="utf-8")
    runs = {f"{v}-L{d}-{c}": [dict(r, seed=s) for s, r in rs] for (v, d, c), rs in records.items()}
    (out / "results.json").write_text(
        json.dumps({"teacher": str(teacher), "teacher_dev": teacher_dev, "runs": runs, "speed": rates}, indent=1),
        encoding="utf-8",
    )
    print(text)
    return records


if __name__ == "__main__":
    main()
