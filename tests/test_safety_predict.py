"""predict.py used carelessly, second round (issue 27): blank texts, a full disk, outputs that are not files, resuming
from stdin, an empty input, progress bars in logs, mixed single- and multi-process runs on one output.

In-process where the harm shows there (`predict.main`, capsys/caplog, a failing write simulated by replacing
`labelling.write_all`); the real command, marked slow, where only it shows the harm (/dev/full, /dev/stdout, a pipe)."""

import errno
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from filelock import FileLock
from helpers import REPO

import labelling
import predict
from multitask_data import is_blank, load_entry

TEXTS = ["the movie was good", "bad food", "the team lost", "stock market price", "i love it", "sad news today"]
BLANK = ["", "   ", "\t", "\u200b", "\u200b\u2060\ufeff", "\u00a0\u3000", " \x0b "]
NOT_BLANK = ["a", "?", "😀", "\u200ba", " x "]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}


@pytest.fixture(scope="module")
def model_dir(saved_tiny_model):
    return str(saved_tiny_model[2])


def run(model_dir, source, output, *options):
    return predict.main(["--model", model_dir, "--input", str(source), "--output", str(output), *map(str, options)])


def last_error(capsys):
    """The last line on stderr, which must be the only `error:` line, without a traceback."""
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    assert sum(line.startswith("error: ") for line in err.splitlines()) == 1, err
    return err.strip().splitlines()[-1]


def write_lines(path, texts):
    path.write_bytes("".join(t + "\n" for t in texts).encode("utf-8"))
    return path


def lines_of(path):
    return [json.loads(line)["line"] for line in Path(path).read_text(encoding="utf-8").splitlines()]


def stdin_of(monkeypatch, texts):
    data = "".join(t + "\n" for t in texts).encode("utf-8")
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data), encoding="utf-8"))


# ----- a text with nothing to read is a bad line ----------------------------------------------------------------------


@pytest.mark.parametrize("text", BLANK)
def test_is_blank(text):
    assert is_blank(text)


@pytest.mark.parametrize("text", NOT_BLANK)
def test_is_not_blank(text):
    assert not is_blank(text)


@pytest.mark.parametrize("fmt", ["txt", "jsonl", "csv"])
@pytest.mark.parametrize("blank", ["", "  ", "\u200b"])
def test_a_blank_text_is_a_bad_line_under_on_error(model_dir, tmp_path, capsys, caplog, fmt, blank):
    texts = [TEXTS[0], blank, TEXTS[1]]
    source = tmp_path / f"in.{fmt}"
    if fmt == "txt":
        write_lines(source, texts)
        line, what = 2, "the line"
    elif fmt == "jsonl":
        write_lines(source, [json.dumps({"text": t}) for t in texts])
        line, what = 2, "'text'"
    else:
        write_lines(source, ["id,text", *(f'{i},"{t}"' for i, t in enumerate(texts))])
        line, what = 3, "'text'"
    output = tmp_path / "out.jsonl"
    assert run(model_dir, source, output) == 1
    reason = f"{what} is {blank!r}: nothing to read (empty, or only spaces and invisible characters)"
    assert last_error(capsys) == f"error: {source}:{line}: {reason}"
    assert lines_of(output) == [line - 1]  # the text before it, as for any bad line

    assert run(model_dir, source, tmp_path / "skipped.jsonl", "--on_error", "skip") == 0
    assert lines_of(tmp_path / "skipped.jsonl") == [line - 1, line + 1]
    assert f"{source}:{line}: {reason}; skipped" in caplog.text


def test_training_refuses_a_zero_width_text_too(tmp_path):
    source = write_lines(tmp_path / "train.jsonl", [json.dumps({"text": "\u200b", "topic": "Finance/Tech"})])
    with pytest.raises(ValueError, match=r"train.jsonl:1: text is '\\u200b'; expected a non-empty string"):
        load_entry(str(source), {"topic": ["Finance/Tech", "Health/Lifestyle"]})


