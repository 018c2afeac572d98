"""Nothing lost, nothing silent: every ordinary mistake with train.py and predict.py, as a user makes it.

Each case asserts the one-line message, the exit status, that no traceback was printed and what is on disk after. The
catalogue runs twice: in this process (`main`/`cli` with the same arguments; the fast tier) and as the real command
(a fresh interpreter; the slow tier, `pytest -m slow`). Ctrl-C is a real signal to a real command: slow tier only."""

import json
import logging
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import datasets
import pytest
import torch
import transformers
from filelock import FileLock
from helpers import REPO, SLOW_PREDICT, TASKS, tiny_args
from transformers import AutoModel, AutoTokenizer

import predict
import train
from modeling_multitask import MultiTaskModel

ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}
TEXTS = ["the movie was good", "bad food", "the team lost", "stock market price", "i love it", "sad news today"]
QUICK = ["--max_steps", "2", "--eval_strategy", "no", "--save_strategy", "no", "--test_file", str(REPO / "data" / "test.jsonl")]  # fmt: skip


def command(script, *args, cwd=None, env=ENV, timeout=300):
    """`python SCRIPT ARGS`: the real command, in a fresh interpreter."""
    return subprocess.run(
        [sys.executable, str(REPO / script), *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=timeout,
    )


@pytest.fixture(params=["in-process", pytest.param("command", marks=pytest.mark.slow)])
def run(request, capsys, caplog, monkeypatch):
    """`run(SCRIPT, *ARGS, cwd=None)` -> (returncode, stdout, stderr) of `python SCRIPT ARGS`: in this process (the
    script's `cli`/`main`, what its `__main__` calls) or as the real command. In this process stderr holds the log
    records, the warnings and then what was printed, as a terminal would show them."""
    if request.param == "command":
        return command
    # transformers' own handler holds the stderr of the test that imported it first: let its records reach caplog
    monkeypatch.setattr(logging.getLogger("transformers"), "propagate", True)

    def in_process(script, *args, cwd=None):
        argv = [str(a) for a in args]
        before = os.getcwd()
        saved = (
            transformers.utils.logging.get_verbosity(),
            datasets.utils.logging.get_verbosity(),
            transformers.utils.logging.is_progress_bar_enabled(),
            datasets.is_progress_bar_enabled(),
        )
        capsys.readouterr()
        caplog.clear()
        try:
            if cwd is not None:
                os.chdir(cwd)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("default")
                try:
                    if script == "train.py":
                        monkeypatch.setattr(sys, "argv", [script, *argv])
                        train.cli()
                        status = 0
                    else:
                        status = predict.main(argv)
                except SystemExit as stop:
                    status = stop.code
        finally:
            os.chdir(before)
            transformers.utils.logging.set_verbosity(saved[0])
            datasets.utils.logging.set_verbosity(saved[1])
            (transformers.utils.logging.enable_progress_bar if saved[2] else transformers.utils.logging.disable_progress_bar)()  # fmt: skip
            (datasets.enable_progress_bars if saved[3] else datasets.disable_progress_bars)()
        stdout, stderr = capsys.readouterr()
        if isinstance(status, str):  # sys.exit("error: ...") prints the line and exits with 1
            stderr, status = f"{stderr}{status}\n", 1
        shown = [
            warnings.formatwarning(w.message, w.category, w.filename, w.lineno)
            for w in caught
            if not issubclass(w.category, DeprecationWarning | PendingDeprecationWarning)  # hidden outside __main__
        ]
        stderr = caplog.text + "".join(shown) + stderr
        return SimpleNamespace(returncode=0 if status is None else status, stdout=stdout, stderr=stderr)

    return in_process


def one_line_error(result, status=(1, 2)):
    """The run failed with `status` and ended with one `error: ...` line, without a traceback; returns that line."""
    assert result.returncode in ((status,) if isinstance(status, int) else status), result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), result.stderr[-3000:]
    return last


