"""Serve a saved multi-task model over HTTP: the library behind `serve.py` (FastAPI on uvicorn).

    from labelling import load_for_inference
    from serving import ServeOptions, create_app

    model, tokenizer, backend = load_for_inference("outputs/multitask-minilm", backend="auto")
    app = create_app(model, tokenizer, backend, ServeOptions(max_batch_size=32))  # an ASGI app: uvicorn.run(app)

Endpoints (JSON in, JSON out): `POST /predict` `{"inputs": str | [str], "top_k": k?}` -> `model.predict`'s dict (one
for a str, a list for a list); `POST /embed` `{"inputs": ..., "normalize": bool?}` -> embeddings; `POST /v1/embeddings`
in OpenAI's form; `GET /health` (200 while admitting, 503 while loading or draining); `GET /info`; `GET /metrics` (Prometheus text,
from a registry of the app's own).

Requests go into one bounded queue (`max_queue` texts admitted and not yet answered; above it a request is refused
with 503 and `Retry-After`); ONE worker thread, off the event loop, takes up to `max_batch_size` texts (waiting up to
`max_wait_ms` after the first for others, none by default), runs them through the inference core (`MultiTaskInference.predict` /
`encode`) and answers each request's future on the loop. A request whose client has gone is skipped. A text's answer
does not depend on what it is batched with (the core pads and masks). Every bad input is a 4xx with a one-line JSON
`{"error": "..."}` naming the field; `drain` (lifespan exit, SIGTERM) stops admitting and answers what was admitted.
Given a `load` callable instead of a model, the app answers at once and loads in a thread: until the model is in,
`/health` and the work endpoints answer 503 with `Retry-After`, so a load balancer waits for it.
"""

import asyncio
import base64
import collections
import json
import logging
import struct
import threading
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from modeling_multitask import is_blank

logger = logging.getLogger(__name__)
WORK_ENDPOINTS = ("/predict", "/embed", "/v1/embeddings")  # what goes through the queue
ENDPOINTS = (*WORK_ENDPOINTS, "/health", "/info", "/metrics")


@dataclass
class ServeOptions:
    """The server's limits (serve.py's flags of the same names)."""

    max_batch_size: int = 32  # texts per forward pass
    # How long the first queued request waits for others to join its batch. 0: none; the worker takes what queued
    # while it was busy, so batches grow with the load. On 2 CPU cores 0 beat 2 and 5 ms at 1 to 64 clients, torch
    # and int8 (docs/usage.md, "Serving over HTTP"); a wait pays where a batch costs little more than one text (GPU).
    max_wait_ms: float = 0.0
    max_queue: int = 1024  # texts admitted and not yet answered; above it new requests get 503
    max_request_texts: int = 256  # texts in one request
    max_body_bytes: int = 1_000_000  # bytes in one request body
    drain_timeout_s: float = 8.0  # how long `drain` waits for admitted requests

    def __post_init__(self):
        for name in ("max_batch_size", "max_queue", "max_request_texts", "max_body_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not self.max_wait_ms >= 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {self.max_wait_ms!r}")


class ClientError(Exception):
    """A request the server refuses: `status` and a one-line message naming the field; `headers` to send."""

    def __init__(self, status, message, headers=None):
        super().__init__(message)
        self.status = status
        self.headers = headers


class Metrics:
    """The app's Prometheus metrics, in a registry of its own (two apps in one process do not share counts)."""

    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("multitask_requests", "HTTP requests", ["endpoint", "status"], registry=r)
        self.texts = Counter("multitask_texts", "Texts answered", ["endpoint"], registry=r)
        self.batch_size = Histogram(
            "multitask_batch_size", "Texts per model batch", buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=r
        )
        self.queue_wait = Histogram("multitask_queue_wait_seconds", "Time a request waited in the queue", registry=r)
        self.compute = Histogram("multitask_compute_seconds", "Model time per batch", registry=r)
        self.latency = Histogram("multitask_request_seconds", "Request latency", ["endpoint"], registry=r)
        self.queue_depth = Gauge("multitask_queue_depth", "Texts admitted and not yet answered", registry=r)


@dataclass
class Job:
    """One request in the queue: `kind` ("predict" or "embed"), its texts and option, and the future it answers."""

    kind: str
    texts: list
    option: object  # top_k for predict, normalize for embed
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    queued: float


