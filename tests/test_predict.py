"""predict.py: every input format, stdin, embeddings, restart after a partial write or a real kill, bad lines."""

import ast
import csv
import io
import itertools
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
import token
import tokenize
from pathlib import Path

import pytest
import torch
from helpers import SLOW_PREDICT, TASKS

import labelling
import predict

REPO_ROOT = Path(__file__).resolve().parent.parent
# Edge cases included: punctuation only, characters outside the vocabulary, a text longer than the 64 positions. (A
# blank text is a bad line: see test_safety_predict.)
TEXTS = ["the movie was good", "?!", "😀 i love it!", "stock market price " * 30, "bad food", "the team lost", "a b c"]


@pytest.fixture(scope="module")
def saved(saved_tiny_model):
    """(model, tokenizer, directory) of conftest's tiny saved model."""
    return saved_tiny_model


def run(saved, input_path, output_path, *options):
    return predict.main(["--model", str(saved[2]), "--input", str(input_path), "--output", str(output_path), *options])


def read_output(path):
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]


def assert_predictions(records, texts, saved):
    """Each output record holds model.predict's labels (and scores, to 1e-5) for its text."""
    model, tokenizer, _ = saved
    expected = [None] * len(texts)  # iter_batches, not predict: predict refuses the blank text that predict.py labels
    for idx, logits, _ in model.iter_batches(texts, tokenizer):
        for i, result in zip(idx, model.decode(logits), strict=True):
            expected[i] = result
    assert len(records) == len(expected)
    for record, exp in zip(records, expected, strict=True):
        assert set(record) - {"line", "id", "embedding"} == set(TASKS)
        for task in TASKS:
            assert record[task]["label"] == exp[task]["label"]
            assert record[task]["score"] == pytest.approx(exp[task]["score"], abs=1e-5)


def write_lines(path, texts):
    path.write_text("".join(text + "\n" for text in texts), encoding="utf-8")
    return path


def test_txt_input(saved, tmp_path):
    source = write_lines(tmp_path / "in.txt", TEXTS)
    assert run(saved, source, tmp_path / "out.jsonl", "--batch_size", "2", "--window", "3") == 0
    records = read_output(tmp_path / "out.jsonl")
    assert [r["line"] for r in records] == list(range(1, len(TEXTS) + 1))
    assert all("id" not in r and "embedding" not in r for r in records)
    assert_predictions(records, TEXTS, saved)
    assert len({r["topic"]["label"] for r in records}) > 1, "a test where every text gets one label proves little"


def test_jsonl_input_keeps_ids_and_skips_blank_lines(saved, tmp_path):
    rows = [{"id": f"r{i}", "text": text} for i, text in enumerate(TEXTS)]
    rows[2].pop("id")
    lines = [json.dumps(row, ensure_ascii=False) for row in rows]
    lines.insert(3, "   ")  # a blank line: no output, but it shifts the line numbers after it
    write_lines(tmp_path / "in.jsonl", lines)
    assert run(saved, tmp_path / "in.jsonl", tmp_path / "out.jsonl", "--window", "4") == 0
    records = read_output(tmp_path / "out.jsonl")
    assert [r["line"] for r in records] == [1, 2, 3, 5, 6, 7, 8]
    assert [r.get("id") for r in records] == ["r0", "r1", None, "r3", "r4", "r5", "r6"]
    assert_predictions(records, TEXTS, saved)


