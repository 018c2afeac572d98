"""Speed and memory of the multi-task model, each against a baseline measured in the same process.

    python -m benchmarks.speed --data_dir ../shared/data

On real sentences from --data_dir (their real length distribution) and the bundled encoder:
1. training throughput, multi-task model vs one AutoModelForSequenceClassification, on the same batches;
2. inference for both tasks: multi-task model (one pass) vs two single-task models run one after the other;
3. `MultiTaskModel.encode` vs `SentenceTransformer.encode` on the same encoder;
4. dynamic padding of length-sorted batches vs every batch padded to 128 tokens;
5. peak RSS of predict.py over files of --memory_lines / 10 and --memory_lines lines (flat = streaming).
With a CUDA device (or --gpu_config_check on CPU, tiny), also bf16 training throughput and model-FLOPs utilisation of
a DistilBERT-base-sized model with random weights. Each measurement alternates the two systems over several rounds
and keeps the median, so slow drift on a shared machine hits both alike. Prints every ratio with absolute figures.
"""

import argparse
import json
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, DistilBertConfig

from benchmarks.common import REPO
from configuration_multitask import DEFAULT_TASKS, MultiTaskConfig
from modeling_multitask import MultiTaskModel
from trainer_multitask import bundled_encoder_path

H100_BF16_DENSE_FLOPS = 989e12


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--encoder", default=None, help="Default: the bundled all-MiniLM-L6-v2.")
    parser.add_argument("--train_sentences", type=int, default=512)
    parser.add_argument("--infer_sentences", type=int, default=2000)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--memory_lines", type=int, default=100_000, help="0 skips the memory measurement.")
    parser.add_argument("--gpu_config_check", action="store_true", help="Run the GPU section on CPU, tiny, as a check.")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def real_sentences(data_dir, n, seed):
    texts = []
    for task in DEFAULT_TASKS:
        with open(Path(data_dir) / f"{task}_train.jsonl", encoding="utf-8") as f:
            texts += [json.loads(line)["text"] for line in f if line.strip()]
    rng = random.Random(seed)
    return [rng.choice(texts) for _ in range(n)]


def machine():
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}; torch {torch.__version__}, {torch.get_num_threads()} threads"


def alternate(rounds, **systems):
    """Run each system once per round, alternating; return {name: median seconds}."""
    times = {name: [] for name in systems}
    for _ in range(rounds):
        for name, fn in systems.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def report(title, n, unit, new, base, new_name, base_name, target=None):
    ratio = base / new
    line = f"{title}: {new_name} {n / new:,.1f} {unit}/s vs {base_name} {n / base:,.1f} {unit}/s -> ratio {ratio:.3f}"
    if target is not None:
        line += f" (target >= {target}: {'met' if ratio >= target else 'NOT met'})"
    print(line, flush=True)
    return ratio


def batches(tokenizer, texts, batch_size, padding=True, max_length=128):
    return [
        tokenizer(
            texts[i : i + batch_size], padding=padding, truncation=True, max_length=max_length, return_tensors="pt"
        )
        for i in range(0, len(texts), batch_size)
    ]


def training_throughput(args, encoder, tokenizer, texts):
    rng = random.Random(args.seed)
    data = batches(tokenizer, texts, args.batch_size)
    labels = [{task: torch.tensor([rng.randrange(len(labels)) for _ in range(len(b["input_ids"]))])
               for task, labels in DEFAULT_TASKS.items()} for b in data]  # fmt: skip
    multi = MultiTaskModel.from_backbone(encoder).train()
    single = AutoModelForSequenceClassification.from_pretrained(encoder, num_labels=3).train()
    opt_multi = torch.optim.AdamW(multi.parameters(), lr=1e-5)
    opt_single = torch.optim.AdamW(single.parameters(), lr=1e-5)

    def epoch(model, opt, multitask):
        for batch, y in zip(data, labels, strict=True):
            if multitask:
                loss = model(**batch, labels_topic=y["topic"], labels_sentiment=y["sentiment"]).loss
            else:
                loss = model(**batch, labels=y["topic"]).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

    epoch(multi, opt_multi, True)  # warm-up
    epoch(single, opt_single, False)
    t = alternate(
        args.rounds, multi=lambda: epoch(multi, opt_multi, True), single=lambda: epoch(single, opt_single, False)
    )
    return report("1. training throughput (both tasks vs one task)", len(texts), "examples",
                  t["multi"], t["single"], "multi-task", "single-task", target=0.95)  # fmt: skip


