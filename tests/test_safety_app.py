"""Nothing lost, nothing taken down: the demo's ordinary mistakes (issue 27), run in this process.

`--write_space` into a folder it should not touch, a port in use, a paste or an upload that would take the demo down,
a text with nothing to read. Each case asserts the one-line message, the exit status and what is on disk after."""

import errno
import hashlib
import shutil
import socket
import time
from pathlib import Path

import gradio as gr
import pytest
from helpers import REPO

import app

STATUS = 2


@pytest.fixture(scope="module")
def tiny(saved_tiny_model):
    """(model, tokenizer, directory) of the saved tiny model, loaded as app.py loads it."""
    _, _, directory = saved_tiny_model
    model, tokenizer, _ = app.load_model(str(directory))
    return model, tokenizer, directory


def snapshot(folder):
    """{relative path: sha256} of every file under `folder` (hidden ones too)."""
    folder = Path(folder)
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()
    }


def one_line(capsys):
    """The single `error: ...` line main printed on stderr (and nothing else there)."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


def write_space(model_dir, folder, *extra):
    return app.main(["--model", str(model_dir), "--write_space", str(folder), *map(str, extra)])


# ----- --write_space ------------------------------------------------------------------------------------------------


def test_write_space_twice_needs_overwrite_and_replaces_the_space(tiny, tmp_path, capsys):
    _, _, directory = tiny
    space = tmp_path / "space"
    assert write_space(directory, space) == 0
    assert (space / app.SPACE_RECORD).is_file()
    first = snapshot(space)
    (space / "README.md").write_text("my edits\n", encoding="utf-8")
    edited = snapshot(space)
    capsys.readouterr()

    assert write_space(directory, space) == STATUS
    assert one_line(capsys) == (
        f"error: --write_space {space}: holds a Space written before; add --overwrite to replace it"
    )
    assert snapshot(space) == edited  # untouched

    assert write_space(directory, space, "--overwrite") == 0
    assert snapshot(space) == first  # written afresh
    assert sorted(p.name for p in tmp_path.iterdir()) == ["space"]  # no folder left beside it


def test_write_space_into_an_empty_folder_needs_no_overwrite(tiny, tmp_path):
    _, _, directory = tiny
    space = tmp_path / "space"
    space.mkdir()
    assert write_space(directory, space) == 0
    assert (space / "app.py").is_file() and (space / app.DEFAULT_MODEL / "config.json").is_file()


@pytest.mark.parametrize("overwrite", [False, True])
def test_write_space_refuses_a_folder_it_did_not_write(tiny, tmp_path, capsys, overwrite):
    _, _, directory = tiny
    mine = tmp_path / "project"
    mine.mkdir()
    for name, text in (("README.md", "my project\n"), ("requirements.txt", "numpy\n"), ("app.py", "print(1)\n")):
        (mine / name).write_text(text, encoding="utf-8")
    before = snapshot(mine)
    assert write_space(directory, mine, *(["--overwrite"] if overwrite else [])) == STATUS
    assert one_line(capsys) == (
        f"error: --write_space {mine}: folder is not empty and was not written by --write_space; "
        "name a new or empty folder"
    )
    assert snapshot(mine) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["project"]


@pytest.mark.parametrize("where", ["the model folder", "a link to it", "inside it", "around it"])
@pytest.mark.parametrize("overwrite", [False, True])
def test_write_space_never_touches_the_model(tiny, tmp_path, capsys, where, overwrite):
    _, _, directory = tiny
    model = shutil.copytree(directory, tmp_path / "models" / "mine")
    target = {"the model folder": model, "inside it": model / "space", "around it": model.parent}.get(where)
    if where == "a link to it":
        target = tmp_path / "space"
        target.symlink_to(model, target_is_directory=True)
    before = snapshot(tmp_path)
    assert write_space(model, target, *(["--overwrite"] if overwrite else [])) == STATUS
    expected = {"the model folder": "is", "a link to it": "is", "inside it": "is inside", "around it": "holds"}[where]
    assert one_line(capsys) == (
        f"error: --write_space {target}: {expected} the model folder; name a new folder for the Space"
    )
    assert snapshot(tmp_path) == before  # the model card, the weights: all as they were
    assert not (model / "space").exists()


@pytest.fixture
def repository(tmp_path, monkeypatch):
    """A copy of the repository's Space code in tmp_path/work/repo, standing in for the repository: a test that
    failed to refuse it would write there, not into the real checkout or the folder around it."""
    repo = tmp_path / "work" / "repo"
    repo.mkdir(parents=True)
    for name in [*app.SPACE_CODE, "requirements.txt"]:
        shutil.copy2(REPO / name, repo / name)
    monkeypatch.setattr(app, "REPO", repo)
    return repo


@pytest.mark.parametrize("overwrite", [False, True])
def test_write_space_refuses_the_repository_and_folders_around_it(tiny, tmp_path, repository, capsys, overwrite):
    _, _, directory = tiny
    before = snapshot(tmp_path)
    for target, what in ((repository, "is"), (repository.parent, "holds"), (tmp_path, "holds")):
        assert write_space(directory, target, *(["--overwrite"] if overwrite else [])) == STATUS
        assert (
            one_line(capsys)
            == f"error: --write_space {target}: {what} this repository; name a new folder for the Space"
        )
    assert snapshot(tmp_path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["work"]


def test_write_space_into_a_new_folder_inside_the_repository_is_fine(tiny, repository):
    """The README's `python app.py --write_space space/`, run in the repository."""
    _, _, directory = tiny
    assert write_space(directory, repository / "space") == 0
    assert (repository / "space" / "app.py").read_bytes() == (repository / "app.py").read_bytes()