def _resolve(future, result=None, error=None):
    if future.done():  # cancelled: the client has gone
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class Batcher:
    """A bounded queue of jobs and the one worker thread that runs them through the model in batches."""

    def __init__(self, model, tokenizer, options, metrics):
        self.model, self.tokenizer, self.options, self.metrics = model, tokenizer, options, metrics
        self.jobs = collections.deque()
        self.pending = 0  # texts admitted and not yet answered (queued or running)
        self.admitting = True
        self.stopped = False
        self.cond = threading.Condition()
        self.thread = threading.Thread(target=self._work, name="model-worker", daemon=True)

    def start(self):
        self.thread.start()

    async def submit(self, kind, texts, option, disconnected=None):
        """Queue `texts`; their results, in order. A ClientError 503 (with Retry-After) when draining or full.
        `disconnected`: an async callable, polled while waiting; when it says the client has gone, the request is
        cancelled and the worker skips its texts."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        with self.cond:
            if not self.admitting:
                raise ClientError(503, "the server is shutting down", {"Retry-After": "5"})
            if (busy := self.busy(len(texts))) is not None:
                raise busy
            self.pending += len(texts)
            self.metrics.queue_depth.set(self.pending)
            self.jobs.append(Job(kind, texts, option, future, loop, time.monotonic()))
            self.cond.notify_all()
        try:
            while disconnected is not None and not future.done():
                await asyncio.wait({future}, timeout=0.2)
                if not future.done() and await disconnected():
                    future.cancel()
                    raise ClientError(499, "the client closed the request")  # nobody reads it; counted as 499
            return await future
        finally:
            future.cancel()  # a request cancelled (or its client gone) while queued: the worker skips it

    def busy(self, adding=1):
        """The 503 for a request of `adding` texts that would take the queue past max_queue; None when it fits."""
        if self.pending + adding <= self.options.max_queue:
            return None
        message = f"the server is busy: {self.pending} texts queued, at most {self.options.max_queue} (--max_queue)"
        return ClientError(503, message, {"Retry-After": "1"})

    def _take(self):
        """Wait for a job, then up to max_wait_ms for others; pop up to max_batch_size texts (at least one job)."""
        with self.cond:
            while not self.jobs and not self.stopped:
                self.cond.wait(0.5)
            if not self.jobs:
                return None
            deadline = time.monotonic() + self.options.max_wait_ms / 1000
            while sum(len(j.texts) for j in self.jobs) < self.options.max_batch_size and not self.stopped:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.cond.wait(left)
            batch, size = [], 0
            while self.jobs and (not batch or size + len(self.jobs[0].texts) <= self.options.max_batch_size):
                job = self.jobs.popleft()
                if job.future.cancelled():  # its client has gone: drop its texts
                    self._done(len(job.texts))
                    continue
                batch.append(job)
                size += len(job.texts)
            return batch

    def _done(self, n):
        with self.cond:
            self.pending -= n
            self.metrics.queue_depth.set(self.pending)
            self.cond.notify_all()

    def _work(self):
        while True:
            batch = self._take()
            if batch is None:
                return
            if batch:
                self._run(batch)

    def _run(self, batch):
        start = time.monotonic()
        for job in batch:
            self.metrics.queue_wait.observe(start - job.queued)
        self.metrics.batch_size.observe(sum(len(j.texts) for j in batch))
        groups = collections.defaultdict(list)  # one pass per (kind, option): mostly a single group
        for job in batch:
            groups[job.kind, job.option].append(job)
        for (kind, option), jobs in groups.items():
            texts = [t for job in jobs for t in job.texts]
            try:
                with torch.inference_mode():
                    if kind == "predict":
                        results = self.model.predict(
                            texts, self.tokenizer, batch_size=self.options.max_batch_size, top_k=option
                        )
                    else:
                        results = self.model.encode(
                            texts, self.tokenizer, batch_size=self.options.max_batch_size, normalize=option
                        ).tolist()
                error = None
            except Exception as e:  # noqa: BLE001 - answered as a 500 to these requests; the worker keeps serving
                logger.exception("batch of %d texts failed", len(texts))
                results, error = None, e
            at = 0
            for job in jobs:
                n = len(job.texts)
                part = None if error else results[at : at + n]
                at += n
                job.loop.call_soon_threadsafe(_resolve, job.future, part, error)
            self._done(len(texts))
        self.metrics.compute.observe(time.monotonic() - start)

    def stop_admitting(self):
        with self.cond:
            self.admitting = False

    def drain(self, timeout):
        """Stop admitting, wait (up to `timeout` s) until every admitted text is answered, then stop the worker."""
        self.stop_admitting()
        deadline = time.monotonic() + timeout
        with self.cond:
            while self.pending > 0 and time.monotonic() < deadline:
                self.cond.wait(min(0.1, max(deadline - time.monotonic(), 0.001)))
            self.stopped = True
            self.cond.notify_all()
            left = self.pending
        (logger.warning if left else logger.info)("drained: %d admitted texts left unanswered", left)
        self.thread.join(timeout=max(deadline - time.monotonic(), 1.0))


def error_response(status, message, headers=None):
    return JSONResponse({"error": " ".join(str(message).split())}, status_code=status, headers=headers)


def _check_inputs(body, field, max_texts):
    """body[field] as (list of str, whether a single str was sent); a ClientError naming the field otherwise."""
    if field not in body:
        raise ClientError(422, f"{field} is missing: send a text or a list of texts")
    value = body[field]
    single = isinstance(value, str)
    texts = [value] if single else value
    if not isinstance(texts, list):
        raise ClientError(422, f"{field} is {type(value).__name__}: expected a string or a list of strings")
    if not texts:
        raise ClientError(422, f"{field} is an empty list: send at least one text")
    if len(texts) > max_texts:
        raise ClientError(413, f"{field} has {len(texts)} texts; at most {max_texts} per request (--max_request_texts)")
    for i, text in enumerate(texts):
        where = field if single else f"{field}[{i}]"
        if not isinstance(text, str):
            raise ClientError(422, f"{where} is {type(text).__name__}: every text must be a string")
        if is_blank(text):
            raise ClientError(422, f"{where} is blank: there is nothing to read")
    return texts, single


def _base64(vector):
    """An embedding as OpenAI's `encoding_format: base64` sends it: little-endian float32, base64."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