def write_lines(path, texts):
    path.write_text("".join(t + "\n" for t in texts), encoding="utf-8")
    return path


# ----- predict.py: data loss -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["same path", "relative path", "symlink"])
@pytest.mark.parametrize("overwrite", [False, True])
def test_predict_refuses_the_input_as_output(saved_tiny_model, tmp_path, how, overwrite, run):
    source = write_lines(tmp_path / "in.txt", TEXTS)
    before = source.read_bytes()
    output = {"same path": source, "relative path": Path("in.txt"), "symlink": tmp_path / "link.jsonl"}[how]
    if how == "symlink":
        output.symlink_to(source)
    extra = ["--overwrite"] if overwrite else []
    result = run("predict.py", "--model", saved_tiny_model[2], "--input", source, "--output", output, *extra,
                     cwd=tmp_path)  # fmt: skip
    assert (
        one_line_error(result)
        == f"error: {output}: is the input file itself; write the predictions to another --output"
    )
    assert source.read_bytes() == before


def test_predict_refuses_to_resume_another_input_or_model_and_says_what_differs(saved_tiny_model, tmp_path, run):
    model_dir = saved_tiny_model[2]
    first, second = write_lines(tmp_path / "a.txt", TEXTS), write_lines(tmp_path / "b.txt", TEXTS[::-1])
    output = tmp_path / "out.jsonl"
    assert run("predict.py", "--model", model_dir, "--input", first, "--output", output).returncode == 0
    written = output.read_bytes()

    other_input = run("predict.py", "--model", model_dir, "--input", second, "--output", output)
    message = one_line_error(other_input)
    assert f"input {first} (now {second})" in message and "--overwrite to start over" in message
    other_setting = run("predict.py", "--model", model_dir, "--input", first, "--output", output, "--max_length", 8)
    assert "--max_length None (now 8)" in one_line_error(other_setting)
    assert output.read_bytes() == written  # untouched

    # the same input, edited in the part already labelled, is another input too
    first.write_text("changed\n" + "".join(t + "\n" for t in TEXTS[1:]), encoding="utf-8")
    edited = run("predict.py", "--model", model_dir, "--input", first, "--output", output)
    assert f"the content of {first} (changed since" in one_line_error(edited)


def test_a_second_writer_of_the_same_output_gets_a_one_line_error(saved_tiny_model, tmp_path, run):
    source = write_lines(tmp_path / "in.txt", TEXTS)
    output = tmp_path / "out.jsonl"
    output.touch()  # the other writer's output
    with FileLock(f"{output}.lock", timeout=0):  # what a running predict.py holds
        result = run("predict.py", "--model", saved_tiny_model[2], "--input", source, "--output", output)
    assert (
        one_line_error(result) == f"error: {output}: another predict.py is writing this output right now; wait for it"
    )
    assert output.read_bytes() == b""  # the other writer's file, left as it was


# ----- predict.py: one-line errors that leave nothing behind ---------------------------------------------------------