def test_write_space_refuses_the_current_and_home_folder(tiny, tmp_path, monkeypatch, capsys):
    _, _, directory = tiny
    here, home = tmp_path / "here", tmp_path / "home"
    here.mkdir(), home.mkdir()
    monkeypatch.chdir(here)
    monkeypatch.setenv("HOME", str(home))
    assert write_space(directory, ".") == STATUS  # empty, but the shell stands in it
    assert one_line(capsys) == "error: --write_space .: is the current folder; name a new folder for the Space"
    assert write_space(directory, "~") == STATUS
    assert one_line(capsys) == "error: --write_space ~: is your home folder; name a new folder for the Space"
    assert list(here.iterdir()) == [] and list(home.iterdir()) == []


def test_write_space_refuses_a_file_and_a_missing_parent(tiny, tmp_path, capsys):
    _, _, directory = tiny
    notes = tmp_path / "notes.txt"
    notes.write_text("keep me\n", encoding="utf-8")
    assert write_space(directory, notes, "--overwrite") == STATUS
    assert one_line(capsys) == f"error: --write_space {notes}: is a file; name a new folder for the Space"
    assert notes.read_text(encoding="utf-8") == "keep me\n"

    nowhere = tmp_path / "typo" / "space"
    assert write_space(directory, nowhere) == STATUS
    assert (
        one_line(capsys) == f"error: --write_space {nowhere}: folder {nowhere.parent} does not exist; create it first"
    )
    assert not nowhere.parent.exists()


def test_write_space_refuses_what_is_not_a_multitask_model(backbone_dir, tmp_path, capsys):
    space = tmp_path / "space"
    assert write_space(backbone_dir, space) == STATUS
    message = one_line(capsys)
    assert message.startswith(f"error: --model {backbone_dir}: not a multi-task model") and "'bert'" in message
    missing = tmp_path / "outputs" / "typo"
    assert write_space(missing, space) == STATUS
    assert one_line(capsys) == f"error: --model {missing}: no such model directory"
    assert not space.exists()


def test_a_failed_write_leaves_the_old_space_as_it_was(tiny, tmp_path, monkeypatch, capsys):
    _, _, directory = tiny
    space = tmp_path / "space"
    assert write_space(directory, space) == 0
    before = snapshot(space)

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(app.shutil, "copytree", full_disk)
    capsys.readouterr()
    assert write_space(directory, space, "--overwrite") == STATUS
    assert one_line(capsys) == (
        f"error: --write_space {space}: cannot write the Space ([Errno 28] No space left on device)"
    )
    assert snapshot(space) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["space"]  # the half-written folder is gone


def test_overwrite_without_write_space_is_one_line(capsys):
    assert app.main(["--overwrite"]) == STATUS
    assert one_line(capsys) == (
        "error: --overwrite goes with --write_space (it replaces a Space folder written before)"
    )


# ----- serving: the port, the model ---------------------------------------------------------------------------------


def test_a_port_in_use_is_one_line_before_the_model_is_loaded(tiny, monkeypatch, capsys):
    _, _, directory = tiny
    monkeypatch.setattr(app, "load_model", lambda *a: pytest.fail("the model was loaded before the port was checked"))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert app.main(["--model", str(directory), "--port", str(port)]) == STATUS
    assert one_line(capsys) == (
        f"error: --port {port}: cannot listen on 127.0.0.1:{port} (Address already in use); choose another --port"
    )