@pytest.mark.parametrize(
    ("data", "error"),
    [
        ("good\nbad\n".encode("utf-16"), "not valid UTF-8 (the file starts with a UTF-16 byte-order mark)"),
        ("good\nbad\n".encode("utf-16-le"), "a NUL byte at byte 1 (a UTF-16 or binary file?); save it as UTF-8"),
    ],
)
def test_a_utf16_file_is_not_labelled_as_garbage(model_dir, tmp_path, capsys, data, error):
    source = tmp_path / "in.txt"
    source.write_bytes(data)
    output = tmp_path / "out.jsonl"
    assert run(model_dir, source, output, "--on_error", "skip") == 0
    assert not output.exists()  # every line is bad: nothing labelled (before: "g\x00o\x00..." got labels)
    assert run(model_dir, source, output) == 1
    assert last_error(capsys).startswith(f"error: {source}:1: {error}")


# ----- a full disk, a write cut short -----------------------------------------------------------------------------


def failing_write(monkeypatch, target, after, exception):
    """Replace labelling.write_all: the writes to `target` after the first `after` write half their data, then raise."""
    real, calls = labelling.write_all, []

    def write_all(out, data):
        if str(out.name) != str(target):
            return real(out, data)
        calls.append(len(data))
        if len(calls) <= after:
            return real(out, data)
        real(out, data[: len(data) // 2])
        raise exception

    monkeypatch.setattr(labelling, "write_all", write_all)
    return calls


ENOSPC = OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("after", [0, 2])
def test_a_full_disk_leaves_whole_lines_and_the_same_command_resumes(model_dir, tmp_path, capsys, monkeypatch, after):
    source, output = write_lines(tmp_path / "in.txt", TEXTS), tmp_path / "out.jsonl"
    options = ["--batch_size", 1, "--window", 2]  # one text per batch: scores do not depend on the batching
    assert run(model_dir, source, tmp_path / "full.jsonl", *options) == 0
    full = (tmp_path / "full.jsonl").read_bytes()

    failing_write(monkeypatch, output, after, ENOSPC)
    assert run(model_dir, source, output, *options) == 1
    if after:
        held = f"it holds predictions up to input line {2 * after}"
        assert output.read_bytes() == b"".join(full.splitlines(keepends=True)[: 2 * after])  # no partial line
    else:
        held = "nothing was written to it"
        assert not output.exists() and not Path(f"{output}.resume.json").exists()
    assert last_error(capsys) == (
        f"error: {output}: cannot write (No space left on device); {held}; free some space and run the same command "
        "to resume"
    )
    assert sorted(p.name for p in tmp_path.iterdir() if ".tmp" in p.name or "merging" in p.name) == []

    monkeypatch.undo()  # space freed
    assert run(model_dir, source, output, *options) == 0
    assert output.read_bytes() == full


def test_a_full_disk_when_writing_the_record_leaves_no_temp_file(model_dir, tmp_path, capsys, monkeypatch):
    source, output = write_lines(tmp_path / "in.txt", TEXTS), tmp_path / "out.jsonl"
    failing_write(monkeypatch, tmp_path / "out.jsonl.resume.tmp", 0, ENOSPC)
    assert run(model_dir, source, output) == 1
    assert last_error(capsys).startswith(f"error: {output}: cannot write (No space left on device); nothing was")
    assert list(tmp_path.iterdir()) == [source]  # no 0-byte OUT.resume.tmp, no empty output


def test_ctrl_c_in_the_middle_of_a_write_leaves_whole_lines(model_dir, tmp_path, capsys, monkeypatch):
    source, output = write_lines(tmp_path / "in.txt", TEXTS), tmp_path / "out.jsonl"
    failing_write(monkeypatch, output, 1, KeyboardInterrupt())
    assert run(model_dir, source, output, "--window", 2) == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"interrupted: {output} holds predictions up to input line 2; run the same command to resume"
    )
    assert lines_of(output) == [1, 2]  # the half-written window is gone, not left for the resume to cut
    monkeypatch.undo()
    assert run(model_dir, source, output, "--window", 2) == 0
    assert lines_of(output) == list(range(1, 7))


# ----- resuming from stdin ------------------------------------------------------------------------------------------


def test_resuming_from_stdin_checks_that_stdin_is_the_same_input(model_dir, tmp_path, capsys, monkeypatch):
    output = tmp_path / "out.jsonl"
    options = ["--batch_size", 1, "--window", 2]
    stdin_of(monkeypatch, TEXTS)
    assert run(model_dir, "-", tmp_path / "full.jsonl", *options) == 0
    broken = TEXTS[:4] + [""] + TEXTS[5:]  # line 5 is bad: the run stops after line 4
    stdin_of(monkeypatch, broken)
    assert run(model_dir, "-", output, *options) == 1
    assert lines_of(output) == [1, 2, 3, 4]
    assert last_error(capsys).startswith("error: <stdin>:5: the line is ''")
    written = output.read_bytes()

    for other, why in [
        (["another text", *TEXTS[1:]], "its first 4 lines are not the ones already labelled"),
        (TEXTS[:2], "it has 2 lines, fewer than the 4 already labelled"),
    ]:
        stdin_of(monkeypatch, other)
        assert run(model_dir, "-", output, *options) == 1
        assert last_error(capsys) == (
            f"error: <stdin>: is not the input the output was written from ({why}); give the same input to resume, "
            "or use another --output or --overwrite"
        )
        assert output.read_bytes() == written

    stdin_of(monkeypatch, TEXTS)  # the same lines, the bad one fixed
    assert run(model_dir, "-", output, *options) == 0
    assert output.read_bytes() == (tmp_path / "full.jsonl").read_bytes()


# ----- an empty input; progress bars ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("content", "options"), [("", []), ("\n \n\u200b\n", ["--on_error", "skip"])])
def test_an_input_with_nothing_to_label_says_so(model_dir, tmp_path, caplog, content, options):
    source, output = tmp_path / "in.txt", tmp_path / "out.jsonl"
    source.write_text(content, encoding="utf-8")
    assert run(model_dir, source, output, *options) == 0
    assert not output.exists() and not Path(f"{output}.resume.json").exists()
    messages = [r.getMessage() for r in caplog.records if r.name == "labelling"]
    assert f"{source}: no texts to label; {output} not written" in messages
    assert f"wrote {output}" not in messages


def test_no_progress_bar_when_stderr_is_not_a_terminal(model_dir, tmp_path, capsys):
    source = write_lines(tmp_path / "in.txt", TEXTS)
    assert run(model_dir, source, tmp_path / "out.jsonl") == 0
    err = capsys.readouterr().err
    assert "\r" not in err and "\x1b[" not in err and "it/s" not in err, err


# ----- one output, one process ------------------------------------------------------------------------------------


def test_a_launch_of_several_processes_is_refused_before_anything_is_written(model_dir, tmp_path, capsys, monkeypatch):
    source, output = write_lines(tmp_path / "in.txt", TEXTS), tmp_path / "out.jsonl"
    monkeypatch.setenv("WORLD_SIZE", "4")  # as torchrun or accelerate launch set it: each process would write it all
    assert run(model_dir, source, output) == 1
    assert last_error(capsys) == (
        "error: predict.py runs as one process, not 4 (WORLD_SIZE=4); to share an input among processes or machines, "
        "run it once with --engine ray --num_workers N"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt"]
    monkeypatch.setenv("WORLD_SIZE", "1")  # a launch of one process is one process
    assert run(model_dir, source, output) == 0 and lines_of(output) == list(range(1, 7))


# ----- the catalogue: careless use ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--window", 0], "error: --window must be a positive int, got 0"),
        (["--window", -5], "error: --window must be a positive int, got -5"),
        (["--max_length", 0], "error: --max_length must be a positive int, got 0"),
        (["--batch_size", -1], "error: --batch_size must be a positive int, got -1"),
    ],
)
def test_zero_and_negative_numbers(model_dir, tmp_path, capsys, options, message):
    source = write_lines(tmp_path / "in.txt", TEXTS)
    assert run(model_dir, source, tmp_path / "out.jsonl", *options) == 2
    assert last_error(capsys) == message
    assert list(tmp_path.iterdir()) == [source]


