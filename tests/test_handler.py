"""handler.py, the custom handler of Hugging Face Inference Endpoints, run as the service runs it: from a model
directory saved by train.py, in a fresh process that cannot import this repository."""

import json
import re
import socket
import subprocess
import sys
import time
import uuid

import pytest
from helpers import REPO, run_child

from modeling_multitask import load_saved_model, load_saved_tokenizer

TEXTS = ["the game was great", "rates went up again today", "a new phone"]

# In the model directory, with only its files importable: the handler's answers to good and bad requests, as JSON.
CHILD = """
import json, sys
sys.path.insert(0, ".")
import handler
assert handler.__file__.startswith({directory!r}), handler.__file__
handle = handler.EndpointHandler({directory!r})
out = {{
    "list": handle({{"inputs": {texts!r}}}),
    "one": handle({{"inputs": {texts!r}[0]}}),
    "top_k": handle({{"inputs": {texts!r}, "parameters": {{"top_k": 2, "batch_size": 2}}}}),
    "embed": handle({{"inputs": {texts!r}, "parameters": {{"task": "embed"}}}}),
    "unit": handle({{"inputs": {texts!r}[0], "parameters": {{"task": "embeddings", "normalize": True}}}}),
    "errors": [],
}}
for request in {bad!r}:
    try:
        handle(request)
        out["errors"].append(None)
    except ValueError as err:
        out["errors"].append(str(err))
print(json.dumps(out))
"""

BAD = [
    ({}, '"inputs"'),
    ({"inputs": []}, "inputs is an empty list"),
    ({"inputs": ["fine", 3]}, "inputs[1] is int"),
    ({"inputs": 3}, "inputs is int (3); expected a text or a list of texts"),
    ({"inputs": {"text": "fine"}}, "inputs is dict"),
    ({"inputs": "", "parameters": {}}, "inputs[0] is blank"),
    ({"inputs": "x", "parameters": ["top_k"]}, '"parameters" must be a JSON object'),
    ({"inputs": ["fine", "   "]}, "inputs[1] is blank"),
    ({"inputs": "x", "parameters": {"top_k": 0}}, "top_k"),
    ({"inputs": "x", "parameters": {"batch_size": "8"}}, "batch_size"),
    ({"inputs": "x", "parameters": {"task": "translate"}}, "task must be one of"),
    ({"inputs": "x", "parameters": {"temperature": 1}}, "unknown parameter 'temperature'"),
    ({"inputs": "x", "parameters": {"task": "embed", "normalize": "yes"}}, "normalize must be true or false"),
    ({"inputs": "x", "parameters": {"normalize": True}}, "normalize does not apply"),
]


@pytest.fixture(scope="module")
def answers(trained):
    directory = trained[0]
    code = CHILD.format(directory=str(directory), texts=TEXTS, bad=[request for request, _ in BAD])
    return json.loads(run_child(code, cwd=directory).strip().splitlines()[-1])


@pytest.fixture(scope="module")
def reference(trained):
    model = load_saved_model(trained[0]).eval()
    return model, load_saved_tokenizer(trained[0], model.config)


def assert_same(got, want):
    assert got.keys() == want.keys()
    for task in want:
        pairs = zip(got[task], want[task], strict=True) if isinstance(want[task], list) else [(got[task], want[task])]
        for g, w in pairs:
            assert g["label"] == w["label"]
            assert g["score"] == pytest.approx(w["score"], abs=1e-5)


def test_train_saves_the_handler_with_the_code(trained):
    names = {p.name for p in trained[0].iterdir()}
    assert {"handler.py", "modeling_multitask.py", "configuration_multitask.py", "config.json"} <= names


def test_the_handler_labels_as_predict_does(answers, reference):
    model, tokenizer = reference
    want = model.predict(TEXTS, tokenizer)
    assert len(answers["list"]) == len(TEXTS)
    for got, expected in zip(answers["list"], want, strict=True):
        assert_same(got, expected)
    assert isinstance(answers["one"], dict)
    assert_same(answers["one"], want[0])
    for got, expected in zip(answers["top_k"], model.predict(TEXTS, tokenizer, top_k=2), strict=True):
        assert_same(got, expected)


def test_the_handler_embeds(answers, reference):
    model, tokenizer = reference
    want = model.encode(TEXTS, tokenizer).tolist()
    assert len(answers["embed"]) == len(TEXTS)
    for got, expected in zip(answers["embed"], want, strict=True):
        assert got == pytest.approx(expected, abs=1e-5)
    unit = answers["unit"]
    assert len(unit) == model.config.hidden_size
    assert sum(x * x for x in unit) == pytest.approx(1.0, abs=1e-5)


def test_bad_requests_are_one_line_value_errors(answers):
    for (request, expected), message in zip(BAD, answers["errors"], strict=True):
        assert message is not None, f"{request} was accepted"
        assert expected in message, (request, message)
        assert "\n" not in message


# The Dockerfile's HEALTHCHECK command, run by sh as Docker runs it: healthy while the container does not serve (the
# default command trains), and then only if serve.py's /health answers 200. The server here is a stand-in with a name
# of its own and a free port (other processes on this machine may run serve.py or hold port 8000).
STAND_IN = """
import http.server, sys
class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(int(sys.argv[2]) if self.path == "/health" else 404)
        self.end_headers()
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Health).serve_forever()
"""


def healthcheck_command(name, port):
    dockerfile = (REPO / "Dockerfile").read_text(encoding="utf-8")
    command = re.search(r"^HEALTHCHECK .*\\\n\s+CMD (.+)$", dockerfile, re.MULTILINE).group(1)
    assert "b'serve.py'" in command and "127.0.0.1:8000/health" in command
    return command.replace("serve.py", name).replace(":8000/", f":{port}/")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize(("server", "healthy"), [(None, True), (200, True), (503, False), ("down", False)])
def test_the_docker_healthcheck(tmp_path, server, healthy):
    name, port = f"serve-{uuid.uuid4().hex}.py", free_port()
    script = tmp_path / name
    script.write_text(STAND_IN if server != "down" else "import time\ntime.sleep(60)\n", encoding="utf-8")
    process = None
    if server is not None:
        process = subprocess.Popen([sys.executable, str(script), str(port), str(server)])
        for _ in range(100):  # until it listens (the one that never will: a moment is enough)
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0 or server == "down":
                    break
            time.sleep(0.05)
    try:
        result = subprocess.run(["sh", "-c", healthcheck_command(name, port)], capture_output=True, timeout=30)
    finally:
        if process is not None:
            process.kill()
            process.wait()
    assert (result.returncode == 0) == healthy, result.stderr.decode()[-2000:]
    assert result.returncode in (0, 1)