def _info(model, backend, options, model_dir):
    config = model.config
    multi = set(config.multi_label_tasks or [])
    fingerprint = None
    if model_dir is not None and Path(model_dir).is_dir():
        from onnx_multitask import model_fingerprint

        fingerprint = model_fingerprint(model_dir)
    return {
        "model": str(model_dir) if model_dir is not None else None,
        "backend": backend,
        "tasks": {
            task: {"labels": list(labels), "multi_label": task in multi} for task, labels in config.tasks.items()
        },
        "embedding_size": config.hidden_size,
        "limits": {
            "max_batch_size": options.max_batch_size,
            "max_wait_ms": options.max_wait_ms,
            "max_queue": options.max_queue,
            "max_request_texts": options.max_request_texts,
            "max_body_bytes": options.max_body_bytes,
        },
        "fingerprint": fingerprint,
    }


@dataclass(frozen=True)
class Served:
    """What the app serves once loaded: set in one assignment, so a request sees all of it or none."""

    model: object
    tokenizer: object
    backend: str
    info: dict


def create_app(
    model=None, tokenizer=None, backend=None, options=None, model_dir=None, model_name=None, load=None, on_error=None
):
    """The FastAPI app serving `model` (a `MultiTaskInference`) with `tokenizer`; `backend` and `model_dir` (a local
    directory, for /info's fingerprint) are reported by /info; `model_name` is what /v1/embeddings answers as `model`.
    The worker thread starts with the app's lifespan and drains at its exit.

    Instead of `model`, `tokenizer` and `backend`: `load`, a callable returning those three, run in a thread when the
    app starts; until it returns, /health, /info and the work endpoints answer 503 (`Retry-After`). When it raises,
    the exception is `app.state.load_error` and `on_error(exception)` is called (serve.py stops the server)."""
    if (model is None) == (load is None):
        raise ValueError("give either model (with tokenizer and backend) or load")
    options = options or ServeOptions()
    metrics = Metrics()
    batcher = Batcher(model, tokenizer, options, metrics)
    model_name = model_name or (Path(str(model_dir)).name if model_dir is not None else "multitask")

    def serve(model, tokenizer, backend):
        batcher.model, batcher.tokenizer = model, tokenizer
        app.state.served = Served(model, tokenizer, backend, _info(model, backend, options, model_dir))

    def load_in_thread():
        try:
            serve(*load())
        except Exception as e:  # noqa: BLE001 - any failure to load is reported, not raised in a thread
            app.state.load_error = e
            if on_error is not None:
                on_error(e)

    def served():
        """What is served; a ClientError 503 while the model loads."""
        if app.state.served is None:
            failed = app.state.load_error
            message = "the model could not be loaded" if failed is not None else "the model is loading"
            raise ClientError(503, message, {"Retry-After": "5"})
        return app.state.served

    @asynccontextmanager
    async def lifespan(app):
        batcher.start()
        if load is not None:
            threading.Thread(target=load_in_thread, name="model-loader", daemon=True).start()
        try:
            yield
        finally:
            await asyncio.to_thread(batcher.drain, options.drain_timeout_s)

    app = FastAPI(title="Multi-task classifier", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.batcher = batcher
    app.state.metrics = metrics
    app.state.served, app.state.load_error = None, None
    if load is None:
        serve(model, tokenizer, backend)

    async def count(scope, receive, send, inner):
        """Pure ASGI (a BaseHTTPMiddleware would hide a client's disconnect from the endpoint): refuse work while the
        queue is full and a body whose Content-Length is over the limit, and count every request by endpoint and
        status."""
        if scope["type"] != "http":
            return await inner(scope, receive, send)
        start = time.monotonic()
        endpoint = scope["path"] if scope["path"] in ENDPOINTS else "other"
        status = []

        async def send_status(message):
            if message["type"] == "http.response.start":
                status.append(message["status"])
            await send(message)

        length = dict(scope["headers"]).get(b"content-length", b"")
        busy = batcher.busy() if endpoint in WORK_ENDPOINTS and scope["method"] == "POST" else None
        try:
            if busy is not None:  # a full queue is said before the body is read: overload costs little to refuse
                await error_response(busy.status, str(busy), busy.headers)(scope, receive, send_status)
            elif length.isdigit() and int(length) > options.max_body_bytes:
                response = error_response(
                    413, f"request body of {int(length)} bytes; at most {options.max_body_bytes} (--max_body_bytes)"
                )
                await response(scope, receive, send_status)
            else:
                await inner(scope, receive, send_status)
        finally:
            metrics.requests.labels(endpoint, str(status[0] if status else 500)).inc()
            metrics.latency.labels(endpoint).observe(time.monotonic() - start)

    @app.exception_handler(ClientError)
    async def client_error(request, e):
        return error_response(e.status, str(e), e.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request, e):
        errors = e.errors()
        first = errors[0] if errors else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
        return error_response(422, f"{where}: {first.get('msg', 'invalid request')}")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, e):
        return error_response(e.status_code, e.detail, getattr(e, "headers", None))

    @app.exception_handler(Exception)
    async def server_error(request, e):
        logger.exception("unexpected error")
        return error_response(500, f"internal error ({type(e).__name__})")

    async def read_body(request):
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > options.max_body_bytes:
                raise ClientError(413, f"request body over {options.max_body_bytes} bytes (--max_body_bytes)")
            chunks.append(chunk)
        try:
            body = json.loads(b"".join(chunks))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ClientError(400, f"body is not valid JSON ({e})") from None
        if not isinstance(body, dict):
            raise ClientError(422, f"body is a JSON {type(body).__name__}: expected an object")
        return body

    async def run(request, kind, texts, option, endpoint):
        served()
        results = await batcher.submit(kind, texts, option, request.is_disconnected)
        metrics.texts.labels(endpoint).inc(len(texts))
        return results

    @app.post("/predict")
    async def predict(request: Request):
        body = await read_body(request)
        texts, single = _check_inputs(body, "inputs", options.max_request_texts)
        top_k = body.get("top_k")
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
            raise ClientError(422, f"top_k must be a positive integer, got {json.dumps(top_k)}")
        results = await run(request, "predict", texts, top_k, "/predict")
        return JSONResponse(results[0] if single else results)  # plain JSON: FastAPI's encoder walk costs per request

    async def embeddings(request, body, field, endpoint):
        texts, single = _check_inputs(body, field, options.max_request_texts)
        normalize = body.get("normalize", False)
        if not isinstance(normalize, bool):
            raise ClientError(422, f"normalize must be true or false, got {json.dumps(normalize)}")
        return texts, single, await run(request, "embed", texts, normalize, endpoint)

    @app.post("/embed")
    async def embed(request: Request):
        _, single, vectors = await embeddings(request, await read_body(request), "inputs", "/embed")
        return JSONResponse(vectors[0] if single else vectors)

    @app.post("/v1/embeddings")
    async def openai_embeddings(request: Request):
        body = await read_body(request)
        encoding = body.get("encoding_format", "float")
        if encoding not in ("float", "base64"):
            raise ClientError(422, f"encoding_format must be float or base64, got {json.dumps(encoding)}")
        texts, _, vectors = await embeddings(request, body, "input", "/v1/embeddings")
        model, tokenizer = (current := served()).model, current.tokenizer
        tokens = sum(
            len(tokenizer(t, truncation=True, max_length=model.input_limit(tokenizer))["input_ids"]) for t in texts
        )
        return JSONResponse(
            {
                "object": "list",
                "data": [
                    {"object": "embedding", "index": i, "embedding": _base64(v) if encoding == "base64" else v}
                    for i, v in enumerate(vectors)
                ],
                "model": body.get("model") if isinstance(body.get("model"), str) else model_name,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )

    @app.get("/health")
    async def health():
        if not batcher.admitting:
            return error_response(503, "draining: the server is shutting down", {"Retry-After": "5"})
        return {"status": "ok", "backend": served().backend}

    @app.get("/info")
    async def get_info():
        return served().info

    @app.get("/metrics")
    async def get_metrics():
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    class Counted:
        def __init__(self, inner):
            self.inner = inner

        async def __call__(self, scope, receive, send):
            await count(scope, receive, send, self.inner)

    app.add_middleware(Counted)
    return app
