"""serve.py / serving.py: the HTTP server, in process (fastapi's TestClient) and, in the slow tier, as a real process
stopped by SIGTERM under load. Answers equal `model.predict` / `encode`; bad input is a 4xx of one JSON line."""

import base64
import collections
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

try:
    import httpx
    from fastapi.testclient import TestClient
    from prometheus_client.parser import text_string_to_metric_families
except ImportError as e:  # pragma: no cover - a set-up problem, said plainly
    raise ImportError("the server tests need fastapi: pip install -r requirements-serve.txt") from e

import serve
from labelling import load_for_inference
from serving import ServeOptions, create_app

ROOT = Path(__file__).resolve().parents[1]
TEXTS = ["the game was great", "rates went up", "i love this movie very much today", "bad news", "the team lost"]


@pytest.fixture(scope="module")
def loaded(saved_tiny_model):
    _, _, directory = saved_tiny_model
    model, tokenizer, backend = load_for_inference(directory, "torch")
    return model, tokenizer, backend, directory


def make_client(loaded, **options):
    model, tokenizer, backend, directory = loaded
    app = create_app(model, tokenizer, backend, ServeOptions(**options), model_dir=directory)
    return TestClient(app, raise_server_exceptions=False)


def metric(client, name, labels=None):
    """The value of sample `name` (with `labels`) in /metrics; 0 when absent."""
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in (labels or {}).items()):
                return sample.value
    return 0.0


def assert_same_predictions(got, expected):
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        assert g.keys() == e.keys()
        for task in e:
            assert g[task]["label"] == e[task]["label"]
            assert abs(g[task]["score"] - e[task]["score"]) < 1e-5


def assert_close(a, b, tol=1e-5):
    assert len(a) == len(b)
    for u, v in zip(a, b, strict=True):
        assert len(u) == len(v)
        assert max(abs(x - y) for x, y in zip(u, v, strict=True)) < tol


