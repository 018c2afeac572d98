"""Load test of serve.py: throughput and latency with and without batching, overload, memory, against offline labelling.

    python -m benchmarks.serve_load --model outputs/multitask-minilm --data_dir ../shared/data --output_dir runs/serve

The model directory needs an ONNX export for the int8 backend (`python export_onnx.py --model DIR`). For each backend
(`--backends`, default torch and onnx-int8) and each `--max_batch_size` (default 32 and 1) it starts `serve.py` on
127.0.0.1 and drives it from this process (asyncio + httpx, so the load generator shares the cores with the server,
as it would on one machine): closed-loop clients (1, 8, 32, 64 by default), each sending one real dev sentence per
`POST /predict` and the next when answered, for at most `--requests` requests or `--seconds` seconds per level.
Then, per backend with batching: an open loop at twice the saturating throughput (the best of the levels) for
`--overload_seconds`, counting 200s, 503s and connection errors; and offline labelling on the same backend
(`labelling.label_texts`, predict.py's core, batch 32) for the served/offline ratio. Last, the server's RSS after
`--rss_requests` requests (10,000 and 100,000 by default) on `--rss_backend` (int8) with batching. Every loop is bounded in
count and time; nothing is sent anywhere but 127.0.0.1. Prints markdown tables and writes results.json.
"""

import argparse
import asyncio
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

from benchmarks.common import REPO

DEV_FILES = ("topic_dev.jsonl", "sentiment_dev.jsonl", "topic_dev_ood.jsonl", "sentiment_dev_ood.jsonl")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="A model directory saved by train.py (with an ONNX export for int8).")
    p.add_argument("--data_dir", default="../shared/data", help="Where the real dev sets are (sentences sent).")
    p.add_argument("--output_dir", required=True, help="Where results.json and the servers' logs go.")
    p.add_argument("--backends", nargs="+", default=["torch", "onnx-int8"], choices=["torch", "onnx", "onnx-int8"])
    p.add_argument("--batch_sizes", nargs="+", type=int, default=[32, 1], help="serve.py --max_batch_size values.")
    p.add_argument("--clients", nargs="+", type=int, default=[1, 8, 32, 64], help="Concurrent clients per level.")
    p.add_argument("--requests", type=int, default=2000, help="At most this many requests per level.")
    p.add_argument("--seconds", type=float, default=20.0, help="At most this long per level.")
    p.add_argument("--max_queue", type=int, default=256, help="serve.py --max_queue (texts) of every server.")
    p.add_argument("--overload_seconds", type=float, default=15.0, help="Length of the open loop at 2x saturation.")
    p.add_argument("--rss_requests", nargs="*", type=int, default=[10_000, 100_000], help="RSS read after these.")
    p.add_argument("--rss_clients", type=int, default=32)
    p.add_argument("--rss_backend", default="onnx-int8", choices=["torch", "onnx", "onnx-int8"])
    p.add_argument("--rss_seconds", type=float, default=900.0, help="Time bound of the RSS run.")
    return p.parse_args(argv)


def dev_sentences(data_dir):
    texts = []
    for name in DEV_FILES:
        with open(Path(data_dir) / name, encoding="utf-8") as f:
            texts += [json.loads(line)["text"] for line in f if line.strip()]
    if not texts:
        raise SystemExit(f"error: no sentences in {data_dir}")
    return texts


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """serve.py in a subprocess on 127.0.0.1, up once /health answers 200 (bounded), stopped with SIGTERM."""

    def __init__(self, model, backend, max_batch_size, max_queue, log_path):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, str(REPO / "serve.py"), "--model", str(model), "--backend", backend,
                   "--max_batch_size", str(max_batch_size), "--max_queue", str(max_queue), "--port", str(self.port)]  # fmt: skip
        self.log = open(log_path, "w", encoding="utf-8")  # noqa: SIM115 - closed in stop()
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        self.process = subprocess.Popen(command, cwd=REPO, env=env, stdout=self.log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout=180):
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"serve.py exited with {self.process.returncode}; see {self.log.name}")
            try:
                if httpx.get(f"{self.base}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"serve.py not healthy after {timeout} s; see {self.log.name}")

    def batches(self):
        """(texts, batches) the model has run so far, from /metrics."""
        import httpx
        from prometheus_client.parser import text_string_to_metric_families

        samples = {s.name: s.value for f in text_string_to_metric_families(httpx.get(f"{self.base}/metrics").text)
                   for s in f.samples}  # fmt: skip
        return samples.get("multitask_batch_size_sum", 0.0), samples.get("multitask_batch_size_count", 0.0)

    def rss_mb(self):
        import psutil

        return psutil.Process(self.process.pid).memory_info().rss / 2**20

    def stop(self):
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


class Connection:
    """One keep-alive HTTP/1.1 connection to 127.0.0.1 that POSTs JSON and reads the status (and the body, by its
    Content-Length). The load generator's own cost is paid on the cores it shares with the server, so it is kept small:
    an asyncio stream per client instead of a general HTTP client (httpx took about as much CPU per request as the
    server's whole HTTP layer)."""

    def __init__(self, port, timeout=60.0):
        self.port, self.timeout, self.streams = port, timeout, None

    async def post(self, path, body):
        """The response's status code; a ConnectionError when the connection fails or closes."""
        data = json.dumps(body).encode()
        head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(data)}\r\n\r\n").encode()  # fmt: skip
        try:
            return await asyncio.wait_for(self._exchange(head + data), self.timeout)
        except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError) as e:
            self.close()
            raise ConnectionError(str(e) or type(e).__name__) from None

    async def _exchange(self, request):
        if self.streams is None:
            self.streams = await asyncio.open_connection("127.0.0.1", self.port)
        reader, writer = self.streams
        writer.write(request)
        await writer.drain()
        status_line = await reader.readline()
        if not status_line:
            raise ConnectionError("closed by the server")
        length, closing = 0, False
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            if name.lower() == "content-length":
                length = int(value)
            elif name.lower() == "connection" and value.strip().lower() == "close":
                closing = True
        await reader.readexactly(length)
        if closing:
            self.close()
        return int(status_line.split()[1])

    def close(self):
        if self.streams is not None:
            self.streams[1].close()
            self.streams = None