@pytest.mark.parametrize(
    ("host", "message"),
    [
        ("nosuchhost.invalid", "error: --host nosuchhost.invalid: unknown address"),
        ("192.0.2.1", "error: --host 192.0.2.1: not an address of this machine (Cannot assign requested address)"),
    ],
)
@pytest.mark.parametrize("port", [[], ["--port", "7860"]], ids=["default-port", "port"])
def test_a_bad_host_is_one_line_naming_the_host(tiny, monkeypatch, capsys, host, message, port):
    """Not 'no free port in 7860-7959', which is what gradio says when it cannot listen on the host."""
    _, _, directory = tiny
    monkeypatch.setattr(app, "load_model", lambda *a: pytest.fail("the model was loaded before the host was checked"))
    assert app.main(["--model", str(directory), "--host", host, *port]) == STATUS
    assert one_line(capsys).startswith(message)


@pytest.mark.parametrize("port", ["0", "70000", "-1"])
def test_a_port_out_of_range_is_one_line(port, capsys):
    assert app.main(["--port", port]) == STATUS
    assert one_line(capsys) == f"error: --port must be between 1 and 65535, got {port}"


def test_no_free_port_in_gradios_range_is_one_line(tiny, monkeypatch, capsys):
    _, _, directory = tiny

    def launch(self, **kwargs):
        raise OSError("Cannot find empty port in range: 7860-7959. You can specify a different port by setting ...")

    monkeypatch.setattr(gr.Blocks, "launch", launch)
    assert app.main(["--model", str(directory)]) == STATUS
    assert one_line(capsys) == "error: no free port in 7860-7959; choose one with --port"


def test_a_plain_bert_folder_is_one_line(backbone_dir, monkeypatch, capsys):
    monkeypatch.setattr(gr.Blocks, "launch", lambda self, **kw: pytest.fail("a plain BERT folder was served"))
    assert app.main(["--model", backbone_dir]) == STATUS
    assert "model_type 'bert'" in one_line(capsys)


def test_main_passes_the_caps_to_the_app_and_to_gradio(tiny, monkeypatch):
    _, _, directory = tiny
    seen = {}
    build = app.build_app
    monkeypatch.setattr(app, "build_app", lambda *a: seen.setdefault("limits", a[3]) and build(*a))
    monkeypatch.setattr(gr.Blocks, "launch", lambda self, **kw: seen.update(launch=kw))
    argv = ["--model", str(directory), "--max_similarity_lines", "7", "--max_upload_mb", "3", "--max_file_lines", "9"]
    assert app.main(argv) == 0
    assert seen["limits"] == app.Limits(similarity_lines=7, chars=app.Limits.chars, file_lines=9, upload_mb=3)
    assert seen["launch"]["max_file_size"] == "3mb"  # gradio refuses a larger upload before storing it


@pytest.mark.parametrize(
    ("flag", "value", "expected"),
    [("--max_similarity_lines", "1", ">= 2, got 1"), ("--max_upload_mb", "0", ">= 1, got 0")],
)
def test_a_cap_below_its_minimum_is_one_line(flag, value, expected, capsys):
    assert app.main([flag, value]) == STATUS
    assert one_line(capsys) == f"error: {flag} must be {expected}"


# ----- one request cannot take the demo down ------------------------------------------------------------------------


def test_a_huge_similarity_paste_is_refused_at_once(tiny):
    model, tokenizer, _ = tiny
    pasted = "\n".join(f"sentence number {i} about the stock market" for i in range(2000))
    start = time.monotonic()
    with pytest.raises(gr.Error) as info:
        app.similarity(model, tokenizer, pasted)
    assert time.monotonic() - start < 10  # was 55 s and 4.3 GB
    assert info.value.message == (
        "2,000 sentences; this demo compares at most 50 at a time (the table has one row and one column per sentence)."
    )


def test_similarity_up_to_the_cap_works(tiny):
    model, tokenizer, _ = tiny
    limits = app.Limits(similarity_lines=3)
    table = app.similarity(model, tokenizer, "good film\n\nbad film\nstock news", limits).data
    assert len(table) == 3
    with pytest.raises(gr.Error, match="at most 3 at a time"):
        app.similarity(model, tokenizer, "a\nb\nc\nd", limits)