def test_csv_input_numbers_records_by_their_first_line(saved, tmp_path):
    texts = ["good, very good", "the team\nlost the match", "bad food"]  # a comma and a newline inside quotes
    with open(tmp_path / "in.csv", "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "text", "source"])
        writer.writerows([[i, text, "web"] for i, text in enumerate(texts)])
    assert run(saved, tmp_path / "in.csv", tmp_path / "out.jsonl", "--text_field", "text") == 0
    records = read_output(tmp_path / "out.jsonl")
    assert [r["line"] for r in records] == [2, 3, 5]
    assert [r["id"] for r in records] == ["0", "1", "2"]
    assert_predictions(records, texts, saved)


@pytest.mark.parametrize("fmt", ["txt", "jsonl"])
def test_stdin(saved, tmp_path, monkeypatch, fmt):
    lines = TEXTS if fmt == "txt" else [json.dumps({"text": t}) for t in TEXTS]
    data = "".join(line + "\n" for line in lines).encode("utf-8")
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data), encoding="utf-8"))
    options = [] if fmt == "txt" else ["--format", "jsonl"]
    assert run(saved, "-", tmp_path / "out.jsonl", *options) == 0
    records = read_output(tmp_path / "out.jsonl")
    assert [r["line"] for r in records] == list(range(1, len(TEXTS) + 1))
    assert_predictions(records, TEXTS, saved)


def test_with_embeddings(saved, tmp_path):
    model, tokenizer, _ = saved
    write_lines(tmp_path / "in.txt", TEXTS)
    assert run(saved, tmp_path / "in.txt", tmp_path / "out.jsonl", "--with_embeddings", "--batch_size", "3") == 0
    records = read_output(tmp_path / "out.jsonl")
    assert_predictions(records, TEXTS, saved)
    embeddings = torch.tensor([r["embedding"] for r in records])
    kept = [i for i, text in enumerate(TEXTS) if text]  # encode refuses the blank line that predict.py labels
    torch.testing.assert_close(embeddings[kept], model.encode([TEXTS[i] for i in kept], tokenizer), atol=1e-5, rtol=0)


# Each text is run alone (batch size 1) so its scores do not depend on which texts share its batch: a resumed run
# batches differently, and the comparison below is byte for byte.
@pytest.mark.parametrize(
    ("complete", "partial"),
    [(0, b""), (0, b'{"line": 1, "to'), (3, b""), (3, b'{"line": 4, "topic": {"lab'), (7, b"")],
)
def test_restart_continues_a_partial_output_exactly(saved, tmp_path, complete, partial):
    write_lines(tmp_path / "in.txt", TEXTS)
    options = ["--batch_size", "1", "--window", "2"]
    assert run(saved, tmp_path / "in.txt", tmp_path / "full.jsonl", *options) == 0
    full = (tmp_path / "full.jsonl").read_bytes()

    killed = b"".join(full.splitlines(keepends=True)[:complete]) + partial
    (tmp_path / "out.jsonl").write_bytes(killed)  # what a kill leaves: part of the output, and its record
    shutil.copy(tmp_path / "full.jsonl.resume.json", tmp_path / "out.jsonl.resume.json")
    assert run(saved, tmp_path / "in.txt", tmp_path / "out.jsonl", *options) == 0
    assert (tmp_path / "out.jsonl").read_bytes() == full


def test_restart_resumes_after_the_last_written_line_when_bad_lines_were_skipped(saved, tmp_path):
    lines = ['{"text": "good"}', "not json", '{"text": "bad food"}', "not json", '{"text": "the team lost"}']
    write_lines(tmp_path / "in.jsonl", lines)
    options = ["--on_error", "skip", "--batch_size", "1"]
    assert run(saved, tmp_path / "in.jsonl", tmp_path / "full.jsonl", *options) == 0
    full = (tmp_path / "full.jsonl").read_bytes()
    assert [r["line"] for r in read_output(tmp_path / "full.jsonl")] == [1, 3, 5]
    # Two output lines = inputs 1 and 3, not "the first two inputs": the run must go on after input line 3.
    (tmp_path / "out.jsonl").write_bytes(b"".join(full.splitlines(keepends=True)[:2]))
    shutil.copy(tmp_path / "full.jsonl.resume.json", tmp_path / "out.jsonl.resume.json")
    assert run(saved, tmp_path / "in.jsonl", tmp_path / "out.jsonl", *options) == 0
    assert (tmp_path / "out.jsonl").read_bytes() == full