async def closed_loop(port, texts, clients, max_requests, max_seconds, offset=0):
    """`clients` clients, each sending one text and the next when answered; stops at max_requests or max_seconds."""
    numbers, latencies, statuses = itertools.count(), [], Counter()
    start = time.perf_counter()
    deadline = start + max_seconds

    async def one_client():
        connection = Connection(port)
        while (i := next(numbers)) < max_requests and time.perf_counter() < deadline:
            sent = time.perf_counter()
            try:
                status = await connection.post("/predict", {"inputs": texts[(offset + i) % len(texts)]})
            except ConnectionError:
                statuses["connection error"] += 1
                continue
            statuses[status] += 1
            if status == 200:
                latencies.append(time.perf_counter() - sent)
        connection.close()

    await asyncio.gather(*(one_client() for _ in range(clients)))
    elapsed = time.perf_counter() - start
    ms = np.array(latencies) * 1000 if latencies else np.array([float("nan")])
    return {
        "clients": clients,
        "requests": sum(statuses.values()),
        "ok": statuses[200],
        "statuses": {str(k): v for k, v in statuses.items()},
        "seconds": elapsed,
        "throughput": statuses[200] / elapsed,
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
    }


async def open_loop(port, texts, rate, seconds, connections=512):
    """Requests sent at `rate` per second for `seconds` whatever the answers, over a pool of `connections` keep-alive
    connections (a request due when every connection is busy waits for one: counted as late)."""
    statuses, free = Counter(), asyncio.Queue()
    for _ in range(connections):
        free.put_nowait(Connection(port))

    async def one(i, due):
        connection = await free.get()
        if time.perf_counter() - due > 1.0:
            statuses["sent over 1 s late (every connection busy)"] += 1
        try:
            statuses[await connection.post("/predict", {"inputs": texts[i % len(texts)]})] += 1
        except ConnectionError:
            statuses["connection error"] += 1
        free.put_nowait(connection)

    tasks, start = [], time.perf_counter()
    for i in range(int(rate * seconds)):
        due = start + i / rate
        if (delay := due - time.perf_counter()) > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i, due)))
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - start
    while not free.empty():
        free.get_nowait().close()
    return {
        "rate_sent": rate,
        "seconds": elapsed,
        "statuses": {str(k): v for k, v in statuses.items()},
        "ok_throughput": statuses[200] / elapsed,
    }


def offline_throughput(model_dir, backend, texts, repeats=2):
    """Sentences per second of predict.py's core (`label_texts`, batch 32) on `backend`, loading apart."""
    from labelling import label_texts, load_for_inference

    model, tokenizer, _ = load_for_inference(model_dir, backend)
    rows = list(label_texts(model, tokenizer, texts[:64]))  # warm-up (an iterator: list() runs it)
    start = time.perf_counter()
    for _ in range(repeats):
        rows = list(label_texts(model, tokenizer, texts, batch_size=32))
    assert len(rows) == len(texts)
    return repeats * len(texts) / (time.perf_counter() - start)


