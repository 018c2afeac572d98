"""ONNX Runtime (fp32 and int8 graphs of export_onnx.py) against PyTorch, for a model trained on the real data.

    python -m benchmarks.onnx_speed --data_dir ../shared/data --model runs/real-1ep

Exports the model first if it has no current export (into MODEL/onnx/, as export_onnx.py does). Then:
1. parity of the fp32 graph with PyTorch on the real dev sentences ({topic,sentiment}_dev.jsonl, every sentence through
   both heads): largest probability difference, identical labels, largest embedding difference;
2. accuracy per task of PyTorch, the fp32 and the int8 graph on the dev sets and the other-source dev sets
   ({task}_dev_ood.jsonl, when present);
3. speed on real sentences, both tasks, the systems interleaved in one process (see `interleaved`): sentences/s
   of `predict` at batch 32 (tokenisation and decoding included) and of the forward pass alone, median latency of
   `predict` on one sentence, file sizes (PyTorch also with 1 thread); then the forward pass of both graphs under
   ONNX Runtime's thread settings (1 or 2 intra-op threads, worker threads spinning or not) against PyTorch;
4. end to end: `predict.py --backend onnx-int8` against `--backend torch` over --e2e_sentences real sentences, a
   subprocess each (start-up, tokenisation and writing included).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import onnxruntime
import torch
from transformers import AutoTokenizer

from benchmarks.common import REPO
from benchmarks.speed import machine, real_sentences
from modeling_multitask import MultiTaskModel
from onnx_multitask import OnnxMultiTaskModel, export, graph_path, has_onnx, model_fingerprint, read_manifest


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--model", required=True, help="A model saved by train.py, trained on --data_dir.")
    parser.add_argument("--sentences", type=int, default=2000, help="Real sentences for the throughput runs.")
    parser.add_argument("--latency_sentences", type=int, default=200, help="Single-sentence calls per system.")
    parser.add_argument("--settings_sentences", type=int, default=1024, help="Sentences for the thread settings.")
    parser.add_argument("--e2e_sentences", type=int, default=5000, help="Lines for the predict.py runs; 0 skips them.")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: its own).")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def load_systems(model_dir, threads):
    manifest = read_manifest(model_dir)
    if not has_onnx(model_dir, quantized=True) or manifest["source"] != model_fingerprint(model_dir):
        start = time.perf_counter()
        export(model_dir)
        print(f"exported {model_dir} to ONNX in {time.perf_counter() - start:.1f} s", flush=True)
    return {
        "torch": MultiTaskModel.from_pretrained(model_dir).eval(),
        "onnx": OnnxMultiTaskModel.from_pretrained(model_dir, threads=threads),
        "onnx-int8": OnnxMultiTaskModel.from_pretrained(model_dir, quantized=True, threads=threads),
    }


def read_split(data_dir, task, split):
    """(texts, gold labels) of {task}_{split}.jsonl, or None when the file is absent."""
    path = Path(data_dir) / f"{task}_{split}.jsonl"
    if not path.is_file():
        return None
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [r["text"] for r in rows], [r["label"] for r in rows]


def outputs(model, tokenizer, texts, batch_size):
    """Every task's probabilities ((n, n_labels) each) and the embeddings (n, hidden), in input order."""
    probs = {task: torch.zeros(len(texts), len(labels)) for task, labels in model.config.tasks.items()}
    embeddings = torch.zeros(len(texts), model.config.hidden_size)
    for idx, logits, emb in model.iter_batches(texts, tokenizer, batch_size):
        for task, value in logits.items():
            probs[task][idx] = value.float().softmax(dim=-1)
        embeddings[idx] = emb
    return probs, embeddings


def parity(systems, tokenizer, data_dir, batch_size):
    texts = [t for task in ("topic", "sentiment") for t in read_split(data_dir, task, "dev")[0]]
    (p_torch, e_torch), (p_onnx, e_onnx) = (
        outputs(systems[s], tokenizer, texts, batch_size) for s in ("torch", "onnx")
    )
    print(f"\n1. parity, fp32 graph vs PyTorch, {len(texts):,} real dev sentences through every head")
    print("| task | max abs probability difference | identical labels |\n| --- | ---: | ---: |")
    worst = 0.0
    for task in p_torch:
        diff = float((p_torch[task] - p_onnx[task]).abs().max())
        same = int((p_torch[task].argmax(-1) == p_onnx[task].argmax(-1)).sum())
        worst = max(worst, diff)
        print(f"| {task} | {diff:.2e} | {same:,} / {len(texts):,} |")
    emb = float((e_torch - e_onnx).abs().max())
    print(f"embeddings: max abs difference {emb:.2e}")
    met = worst <= 1e-4 and emb <= 1e-4
    print(f"target (probabilities and embeddings <= 1e-4): {'met' if met else 'NOT met'}", flush=True)