def test_overwrite_starts_again(saved, tmp_path):
    write_lines(tmp_path / "in.txt", TEXTS)
    (tmp_path / "out.jsonl").write_text('{"line": 99}\n')
    assert run(saved, tmp_path / "in.txt", tmp_path / "out.jsonl", "--overwrite") == 0
    assert [r["line"] for r in read_output(tmp_path / "out.jsonl")] == list(range(1, len(TEXTS) + 1))


def test_refuses_to_append_to_a_file_it_did_not_write(saved, tmp_path, capsys):
    write_lines(tmp_path / "in.txt", TEXTS)
    (tmp_path / "out.jsonl").write_text("id,label\n1,good\n")
    assert run(saved, tmp_path / "in.txt", tmp_path / "out.jsonl") == 1
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert message == (
        f"error: {tmp_path / 'out.jsonl'}: exists and was not written by predict.py (no out.jsonl.resume.json beside "
        "it); choose another --output, or --overwrite to replace it"
    )
    assert (tmp_path / "out.jsonl").read_text() == "id,label\n1,good\n"


@pytest.mark.slow  # a real process, killed (in this process: tests/test_safety_predict.py)
def test_killed_run_resumes_without_losing_or_repeating_a_line(saved, tmp_path):
    rng = random.Random(0)
    words = "the a movie film good bad great stock market bank money health doctor food team match win lost".split()
    texts = [" ".join(rng.choices(words, k=rng.randint(1, 20))) for _ in range(3000)]
    write_lines(tmp_path / "in.txt", texts)
    output = tmp_path / "out.jsonl"
    args = ["--model", str(saved[2]), "--input", str(tmp_path / "in.txt"), "--output", str(output)]
    args += ["--window", "50", "--batch_size", "16"]

    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1"}
    child = subprocess.Popen(
        [sys.executable, "-c", SLOW_PREDICT, *args],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while not (output.exists() and output.read_bytes().count(b"\n") >= 100):
        assert child.poll() is None, f"predict.py ended (exit {child.returncode}) before it could be killed"
        assert time.monotonic() < deadline, "predict.py wrote nothing in 120 s"
        time.sleep(0.01)
    child.send_signal(signal.SIGKILL)
    assert child.wait(timeout=30) == -signal.SIGKILL
    written = output.read_bytes().count(b"\n")
    assert 100 <= written < len(texts)

    assert predict.main(args) == 0
    records = read_output(output)
    assert [r["line"] for r in records] == list(range(1, len(texts) + 1))
    around_the_kill = slice(written - 60, written + 60)  # the lines a wrong resume point would shift
    assert_predictions(records[around_the_kill], texts[around_the_kill], saved)


BAD_JSONL = [
    b'{"text": "good"}',
    b'{"text": "caf\xe9"}',  # Latin-1, not UTF-8
    b'{"text": "bad"',
    b'{"body": "no text field"}',
    b'{"text": 5}',
    b'["text", "in a list"]',
    b'{"text": "the team lost"}',
]
BAD_JSONL_ERRORS = [
    (2, "not valid UTF-8 (invalid continuation byte at byte 13)"),
    (3, "malformed JSON (Expecting ',' delimiter, column 15)"),
    (4, "no 'text' field (fields: ['body'])"),
    (5, "'text' is 5; expected a string"),
    (6, "expected a JSON object, got list"),
]


def test_bad_lines_skipped_with_a_warning_naming_each(saved, tmp_path, caplog):
    source = tmp_path / "in.jsonl"
    source.write_bytes(b"\n".join(BAD_JSONL) + b"\n")
    assert run(saved, source, tmp_path / "out.jsonl", "--on_error", "skip") == 0
    records = read_output(tmp_path / "out.jsonl")
    assert [r["line"] for r in records] == [1, 7]
    assert_predictions(records, ["good", "the team lost"], saved)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and r.name == "labelling"]
    assert warnings == [f"{source}:{line}: {error}; skipped" for line, error in BAD_JSONL_ERRORS]