def run(args):
    texts = dev_sentences(args.data_dir)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = {"levels": [], "overload": {}, "offline": {}, "rss_mb": {}, "sentences": len(texts)}
    for backend in args.backends:
        for batch in args.batch_sizes:
            server = Server(args.model, backend, batch, args.max_queue, out / f"serve-{backend}-b{batch}.log")
            try:
                server.wait_ready()
                asyncio.run(closed_loop(server.port, texts, 8, 200, 10))  # warm-up
                for clients in args.clients:
                    before = server.batches()
                    level = asyncio.run(closed_loop(server.port, texts, clients, args.requests, args.seconds))
                    after = server.batches()
                    level.update(backend=backend, max_batch_size=batch)
                    level["mean_batch"] = (after[0] - before[0]) / max(after[1] - before[1], 1)
                    results["levels"].append(level)
                    print(json.dumps(level), flush=True)
                if batch == max(args.batch_sizes) and args.overload_seconds > 0:
                    saturating = max(x["throughput"] for x in results["levels"]
                                     if x["backend"] == backend and x["max_batch_size"] == batch)  # fmt: skip
                    over = asyncio.run(open_loop(server.port, texts, 2 * saturating, args.overload_seconds))
                    over["saturating_throughput"] = saturating
                    results["overload"][backend] = over
                    print(json.dumps({"overload": backend, **over}), flush=True)
                    # the server answers normally afterwards
                    after = asyncio.run(closed_loop(server.port, texts, 8, 200, 10))
                    over["after"] = after["statuses"]
            finally:
                server.stop()
        results["offline"][backend] = offline_throughput(args.model, backend, texts)
        print(json.dumps({"offline": backend, "throughput": results["offline"][backend]}), flush=True)
    if args.rss_requests:
        backend, batch = args.rss_backend, max(args.batch_sizes)
        server = Server(args.model, backend, batch, args.max_queue, out / f"serve-{backend}-rss.log")
        try:
            server.wait_ready()
            done, start = 0, time.monotonic()
            for target in sorted(args.rss_requests):
                left = args.rss_seconds - (time.monotonic() - start)
                level = asyncio.run(closed_loop(server.port, texts, args.rss_clients, target - done, left, done))
                done += level["requests"]
                results["rss_mb"][str(target)] = {"requests": done, "rss_mb": server.rss_mb()}
                print(json.dumps({"rss_after": done, "rss_mb": server.rss_mb()}), flush=True)
        finally:
            server.stop()
        results["rss_backend"] = backend
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return results


def tables(results):
    lines = ["| backend | max_batch_size | clients | requests | throughput (req/s) | p50 ms | p99 ms | mean batch | "
             "non-200 |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]  # fmt: skip
    for x in results["levels"]:
        other = {k: v for k, v in x["statuses"].items() if k != "200"} or "-"
        lines.append(f"| {x['backend']} | {x['max_batch_size']} | {x['clients']} | {x['requests']} | "
                     f"{x['throughput']:.1f} | {x['p50_ms']:.1f} | {x['p99_ms']:.1f} | {x['mean_batch']:.1f} | {other} |")  # fmt: skip
    lines += ["", "| backend | batching / no batching at 32 clients | p99 ms at 32 (batching) | served / offline | "
              "overload: sent/s, 200/s (share of saturating), statuses |", "| --- | ---: | ---: | ---: | --- |"]  # fmt: skip
    for backend, offline in results["offline"].items():
        at32 = {x["max_batch_size"]: x for x in results["levels"] if x["backend"] == backend and x["clients"] == 32}
        best = max((x["throughput"] for x in results["levels"] if x["backend"] == backend), default=float("nan"))
        ratio = at32[32]["throughput"] / at32[1]["throughput"] if 32 in at32 and 1 in at32 else float("nan")
        p99 = at32[32]["p99_ms"] if 32 in at32 else float("nan")
        over = results["overload"].get(backend)
        said = "-"
        if over:
            share = over["ok_throughput"] / over["saturating_throughput"]
            said = f"{over['rate_sent']:.0f}, {over['ok_throughput']:.1f} ({share:.2f}), {over['statuses']}"
        lines.append(f"| {backend} | {ratio:.2f}x | {p99:.0f} | {best / offline:.2f} ({best:.0f} / {offline:.0f}) | "
                     f"{said} |")  # fmt: skip
    if results["rss_mb"]:
        marks = sorted(results["rss_mb"].values(), key=lambda r: r["requests"])
        lines += ["", f"RSS of the {results['rss_backend']} server: " + ", ".join(
            f"{m['rss_mb']:.0f} MB after {m['requests']} requests" for m in marks)
            + (f" (ratio {marks[-1]['rss_mb'] / marks[0]['rss_mb']:.3f})" if len(marks) > 1 else "")]  # fmt: skip
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    if not Path(args.model).is_dir():
        raise SystemExit(f"error: --model {args.model}: no such model directory")
    print(tables(run(args)))


if __name__ == "__main__":
    main()