def test_predict_mistakes_are_one_line_errors_that_write_nothing(saved_tiny_model, backbone_dir, tmp_path, run):
    model_dir = saved_tiny_model[2]
    source = write_lines(tmp_path / "in.txt", TEXTS)
    bad_csv = tmp_path / "in.csv"
    bad_csv.write_text('text,id\n"good film,1\nbad,2\n', encoding="utf-8")
    distilbert = tmp_path / "distilbert"
    from transformers import DistilBertConfig, DistilBertModel

    DistilBertModel(DistilBertConfig(vocab_size=99, dim=32, n_layers=1, n_heads=2, hidden_dim=37)).save_pretrained(
        distilbert
    )
    cases = [
        (["--model", tmp_path / "nope", "--input", source], f"error: {tmp_path / 'nope'}: no such model directory"),
        (["--model", backbone_dir, "--input", source], "model_type 'bert', expected 'multitask_sentence_classifier'"),
        (["--model", distilbert, "--input", source], "model_type 'distilbert', expected"),
        (["--model", model_dir, "--input", source, "--batch_size", 0], "error: --batch_size must be a positive int, got 0"),
        (["--model", model_dir, "--input", bad_csv], f"error: {bad_csv}:2: unterminated quoted field"),
        (["--model", model_dir, "--input", tmp_path / "missing.txt"], f"error: {tmp_path / 'missing.txt'}: file not found"),
    ]  # fmt: skip
    for args, expected in cases:
        output = tmp_path / "out.jsonl"
        message = one_line_error(run("predict.py", *args, "--output", output))
        assert expected in message, (args, message)
        assert not output.exists() and not Path(f"{output}.resume.json").exists(), args

    nowhere = tmp_path / "no-such-folder" / "out.jsonl"
    message = one_line_error(run("predict.py", "--model", model_dir, "--input", source, "--output", nowhere))
    assert message == f"error: {nowhere}: folder {nowhere.parent} does not exist; create it first"
    assert not nowhere.parent.exists()


@pytest.mark.slow  # a real signal to a real command
def test_ctrl_c_during_prediction_says_where_it_stopped_and_resumes(saved_tiny_model, tmp_path):
    texts = [f"{TEXTS[i % len(TEXTS)]} {i}" for i in range(2000)]
    source, output = write_lines(tmp_path / "in.txt", texts), tmp_path / "out.jsonl"
    args = ["--model", saved_tiny_model[2], "--input", source, "--output", output, "--window", 20, "--batch_size", 20]
    child = subprocess.Popen(
        [sys.executable, "-c", SLOW_PREDICT, *map(str, args)],
        cwd=REPO,
        env={**ENV, "PYTHONPATH": str(REPO)},
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not (output.exists() and output.read_bytes().count(b"\n") >= 100):
        assert child.poll() is None and time.monotonic() < deadline, "predict.py ended or wrote nothing"
        time.sleep(0.01)
    child.send_signal(signal.SIGINT)
    stderr = child.communicate(timeout=60)[1]
    assert child.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr
    last = stderr.strip().splitlines()[-1]
    written = [json.loads(line)["line"] for line in output.read_text().splitlines()]
    assert (
        last
        == f"interrupted: {output} holds predictions up to input line {written[-1]}; run the same command to resume"
    )

    assert command("predict.py", *args).returncode == 0
    assert [json.loads(line)["line"] for line in output.read_text().splitlines()] == list(range(1, 2001))


# ----- the Python API validates its numbers and inputs the same way everywhere ----------------------------------------


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda m, t: m.encode(["a"], t, batch_size=-1), ValueError, "batch_size must be a positive int, got -1"),
        (lambda m, t: m.predict(["a", "b"], t, batch_size=-1), ValueError, "batch_size must be a positive int, got -1"),
        (lambda m, t: m.predict(["a"], t, top_k=0), ValueError, "top_k must be a positive int, got 0"),
        (lambda m, t: m.predict(["a"], t, top_k=1.5), TypeError, "top_k must be a positive int, got float (1.5)"),
        (lambda m, t: m.predict(["a"], t, max_length=0), ValueError, "max_length must be a positive int, got 0"),
        (lambda m, t: m.predict(b"bytes", t), TypeError, "texts is bytes; decode it to str first"),
        (lambda m, t: m.encode(["a", None], t), TypeError, "texts[1] is NoneType (None); every text must be a str"),
        (lambda m, t: m.predict(5, t), TypeError, "texts is int (5); expected a str or a list of str"),
    ],
)
def test_every_entry_point_checks_its_arguments(saved_tiny_model, call, error, message):
    model, tokenizer, _ = saved_tiny_model
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        call(model, tokenizer)