def test_predict_and_embed_equal_the_model(loaded):
    model, tokenizer, _, _ = loaded
    with make_client(loaded) as client:
        r = client.post("/predict", json={"inputs": TEXTS})
        assert r.status_code == 200
        assert_same_predictions(r.json(), model.predict(TEXTS, tokenizer))
        r = client.post("/predict", json={"inputs": TEXTS[0]})
        assert isinstance(r.json(), dict)
        assert_same_predictions([r.json()], model.predict(TEXTS[:1], tokenizer))
        top = client.post("/predict", json={"inputs": TEXTS[:2], "top_k": 2}).json()
        expected = model.predict(TEXTS[:2], tokenizer, top_k=2)
        assert [[d["label"] for d in row["topic"]] for row in top] == [
            [d["label"] for d in row["topic"]] for row in expected
        ]

        r = client.post("/embed", json={"inputs": TEXTS, "normalize": True})
        assert r.status_code == 200
        assert_close(r.json(), model.encode(TEXTS, tokenizer, normalize=True).tolist())
        single = client.post("/embed", json={"inputs": TEXTS[1]}).json()
        assert_close([single], model.encode(TEXTS[1:2], tokenizer).tolist())

        r = client.post("/v1/embeddings", json={"input": TEXTS[:2], "model": "tiny"})
        body = r.json()
        assert r.status_code == 200 and body["object"] == "list" and body["model"] == "tiny"
        assert [d["index"] for d in body["data"]] == [0, 1] and body["data"][0]["object"] == "embedding"
        assert_close([d["embedding"] for d in body["data"]], model.encode(TEXTS[:2], tokenizer).tolist())
        tokens = sum(len(tokenizer(t)["input_ids"]) for t in TEXTS[:2])
        assert body["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}
        packed = client.post("/v1/embeddings", json={"input": TEXTS[0], "encoding_format": "base64"}).json()
        raw = base64.b64decode(packed["data"][0]["embedding"])
        assert_close([struct.unpack(f"<{len(raw) // 4}f", raw)], model.encode(TEXTS[:1], tokenizer).tolist())


def test_health_info_metrics(loaded):
    model, _, _, directory = loaded
    with make_client(loaded, max_batch_size=8, max_queue=64) as client:
        assert client.get("/health").status_code == 200
        info = client.get("/info").json()
        assert info["backend"] == "torch"
        assert set(info["tasks"]) == set(model.config.tasks)
        assert info["tasks"]["topic"]["labels"] == list(model.config.tasks["topic"])
        assert info["tasks"]["topic"]["multi_label"] is False
        assert info["limits"]["max_batch_size"] == 8 and info["limits"]["max_queue"] == 64
        from onnx_multitask import model_fingerprint

        assert info["fingerprint"] == model_fingerprint(directory)
        r = client.get("/metrics")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
        assert "multitask_queue_depth" in r.text


def test_same_text_same_answer_whatever_its_batch(loaded):
    """Concurrent requests are batched together (seen in /metrics) and each gets what it gets alone."""
    model, tokenizer, _, _ = loaded
    alone = {t: model.predict([t], tokenizer)[0] for t in TEXTS}
    alone_emb = {t: model.encode([t], tokenizer)[0].tolist() for t in TEXTS}
    with make_client(loaded, max_wait_ms=300, max_batch_size=64) as client:
        with ThreadPoolExecutor(len(TEXTS)) as pool:
            answers = list(pool.map(lambda t: client.post("/predict", json={"inputs": t}), TEXTS))
        assert all(r.status_code == 200 for r in answers)
        for t, r in zip(TEXTS, answers, strict=True):
            assert_same_predictions([r.json()], [alone[t]])
        with ThreadPoolExecutor(len(TEXTS)) as pool:
            vectors = list(pool.map(lambda t: client.post("/embed", json={"inputs": t}).json(), TEXTS))
        assert_close(vectors, [alone_emb[t] for t in TEXTS])
        batches = metric(client, "multitask_batch_size_count")
        texts = metric(client, "multitask_batch_size_sum")
        assert texts == 2 * len(TEXTS)
        assert batches < texts  # at least one batch held more than one text
    # and inside a batch of others, in one request
    with make_client(loaded) as client:
        mixed = client.post("/predict", json={"inputs": [TEXTS[0], "x " * 40, *TEXTS[1:]]}).json()
        assert_same_predictions([mixed[0], *mixed[2:]], [alone[t] for t in TEXTS])


BAD = [
    ("/predict", b"{not json", 400, "JSON"),
    ("/predict", b"[1, 2]", 422, "body"),
    ("/predict", json.dumps({"text": "a"}).encode(), 422, "inputs is missing"),
    ("/predict", json.dumps({"inputs": []}).encode(), 422, "inputs is an empty list"),
    ("/predict", json.dumps({"inputs": 3}).encode(), 422, "inputs is int"),
    ("/predict", json.dumps({"inputs": ["ok", 3]}).encode(), 422, "inputs[1] is int"),
    ("/predict", json.dumps({"inputs": ["ok", " \u200b "]}).encode(), 422, "inputs[1] is blank"),
    ("/predict", json.dumps({"inputs": ""}).encode(), 422, "inputs is blank"),
    ("/predict", json.dumps({"inputs": ["a"] * 5}).encode(), 413, "--max_request_texts"),
    ("/predict", json.dumps({"inputs": "a", "top_k": 0}).encode(), 422, "top_k"),
    ("/predict", json.dumps({"inputs": "a", "top_k": "2"}).encode(), 422, "top_k"),
    ("/predict", json.dumps({"inputs": "a" * 3000}).encode(), 413, "--max_body_bytes"),
    ("/embed", json.dumps({"inputs": "a", "normalize": "yes"}).encode(), 422, "normalize"),
    ("/v1/embeddings", json.dumps({"inputs": "a"}).encode(), 422, "input is missing"),
    ("/nowhere", b"{}", 404, "Not Found"),
]


@pytest.mark.parametrize(("path", "body", "status", "says"), BAD, ids=[f"{b[0]}-{b[3]}" for b in BAD])
def test_bad_input_is_a_4xx_of_one_json_line(loaded, path, body, status, says):
    with make_client(loaded, max_request_texts=4, max_body_bytes=2000) as client:
        r = client.post(path, content=body, headers={"content-type": "application/json"})
        assert r.status_code == status, r.text
        error = r.json()["error"]
        assert says in error and "\n" not in error and r.json().keys() == {"error"}
        assert client.post("/predict", json={"inputs": "the game"}).status_code == 200  # still serving


def test_body_over_the_limit_without_content_length(loaded):
    with make_client(loaded, max_body_bytes=2000) as client:
        chunks = (b'{"inputs": "' + b"a" * 1000, b"a" * 1500 + b'"}')
        r = client.post("/predict", content=iter(chunks), headers={"content-type": "application/json"})
        assert r.status_code == 413 and "--max_body_bytes" in r.json()["error"]
        assert client.post("/predict", json={"inputs": "the game"}).status_code == 200


def test_overload_is_503_with_retry_after_then_normal(loaded):
    with make_client(loaded, max_queue=3, max_wait_ms=50, max_batch_size=2) as client:
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda i: client.post("/predict", json={"inputs": TEXTS[:2]}), range(24)))
        codes = [r.status_code for r in answers]
        assert set(codes) <= {200, 503}, codes
        assert 503 in codes and 200 in codes
        for r in answers:
            if r.status_code == 503:
                assert r.headers["retry-after"] and "--max_queue" in r.json()["error"]
        assert client.post("/predict", json={"inputs": TEXTS[:2]}).status_code == 200
        assert metric(client, "multitask_queue_depth") == 0
        assert metric(client, "multitask_requests_total", {"endpoint": "/predict", "status": "503"}) == codes.count(503)