@torch.inference_mode()
def classify_single(model, tokenizer, texts, batch_size):
    """The same length-sorted batching as MultiTaskModel.predict, for a single-task model."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]), reverse=True)
    out = [None] * len(texts)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        batch = tokenizer([texts[i] for i in idx], padding=True, truncation=True, max_length=512, return_tensors="pt")
        scores, ids = model(**batch).logits.softmax(-1).max(-1)
        for row, i in enumerate(idx):
            out[i] = (ids[row].item(), scores[row].item())
    return out


def inference(args, encoder, tokenizer, texts):
    multi = MultiTaskModel.from_backbone(encoder).eval()
    singles = [AutoModelForSequenceClassification.from_pretrained(encoder, num_labels=len(v)).eval() for v in DEFAULT_TASKS.values()]  # fmt: skip
    bs = args.batch_size
    t = alternate(
        args.rounds,
        multi=lambda: multi.predict(texts, tokenizer, batch_size=bs),
        two=lambda: [classify_single(m, tokenizer, texts, bs) for m in singles],
    )
    r1 = report("2. inference, both tasks", len(texts), "sentences", t["multi"], t["two"],
                "multi-task (1 pass)", "two single-task models", target=1.8)  # fmt: skip

    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(encoder, device="cpu")
    t = alternate(
        args.rounds,
        ours=lambda: multi.encode(texts, tokenizer, batch_size=bs, normalize=True),
        st=lambda: st.encode(texts, batch_size=bs, normalize_embeddings=True, convert_to_tensor=True),
    )
    r2 = report("3. encode", len(texts), "sentences", t["ours"], t["st"], "MultiTaskModel.encode",
                "SentenceTransformer.encode", target=0.95)  # fmt: skip

    sorted_texts = sorted(texts, key=len, reverse=True)
    dynamic = batches(tokenizer, sorted_texts, bs)
    fixed_length = min(128, multi.config.backbone_config.max_position_embeddings)
    fixed = batches(tokenizer, sorted_texts, bs, padding="max_length", max_length=fixed_length)
    run = lambda bs_: [multi(**b) for b in bs_]  # noqa: E731
    with torch.inference_mode():
        t = alternate(args.rounds, dynamic=lambda: run(dynamic), fixed=lambda: run(fixed))
    real = sum(int(b["attention_mask"].sum()) for b in dynamic)
    padded = sum(b["input_ids"].numel() for b in dynamic)
    print(f"   dynamic padding: {padded / len(texts):.1f} tokens/sentence ({real / padded:.0%} real) vs {fixed_length}")
    r3 = report("4. padding, forward only", len(texts), "sentences", t["dynamic"], t["fixed"],
                "dynamic + length-sorted", f"padded to {fixed_length}")  # fmt: skip
    return r1, r2, r3


def peak_rss(args, encoder, tokenizer, sentences):
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model_dir = tmp / "model"
        MultiTaskModel.from_backbone(encoder).save_pretrained(model_dir)
        tokenizer.save_pretrained(model_dir)
        results = {}
        for n in (args.memory_lines // 10, args.memory_lines):
            src = tmp / f"in-{n}.txt"
            with open(src, "w", encoding="utf-8") as f:
                for i in range(n):
                    f.write(sentences[i % len(sentences)] + "\n")
            code = (
                "import resource, subprocess, sys; "
                f"r = subprocess.run([sys.executable, {str(REPO / 'predict.py')!r}, '--model', {str(model_dir)!r}, "
                f"'--input', {str(src)!r}, '--output', {str(tmp / f'out-{n}.jsonl')!r}], capture_output=True); "
                "assert r.returncode == 0, r.stderr.decode()[-2000:]; "
                "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
            )
            start = time.perf_counter()
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
            wall = time.perf_counter() - start
            lines = sum(1 for _ in open(tmp / f"out-{n}.jsonl", encoding="utf-8"))
            results[n] = int(out.stdout.strip()) / 1024
            print(f"5. predict.py over {n:,} lines: peak RSS {results[n]:,.0f} MiB, {lines:,} output lines, "
                  f"{n / wall:,.0f} lines/s", flush=True)  # fmt: skip
        small, large = results[args.memory_lines // 10], results[args.memory_lines]
        print(f"   peak RSS ratio {args.memory_lines:,} vs {args.memory_lines // 10:,} lines: {large / small:.3f} "
              f"(1.0 = flat in N)", flush=True)  # fmt: skip


def gpu_training(args, tiny=False):
    device = "cuda" if torch.cuda.is_available() and not tiny else "cpu"
    if tiny:
        backbone = DistilBertConfig(vocab_size=1000, dim=64, n_layers=2, n_heads=2, hidden_dim=128)
        batch, seq, steps = 4, 32, 3
    else:
        backbone = DistilBertConfig()  # DistilBERT-base size: 6 layers, 768 hidden, random weights
        batch, seq, steps = 64, 128, 30
    model = MultiTaskModel(MultiTaskConfig(backbone_config=backbone)).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=device == "cuda")
    ids = torch.randint(backbone.vocab_size // 30, backbone.vocab_size, (batch, seq), device=device)  # no special ids
    y = {f"labels_{t}": torch.randint(0, len(v), (batch,), device=device) for t, v in DEFAULT_TASKS.items()}

    def step():
        with torch.autocast(device_type=device, dtype=torch.bfloat16):
            loss = model(input_ids=ids, **y).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(3):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    # model FLOPs: 6 * non-embedding parameters * tokens, plus attention scores (12 * layers * hidden * seq^2 * batch)
    n_params = sum(p.numel() for n, p in model.named_parameters() if "embeddings" not in n)
    flops = 6 * n_params * batch * seq * steps + 12 * backbone.n_layers * backbone.dim * seq * seq * batch * steps
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu (check only)"
    print(f"6. bf16 training, DistilBERT-base-sized multi-task model on {name}: {batch * steps / seconds:,.1f} "
          f"examples/s, seq {seq}, batch {batch}, {flops / seconds / 1e12:.1f} TFLOP/s model FLOPs"
          + (f", MFU {flops / seconds / H100_BF16_DENSE_FLOPS:.1%} of H100 bf16 dense peak" if device == "cuda" else ""))  # fmt: skip


def main(argv=None):
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    encoder = args.encoder or bundled_encoder_path()
    tokenizer = AutoTokenizer.from_pretrained(encoder)
    print(f"machine: {machine()}; encoder: {encoder}", flush=True)
    training_throughput(args, encoder, tokenizer, real_sentences(args.data_dir, args.train_sentences, args.seed))
    inference(args, encoder, tokenizer, real_sentences(args.data_dir, args.infer_sentences, args.seed + 1))
    if args.memory_lines:
        peak_rss(args, encoder, tokenizer, real_sentences(args.data_dir, 20_000, args.seed + 2))
    if torch.cuda.is_available() or args.gpu_config_check:
        gpu_training(args, tiny=not torch.cuda.is_available())


if __name__ == "__main__":
    main()