def test_the_pipeline_checks_top_k_like_predict(saved_tiny_model):
    from pipeline_multitask import MultiTaskClassificationPipeline

    model, tokenizer, _ = saved_tiny_model
    pipe = MultiTaskClassificationPipeline(model=model, tokenizer=tokenizer, device="cpu")
    for top_k in (0, -1):
        with pytest.raises(ValueError, match=f"top_k must be a positive int, got {top_k}"):
            pipe("a text", top_k=top_k)
    assert model.encode([], tokenizer).shape == (0, model.config.hidden_size)  # empty input: empty output


# ----- train.py: data loss --------------------------------------------------------------------------------------------


def test_train_refuses_a_folder_with_another_run_and_overwrite_replaces_it(trained, backbone_dir, tmp_path, run):
    out = tmp_path / "model"
    shutil.copytree(trained[0], out)
    (out / "checkpoint-7").mkdir()  # an old run's checkpoint
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}

    message = one_line_error(run("train.py", *tiny_args(backbone_dir, out, *QUICK)))
    assert message.startswith(f"error: --output_dir {out}: is not empty (holds a finished run: its model);")
    assert "--overwrite_output_dir replaces it" in message
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before

    # a finished run has nothing to resume (resuming would train again over its model)
    message = one_line_error(run("train.py", *tiny_args(backbone_dir, out, *QUICK, "--resume_from_checkpoint", "last")))
    assert "holds a finished run (its model is saved): nothing to resume" in message

    replaced = run("train.py", *tiny_args(backbone_dir, out, *QUICK, "--overwrite_output_dir"))
    assert replaced.returncode == 0, replaced.stderr[-3000:]
    assert not (out / "checkpoint-7").exists()  # the old run's checkpoints went with it
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 2


def test_resume_last_only_picks_a_checkpoint_of_the_same_run(backbone_dir, tmp_path, run):
    import trainer_multitask

    out = tmp_path / "run"
    args = tiny_args(backbone_dir, out, "--max_steps", "4", "--save_steps", "2", "--save_strategy", "steps",
                     "--eval_strategy", "no", "--keep_checkpoints")  # fmt: skip
    assert run("train.py", *args).returncode == 0
    settings = trainer_multitask.read_run_record(out)
    assert trainer_multitask.read_run_record(out / "checkpoint-4") == settings
    assert trainer_multitask.last_complete_checkpoint(out, settings) == str(out / "checkpoint-4")
    assert trainer_multitask.last_complete_checkpoint(out, {**settings, "learning_rate": 1.0}) is None


# ----- train.py: silent wrong results and tracebacks -> one-line errors ------------------------------------------------


def test_train_mistakes_are_one_line_errors_that_write_nothing(backbone_dir, trained, tmp_path, run):
    out = tmp_path / "model"
    args_file = tmp_path / "args.json"
    args_file.write_text(json.dumps({"backbone": backbone_dir, "output_dir": str(out), "learning_rat": 1e-4}))
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    cases = [
        (["--num_train_epochs", "-1"], "error: --num_train_epochs must be >= 0, got -1"),
        (["--num_train_epochs", "0", "--max_steps", "-1"], "error: --num_train_epochs 0 means no training step"),
        (["--tasks", "{topic: [a, b]}"], "error: --tasks is not valid JSON"),
        (["--loss_weights", "topic:2"], "error: --loss_weights item 'topic:2' is not TASK=NUMBER"),
        (["--freeze_layers", "9"], "error: --freeze_layers 9, but the encoder has 2 layers"),
        (["--max_train_samples", "0"], "error: --max_train_samples must be >= 1"),
        (["--seed", "-1"], "error: --seed must be in [0, 2**32 - 1], got -1"),
        (["--per_device_train_batch_size", "0"], "error: --per_device_train_batch_size must be >= 1, got 0"),
        (["--resume_from_checkpoint", str(tmp_path / "nope")], "not a complete checkpoint folder"),
        (["--backbone", str(tmp_path / "no-encoder")], f"error: {tmp_path / 'no-encoder'}: no such model directory"),
        (["--model_name_or_path", backbone_dir], "not a multi-task model saved by train.py (its config.json has model_type 'bert'"),
    ]  # fmt: skip
    for extra, expected in cases:
        base = tiny_args(backbone_dir, out, *QUICK)
        if extra[0] in ("--backbone", "--model_name_or_path"):  # instead of the tiny encoder
            base = base[2:]
        result = run("train.py", *base, *extra)
        assert result.returncode != 0, extra
        message = one_line_error(result)
        assert message.startswith(expected) or expected in message, (extra, message)
        assert not out.exists(), extra

    message = one_line_error(run("train.py", args_file))
    assert "learning_rat" in message and not out.exists()
    message = one_line_error(run("train.py", *tiny_args(backbone_dir, a_file, *QUICK)))
    assert message == f"error: --output_dir {a_file}: is a file; name a folder"