@pytest.mark.parametrize("tab", ["classify", "similarity"])
def test_a_text_over_the_character_cap_is_refused(tiny, tab):
    model, tokenizer, _ = tiny
    text = ("the movie was good " * 2000)[:25_000] + "\nthe film was bad"
    with pytest.raises(gr.Error) as info:
        getattr(app, tab)(model, tokenizer, text)
    assert info.value.message == (f"The text has {len(text):,} characters; this demo reads at most 20,000 at a time.")


@pytest.mark.parametrize(
    ("limits", "content", "message"),
    [
        (app.Limits(file_lines=3), "a\nb\nc\nd\n", "big.txt: 4 lines; this demo labels files of at most 3 lines"),
        (
            app.Limits(upload_mb=1),
            ("x" * 99 + "\n") * 16_000,
            "big.txt: 1.5 MB; this demo labels files of at most 1 MB",
        ),
        (
            app.Limits(chars=50),
            "short\n" + "long " * 20 + "\nshort\n",
            "big.txt:2: a line of 100 characters; this demo reads lines of at most 50",
        ),
    ],
    ids=["lines", "size", "line length"],
)
def test_a_file_over_the_caps_is_refused_before_labelling(tiny, tmp_path, limits, content, message):
    model, tokenizer, _ = tiny
    source = tmp_path / "uploads" / "big.txt"
    source.parent.mkdir()
    source.write_text(content, encoding="utf-8")
    (tmp_path / "out").mkdir()
    with pytest.raises(gr.Error) as info:
        app.label_file(model, tokenizer, str(source), out_dir=tmp_path / "out", limits=limits)
    assert info.value.message.startswith(message)
    assert "predict.py" in info.value.message  # says what labels a bigger file
    assert list((tmp_path / "out").iterdir()) == []


def test_a_binary_upload_is_one_line(tiny, tmp_path):
    model, tokenizer, _ = tiny
    blob = tmp_path / "uploads" / "blob.jsonl"
    blob.parent.mkdir()
    blob.write_bytes(b"\x00\x01\x02\xff\xfe\n")
    with pytest.raises(gr.Error) as info:
        app.label_file(model, tokenizer, str(blob), out_dir=tmp_path)
    assert info.value.message.startswith("blob.jsonl:1: ") and "UTF-8" in info.value.message  # predict.py's words
    assert str(tmp_path) not in info.value.message


# ----- texts with nothing to read -----------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["\u200b", "\u200b \u200b", "\ufeff", "\x00\x01"], ids=repr)
def test_classify_says_an_invisible_text_has_nothing_to_read(tiny, text):
    model, tokenizer, _ = tiny
    with pytest.raises(gr.Error) as info:
        app.classify(model, tokenizer, text)
    assert info.value.message == (
        "The text has nothing to read (only invisible or control characters); type a sentence."
    )


def test_similarity_leaves_out_lines_with_nothing_to_read(tiny):
    model, tokenizer, _ = tiny
    table = app.similarity(model, tokenizer, "the movie was good\n\u200b\n   \nthe film was bad").data
    assert table["sentence"].tolist() == ["1. the movie was good", "2. the film was bad"]
    with pytest.raises(gr.Error, match="two or more sentences"):
        app.similarity(model, tokenizer, "one sentence\n\u200b\n\ufeff")


def test_a_blank_line_in_an_uploaded_file_gets_no_labels(tiny, tmp_path):
    model, tokenizer, _ = tiny
    source = tmp_path / "uploads" / "texts.txt"
    source.parent.mkdir()
    source.write_text("the movie was good\n   \nbad film\n", encoding="utf-8")
    with pytest.raises(gr.Error) as info:
        app.label_file(model, tokenizer, str(source), out_dir=tmp_path)
    assert info.value.message.startswith("texts.txt:2:")


def test_labelling_a_file_draws_no_progress_bar_into_a_log(tiny, tmp_path, capsys):
    model, tokenizer, _ = tiny
    source = tmp_path / "texts.txt"
    source.write_text("the movie was good\nbad film\n", encoding="utf-8")
    app.label_file(model, tokenizer, str(source), out_dir=tmp_path)
    assert "\r" not in capsys.readouterr().err  # capsys's stderr is not a terminal


def test_serving_draws_no_progress_bar_into_a_log(tiny, monkeypatch, capsys):
    _, _, directory = tiny
    monkeypatch.setattr(gr.Blocks, "launch", lambda self, **kw: None)
    assert app.main(["--model", str(directory)]) == 0
    assert "\r" not in capsys.readouterr().err  # no "Loading weights" bar
