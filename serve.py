"""Serve a saved multi-task model over HTTP (FastAPI on uvicorn): `POST /predict`, `POST /embed`,
`POST /v1/embeddings` (OpenAI's form), `GET /health`, `GET /info`, `GET /metrics`. The server is `serving.py`; this
script only reads its flags, loads the model and runs uvicorn.

    python serve.py --model outputs/multitask-minilm --port 8000
    curl -s localhost:8000/predict -H 'content-type: application/json' -d '{"inputs": "Rates went up again."}'

SIGTERM or Ctrl-C: /health turns 503, nothing new is admitted, every admitted request is answered, then it exits.
A mistake (a model that cannot be loaded, a port in use, a flag out of range) is one `error:` line, exit status 2.
The model loads while the server already listens: `/health` answers 503 until it is in.
"""

import argparse
import logging
import sys

import uvicorn

from configuration_multitask import check_model_source
from labelling import BACKENDS, ModelError, as_flag, check_address, load_for_inference
from serving import ServeOptions, create_app


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", required=True, help="Directory (or Hub name) of a model saved by train.py.")
    p.add_argument(
        "--backend",
        default="auto",
        choices=("auto", *BACKENDS),
        help="auto: ONNX int8 when the model directory has it, else ONNX fp32, else PyTorch.",
    )
    p.add_argument("--device", default="cpu", help="Where the PyTorch model runs (cpu, cuda, ...).")
    p.add_argument("--host", default="127.0.0.1", help="Address to listen on (default 127.0.0.1).")
    p.add_argument("--port", type=int, default=8000, help="Port (default 8000).")
    defaults = ServeOptions()
    p.add_argument("--max_batch_size", type=int, default=defaults.max_batch_size, help="Texts per forward pass.")
    p.add_argument(
        "--max_wait_ms", type=float, default=defaults.max_wait_ms, help="How long a request waits for others."
    )
    p.add_argument(
        "--max_queue", type=int, default=defaults.max_queue, help="Texts admitted and not yet answered; above: 503."
    )
    p.add_argument("--max_request_texts", type=int, default=defaults.max_request_texts, help="Texts per request.")
    p.add_argument("--max_body_bytes", type=int, default=defaults.max_body_bytes, help="Bytes per request body.")
    return p.parse_args(argv)


def check_port(host, port):
    """A ValueError in one line naming the flag when we could not listen at host:port (unknown host, port in use)."""
    if not 1 <= port <= 65535:
        raise ValueError(f"--port must be between 1 and 65535, got {port}")
    check_address(host, port)


class Server(uvicorn.Server):
    """uvicorn's server, but on SIGTERM / Ctrl-C the app stops admitting at once (/health 503) before uvicorn drains."""

    def __init__(self, config, batcher):
        super().__init__(config)
        self.batcher = batcher

    def handle_exit(self, sig, frame):
        self.batcher.stop_admitting()
        super().handle_exit(sig, frame)


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", level=logging.INFO)
    try:
        options = ServeOptions(
            max_batch_size=args.max_batch_size,
            max_wait_ms=args.max_wait_ms,
            max_queue=args.max_queue,
            max_request_texts=args.max_request_texts,
            max_body_bytes=args.max_body_bytes,
        )
    except ValueError as e:
        print(f"error: --{e}", file=sys.stderr)
        return 2
    try:
        check_port(args.host, args.port)
        check_model_source(args.model)  # a mistyped folder is said before the server starts
    except (ValueError, ModelError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    def stop(error):  # the model could not be loaded: the server stops, and main says why
        server.should_exit = True

    # The model loads while the server already answers: /health is 503 until it is in.
    app = create_app(
        load=lambda: load_for_inference(args.model, args.backend, args.device),
        options=options,
        model_dir=args.model,
        on_error=stop,
    )
    config = uvicorn.Config(app, host=args.host, port=args.port, timeout_graceful_shutdown=8, log_level="info")
    server = Server(config, app.state.batcher)
    server.run()
    error = app.state.load_error
    if error is not None:
        if isinstance(error, ModelError):
            message = as_flag(error, ("backend", "device"))
        else:  # not a user's mistake we know of: its first line and its type
            message = f"{(str(error).strip().splitlines() or [''])[0]} ({type(error).__name__})"
        print(f"error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
