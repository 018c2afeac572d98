"""`predict.py --engine ray` (1 and 2 replicas on a local Ray) against single-process predict.py, on real sentences.

    python -m benchmarks.ray_predict --data_dir ../shared/data --model runs/real-1ep --sentences 5000

Every system is the real command in a subprocess, on the same JSONL input of real sentences ({topic,sentiment}_train
drawn with a seed), the same backend and batch size. Start-up is measured apart: each system runs twice, on the full
input (N rows) and on a small one (n rows: one shard per replica), and

    rows/s once started = (N - n) / (T(N) - T(n)),        start-up = T(n) - n / (rows/s)

so the start of Python, of Ray (for a local Ray: the node, then the replicas loading the model) and the model load
drop out of the rate. The target on the 2-core machine: Ray with one replica at >= 0.8x predict.py's rows/s once
started (the engine's own overhead: planning, scheduling, moving shards through the object store, writing).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import REPO
from benchmarks.speed import machine, real_sentences

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0"}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--model", required=True, help="A model saved by train.py.")
    parser.add_argument("--sentences", type=int, default=5000, help="Rows of the full input (N).")
    parser.add_argument("--rows_per_shard", type=int, default=500, help="Ray shards; the small input is one a replica.")
    parser.add_argument("--replicas", default="1,2", help="Comma-separated replica counts for --engine ray.")
    parser.add_argument("--backend", default="torch", choices=("torch", "onnx", "onnx-int8"))
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=1800, help="Seconds allowed for one run.")
    return parser.parse_args(argv)


def timed_run(command, timeout):
    """Seconds of one command (which must succeed)."""
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=ENV, cwd=REPO, timeout=timeout)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"error: {' '.join(command[:4])} ... failed: {result.stderr.strip().splitlines()[-1:]}")
    return seconds


def count_rows(output):
    """Rows written: of a JSONL file, or of every shard of a folder."""
    files = sorted(output.glob("shard-*")) if output.is_dir() else [output]
    return sum(f.read_bytes().count(b"\n") for f in files)


def measure(name, command_for, sizes, inputs, work, timeout):
    """{name, start-up, rows/s} from a run on the small and on the full input (each checked to write every row)."""
    seconds = {}
    for size in sizes:
        output = work / f"{name.replace(' ', '-')}-{size}"
        seconds[size] = timed_run(command_for(inputs[size], output), timeout)
        assert count_rows(output) == size, f"{name}: {count_rows(output)} rows written of {size}"
        shutil.rmtree(output) if output.is_dir() else output.unlink()
    small, full = sizes
    rate = (full - small) / max(seconds[full] - seconds[small], 1e-9)
    return {"system": name, "startup_s": seconds[small] - small / rate, "rows_per_s": rate, "total_s": seconds[full]}


def main(argv=None):
    args = parse_args(argv)
    replicas = [int(r) for r in args.replicas.split(",") if r]
    texts = real_sentences(args.data_dir, args.sentences, args.seed)
    common = ["--model", args.model, "--backend", args.backend, "--batch_size", str(args.batch_size)]
    print(f"# predict.py --engine ray against predict.py: {args.sentences:,} real sentences, backend {args.backend}")
    print(f"machine: {machine()}; {os.cpu_count()} CPUs\n")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        inputs = {}
        for size in sorted({args.rows_per_shard * r for r in [1, *replicas]} | {args.sentences}):
            inputs[size] = work / f"in-{size}.jsonl"
            inputs[size].write_text("".join(json.dumps({"text": t}) + "\n" for t in texts[:size]), encoding="utf-8")

        def local(source, output):
            return [sys.executable, str(REPO / "predict.py"), *common, "--input", str(source), "--output", str(output)]

        def on_ray(count):
            def command(source, output):
                return [*local(source, output), "--engine", "ray", "--num_workers", str(count),
                        "--rows_per_shard", str(args.rows_per_shard)]  # fmt: skip

            return command

        rows.append(measure("predict.py", local, (args.rows_per_shard, args.sentences), inputs, work, args.timeout))
        for count in replicas:
            sizes = (args.rows_per_shard * count, args.sentences)
            rows.append(measure(f"ray, {count} replica{'s' * (count > 1)}", on_ray(count), sizes, inputs, work,
                                args.timeout))  # fmt: skip
    base = rows[0]["rows_per_s"]
    print("| system | start-up (s) | rows/s once started | x predict.py | whole run (s) |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for row in rows:
        print(f"| {row['system']} | {row['startup_s']:.1f} | {row['rows_per_s']:.0f} | {row['rows_per_s'] / base:.2f} | "
              f"{row['total_s']:.1f} |")  # fmt: skip
    one = next((row for row in rows if row["system"] == "ray, 1 replica"), None)
    if one is not None:
        ratio = one["rows_per_s"] / base
        print(f"\ntarget: ray with 1 replica >= 0.8x predict.py once started: {ratio:.2f}x, "
              f"{'met' if ratio >= 0.8 else 'NOT met'}")  # fmt: skip
    return rows


if __name__ == "__main__":
    main()
