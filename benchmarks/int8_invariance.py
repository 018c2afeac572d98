"""Does a sentence's answer depend on the other sentences of its batch? fp32, the export's int8 and onnxruntime's dynamic
int8 (the method the export used before), each sentence labelled alone and inside one batch.

    python -m benchmarks.int8_invariance --data_dir ../shared/data --model runs/real-1ep

The model needs an ONNX export (`python export_onnx.py --model DIR`). The dynamic int8 graph is made from the export's
fp32 graph into a temporary folder, as `quantize_dynamic` (per-channel int8 weights, MatMul and Gather) made it. Reads
`--sentences` real dev sentences, half SST-2 and half headlines; prints, per graph, the largest difference of any
task's probabilities between alone and batched, and how many labels differ; then the graphs' speed taking turns
(sentences/s of the forward pass on pre-tokenised batches of 32 and of 1, `--speed_sentences` real sentences, the
median of `--rounds`), so the int8 methods' cost is compared in one run.
"""

import argparse
import itertools
import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnxruntime.quantization import QuantType, quantize_dynamic

from configuration_multitask import MultiTaskConfig
from modeling_multitask import load_saved_tokenizer
from onnx_multitask import graph_path, read_manifest


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data_dir", required=True)
    p.add_argument("--model", required=True, help="A model directory with an ONNX export.")
    p.add_argument("--sentences", type=int, default=64, help="Half from sentiment_dev, half from topic_dev.")
    p.add_argument("--speed_sentences", type=int, default=1024, help="Sentences for the speed part; 0 skips it.")
    p.add_argument("--rounds", type=int, default=5)
    return p.parse_args(argv)


def read_texts(path, n=None):
    """The `text` of the first `n` lines of a JSONL file (every line when n is None)."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in itertools.islice(f, n)]


def probabilities(session, tokenizer, names, texts):
    """Every task's softmax for `texts` run as one batch (the last output, the embeddings, left out)."""
    encoding = tokenizer(texts, padding=True, truncation=True, max_length=128, return_tensors="np")
    logits = session.run(None, {name: encoding[name].astype(np.int64) for name in names})[:-1]
    return [np.exp(x - x.max(1, keepdims=True)) / np.exp(x - x.max(1, keepdims=True)).sum(1, keepdims=True)
            for x in logits]  # fmt: skip


def compare(session, tokenizer, names, texts):
    one_by_one = [probabilities(session, tokenizer, names, [t]) for t in texts]
    alone = [np.concatenate(parts) for parts in zip(*one_by_one, strict=True)]
    batched = probabilities(session, tokenizer, names, texts)
    difference = max(float(np.abs(a - b).max()) for a, b in zip(alone, batched, strict=True))
    flips = sum(int((a.argmax(1) != b.argmax(1)).sum()) for a, b in zip(alone, batched, strict=True))
    return difference, flips, sum(len(a) for a in alone)


def speeds(sessions, tokenizer, names, texts, rounds):
    """{graph: {batch: sentences/s}}: each graph in turn on the same pre-tokenised batches, median of `rounds`."""
    batches = {}
    for size in (32, 1):
        chunk = texts if size == 32 else texts[:128]
        batches[size] = [{name: enc[name].astype(np.int64) for name in names}
                         for enc in (tokenizer(chunk[i : i + size], padding=True, truncation=True, max_length=128,
                                               return_tensors="np") for i in range(0, len(chunk), size))]  # fmt: skip
    times = {graph: {size: [] for size in batches} for graph in sessions}
    for _ in range(rounds):
        for size, feeds in batches.items():
            for graph, session in sessions.items():
                start = time.perf_counter()
                for feed in feeds:
                    session.run(None, feed)
                times[graph][size].append(sum(len(f[names[0]]) for f in feeds) / (time.perf_counter() - start))
    return {graph: {size: float(np.median(v)) for size, v in by_size.items()} for graph, by_size in times.items()}


def main(argv=None):
    args = parse_args(argv)
    manifest = read_manifest(args.model)
    if manifest is None:
        raise SystemExit(f"error: {args.model}: no ONNX export; run python export_onnx.py --model {args.model}")
    half = args.sentences // 2
    data = Path(args.data_dir)
    texts = read_texts(data / "sentiment_dev.jsonl", half) + read_texts(data / "topic_dev.jsonl", half)
    tokenizer = load_saved_tokenizer(args.model, MultiTaskConfig.from_pretrained(args.model))
    names = manifest["inputs"]
    logging.getLogger().setLevel(logging.ERROR)  # the quantiser's advice on pre-processing
    print("| graph | largest probability difference, alone vs batched | labels that differ |")
    print("| --- | ---: | ---: |")
    with tempfile.TemporaryDirectory() as tmp:
        dynamic = Path(tmp) / "dynamic_int8.onnx"
        quantize_dynamic(str(graph_path(args.model)), str(dynamic), weight_type=QuantType.QInt8, per_channel=True,
                         op_types_to_quantize=["MatMul", "Gather"])  # fmt: skip
        graphs = {
            "fp32": graph_path(args.model),
            "int8, dynamic quantisation (the export before 2026-12-03)": dynamic,
            f"int8, the export ({manifest.get('quantization', '?').split(':')[0]})": graph_path(args.model, True),
        }
        options = ort.SessionOptions()
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # as OnnxMultiTaskModel runs
        sessions = {name: ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
                    for name, path in graphs.items()}  # fmt: skip
        for name, session in sessions.items():
            difference, flips, labels = compare(session, tokenizer, names, texts)
            print(f"| {name} | {difference:.2e} | {flips} of {labels} |", flush=True)
        if args.speed_sentences > 0:
            pool = read_texts(data / "sentiment_dev.jsonl") + read_texts(data / "topic_dev.jsonl")
            pool = [pool[i % len(pool)] for i in range(args.speed_sentences)]
            result = speeds(sessions, tokenizer, names, pool, args.rounds)
            base = result["fp32"]
            print(f"\nspeed, forward pass, {len(pool)} real sentences, median of {args.rounds} rounds taking turns")
            print("| graph | batch 32 (sentences/s) | x fp32 | batch 1 (sentences/s) | x fp32 |")
            print("| --- | ---: | ---: | ---: | ---: |")
            for name, r in result.items():
                print(f"| {name} | {r[32]:.1f} | {r[32] / base[32]:.2f} | {r[1]:.1f} | {r[1] / base[1]:.2f} |")


if __name__ == "__main__":
    main()