def test_metrics_count_what_was_sent(loaded):
    with make_client(loaded) as client:
        for _ in range(3):
            client.post("/predict", json={"inputs": TEXTS[:2]})
        client.post("/embed", json={"inputs": TEXTS})
        client.post("/predict", json={"inputs": []})
        assert metric(client, "multitask_requests_total", {"endpoint": "/predict", "status": "200"}) == 3
        assert metric(client, "multitask_requests_total", {"endpoint": "/predict", "status": "422"}) == 1
        assert metric(client, "multitask_requests_total", {"endpoint": "/embed", "status": "200"}) == 1
        assert metric(client, "multitask_texts_total", {"endpoint": "/predict"}) == 6
        assert metric(client, "multitask_texts_total", {"endpoint": "/embed"}) == len(TEXTS)
        assert metric(client, "multitask_batch_size_sum") == 6 + len(TEXTS)
        assert metric(client, "multitask_compute_seconds_count") >= 1
        assert metric(client, "multitask_queue_wait_seconds_count") == 4


def test_drain_answers_admitted_then_refuses(loaded):
    """What the lifespan's exit does: admitted requests are answered; after it, /health and new requests are 503."""
    with make_client(loaded, max_wait_ms=200) as client:
        batcher = client.app.state.batcher
        with ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(client.post, "/predict", json={"inputs": t}) for t in TEXTS[:4]]
            deadline = time.monotonic() + 5
            while batcher.pending < 4 and time.monotonic() < deadline:
                time.sleep(0.01)
            batcher.stop_admitting()
            assert client.get("/health").status_code == 503
            r = client.post("/predict", json={"inputs": "the game"})
            assert r.status_code == 503 and r.headers["retry-after"]
            assert [f.result(timeout=10).status_code for f in futures] == [200] * 4