def test_an_input_folder_is_named_as_one(model_dir, tmp_path, capsys):
    assert run(model_dir, tmp_path, tmp_path / "out.jsonl") == 1
    assert last_error(capsys) == f"error: {tmp_path}: is a directory; --input names a file"


def test_a_second_run_into_a_finished_output_changes_nothing(model_dir, tmp_path):
    source, output = write_lines(tmp_path / "in.txt", TEXTS), tmp_path / "out.jsonl"
    assert run(model_dir, source, output) == 0
    written = output.read_bytes()
    assert run(model_dir, source, output) == 0
    assert output.read_bytes() == written


def test_a_huge_line_is_one_text(model_dir, tmp_path):
    source = write_lines(tmp_path / "in.txt", ["good " * 40_000, "bad food"])  # a 200 kB line
    assert run(model_dir, source, tmp_path / "out.jsonl") == 0
    assert lines_of(tmp_path / "out.jsonl") == [1, 2]


# ----- the real command: devices, pipes, redirected logs --------------------------------------------------------------


def predict_command(*args, **kwargs):
    return subprocess.run(
        [sys.executable, str(REPO / "predict.py"), *map(str, args)], capture_output=True, env=ENV, timeout=300, **kwargs
    )


@pytest.mark.slow
def test_dev_full_is_one_line_and_no_record_beside_a_device(model_dir, tmp_path):
    source = write_lines(tmp_path / "in.txt", TEXTS)
    result = predict_command("--model", model_dir, "--input", source, "--output", "/dev/full")
    err = result.stderr.decode()
    assert result.returncode == 1 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1] == (
        "error: /dev/full: cannot write (No space left on device); it is not a regular file, so nothing can be resumed"
    )
    assert not Path("/dev/full.resume.json").exists() and not Path("/dev/full.resume.tmp").exists()