def accuracy(systems, tokenizer, data_dir, batch_size):
    print("\n2. accuracy per task (each set labelled for its own task)")
    print("| set | task | sentences | torch | onnx fp32 | onnx int8 | int8 - torch (points) |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    worst = 0.0
    for split in ("dev", "dev_ood"):
        for task, labels in systems["torch"].config.tasks.items():
            data = read_split(data_dir, task, split)
            if data is None:
                print(f"| {split} | {task} | (no {task}_{split}.jsonl) | | | | |")
                continue
            texts, gold = data
            gold = torch.tensor([labels.index(g) for g in gold])
            acc = {}
            for name, model in systems.items():
                probs, _ = outputs(model, tokenizer, texts, batch_size)
                acc[name] = float((probs[task].argmax(-1) == gold).float().mean())
            drop = 100 * (acc["onnx-int8"] - acc["torch"])
            if split == "dev":
                worst = min(worst, drop)
            print(f"| {split} | {task} | {len(texts):,} | {acc['torch']:.4f} | {acc['onnx']:.4f} | "
                  f"{acc['onnx-int8']:.4f} | {drop:+.2f} |")  # fmt: skip
    print(f"target (int8 drop <= 0.5 points per task on dev): {'met' if worst >= -0.5 else 'NOT met'}", flush=True)


def interleaved(rounds, pieces, systems):
    """{name: median over `rounds` of the seconds `systems[name]` takes over all `pieces`}. The systems take turns piece
    by piece (their order rotating), not pass by pass: on a machine shared with other jobs, load that comes and goes
    then falls on every system alike instead of on whichever pass it coincides with."""
    times = {name: [] for name in systems}
    names = list(systems)
    for _ in range(rounds):
        total = dict.fromkeys(names, 0.0)
        for i, piece in enumerate(pieces):
            for name in names[i % len(names) :] + names[: i % len(names)]:
                start = time.perf_counter()
                systems[name](piece)
                total[name] += time.perf_counter() - start
        for name in names:
            times[name].append(total[name])
    return {name: statistics.median(t) for name, t in times.items()}


def one_thread(fn):
    """`fn` run with one PyTorch intra-op thread: a second PyTorch baseline, since two OpenMP threads lose most when
    the machine's two cores are also busy with other work."""

    def run(*args, **kwargs):
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return fn(*args, **kwargs)
        finally:
            torch.set_num_threads(threads)

    return run


def speed(args, systems, tokenizer):
    texts = real_sentences(args.data_dir, args.sentences, args.seed)
    bs = args.batch_size
    print(f"\n3. speed, {len(texts):,} real sentences (both tasks), batch {bs}, interleaved by {8 * bs} sentences, "
          f"median of {args.rounds} rounds; load average before: {os.getloadavg()[0]:.2f}")  # fmt: skip
    torch_model = systems["torch"]
    # name -> (predict, _run_batch); PyTorch twice: with its default threads, and with one
    calls = {name: (model.predict, model._run_batch) for name, model in systems.items()}
    calls = {"torch": calls.pop("torch"), "torch, 1 thread": (one_thread(torch_model.predict),
             one_thread(torch_model._run_batch)), **calls}  # fmt: skip
    for predict, _ in calls.values():  # warm-up: first calls allocate
        predict(texts[:bs], tokenizer, batch_size=bs)
    chunks = [texts[i : i + 8 * bs] for i in range(0, len(texts), 8 * bs)]  # predict sorts each chunk by length
    predicts = {name: (lambda chunk, p=p: p(chunk, tokenizer, batch_size=bs)) for name, (p, _) in calls.items()}

    def tokenise_only(chunk):
        chunk = sorted(chunk, key=len, reverse=True)
        return [torch_model.tokenize(chunk[i : i + bs], tokenizer) for i in range(0, len(chunk), bs)]

    predicts["tokenisation"] = tokenise_only
    full = interleaved(args.rounds, chunks, predicts)
    tokenise = full.pop("tokenisation")

    # the same length-sorted batches as predict, tokenised once: the forward pass alone
    encodings = [tokenise_only(chunk) for chunk in chunks]
    forward = interleaved(
        args.rounds, encodings, {n: (lambda es, r=r: [r(e) for e in es]) for n, (_, r) in calls.items()}
    )

    latency = {name: [] for name in calls}
    for text in texts[: args.latency_sentences]:
        for name, (predict, _) in calls.items():
            start = time.perf_counter()
            predict([text], tokenizer)
            latency[name].append(time.perf_counter() - start)

    weights = sum((Path(args.model) / f).stat().st_size for f in model_fingerprint(args.model) if f != "config.json")
    sizes = {
        "torch": weights,
        "torch, 1 thread": weights,
        "onnx": graph_path(args.model).stat().st_size,
        "onnx-int8": graph_path(args.model, quantized=True).stat().st_size,
    }
    n = len(texts)
    print(
        f"| system | predict, batch {bs} (sentences/s) | x torch | forward only (sentences/s) | x torch | "
        "tokenisation share of predict | latency, batch 1 (median ms) | x torch | model file (MB) |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    lat = {name: statistics.median(v) for name, v in latency.items()}
    for name in calls:
        print(f"| {name} | {n / full[name]:,.1f} | {full['torch'] / full[name]:.2f} | {n / forward[name]:,.1f} | "
              f"{forward['torch'] / forward[name]:.2f} | {tokenise / full[name]:.0%} | {1000 * lat[name]:.1f} | "
              f"{lat['torch'] / lat[name]:.2f} | {sizes[name] / 1e6:.1f} |")  # fmt: skip
    print(f"tokenisation alone: {n / tokenise:,.0f} sentences/s; load average after: {os.getloadavg()[0]:.2f}")
    for name, target in (("onnx", 1.8), ("onnx-int8", 3.5)):
        ratio, ratio_1 = full["torch"] / full[name], full["torch, 1 thread"] / full[name]
        print(f"target {name} >= {target}x torch at batch {bs}: {ratio:.2f}x, {'met' if ratio >= target else 'NOT met'}"
              f" ({ratio_1:.2f}x torch with 1 thread)")  # fmt: skip
    sys.stdout.flush()


def thread_settings(args, systems, tokenizer):
    """Forward-pass throughput of both graphs for each ONNX Runtime thread setting, and of PyTorch with 2 and 1
    threads as the reference, interleaved by 8 batches (a spinning session keeps spinning for a moment after its run,
    which would slow whichever system runs next if they took turns batch by batch)."""
    texts = sorted(real_sentences(args.data_dir, args.settings_sentences, args.seed), key=len, reverse=True)
    bs = args.batch_size
    torch_model = systems["torch"]
    runs = {("torch", 2, None): torch_model._run_batch, ("torch", 1, None): one_thread(torch_model._run_batch)}
    for quantized in (False, True):
        for threads in (1, 2):
            for spinning in (False, True):
                model = OnnxMultiTaskModel.from_pretrained(args.model, quantized, threads=threads, spinning=spinning)
                runs[("onnx-int8" if quantized else "onnx", threads, spinning)] = model._run_batch
    encodings = [torch_model.tokenize(texts[i : i + bs], tokenizer) for i in range(0, len(texts), bs)]
    for run in runs.values():
        run(encodings[0])  # warm-up
    pieces = [encodings[i : i + 8] for i in range(0, len(encodings), 8)]
    times = interleaved(args.rounds, pieces, {key: (lambda es, r=r: [r(e) for e in es]) for key, r in runs.items()})
    print(f"\nthread settings, forward pass only, {len(texts):,} real sentences, batch {bs}, interleaved by "
          f"{8 * bs} sentences (load average {os.getloadavg()[0]:.2f}):")  # fmt: skip
    print("| system | intra-op threads | ONNX Runtime spinning | sentences/s | x torch (2 threads) |")
    print("| --- | ---: | --- | ---: | ---: |")
    for (name, threads, spinning), seconds in times.items():
        spin = "-" if spinning is None else "on" if spinning else "off"
        ratio = times[("torch", 2, None)] / seconds
        print(f"| {name} | {threads} | {spin} | {len(texts) / seconds:,.1f} | {ratio:.2f} |")
    sys.stdout.flush()


def end_to_end(args):
    texts = real_sentences(args.data_dir, args.e2e_sentences, args.seed + 1)
    walls = {}
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "in.txt"
        source.write_text("".join(t.replace("\n", " ") + "\n" for t in texts), encoding="utf-8")
        for backend in ("torch", "onnx-int8"):
            output = Path(tmp) / f"{backend}.jsonl"
            command = [sys.executable, str(REPO / "predict.py"), "--model", str(args.model), "--input", str(source),
                       "--output", str(output), "--backend", backend, "--batch_size", str(args.batch_size)]  # fmt: skip
            start = time.perf_counter()
            result = subprocess.run(command, capture_output=True, text=True)
            walls[backend] = time.perf_counter() - start
            if result.returncode != 0:
                raise RuntimeError(f"predict.py --backend {backend} failed:\n{result.stderr[-3000:]}")
            assert sum(1 for _ in open(output, encoding="utf-8")) == len(texts)
    ratio = walls["torch"] / walls["onnx-int8"]
    print(f"\n4. predict.py end to end, {len(texts):,} real sentences (a subprocess each): "
          f"torch {walls['torch']:.1f} s "
          f"({len(texts) / walls['torch']:,.0f} lines/s), onnx-int8 {walls['onnx-int8']:.1f} s "
          f"({len(texts) / walls['onnx-int8']:,.0f} lines/s) -> {ratio:.2f}x "
          f"(target >= 2.5: {'met' if ratio >= 2.5 else 'NOT met'})", flush=True)  # fmt: skip


def main(argv=None):
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    systems = load_systems(args.model, args.threads)
    tokenizer = AutoTokenizer.from_pretrained(args.model, config=systems["torch"].config)
    threads = systems["onnx"].session.get_session_options().intra_op_num_threads
    print(f"machine: {machine()}; {os.cpu_count()} CPUs; onnxruntime {onnxruntime.__version__}, intra-op threads "
          f"{threads or 'default'}, spinning off; model: {args.model}", flush=True)  # fmt: skip
    parity(systems, tokenizer, args.data_dir, args.batch_size)
    accuracy(systems, tokenizer, args.data_dir, args.batch_size)
    speed(args, systems, tokenizer)
    thread_settings(args, systems, tokenizer)
    if args.e2e_sentences:
        end_to_end(args)


if __name__ == "__main__":
    main()