def test_serve_errors_are_one_line_exit_2(tmp_path, capsys, saved_tiny_model):
    assert serve.main(["--model", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "missing" in err
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert serve.main(["--model", str(saved_tiny_model[2]), "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --port {port}: cannot listen") and err.count("\n") == 1
    assert serve.main(["--model", str(saved_tiny_model[2]), "--max_queue", "0"]) == 2
    assert capsys.readouterr().err.startswith("error: --max_queue must be a positive int")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_real_server_sigterm_under_load_answers_admitted(saved_tiny_model):
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "serve.py", "--model", str(saved_tiny_model[2]), "--port", str(port), "--max_wait_ms", "20"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        else:
            pytest.fail("the server did not start")
        assert httpx.post(f"{base}/predict", json={"inputs": TEXTS}, timeout=10).status_code == 200

        results, stop = [], threading.Event()

        def client():
            with httpx.Client(timeout=10) as c:
                for _ in range(200):
                    if stop.is_set():
                        return
                    try:
                        results.append(c.post(f"{base}/predict", json={"inputs": TEXTS}).status_code)
                    except httpx.ConnectError:  # refused: the server has stopped listening
                        results.append("refused")
                        return
                    except httpx.TransportError:  # an idle keep-alive connection closed at shutdown
                        results.append("closed")
                        return
                    if results[-1] == 503:  # draining: a client stops sending
                        return

        threads = [threading.Thread(target=client) for _ in range(4)]
        for t in threads:
            t.start()
        time.sleep(1.0)
        start = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)
        took = time.monotonic() - start
        stop.set()
        for t in threads:
            t.join(timeout=10)
        assert took < 10
        assert proc.returncode in (0, -signal.SIGTERM)
        assert results.count(200) >= 4
        assert set(results) <= {200, 503, "refused", "closed"}, results  # never a 500
        log = proc.stdout.read()
        assert "drained: 0 admitted texts left unanswered" in log  # every admitted request answered
        assert log.count('"POST /predict HTTP/1.1" 200') == results.count(200) + 1  # + the first
        print(f"stopped in {took:.1f} s; answers: {sorted(collections.Counter(map(str, results)).items())}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_gone_clients_texts_are_dropped(loaded):
    """A request cancelled while queued (its client disconnected) is skipped: its texts never reach the model."""
    import asyncio

    from serving import Batcher, Metrics

    model, tokenizer, _, _ = loaded
    metrics = Metrics()
    batcher = Batcher(model, tokenizer, ServeOptions(max_wait_ms=300), metrics)
    batcher.start()

    async def scenario():
        gone = asyncio.create_task(batcher.submit("predict", TEXTS[:3], None))
        kept = asyncio.create_task(batcher.submit("predict", TEXTS[3:4], None))
        await asyncio.sleep(0.05)  # both queued; the worker waits for more until 300 ms
        gone.cancel()
        return await asyncio.wait_for(kept, 10)

    try:
        result = asyncio.run(scenario())
    finally:
        batcher.drain(5)
    assert_same_predictions(result, model.predict(TEXTS[3:4], tokenizer))
    samples = {s.name: s.value for f in metrics.registry.collect() for s in f.samples}
    assert samples["multitask_batch_size_sum"] == 1 and samples["multitask_queue_depth"] == 0


def test_auto_backend_serves_the_int8_export(saved_tiny_model, tmp_path):
    from onnx_multitask import export, graph_path

    directory = tmp_path / "model"
    shutil.copytree(saved_tiny_model[2], directory)
    assert load_for_inference(directory, "auto")[2] == "torch"  # no export
    export(directory, quantize=False)
    assert load_for_inference(directory, "auto")[2] == "onnx"  # the fp32 graph only
    export(directory)
    model, tokenizer, backend = load_for_inference(directory, "auto")
    assert backend == "onnx-int8" and graph_path(directory, True).is_file()
    with TestClient(create_app(model, tokenizer, backend, model_dir=directory)) as client:
        assert client.get("/info").json()["backend"] == "onnx-int8"
        got = client.post("/predict", json={"inputs": TEXTS}).json()
        assert_same_predictions(got, model.predict(TEXTS, tokenizer))
        assert_close(client.post("/embed", json={"inputs": TEXTS}).json(), model.encode(TEXTS, tokenizer).tolist())


def test_a_disconnected_clients_request_leaves_the_queue(loaded):
    """Through the ASGI app: a client that disconnects while its request waits is dropped before the model runs."""
    import asyncio

    model, tokenizer, backend, directory = loaded
    app = create_app(model, tokenizer, backend, ServeOptions(max_wait_ms=1500), model_dir=directory)
    batcher = app.state.batcher
    batcher.start()
    body = json.dumps({"inputs": TEXTS}).encode()
    sent = []

    async def scenario():
        messages = [{"type": "http.request", "body": body, "more_body": False}]
        gone_at = time.monotonic() + 0.3  # the client disconnects 0.3 s in, while its texts wait for a batch

        async def receive():  # as uvicorn's: a disconnect is there at once once it happened, else it blocks
            if messages:
                return messages.pop()
            if time.monotonic() < gone_at:
                await asyncio.sleep(gone_at - time.monotonic())
            return {"type": "http.disconnect"}

        async def send(message):
            sent.append(message)

        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": "/predict",
            "raw_path": b"/predict",
            "query_string": b"",
            "root_path": "",
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
            "client": ("127.0.0.1", 1),
            "server": ("127.0.0.1", 80),
        }
        await asyncio.wait_for(app(scope, receive, send), 10)

    try:
        asyncio.run(scenario())
        deadline = time.monotonic() + 5
        while batcher.pending and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        batcher.drain(5)
    samples = {s.name: s.value for f in app.state.metrics.registry.collect() for s in f.samples}
    assert samples["multitask_batch_size_count"] == 0 and samples["multitask_queue_depth"] == 0
    assert sent[0]["status"] == 499


def test_health_is_503_while_the_model_loads_then_200(loaded):
    model, tokenizer, backend, directory = loaded
    gate = threading.Event()

    def load():
        assert gate.wait(30)
        return model, tokenizer, backend

    app = create_app(load=load, model_dir=directory)
    with TestClient(app, raise_server_exceptions=False) as client:
        for r in (client.get("/health"), client.get("/info"), client.post("/predict", json={"inputs": "hi"})):
            assert r.status_code == 503 and r.headers["retry-after"] == "5"
            assert r.json() == {"error": "the model is loading"}
        gate.set()
        deadline = time.monotonic() + 10
        while client.get("/health").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert client.get("/health").json() == {"status": "ok", "backend": backend}
        assert client.get("/info").json()["backend"] == backend
        assert_same_predictions(client.post("/predict", json={"inputs": TEXTS}).json(), model.predict(TEXTS, tokenizer))


def test_a_model_that_cannot_load_stops_the_server_with_one_line(saved_tiny_model, tmp_path, capsys):
    directory = shutil.copytree(saved_tiny_model[2], tmp_path / "model")
    (directory / "model.safetensors").unlink()
    assert serve.main(["--model", str(directory), "--port", str(free_port())]) == 2  # returns: the server stopped
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"error: {directory}") and "model.safetensors" in last