@pytest.mark.slow
def test_dev_stdout_and_dev_stdin_are_streams(model_dir, tmp_path):
    source = write_lines(tmp_path / "in.txt", TEXTS)
    assert predict_command("--model", model_dir, "--input", source, "--output", tmp_path / "file.jsonl").returncode == 0
    expected = (tmp_path / "file.jsonl").read_bytes()

    # a pipe on both sides (before: "file not found" for /dev/stdin, a record written into /dev for /dev/stdout)
    piped = predict_command(
        "--model", model_dir, "--input", "/dev/stdin", "--output", "/dev/stdout", input=source.read_bytes()
    )
    assert piped.returncode == 0, piped.stderr.decode()[-3000:]
    assert piped.stdout == expected
    assert not Path("/dev/stdout.resume.json").exists() and not Path("/dev/stdin.resume.json").exists()
    assert b"\r" not in piped.stderr and b"\x1b[" not in piped.stderr  # no progress bars in a redirected log

    # /dev/stdout redirected to a file is that file: its record beside it, not in /dev
    with open(tmp_path / "redirected.jsonl", "wb") as out:
        result = subprocess.run(
            [sys.executable, str(REPO / "predict.py"), "--model", model_dir, "--input", str(source), "--output",
             "/dev/stdout"], stdout=out, stderr=subprocess.PIPE, env=ENV, timeout=300,
        )  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()[-3000:]
    assert (tmp_path / "redirected.jsonl").read_bytes() == expected
    assert (tmp_path / "redirected.jsonl.resume.json").is_file() and not Path("/dev/stdout.resume.json").exists()


# ----- the output lock (filelock: every OS) ---------------------------------------------------------------------------


def test_a_second_writer_is_refused_in_one_line_and_the_lock_goes_with_the_run(model_dir, tmp_path, capsys):
    source, output = write_lines(tmp_path / "in.txt", TEXTS), tmp_path / "out.jsonl"
    output.write_bytes(b"")  # the other run's output, which it has just created
    with FileLock(f"{output}.lock", timeout=0):  # what a running predict.py holds
        assert run(model_dir, source, output) == 1
    assert last_error(capsys) == f"error: {output}: another predict.py is writing this output right now; wait for it"
    assert output.read_bytes() == b"" and not (tmp_path / "out.jsonl.resume.json").exists()
    (tmp_path / "out.jsonl.lock").unlink()  # the other run's lock file, removed as it ends
    output.unlink()
    assert run(model_dir, source, output) == 0
    assert lines_of(output) == list(range(1, len(TEXTS) + 1))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt", "out.jsonl", "out.jsonl.resume.json"]


def test_no_module_locks_with_fcntl_which_windows_lacks():
    for path in Path(labelling.__file__).parent.glob("*.py"):
        assert "import fcntl" not in path.read_text(encoding="utf-8"), path.name