@pytest.mark.parametrize("bad", range(1, 6))
def test_bad_line_fails_naming_file_and_line_and_keeps_the_output_before_it(saved, tmp_path, capsys, bad):
    source = tmp_path / "in.jsonl"
    lines = [BAD_JSONL[0], BAD_JSONL[bad], BAD_JSONL[-1]]
    source.write_bytes(b"\n".join(lines) + b"\n")
    assert run(saved, source, tmp_path / "out.jsonl") == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"error: {source}:2: {BAD_JSONL_ERRORS[bad - 1][1]}"
    assert [r["line"] for r in read_output(tmp_path / "out.jsonl")] == [1]

    # Fixed, the same command goes on from the bad line.
    source.write_bytes(b"\n".join([BAD_JSONL[0], b'{"text": "bad food"}', BAD_JSONL[-1]]) + b"\n")
    assert run(saved, source, tmp_path / "out.jsonl") == 0
    records = read_output(tmp_path / "out.jsonl")
    assert [r["line"] for r in records] == [1, 2, 3]
    assert_predictions(records, ["good", "bad food", "the team lost"], saved)


def test_bad_csv_rows(saved, tmp_path, caplog):
    source = tmp_path / "in.csv"
    # a blank line (6) is skipped without a warning; the quote opened on line 9 swallows the rest of the file
    source.write_bytes(
        b'text,id\ngood,1\nbad,2,extra\ncaf\xe9,3\nthe team lost,4\n\n"two\nlines",5\n"never closed,6\nx,7\n'
    )
    assert run(saved, source, tmp_path / "out.jsonl", "--on_error", "skip") == 0
    assert [(r["line"], r["id"]) for r in read_output(tmp_path / "out.jsonl")] == [(2, "1"), (5, "4"), (7, "5")]
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and r.name == "labelling"]
    assert warnings == [
        f"{source}:3: 3 fields, but the header has 2; skipped",
        f"{source}:4: not valid UTF-8 (invalid continuation byte at byte 3); skipped",
        f"{source}:9: unterminated quoted field (a '\"' opened on this line is never closed); skipped",
    ]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("in.csv", "id,body\n1,good\n", "{path}:1: no 'text' column in the header ['id', 'body']"),
        (
            "in.csv",
            "text;id\ngood;1\n",
            "{path}:1: header 'text;id' is one column; the file seems to use another delimiter than ',' "
            "(expected comma-separated columns)",
        ),
        ("in.parquet", "", "{path}: unknown file type '.parquet'; expected one of {formats} or --format"),
        ("missing.txt", None, "{path}: file not found"),
    ],
)
def test_bad_input_files(saved, tmp_path, capsys, name, content, message):
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    assert run(saved, path, tmp_path / "out.jsonl") == 1
    expected = "error: " + message.format(path=path, formats=sorted(labelling.FORMATS))
    assert capsys.readouterr().err.strip().splitlines()[-1] == expected


# ----- the library behind the scripts (labelling.py) ------------------------------------------------------------------


def test_label_texts_gives_the_rows_that_label_file_writes(saved, tmp_path):
    model, tokenizer, directory = saved
    source = write_lines(tmp_path / "in.txt", TEXTS)
    assert run(saved, source, tmp_path / "out.jsonl", "--batch_size", "2", "--window", "3") == 0
    rows = list(labelling.label_texts(model, tokenizer, TEXTS, batch_size=2, window=3))
    assert rows == read_output(tmp_path / "out.jsonl")  # same windows, same batches: the same lines and scores
    loaded, loaded_tokenizer, backend = labelling.load_for_inference(str(directory))
    assert backend == "torch"
    records = [labelling.Record(10, text="bad food", id="x")]
    (row,) = labelling.label_texts(loaded, loaded_tokenizer, records, with_embeddings=True)
    assert (row["line"], row["id"], len(row["embedding"])) == (10, "x", model.config.hidden_size)


