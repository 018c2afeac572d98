"""Nothing lost, nothing silent: the ONNX export (export_onnx.py, onnx_multitask.export) and the ONNX Runtime backend
used as a careless user would: a graph altered or cut short, Ctrl-C or a full disk mid-export, exporting twice or at
once, a folder that is not a model, a model without its tokenizer, a read-only folder, another model's graphs, and
serving the folder from anywhere. Each case asserts the one-line message, the exit status and what is on disk."""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import onnx
import pytest
from filelock import FileLock
from helpers import REPO, TASKS, run_child
from onnx import numpy_helper

import export_onnx
import onnx_multitask
import predict
from onnx_multitask import OnnxMultiTaskModel, export, sha256_file

TEXTS = ["the movie was good", "bad food", "the team lost", "stock market price", "i love it", "sad news today"]
REDO = "re-run python export_onnx.py --model {}"


def snapshot(directory):
    """{relative path: bytes} of every file under `directory` (hidden ones included): what must stay as it was."""
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def exported(make_backbone_config, make_tiny_model, tiny_tokenizer, tmp_path_factory):
    """A tiny BERT model saved with its tokenizer and exported (fp32 and int8), never changed: tests copy it."""
    directory = tmp_path_factory.mktemp("exported")
    make_tiny_model(make_backbone_config("bert")).save_pretrained(directory)
    tiny_tokenizer.save_pretrained(directory)
    export(directory)
    return directory


@pytest.fixture(scope="module")
def other_export(make_backbone_config, make_tiny_model, tiny_tokenizer, tmp_path_factory):
    """Another model (other weights, other tasks) with its fp32 export."""
    directory = tmp_path_factory.mktemp("other")
    make_tiny_model(make_backbone_config("bert"), tasks={"mood": ["calm", "angry"]}).save_pretrained(directory)
    tiny_tokenizer.save_pretrained(directory)
    export(directory, quantize=False)
    return directory


@pytest.fixture
def model_dir(exported, tmp_path):
    return shutil.copytree(exported, tmp_path / "model")


def run_export(capsys, *argv):
    """(exit status, last line of stderr) of export_onnx.main(argv)."""
    status = export_onnx.main([str(a) for a in argv])
    lines = capsys.readouterr().err.strip().splitlines()
    return status, lines[-1] if lines else ""


def predict_error(model_dir, tmp_path, capsys, backend="onnx"):
    source = tmp_path / "in.txt"
    source.write_text("".join(t + "\n" for t in TEXTS), encoding="utf-8")
    output = tmp_path / "out.jsonl"
    argv = ["--model", str(model_dir), "--input", str(source), "--output", str(output), "--backend", backend]
    status = predict.main(argv)
    assert not output.exists()
    return status, capsys.readouterr().err.strip().splitlines()[-1]


# ----- a graph that is not the one exported is refused, in one line ------------------------------------------------


def alter_head(path):
    """Change one head weight of the graph in place, as a hand edit or a bad copy would (the file stays valid)."""
    graph = onnx.load(str(path))
    names = (
        "model.heads.topic.out_proj.weight",
        "model.heads.topic.out_proj.weight_Transposed",
    )  # fp32, int8 (the head's last layer is a Gemm, made a MatMul by the quantiser and left fp32)
    (weight,) = [i for i in graph.graph.initializer if i.name in names]
    weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight)[::-1].copy(), weight.name))
    onnx.save(graph, str(path))


