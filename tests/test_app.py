"""The Gradio demo (app.py): its functions on a tiny model, then the app itself in headless Chromium (Playwright).

The browser tests need Debian's Chromium (`apt-get install chromium`) and `pip install -r requirements-demo.txt`; a
machine without them fails here, saying what to install. `DEMO_SCREENSHOT=docs/demo.png python -m pytest
tests/test_app.py` also copies the screenshot there, taken with the quickstart model when `outputs/multitask-minilm`
exists (the README's picture).
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from helpers import REPO, write_jsonl

try:
    import gradio as gr
except ImportError as e:  # pragma: no cover - a set-up problem, said plainly
    raise ImportError("the demo tests need gradio: pip install -r requirements-demo.txt") from e

import app
import labelling
import predict

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
OTHER_TASKS = {"language": ["en", "fr", "de", "es"], "spam": ["no", "yes"], "urgency": ["low", "mid", "high"]}


@pytest.fixture(scope="module")
def tiny(saved_tiny_model):
    """(model, tokenizer, directory) of the saved tiny model, loaded back the way app.py loads it."""
    _, _, directory = saved_tiny_model
    model, tokenizer, backend = app.load_model(str(directory))
    assert backend == "torch"  # no ONNX export in the directory
    return model, tokenizer, directory


def read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url):
    """GET a local URL, never through a proxy that the environment may name."""
    with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(url, timeout=5) as response:
        return json.load(response)


# ----- loading and the command line -----------------------------------------------------------------------------


def test_load_model_gives_the_saved_model(saved_tiny_model, tiny):
    saved, tokenizer, _ = saved_tiny_model
    model, loaded_tokenizer, _ = tiny
    texts = ["the movie was good", "stock price news"]
    assert model.config.tasks == saved.config.tasks
    assert model.predict(texts, loaded_tokenizer) == saved.predict(texts, tokenizer)


def test_main_with_a_missing_model_directory_exits_2_with_one_line(tmp_path, capsys):
    missing = tmp_path / "no-such-model"
    assert app.main(["--model", str(missing)]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {missing}: no such model directory\n"


def test_main_without_the_quickstart_model_says_to_train_it(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MULTITASK_MODEL", raising=False)
    assert app.main([]) == 2
    assert capsys.readouterr().err == (
        "error: outputs/multitask-minilm: no such model directory; "
        "run `python train.py` first to train the quickstart model\n"
    )


def test_a_directory_without_a_model_is_one_line(tmp_path):
    with pytest.raises(app.ModelError) as info:
        app.load_model(str(tmp_path))
    assert str(info.value) == f"{tmp_path}: no config.json in it; not a saved model directory"
    assert "\n" not in str(info.value)


class FakeOnnx:
    """Stands in for onnx_multitask (has_onnx, OnnxMultiTaskModel.from_pretrained), serving a PyTorch model."""

    def __init__(self, model, exported):
        self.model, self.exported, self.calls = model, exported, []  # exported: the graphs there (quantized or not)
        self.OnnxMultiTaskModel = self

    def has_onnx(self, model_dir, quantized=False):
        return quantized in self.exported

    def from_pretrained(self, model_dir, quantized=False, threads=None):
        self.calls.append((str(model_dir), quantized))
        return self.model


@pytest.mark.parametrize(
    ("backend", "exported", "used", "quantized"),
    [
        ("auto", {False, True}, "onnx-int8", True),
        ("auto", {False}, "onnx", False),
        ("auto", set(), "torch", None),
        ("onnx-int8", {False, True}, "onnx-int8", True),
    ],
)
def test_backend_choice(tiny, monkeypatch, backend, exported, used, quantized):
    model, _, directory = tiny
    fake = FakeOnnx(model, exported)
    monkeypatch.setattr(labelling, "_onnx_module", lambda: fake)
    _, _, got = app.load_model(str(directory), backend)
    assert got == used
    assert fake.calls == ([] if quantized is None else [(str(directory), quantized)])


def test_onnx_backend_without_an_export_or_the_module_is_one_line(tiny, monkeypatch):
    _, _, directory = tiny
    monkeypatch.setattr(labelling, "_onnx_module", lambda: FakeOnnx(None, exported=set()))
    with pytest.raises(app.ModelError, match=r": no onnx-int8 export; run python export_onnx.py --model .* first$"):
        app.load_model(str(directory), "onnx-int8")
    monkeypatch.setattr(labelling, "_onnx_module", lambda: None)
    _, _, used = app.load_model(str(directory), "auto")  # auto falls back to PyTorch
    assert used == "torch"
    with pytest.raises(app.ModelError, match=r"^backend onnx needs onnx_multitask.py and onnxruntime$"):
        app.load_model(str(directory), "onnx")


def test_auto_backend_runs_a_real_onnx_export(tiny, tmp_path):
    onnx_multitask = pytest.importorskip("onnx_multitask", reason="the ONNX backend's dependencies are not installed")
    torch_model, tokenizer, directory = tiny
    exported = shutil.copytree(directory, tmp_path / "model")  # a copy: the shared fixture stays without an export
    onnx_multitask.export(exported, quantize=False)
    model, _, backend = app.load_model(str(exported))
    assert (backend, type(model).__name__) == ("onnx", "OnnxMultiTaskModel")
    text = "the movie was good"
    panels, reference = app.classify(model, tokenizer, text), app.classify(torch_model, tokenizer, text)
    assert len(panels) == len(reference)
    for panel, expected in zip(panels, reference, strict=True):
        assert panel == pytest.approx(expected, abs=1e-4)
    (tmp_path / "in.txt").write_text(f"{text}\nbad bank\n", encoding="utf-8")
    rows = read_jsonl(app.label_file(model, tokenizer, str(tmp_path / "in.txt"), out_dir=tmp_path))
    assert [row["line"] for row in rows] == [1, 2]
    onnx_multitask.export(exported)  # with the int8 graph, auto takes it
    assert app.load_model(str(exported))[2] == "onnx-int8"


# ----- what the UI calls ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tasks", [None, OTHER_TASKS], ids=["default-tasks", "other-tasks"])
def test_classify_gives_one_panel_per_task_of_the_model(make_tiny_model, bert_config, tiny_tokenizer, tasks):
    model = make_tiny_model(bert_config, **({"tasks": tasks} if tasks else {}))
    text = "the bank lost money today"
    panels = app.classify(model, tiny_tokenizer, text)
    (best,) = model.predict([text], tiny_tokenizer)
    assert len(panels) == len(model.config.tasks)
    for panel, (task, labels) in zip(panels, model.config.tasks.items(), strict=True):
        assert sorted(panel) == sorted(labels)  # every label (at most 5), each with its probability
        assert sum(panel.values()) == pytest.approx(1.0, abs=1e-5)
        assert max(panel, key=panel.get) == best[task]["label"]


@pytest.mark.parametrize("text", ["", "   ", "\n\t", None])
def test_classify_refuses_an_empty_text(tiny, text):
    model, tokenizer, _ = tiny
    with pytest.raises(gr.Error) as info:
        app.classify(model, tokenizer, text)
    assert info.value.message == "Type or paste a text to classify first."


def test_similarity_is_the_cosine_matrix_of_encode(tiny):
    model, tokenizer, _ = tiny
    sentences = ["the movie was good", "", "the film was great  ", "stock market news today " * 5]
    table = app.similarity(model, tokenizer, "\n".join(sentences)).data
    kept = [s.strip() for s in sentences if s.strip()]
    emb = model.encode(kept, tokenizer, normalize=True)
    assert list(table.columns) == ["sentence", "1", "2", "3"]
    assert table["sentence"].tolist()[:2] == ["1. the movie was good", "2. the film was great"]
    assert table["sentence"][2].endswith("…") and len(table["sentence"][2]) == 43  # long sentences are cut
    matrix = torch.tensor(table[["1", "2", "3"]].to_numpy(), dtype=torch.float32)
    torch.testing.assert_close(matrix, (emb @ emb.T).round(decimals=2), atol=0.011, rtol=0)
    assert matrix.diagonal().tolist() == [1.0, 1.0, 1.0]


@pytest.mark.parametrize("text", ["", "one sentence only", "one\n\n   \n"])
def test_similarity_needs_two_sentences(tiny, text):
    model, tokenizer, _ = tiny
    with pytest.raises(gr.Error) as info:
        app.similarity(model, tokenizer, text)
    assert info.value.message == "Enter two or more sentences, one per line."


def test_label_file_writes_what_predict_py_writes(tiny, tmp_path):
    model, tokenizer, directory = tiny
    texts = ["the movie was good", "?!", "stock price news", "i love this game"]  # a blank line is a bad line
    source = tmp_path / "texts.txt"
    source.write_text("\n".join(texts) + "\n", encoding="utf-8")
    seen = []
    result = app.label_file(
        model, tokenizer, str(source), progress=lambda done, **kw: seen.append(done), out_dir=tmp_path
    )
    assert Path(result).name == "texts.predictions.jsonl"
    reference = tmp_path / "reference.jsonl"
    assert predict.main(["--model", str(directory), "--input", str(source), "--output", str(reference)]) == 0
    assert read_jsonl(result) == read_jsonl(reference)
    assert [row["line"] for row in read_jsonl(result)] == [1, 2, 3, 4]
    assert seen[-1] == (4, 4)


def test_label_file_reads_jsonl_and_csv_with_a_text_field(tiny, tmp_path):
    model, tokenizer, _ = tiny
    rows = [{"id": "a", "body": "the movie was good"}, {"id": "b", "body": "bad bank"}]
    jsonl = write_jsonl(tmp_path / "rows.jsonl", rows)
    csv = tmp_path / "rows.csv"
    csv.write_text('id,body\na,the movie was good\nb,"bad bank"\n', encoding="utf-8")
    expected = model.predict([row["body"] for row in rows], tokenizer)
    for path in (jsonl, csv):
        out = read_jsonl(app.label_file(model, tokenizer, str(path), text_field="body ", out_dir=tmp_path))
        assert [row["id"] for row in out] == ["a", "b"]
        assert [{task: row[task] for task in model.config.tasks} for row in out] == expected


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("bad.jsonl", '{"text": "fine"}\n{"text": "broken\n', "bad.jsonl:2: malformed JSON"),
        ("field.jsonl", '{"body": "no text field"}\n', "field.jsonl:1: no 'text' field (fields: ['body'])"),
        ("empty.txt", "", "empty.txt: no texts to label"),
        ("empty.jsonl", "\n\n", "empty.jsonl: no texts to label"),
        ("slides.pdf", "%PDF-1.4\n", "slides.pdf: unknown file type '.pdf'"),
        ("bytes.txt", b"fine\n\xff\xfe bad\n", "bytes.txt:2:"),
    ],
)
def test_label_file_gives_a_one_line_error_for_a_bad_file(tiny, tmp_path, name, content, message):
    model, tokenizer, _ = tiny
    path = tmp_path / "upload-cache" / name
    path.parent.mkdir()
    (tmp_path / "out").mkdir()
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    with pytest.raises(gr.Error) as info:
        app.label_file(model, tokenizer, str(path), out_dir=tmp_path / "out")
    assert info.value.message.startswith(message)
    assert list((tmp_path / "out").iterdir()) == []  # no partial output left behind
    assert str(tmp_path) not in info.value.message  # the file is named, not the server's temporary path
    assert "\n" not in info.value.message


def test_label_file_without_a_file(tiny):
    model, tokenizer, _ = tiny
    with pytest.raises(gr.Error) as info:
        app.label_file(model, tokenizer, None)
    assert info.value.message == "Upload a .txt, .jsonl, .csv or .tsv file first."


def test_build_app_shows_every_task_of_the_model(make_tiny_model, bert_config, tiny_tokenizer):
    model = make_tiny_model(bert_config, tasks=OTHER_TASKS)
    demo = app.build_app(model, tiny_tokenizer, "torch")
    assert isinstance(demo, gr.Blocks)
    labels = [block for block in demo.blocks.values() if isinstance(block, gr.Label)]
    assert [label.label for label in labels] == list(OTHER_TASKS)
    assert all(label.num_top_classes == 4 for label in labels)
    (upload,) = [b for b in demo.blocks.values() if isinstance(b, gr.File) and b.elem_id == "upload"]
    assert sorted(upload.file_types) == sorted(labelling.FORMATS)


def test_write_space(tiny, tmp_path):
    _, _, directory = tiny
    space = tmp_path / "space"
    assert app.main(["--model", str(directory), "--write_space", str(space)]) == 0
    readme = (space / "README.md").read_text(encoding="utf-8")
    assert readme.startswith("---\n")
    front = readme.split("---\n")[1].splitlines()
    assert {"sdk: gradio", "app_file: app.py", f"sdk_version: {gr.__version__}"} <= set(front)
    for name in ("app.py", "labelling.py", "modeling_multitask.py", "configuration_multitask.py", "multitask_data.py"):
        assert (space / name).is_file(), name
    requirements = (space / "requirements.txt").read_text(encoding="utf-8")
    assert "torch==" in requirements and "transformers" in requirements and "gradio" not in requirements
    model, _, _ = app.load_model(str(space / app.DEFAULT_MODEL))  # the model is where the app looks by default
    assert model.config.tasks == app.load_model(str(directory))[0].config.tasks


@pytest.mark.slow  # a real process serving the app (in this process: test_write_space, test_build_app_*)
def test_the_space_runs_app_py_with_no_arguments(tiny, tmp_path):
    """What a Space does: `python app.py` in the Space's folder, with no arguments and no repository around it, the
    address from GRADIO_SERVER_NAME/PORT; the app serves the model's tasks."""
    _, _, directory = tiny
    space = app.write_space(tmp_path / "space", str(directory))
    port = free_port()
    env = {**os.environ, "PYTHONPATH": "", "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    env["NO_PROXY"] = "127.0.0.1,localhost"
    env.update(GRADIO_SERVER_NAME="127.0.0.1", GRADIO_SERVER_PORT=str(port), TMPDIR=str(tmp_path))
    env.pop("MULTITASK_MODEL", None)
    child = subprocess.Popen(
        [sys.executable, "app.py"], cwd=space, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                config = get_json(f"http://127.0.0.1:{port}/config")
                break
            except OSError:
                assert child.poll() is None, child.stdout.read()[-3000:]
                assert time.monotonic() < deadline, "the Space app did not answer within 120 s"
                time.sleep(0.5)
    finally:
        child.terminate()
        child.wait(timeout=30)
    labels = [c["props"].get("label") for c in config["components"] if c.get("type") == "label"]
    assert labels == list(tiny[0].config.tasks)


# ----- the app in a browser ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser():
    """Headless Debian Chromium driven by Playwright; fails (not skips) when either is missing."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the browser tests need Playwright: pip install -r requirements-demo.txt", pytrace=False)
    if not Path(CHROMIUM).is_file():
        pytest.fail(
            f"the browser tests need Chromium at {CHROMIUM}: apt-get install chromium "
            "(Debian; or set CHROMIUM_PATH to a Chromium binary)",
            pytrace=False,
        )
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def served(tiny, tmp_path_factory):
    """(url, model, tokenizer) of the app on 127.0.0.1 (a free port), run in this process; the quickstart model when
    DEMO_SCREENSHOT is set and `outputs/multitask-minilm` exists, else the tiny model."""
    quickstart = REPO / app.DEFAULT_MODEL
    if os.environ.get("DEMO_SCREENSHOT") and quickstart.is_dir():
        model, tokenizer, backend = app.load_model(str(quickstart))
        model.config._name_or_path = app.DEFAULT_MODEL  # shown in the header; not this machine's path
    else:
        model, tokenizer, _ = tiny
        backend = "torch"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("GRADIO_ANALYTICS_ENABLED", "False")
        env.setenv("NO_PROXY", "127.0.0.1,localhost")  # gradio checks its own URL with httpx, which honours proxies
        env.setenv("GRADIO_TEMP_DIR", str(tmp_path_factory.mktemp("gradio")))  # uploads and downloads
        demo = app.build_app(model, tokenizer, backend)
        port = free_port()
        demo.launch(
            server_name="127.0.0.1",
            server_port=port,
            prevent_thread_lock=True,
            quiet=True,
            max_file_size=f"{app.Limits.upload_mb}mb",  # as app.main launches it
        )
        try:
            yield f"http://127.0.0.1:{port}/", model, tokenizer
        finally:
            demo.close()


@pytest.fixture
def page(browser, served):
    context = browser.new_context(viewport={"width": 1280, "height": 860}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(30_000)
    page.goto(served[0])
    yield page
    context.close()


@pytest.mark.slow  # the browser
def test_browser_classify_shows_every_task_and_screenshot(page, served, tmp_path):
    from playwright.sync_api import expect

    model, tokenizer = served[1:]
    page.get_by_role("button", name="Classify").click()  # nothing typed yet: an error, no labels
    expect(page.get_by_test_id("toast-body")).to_contain_text("Type or paste a text to classify first.")
    page.get_by_test_id("toast-close").click()
    shown = [page.locator(f"#task-{i} [data-testid=label-output-value]") for i in range(len(model.config.tasks))]
    page.get_by_text(app.EXAMPLES[1][:40]).click()  # an example: fills the box and classifies it
    expect(page.get_by_label("Text", exact=True)).to_have_value(app.EXAMPLES[1])
    expect(shown[-1]).not_to_be_empty()
    page.get_by_label("Text", exact=True).fill("Shares of the chipmaker jumped 8% after it beat earnings expectations.")
    page.get_by_role("button", name="Classify").click()
    expected = model.predict(["Shares of the chipmaker jumped 8% after it beat earnings expectations."], tokenizer)[0]
    for panel, (task, labels) in zip(shown, model.config.tasks.items(), strict=True):
        expect(panel).to_have_text(expected[task]["label"])  # the typed text's labels, not the example's
        assert panel.inner_text().strip() in labels, task
    page.wait_for_timeout(300)  # let the confidence bars finish their transition before the picture
    shot = tmp_path / "demo.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    if os.environ.get("DEMO_SCREENSHOT"):
        target = Path(os.environ["DEMO_SCREENSHOT"])
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, target)


@pytest.mark.slow  # the browser
def test_browser_file_upload_gives_a_jsonl_download(page, served, tmp_path):
    from playwright.sync_api import expect

    model = served[1]
    texts = ["the movie was good", "stock price news", "bad bank", "i love this game"]
    source = tmp_path / "reviews.txt"
    source.write_text("\n".join(texts) + "\n", encoding="utf-8")
    page.get_by_role("tab", name="File").click()
    page.locator("#upload input[type=file]").set_input_files(str(source))
    # the accessible name, not the text: Gradio lays the name out in parts ("broken .jsonl" in text content)
    expect(page.locator("#upload").get_by_role("cell", name="reviews.txt")).to_be_visible()
    page.get_by_role("button", name="Label file").click()
    link = page.locator("#predictions [data-testid=download-link]")
    expect(link).to_have_attribute("download", "reviews.predictions.jsonl")
    with page.expect_download() as download:
        link.click()
    saved = tmp_path / "downloaded.jsonl"
    download.value.save_as(saved)
    rows = read_jsonl(saved)
    assert [row["line"] for row in rows] == [1, 2, 3, 4]  # one valid JSON line per input text
    for row in rows:
        for task, labels in model.config.tasks.items():
            assert row[task]["label"] in labels and 0.0 <= row[task]["score"] <= 1.0


@pytest.mark.slow  # the browser
def test_browser_bad_file_shows_the_error(page, tmp_path):
    from playwright.sync_api import expect

    source = tmp_path / "broken.jsonl"
    source.write_text('{"text": "fine"}\n{"text": \n', encoding="utf-8")
    page.get_by_role("tab", name="File").click()
    page.locator("#upload input[type=file]").set_input_files(str(source))
    expect(page.locator("#upload").get_by_role("cell", name="broken.jsonl")).to_be_visible()
    page.get_by_role("button", name="Label file").click()
    expect(page.get_by_test_id("toast-body")).to_contain_text("broken.jsonl:2: malformed JSON")
    expect(page.locator("#predictions [data-testid=download-link]")).to_have_count(0)


@pytest.mark.slow  # the browser
def test_browser_similarity_matrix(page):
    from playwright.sync_api import expect

    page.get_by_role("tab", name="Similarity").click()
    page.get_by_role("button", name="Compare").click()  # the four example sentences
    table = page.locator("#similarity")
    expect(table).to_contain_text("1. The central bank raised interest rates")
    expect(table).to_contain_text("1.00")


@pytest.mark.slow  # the browser
def test_browser_refuses_a_file_of_another_type(page, tmp_path):
    from playwright.sync_api import expect

    source = tmp_path / "slides.pdf"
    source.write_bytes(b"%PDF-1.4\n")
    page.get_by_role("tab", name="File").click()
    page.locator("#upload input[type=file]").set_input_files(str(source))
    expect(page.get_by_test_id("toast-body")).to_contain_text("Invalid file type: slides.pdf")


@pytest.mark.slow  # the browser
def test_browser_refuses_a_file_over_the_upload_cap(page, tmp_path):
    from playwright.sync_api import expect

    source = tmp_path / "huge.txt"
    source.write_bytes(b"the movie was good\n" * (app.Limits.upload_mb * 1024 * 1024 // 19 + 1000))
    page.get_by_role("tab", name="File").click()
    page.locator("#upload input[type=file]").set_input_files(str(source))
    expect(page.get_by_test_id("toast-body")).to_contain_text(
        f'File(s) exceed the maximum allowed size of {app.Limits.upload_mb}.0 Mb: "huge.txt"'
    )
    expect(page.locator("#upload").get_by_role("cell", name="huge.txt")).to_have_count(0)