@pytest.mark.parametrize(
    ("texts", "message"), [(["good", "\u200b"], "texts[1] is blank"), ([b"x"], "texts[0] is bytes")]
)
def test_label_texts_refuses_a_text_with_nothing_to_read_naming_it(saved, texts, message):
    model, tokenizer, _ = saved
    with pytest.raises(labelling.UserError, match=re.escape(message)):
        list(labelling.label_texts(model, tokenizer, texts))
    with pytest.raises(labelling.UserError, match=r"^batch_size must be a positive int, got 0$"):
        list(labelling.label_texts(model, tokenizer, ["good"], batch_size=0))


def test_as_flag_names_the_flag_of_a_library_error():
    names = ("batch_size", "device", "backend")
    assert labelling.as_flag(ValueError("batch_size must be a positive int, got 0"), names) == (
        "--batch_size must be a positive int, got 0"
    )
    assert (
        labelling.as_flag(ValueError("device 'gpu': not a torch device"), names) == "--device gpu: not a torch device"
    )
    assert labelling.as_flag(ValueError("backend onnx needs onnxruntime"), names) == "--backend onnx needs onnxruntime"
    assert labelling.as_flag(ValueError("in.txt: file not found"), names) == "in.txt: file not found"


def test_every_scripts_error_for_a_users_mistake_is_a_user_error():
    import app
    import export_onnx
    import training_args
    from multitask_data import DataError, UserError

    for kind in (DataError, labelling.InputError, labelling.ModelError, app.UsageError, app.ModelError,
                 training_args.ArgumentError, training_args.OutputError):  # fmt: skip
        assert issubclass(kind, UserError) and issubclass(kind, ValueError), kind
    with pytest.raises(UserError):
        export_onnx.ExportArguments(model="m", opset=0)


def test_no_module_imports_a_script_and_ignore_index_has_one_home():
    scripts = {"train", "predict", "app", "export_onnx"}
    modules = [*REPO_ROOT.glob("*.py"), *REPO_ROOT.glob("benchmarks/*.py")]
    for path in modules:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                    for alias in node.names}  # fmt: skip
        imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                     and node.module}  # fmt: skip
        assert not imported & (scripts - {path.stem}), f"{path.name} imports the script(s) {imported & scripts}"
        homes = [node for node in ast.walk(tree) if isinstance(node, ast.Assign)
                 and any(getattr(t, "id", None) == "IGNORE_INDEX" for t in node.targets)]  # fmt: skip
        assert not homes or path.name == "modeling_multitask.py", f"{path.name} defines IGNORE_INDEX again"
        tokens = [(t.type, t.string) for t in tokenize.generate_tokens(io.StringIO(path.read_text("utf-8")).readline)]
        literal = any(a == (token.OP, "-") and b == (token.NUMBER, "100") for a, b in itertools.pairwise(tokens))
        assert not literal or path.name == "modeling_multitask.py", f"{path.name} writes -100, not IGNORE_INDEX"


def test_the_resume_record_and_the_onnx_export_name_the_model_by_one_fingerprint(saved, tmp_path):
    from onnx_multitask import model_fingerprint, sha256_file

    directory = saved[2]
    source = write_lines(tmp_path / "in.txt", TEXTS[:2])
    assert run(saved, source, tmp_path / "out.jsonl") == 0
    record = json.loads((tmp_path / "out.jsonl.resume.json").read_text(encoding="utf-8"))
    fingerprint = model_fingerprint(directory)
    assert sorted(fingerprint) == ["config.json", "model.safetensors"]
    assert fingerprint["model.safetensors"] == sha256_file(Path(directory) / "model.safetensors")
    assert record["model"] == labelling.model_identity(str(directory))
    assert record["input"]["sha256"] == sha256_file(source)
    assert not (tmp_path / "out.jsonl.lock").exists()  # the lock is gone with the run