DAMAGE = {
    "a head weight changed in place": alter_head,
    "cut short": lambda path: path.write_bytes(path.read_bytes()[: path.stat().st_size // 2]),
    "garbled": lambda path: path.write_bytes(b"\0garbage" * 1000),
}


@pytest.mark.parametrize("quantized", [False, True], ids=["fp32", "int8"])
@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_graph_altered_since_the_export_is_refused(model_dir, tmp_path, capsys, damage, quantized):
    path = onnx_multitask.graph_path(model_dir, quantized)
    DAMAGE[damage](path)
    message = (
        f"{path} is not the graph that export.json records (sha256 differs: altered, cut short or copied from another "
        f"export); {REDO.format(model_dir)}"
    )
    with pytest.raises(ValueError) as error:
        OnnxMultiTaskModel.from_pretrained(model_dir, quantized=quantized)
    assert str(error.value) == message
    assert predict_error(model_dir, tmp_path, capsys, "onnx-int8" if quantized else "onnx") == (1, f"error: {message}")
    # the other graph is untouched and still served
    OnnxMultiTaskModel.from_pretrained(model_dir, quantized=not quantized)


def test_the_altered_head_would_change_the_labels(exported, model_dir, tiny_tokenizer):
    """The damage of the test above is real: served as it is, the altered graph labels the texts differently."""
    import onnxruntime as ort

    alter_head(onnx_multitask.graph_path(model_dir))
    original = OnnxMultiTaskModel.from_pretrained(exported)
    altered = OnnxMultiTaskModel(original.config, ort.InferenceSession(str(onnx_multitask.graph_path(model_dir))))
    before, after = original.predict(TEXTS, tiny_tokenizer), altered.predict(TEXTS, tiny_tokenizer)
    assert [r["topic"]["label"] for r in before] != [r["topic"]["label"] for r in after]


def test_a_graph_onnx_runtime_cannot_load_is_one_line(model_dir, tmp_path, capsys):
    """A file export.json vouches for (its sha256 recorded) that ONNX Runtime still cannot read: one line, no
    protobuf traceback."""
    path = onnx_multitask.graph_path(model_dir)
    path.write_bytes(b"not a graph")
    manifest = json.loads((model_dir / "onnx" / "export.json").read_text())
    manifest["graphs"]["model.onnx"]["sha256"] = sha256_file(path)
    (model_dir / "onnx" / "export.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError) as error:
        OnnxMultiTaskModel.from_pretrained(model_dir)
    message = str(error.value)
    assert message.startswith(f"{path}: onnxruntime ") and "cannot load it ([ONNXRuntimeError]" in message
    assert message.endswith(f"{REDO.format(model_dir)} (--opset 20 for onnxruntime older than 1.23)")
    assert "\n" not in message
    assert predict_error(model_dir, tmp_path, capsys) == (1, f"error: {message}")


def test_the_demo_reports_an_altered_graph_in_one_line(model_dir):
    app = pytest.importorskip("app")
    alter_head(onnx_multitask.graph_path(model_dir, quantized=True))  # the graph that auto serves
    with pytest.raises(app.ModelError) as error:
        app.load_model(str(model_dir), backend="auto")
    assert str(error.value) == (
        f"{onnx_multitask.graph_path(model_dir, quantized=True)} is not the graph that export.json records (sha256 differs: altered, "
        f"cut short or copied from another export); {REDO.format(model_dir)}"
    )


def test_another_models_graphs_are_refused(model_dir, other_export, tmp_path, capsys):
    # the whole onnx/ folder of another model
    shutil.rmtree(model_dir / "onnx")
    shutil.copytree(other_export / "onnx", model_dir / "onnx")
    message = (
        f"{model_dir / 'onnx'} holds the ONNX export of another model (none of ['config.json', 'model.safetensors'] "
        f"is the file it was made from); {REDO.format(model_dir)}"
    )
    with pytest.raises(ValueError) as error:
        OnnxMultiTaskModel.from_pretrained(model_dir)
    assert str(error.value) == message
    assert predict_error(model_dir, tmp_path, capsys) == (1, f"error: {message}")


def test_another_models_graph_file_is_refused(model_dir, other_export):
    # one graph file of another model's export, copied over this model's
    shutil.copyfile(onnx_multitask.graph_path(other_export), onnx_multitask.graph_path(model_dir))
    with pytest.raises(ValueError, match=r"model\.onnx is not the graph that export\.json records"):
        OnnxMultiTaskModel.from_pretrained(model_dir)


def test_the_onnx_folder_given_for_the_model_folder_says_which_to_give(model_dir):
    with pytest.raises(ValueError) as error:
        OnnxMultiTaskModel.from_pretrained(model_dir / "onnx")
    assert (
        str(error.value)
        == f"{model_dir / 'onnx'}: is the onnx/ folder of an export; give the model's folder ({model_dir})"
    )


def test_an_unreadable_record_is_no_export(model_dir, tmp_path, capsys):
    (model_dir / "onnx" / "export.json").write_text('{"version": 1, "sour')
    assert predict_error(model_dir, tmp_path, capsys) == (
        1,
        f"error: {model_dir}: no onnx export; run python export_onnx.py --model {model_dir} first",
    )


# ----- the folder alone serves its graphs ----------------------------------------------------------------------------


def test_the_model_folder_alone_serves_its_graphs(exported, tmp_path, tiny_tokenizer):
    """The README's snippet, in a fresh interpreter outside the repository (which is not importable there), on a copy
    of the model folder: the runner the export wrote into onnx/ serves it, with the same labels."""
    elsewhere = shutil.copytree(exported, tmp_path / "copied" / "my-model")
    stdout = run_child(
        f"""
        import importlib.util, json, sys
        assert importlib.util.find_spec("onnx_multitask") is None  # not from the repository
        sys.path.insert(0, {str(elsewhere / "onnx")!r})
        from onnx_multitask import OnnxMultiTaskModel
        from transformers import AutoTokenizer

        model = OnnxMultiTaskModel.from_pretrained({str(elsewhere)!r}, quantized=True)
        tokenizer = AutoTokenizer.from_pretrained({str(elsewhere)!r}, config=model.config)
        import modeling_multitask, onnx_multitask
        assert onnx_multitask.__file__.startswith({str(elsewhere)!r}), onnx_multitask.__file__
        assert modeling_multitask.__file__.startswith({str(elsewhere)!r}), modeling_multitask.__file__
        print(json.dumps(model.predict({TEXTS!r}, tokenizer)))
        """,
        cwd=tmp_path,
    )
    served = json.loads(stdout.strip().splitlines()[-1])
    expected = OnnxMultiTaskModel.from_pretrained(exported, quantized=True).predict(TEXTS, tiny_tokenizer)
    for got, want in zip(served, expected, strict=True):
        for task in TASKS:
            assert got[task]["label"] == want[task]["label"]
            assert got[task]["score"] == pytest.approx(want[task]["score"], abs=1e-6)


# ----- Ctrl-C and failures mid-export leave the previous export as it was -------------------------------------------


def interrupt(*args, **kwargs):
    raise KeyboardInterrupt


@pytest.fixture
def quick_fp32(exported, monkeypatch):
    """The torch export step stood in for by a copy of the graph it made for this model before (the same bytes), so
    that the steps after it run for real, in a second instead of ten."""
    monkeypatch.setattr(onnx_multitask, "export_fp32",
                        lambda model, path, opset=None: shutil.copyfile(onnx_multitask.graph_path(exported), path))  # fmt: skip


def disk_full(model, path, *args):
    path.write_bytes(b"half a graph")
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


@pytest.mark.parametrize("step", ["export_fp32", "check_parity", "quantize_int8"])
def test_ctrl_c_mid_export_keeps_the_previous_export(model_dir, quick_fp32, capsys, monkeypatch, step):
    before = snapshot(model_dir)
    monkeypatch.setattr(onnx_multitask, step, interrupt)
    status, last = run_export(capsys, "--model", model_dir)
    assert (status, last) == (130, f"interrupted: nothing written; {model_dir / 'onnx'} holds the previous export")
    assert snapshot(model_dir) == before
    OnnxMultiTaskModel.from_pretrained(model_dir)


def test_ctrl_c_in_a_first_export_leaves_no_onnx_folder(model_dir, quick_fp32, capsys, monkeypatch):
    shutil.rmtree(model_dir / "onnx")
    before = snapshot(model_dir)
    monkeypatch.setattr(onnx_multitask, "quantize_int8", interrupt)
    assert run_export(capsys, "--model", model_dir) == (
        130,
        "interrupted: nothing written; run the same command to export",
    )
    assert snapshot(model_dir) == before and not (model_dir / "onnx").exists()


def test_a_full_disk_keeps_the_previous_export_and_leaves_no_temporary_file(model_dir, quick_fp32, capsys, monkeypatch):
    before = snapshot(model_dir)
    monkeypatch.setattr(onnx_multitask, "quantize_int8", disk_full)
    status, last = run_export(capsys, "--model", model_dir)
    assert status == 1
    assert last.startswith("error: [Errno 28] No space left on device: ") and ".export-" in last
    assert snapshot(model_dir) == before


def test_ctrl_c_during_the_renames_is_held_back_until_the_export_is_complete(
    model_dir, quick_fp32, capsys, monkeypatch
):
    """Exporting twice, with Ctrl-C pressed as the new files are moved in: all of them are, then the interrupt
    stops the script (exit 130) saying the export is complete, and it loads. A staging folder left by a killed export
    is cleaned up on the way."""
    leftover = model_dir / "onnx" / ".export-999999"
    leftover.mkdir()
    (leftover / "model.onnx").write_bytes(b"half a graph")
    before = snapshot(model_dir)
    real_replace = os.replace

    def replace_with_ctrl_c(source, target):
        if os.path.dirname(target) == str(model_dir / "onnx"):  # a rename of the commit (not one in torch, say)
            os.kill(os.getpid(), signal.SIGINT)  # the handler runs before the next Python line: during the renames
        real_replace(source, target)

    monkeypatch.setattr(onnx_multitask.os, "replace", replace_with_ctrl_c)
    assert run_export(capsys, "--model", model_dir) == (
        130,
        f"interrupted after the export to {model_dir / 'onnx'} was complete",
    )
    monkeypatch.setattr(onnx_multitask.os, "replace", real_replace)
    after = snapshot(model_dir)
    assert sorted(after) == sorted(name for name in before if ".export-" not in name)
    OnnxMultiTaskModel.from_pretrained(model_dir)
    OnnxMultiTaskModel.from_pretrained(model_dir, quantized=True)


@pytest.mark.slow
@pytest.mark.parametrize("first", [False, True], ids=["re-export", "first export"])
def test_real_ctrl_c_during_export(model_dir, first):
    """The real command, interrupted with SIGINT while it exports: exit 130, one line, no traceback, the model folder
    as it was (no onnx/ at all for a first export)."""
    if first:
        shutil.rmtree(model_dir / "onnx")
    before = snapshot(model_dir)
    child = subprocess.Popen(
        [sys.executable, str(REPO / "export_onnx.py"), "--model", str(model_dir)],
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not list((model_dir / "onnx").glob(".export-*/")):
        assert child.poll() is None and time.monotonic() < deadline, "the export ended before it could be interrupted"
        time.sleep(0.01)
    time.sleep(1.0)  # well into the export
    child.send_signal(signal.SIGINT)
    stderr = child.communicate(timeout=120)[1]
    assert child.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    expected = (
        "interrupted: nothing written; run the same command to export"
        if first
        else f"interrupted: nothing written; {model_dir / 'onnx'} holds the previous export"
    )
    assert stderr.strip().splitlines()[-1] == expected
    assert snapshot(model_dir) == before
    assert (model_dir / "onnx").exists() != first


# ----- mistakes refused before anything is written ------------------------------------------------------------------


def test_help_says_what_no_quantize_does(capsys):
    with pytest.raises(SystemExit) as done:
        export_onnx.main(["--help"])
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert (
        "--no_quantize, --no-quantize Write only the fp32 graph (and remove an int8 graph of an earlier export)."
        in text
    )
    assert "--opset OPSET ONNX opset; 20 for onnxruntime older than 1.23. (default: 23)" in text
    parser = export_onnx.make_parser()
    for argv, quantize in (([], True), (["--no_quantize"], False), (["--quantize", "false"], False)):
        assert parser.parse_args_into_dataclasses(["--model", "m", *argv])[0].quantize is quantize


def test_export_mistakes_are_one_line_errors_that_write_nothing(exported, tmp_path, capsys):
    no_tokenizer = tmp_path / "no-tokenizer"
    no_tokenizer.mkdir()
    for name in ("config.json", "model.safetensors", "configuration_multitask.py", "modeling_multitask.py"):
        shutil.copyfile(exported / name, no_tokenizer / name)
    empty = tmp_path / "empty"
    empty.mkdir()
    onnx_is_a_file = shutil.copytree(exported, tmp_path / "onnx-file", ignore=shutil.ignore_patterns("onnx"))
    (onnx_is_a_file / "onnx").write_text("my notes")
    cases = [
        (["--model", exported / "model.safetensors"],
         f"error: {exported / 'model.safetensors'}: is a file, not a model directory; give the folder that holds its "
         "config.json"),
        (["--model", empty], f"error: {empty}: no config.json in it; not a saved model directory"),
        (["--model", no_tokenizer],
         f"error: {no_tokenizer}: no tokenizer (tokenizer.json or tokenizer_config.json) saved with the model, and the "
         "graphs take token ids; save it there first (tokenizer.save_pretrained)"),
        (["--model", onnx_is_a_file],
         f"error: {onnx_is_a_file / 'onnx'}: is a file; the export writes a folder there; move the file away first"),
    ]  # fmt: skip
    before = snapshot(tmp_path)
    for argv, message in cases:
        status, last = run_export(capsys, *argv)
        assert (status, last) == (1, message)
    assert snapshot(tmp_path) == before
    assert run_export(capsys, "--model", exported, "--opset", "0") == (2, "error: --opset must be >= 1, got 0")


def test_a_read_only_onnx_folder_is_refused_and_kept(model_dir, capsys, monkeypatch):
    before = snapshot(model_dir)
    os.chmod(model_dir / "onnx", 0o555)
    if os.geteuid() == 0:  # root may write anywhere: make the permission check see what another user would
        real_access = os.access
        monkeypatch.setattr(
            onnx_multitask.os, "access", lambda p, mode: p != model_dir / "onnx" and real_access(p, mode)
        )
    try:
        assert run_export(capsys, "--model", model_dir) == (1, f"error: {model_dir / 'onnx'}: no write permission")
    finally:
        os.chmod(model_dir / "onnx", 0o755)
    assert snapshot(model_dir) == before


def test_a_second_export_of_the_same_model_at_once_is_refused(model_dir, capsys):
    before = snapshot(model_dir)
    held = model_dir / onnx_multitask.LOCK_FILE
    with FileLock(held, timeout=0):  # what a running export holds
        assert run_export(capsys, "--model", model_dir) == (
            1,
            f"error: {model_dir}: another export_onnx.py is exporting this model right now; wait for it",
        )
    held.unlink()  # the other export's lock file, removed as it ends
    assert snapshot(model_dir) == before


def test_an_opset_onnx_runtime_cannot_load_is_refused_and_nothing_written(model_dir, capsys):
    before = snapshot(model_dir)
    status, last = run_export(capsys, "--model", model_dir, "--opset", "30")
    assert status == 1
    assert last.startswith("error: onnxruntime ") and "cannot load the exported graph: [ONNXRuntimeError]" in last
    assert last.endswith("; not saved")
    assert snapshot(model_dir) == before