def test_eval_strategy_no_turns_best_model_selection_off_with_a_notice(backbone_dir, tmp_path, run):
    out = tmp_path / "model"
    result = run("train.py", *tiny_args(backbone_dir, out, "--max_steps", "2", "--eval_strategy", "no"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "--eval_strategy no: best-model selection is off" in result.stderr
    assert (out / "model.safetensors").is_file()


@pytest.mark.slow  # a real signal to a real command
def test_ctrl_c_during_training_says_how_to_resume(backbone_dir, tmp_path):
    out = tmp_path / "run"
    args = tiny_args(backbone_dir, out, "--max_steps", "400", "--save_steps", "5", "--save_strategy", "steps",
                     "--eval_strategy", "no", "--per_device_train_batch_size", "4")  # fmt: skip
    child = subprocess.Popen(
        [sys.executable, str(REPO / "train.py"), *args], env=ENV, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 120
    while not (out / "checkpoint-5" / "trainer_state.json").is_file():
        assert child.poll() is None and time.monotonic() < deadline, "no checkpoint before the run ended or 120 s"
        time.sleep(0.05)
    child.send_signal(signal.SIGINT)
    stderr = child.communicate(timeout=120)[1]
    assert child.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("interrupted: at step ") and "of 400" in last, last
    assert "run the same command with --resume_from_checkpoint last to go on" in last
    assert not (out / "model.safetensors").exists()


# ----- train.py: disk and sharing hygiene ------------------------------------------------------------------------------


def test_finished_run_is_quiet_keeps_no_checkpoints_and_writes_shareable_files(backbone_dir, tmp_path, run):
    out = tmp_path / "model"
    args = tiny_args(backbone_dir, out, "--max_steps", "4", "--save_steps", "2", "--save_strategy", "steps",
                     "--eval_strategy", "steps", "--eval_steps", "2")  # fmt: skip
    result = run("train.py", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert not list(out.glob("checkpoint-*"))
    umask = os.umask(0)
    os.umask(umask)
    for path in out.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) & 0o666 == 0o666 & ~umask, path.name
    for notice in ("LOAD REPORT", "pin_memory", "new PAD/BOS/EOS tokens", "Traceback"):
        assert notice not in result.stderr, notice

    kept = tmp_path / "kept"
    assert (
        run("train.py", *tiny_args(backbone_dir, kept, *args[-8:], "--max_steps", "4", "--keep_checkpoints")).returncode
        == 0
    )
    assert sorted(p.name for p in kept.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    # the finished model loads and predicts, whatever was removed around it
    model = AutoModel.from_pretrained(out, trust_remote_code=True)
    assert model.predict(["good film"], AutoTokenizer.from_pretrained(out, trust_remote_code=True))[0].keys() == set(
        TASKS
    )
    assert isinstance(MultiTaskModel.from_pretrained(out).heads["topic"].out_proj.weight, torch.nn.Parameter)
