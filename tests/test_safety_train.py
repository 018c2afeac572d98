"""train.py as a careless user runs it: what --overwrite_output_dir may remove, the folders it never writes into,
every bad number or name refused in one line before anything is built or written, a full disk, a run that stops
before its first checkpoint, and progress bars in a log. Each case asserts the one-line message, the exit status
and what is on disk afterwards (bytes equal)."""

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO, tiny_args

import train
import trainer_multitask
import training_args
import training_run
from configuration_multitask import MultiTaskConfig

ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}
QUICK = ["--max_steps", "2", "--eval_strategy", "no", "--save_strategy", "no"]


def run_cli(monkeypatch, argv):
    """`python train.py ARGV`, in this process: (exit status, the one line it ended with or None)."""
    monkeypatch.setattr(sys, "argv", ["train.py", *map(str, argv)])
    try:
        train.cli()
    except SystemExit as stop:
        if isinstance(stop.code, str):  # sys.exit("error: ...") prints the line and exits with 1
            assert "\n" not in stop.code, stop.code
            return 1, stop.code
        return stop.code, None
    return 0, None


def snapshot(folder):
    """Every file under `folder` (relative path -> bytes) and every folder (-> None)."""
    return {
        str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None) for p in sorted(Path(folder).rglob("*"))
    }


@pytest.fixture
def nothing_built_or_written(monkeypatch):
    """Fail the test, instead of building a model or touching the output folder, if a refusal comes too late."""

    def too_late(*args, **kwargs):
        raise AssertionError("the refusal came after the checks: train.py went on to build or write")

    monkeypatch.setattr(train, "build_model", too_late)
    monkeypatch.setattr(train, "start_output_dir", too_late)


def users_folder(tmp_path):
    mine = tmp_path / "mine"
    (mine / "sub").mkdir(parents=True)
    (mine / "thesis.txt").write_text("four years of work\n")
    (mine / "sub" / "notes.md").write_text("# notes\n")
    return mine


# ----- --overwrite_output_dir replaces what train.py wrote, and nothing else --------------------------------------------


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_folder_of_the_users_own_files_is_refused_whatever_the_flag(
    backbone_dir, tmp_path, monkeypatch, nothing_built_or_written, overwrite
):
    mine = users_folder(tmp_path)
    before = snapshot(mine)
    status, message = run_cli(
        monkeypatch, tiny_args(backbone_dir, mine, *QUICK, *(["--overwrite_output_dir"] * overwrite))
    )
    assert status == 1
    assert message == (
        f"error: --output_dir {mine}: is not empty and holds no run of train.py (no run.json; it holds sub, "
        "thesis.txt); train.py replaces nothing it did not write, even with --overwrite_output_dir: choose another "
        "--output_dir"
    )
    assert snapshot(mine) == before


def test_a_run_folder_with_the_users_files_in_it_is_not_replaced(trained, backbone_dir, tmp_path, monkeypatch):
    out = tmp_path / "model"
    shutil.copytree(trained[0], out)
    (out / "thesis.txt").write_text("mine\n")
    before = snapshot(out)
    for extra in ([], ["--overwrite_output_dir"]):
        status, message = run_cli(monkeypatch, tiny_args(backbone_dir, out, *QUICK, *extra))
        assert status == 1 and message == (
            f"error: --output_dir {out}: holds an earlier run and files train.py did not write (thesis.txt), which "
            "--overwrite_output_dir would not remove; choose another --output_dir"
        ), extra
        assert snapshot(out) == before


def test_a_finished_run_is_replaced_only_with_the_flag_and_never_resumed(trained, backbone_dir, tmp_path, monkeypatch):
    out = tmp_path / "model"
    shutil.copytree(trained[0], out)
    (out / "runs").mkdir()  # what train.py and Trainer write is all replaced (tensorboard logs included)
    before = snapshot(out)
    status, message = run_cli(monkeypatch, tiny_args(backbone_dir, out, *QUICK))
    assert message == (
        f"error: --output_dir {out}: is not empty (holds a finished run: its model); --overwrite_output_dir replaces "
        "it, or choose another --output_dir"
    )
    status, message = run_cli(monkeypatch, tiny_args(backbone_dir, out, *QUICK, "--resume_from_checkpoint", "last"))
    assert message == (
        f"error: --output_dir {out}: holds a finished run (its model is saved): nothing to resume; "
        "--overwrite_output_dir replaces it, or choose another --output_dir"
    )
    status, message = run_cli(
        monkeypatch, tiny_args(backbone_dir, out, *QUICK, "--resume_from_checkpoint", "last", "--overwrite_output_dir")
    )
    assert message == (
        "error: --resume_from_checkpoint last and --overwrite_output_dir: the checkpoint would be removed before "
        "training resumes from it; drop one of them"
    )
    assert snapshot(out) == before

    assert run_cli(monkeypatch, tiny_args(backbone_dir, out, *QUICK, "--overwrite_output_dir")) == (0, None)
    assert not (out / "runs").exists()
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 2


def test_an_unfinished_run_is_resumed_only_with_its_own_settings(backbone_dir, tmp_path, monkeypatch):
    out = tmp_path / "run"
    out.mkdir()
    (out / "run.json").write_text(json.dumps({"learning_rate": 0.5}))  # a run killed before its first checkpoint
    status, message = run_cli(monkeypatch, tiny_args(backbone_dir, out, *QUICK))
    assert message == (
        f"error: --output_dir {out}: is not empty (holds an unfinished run); --resume_from_checkpoint last continues "
        "it, --overwrite_output_dir replaces it, or choose another --output_dir"
    )
    status, message = run_cli(monkeypatch, tiny_args(backbone_dir, out, *QUICK, "--resume_from_checkpoint", "last"))
    assert message.startswith(f"error: --output_dir {out}: holds a run with other settings, which cannot be resumed")
    assert "learning_rate 0.5 (now 0.001)" in message and message.endswith(
        "use the settings it was started with, --overwrite_output_dir, or another --output_dir"
    )


def forbidden_cases(tmp_path, monkeypatch):
    """(--output_dir, the reason in the message, the argument list's changes) of each folder train.py never takes."""
    work = tmp_path / "work"
    (work / "inside").mkdir(parents=True)
    (work / "keep.txt").write_text("keep\n")
    monkeypatch.chdir(work / "inside")
    repo = tmp_path / "repo"
    (repo / "data").mkdir(parents=True)
    (repo / "train.py").write_text("# the repository\n")
    monkeypatch.setattr(training_run, "REPO_DIR", repo)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    git = tmp_path / "clone"
    (git / ".git").mkdir(parents=True)
    data = tmp_path / "mydata"
    data.mkdir()
    shutil.copy(REPO / "data" / "train.jsonl", data / "train.jsonl")
    return [
        (".", "is the current directory", []),
        ("", "is the current directory", []),
        (work, f"holds the current directory ({work / 'inside'})", []),
        (repo, "is this repository", []),
        (tmp_path, f"holds your home folder ({home})", []),
        (home, "is your home folder", []),
        ("/", "is the root folder", []),
        (git, "is a git repository (it holds .git)", []),
        (data, f"holds --train_file {data / 'train.jsonl'}", ["--train_file", data / "train.jsonl"]),
    ]


@pytest.mark.parametrize("overwrite", [False, True])
def test_folders_train_py_never_writes_into(backbone_dir, tmp_path, monkeypatch, nothing_built_or_written, overwrite):
    for out, reason, extra in forbidden_cases(tmp_path, monkeypatch):
        before = snapshot(tmp_path)
        argv = tiny_args(backbone_dir, out, *QUICK, *extra, *(["--overwrite_output_dir"] * overwrite))
        status, message = run_cli(monkeypatch, argv)
        assert status == 1 and message == (
            f"error: --output_dir {Path(out)}: {reason}; train.py writes (and --overwrite_output_dir empties) a folder of "
            "its own: choose another --output_dir, e.g. outputs/NAME"
        ), (out, message)
        assert snapshot(tmp_path) == before


def test_a_home_or_working_directory_of_root_refuses_only_root(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", "/")
    monkeypatch.chdir("/")
    model_args, data_args = training_args.ModelArguments(), training_args.DataArguments()
    assert training_run.forbidden_output_dir(tmp_path / "out", model_args, data_args) is None
    assert training_run.forbidden_output_dir("/", model_args, data_args) == "is the root folder"


def test_the_model_being_continued_is_not_the_output(trained, tmp_path, monkeypatch, nothing_built_or_written):
    saved = tmp_path / "saved"
    shutil.copytree(trained[0], saved)
    before = snapshot(saved)
    argv = ["--model_name_or_path", saved, "--output_dir", saved, "--overwrite_output_dir", *QUICK]
    assert run_cli(monkeypatch, argv) == (
        1,
        f"error: --output_dir {saved}: holds --model_name_or_path {saved / 'config.json'}; train.py writes (and "
        "--overwrite_output_dir empties) a folder of its own: choose another --output_dir, e.g. outputs/NAME",
    )
    assert snapshot(saved) == before


@pytest.mark.slow
def test_output_dir_dot_in_a_copy_of_the_repository_deletes_nothing(tmp_path):
    copy = tmp_path / "repo"
    shutil.copytree(REPO, copy, ignore=shutil.ignore_patterns(".git", ".venv", "__pycache__", "outputs", "runs"))
    before = snapshot(copy)
    for args in (["--output_dir", ".", "--overwrite_output_dir"], ["--output_dir", ".."], ["--output_dir", "data"]):
        result = subprocess.run(
            [sys.executable, "train.py", *args], cwd=copy, env=ENV, capture_output=True, text=True, timeout=300
        )
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
        assert result.stderr.strip().splitlines()[-1].startswith(f"error: --output_dir {args[1]}: "), result.stderr
        assert snapshot(copy) == before


# ----- every number and name is refused in one line before anything is built or written ------------------------------


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--learning_rate", "-1"], "error: --learning_rate must be a number > 0, got -1"),
        (["--learning_rate", "nan"], "error: --learning_rate must be a number > 0, got nan"),
        (["--weight_decay", "-0.1"], "error: --weight_decay must be a number >= 0, got -0.1"),
        (["--adam_beta2", "1"], "error: --adam_beta2 must be in [0, 1), got 1"),
        (["--dataloader_num_workers", "-1"], "error: --dataloader_num_workers must be >= 0, got -1"),
        (["--eval_accumulation_steps", "0"], "error: --eval_accumulation_steps must be >= 1, got 0"),
        (["--num_train_epochs", "inf"], "error: --num_train_epochs must be >= 0, got inf"),
        (["--head_learning_rate", "0"], "error: --head_learning_rate must be a number > 0, got 0"),
        (["--classifier_dropout", "1"], "error: --classifier_dropout must be in [0, 1), got 1"),
        (["--max_seq_length", "100"], "error: --max_seq_length 100: the encoder reads at most 64 tokens"),
        (["--freeze_heads", "topik"], "error: --freeze_heads names unknown task(s) ['topik']; the model's tasks are ['topic', 'sentiment']"),
        (["--loss_weights", "topic=nan"], "error: --loss_weights item 'topic=nan': a weight must be a number >= 0"),
        (["--loss_weights", "topik=2"], "error: --loss_weights names unknown task 'topik'; tasks are ['topic', 'sentiment']"),
        (["--pooling", "avg"], "error: --pooling 'avg' is not one of ['mean', 'cls', 'max']"),
        (["--tasks", '{"topic": ["a"]}'], "error: --tasks: task 'topic' has 1 label(s) ['a']; a task needs at least 2"),
        (["--metric_for_best_model", "accuracy"], "error: --metric_for_best_model accuracy: no evaluation reports it; it may be one of loss, mean_accuracy, mean_f1, topic_accuracy, topic_f1, sentiment_accuracy, sentiment_f1, ..."),
        (["--tasks", '{"id": ["a", "b"]}'], "error: --tasks: task name 'id' is reserved (predict.py's output lines use the keys line, id, embedding beside the task names); give the task another name"),
        (["--tasks", '{"topic": ["a", "b"], "line": ["a", "b"]}'], "error: --tasks: task name 'line' is reserved"),
    ],
)  # fmt: skip
def test_bad_values_are_one_line_errors_before_the_model_is_built(
    backbone_dir, tmp_path, monkeypatch, nothing_built_or_written, extra, message
):
    out = tmp_path / "out"
    status, line = run_cli(monkeypatch, tiny_args(backbone_dir, out, "--max_steps", "2", *extra))
    assert status == 1 and line.startswith(message), line
    assert not out.exists()


def test_the_default_length_is_lowered_to_the_encoders_limit(trained):
    # the tiny encoder reads 64 tokens: the default 128 would fail on the first text longer than that
    assert json.loads((trained[0] / "config.json").read_text())["max_seq_length"] == 64


@pytest.mark.parametrize("name", ["line", "id", "embedding"])
def test_the_config_refuses_the_task_names_of_predicts_output(name):
    with pytest.raises(ValueError, match=rf"task name '{name}' is reserved: .* rename the task in tasks"):
        MultiTaskConfig(tasks={"topic": ["a", "b"], name: ["x", "y"]})
    config = MultiTaskConfig()
    with pytest.raises(ValueError, match=f"task name '{name}' is reserved"):
        config.add_task(name, ["x", "y"])
    assert list(config.tasks) == ["topic", "sentiment"]


# ----- a run that stops short: a full disk, Ctrl-C, a failure -----------------------------------------------------------


def full_disk_at_the_final_save(monkeypatch):
    save_model = trainer_multitask.MultiTaskTrainer.save_model

    def save(self, output_dir=None, *args, **kwargs):
        if str(output_dir).endswith(".tmp-final-model"):
            Path(output_dir).mkdir(parents=True, exist_ok=True)
            (Path(output_dir) / "model.safetensors").write_bytes(b"half")  # what got written before the disk filled
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return save_model(self, output_dir, *args, **kwargs)

    monkeypatch.setattr(trainer_multitask.MultiTaskTrainer, "save_model", save)
    return lambda: monkeypatch.setattr(trainer_multitask.MultiTaskTrainer, "save_model", save_model)


def test_a_full_disk_at_the_final_save_says_how_to_resume(backbone_dir, tmp_path, monkeypatch):
    out = tmp_path / "run"
    args = tiny_args(backbone_dir, out, "--max_steps", "2", "--save_strategy", "steps", "--save_steps", "2",
                     "--eval_strategy", "no")  # fmt: skip
    disk_freed = full_disk_at_the_final_save(monkeypatch)
    status, message = run_cli(monkeypatch, args)
    assert status == 1 and message == (
        f"error: {out}: No space left on device while saving the final model (the model is not saved); free some "
        f"space and run the same command with --resume_from_checkpoint last to finish it (the newest checkpoint is "
        f"{out / 'checkpoint-2'})"
    )
    assert not (out / ".tmp-final-model").exists() and not (out / "model.safetensors").exists()

    disk_freed()
    assert run_cli(monkeypatch, [*args, "--resume_from_checkpoint", "last"]) == (0, None)
    assert (out / "model.safetensors").is_file() and not list(out.glob("checkpoint-*"))


def test_a_full_disk_before_any_checkpoint_leaves_nothing_behind(backbone_dir, tmp_path, monkeypatch):
    out = tmp_path / "new" / "run"
    args = tiny_args(backbone_dir, out, *QUICK)
    disk_freed = full_disk_at_the_final_save(monkeypatch)
    status, message = run_cli(monkeypatch, args)
    assert status == 1 and message == (
        f"error: {out}: No space left on device while saving the final model (the model is not saved); free some "
        "space and run the same command to start again (no checkpoint was written yet; the run's files are removed)"
    )
    assert not (tmp_path / "new").exists()
    disk_freed()
    assert run_cli(monkeypatch, args) == (0, None)  # the same command, not refused as "an earlier run"


@pytest.mark.parametrize("stop", [KeyboardInterrupt, RuntimeError])
def test_a_run_stopped_before_its_first_checkpoint_takes_back_what_it_wrote(
    backbone_dir, tmp_path, monkeypatch, capsys, stop
):
    out = tmp_path / "run"
    out.mkdir()  # an empty folder the user made for it: it stays, empty
    args = tiny_args(backbone_dir, out, *QUICK)
    train_ = trainer_multitask.MultiTaskTrainer.train

    def stopped(self, *a, **k):
        raise stop("stopped")

    monkeypatch.setattr(trainer_multitask.MultiTaskTrainer, "train", stopped)
    if stop is KeyboardInterrupt:
        assert run_cli(monkeypatch, args) == (130, None)
        assert capsys.readouterr().err.strip().splitlines()[-1] == (
            "interrupted: at step 0 of 0; run the same command to start again (no checkpoint was written yet; the "
            "run's files are removed)"
        )
    else:
        with pytest.raises(RuntimeError, match="stopped"):  # a bug's traceback, but no folder that blocks a re-run
            run_cli(monkeypatch, args)
    assert out.is_dir() and not list(out.iterdir())
    monkeypatch.setattr(trainer_multitask.MultiTaskTrainer, "train", train_)


def test_ctrl_c_while_saving_the_final_model_says_what_to_do(backbone_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    args = tiny_args(backbone_dir, out, *QUICK)
    save_model = trainer_multitask.MultiTaskTrainer.save_model

    def interrupted(self, output_dir=None, *a, **k):
        if str(output_dir).endswith(".tmp-final-model"):
            raise KeyboardInterrupt
        return save_model(self, output_dir, *a, **k)

    monkeypatch.setattr(trainer_multitask.MultiTaskTrainer, "save_model", interrupted)
    assert run_cli(monkeypatch, args) == (130, None)
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "interrupted: after training (2 steps), before the model was saved; run the same command to start again (no "
        "checkpoint was written yet; the run's files are removed)"
    )
    assert not out.exists()


def test_a_full_disk_while_writing_a_checkpoint_is_one_line(backbone_dir, tmp_path, monkeypatch):
    out = tmp_path / "run"
    args = tiny_args(backbone_dir, out, "--max_steps", "4", "--save_strategy", "steps", "--save_steps", "2",
                     "--eval_strategy", "no")  # fmt: skip
    save_checkpoint = trainer_multitask.MultiTaskTrainer._save_checkpoint

    def full_at_the_second(self, *a, **k):
        if self.state.global_step > 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return save_checkpoint(self, *a, **k)

    monkeypatch.setattr(trainer_multitask.MultiTaskTrainer, "_save_checkpoint", full_at_the_second)
    assert run_cli(monkeypatch, args) == (
        1,
        f"error: {out}: No space left on device while writing a checkpoint; free some space and run the same command "
        f"with --resume_from_checkpoint last to go on (the newest checkpoint is {out / 'checkpoint-2'})",
    )


# ----- progress bars ----------------------------------------------------------------------------------------------------


def test_no_progress_bars_when_stderr_is_not_a_terminal(capsys):
    # under pytest (as in a log file or a pipe) stderr is not a terminal
    assert training_args.parse_args(["--use_cpu"])[2].disable_tqdm is True
    assert (
        training_args.parse_args(["--use_cpu", "--disable_tqdm", "false"])[2].disable_tqdm is False
    )  # asked for: kept


@pytest.mark.slow
def test_a_redirected_log_holds_no_progress_bar(backbone_dir, tmp_path):
    log = tmp_path / "train.log"
    with open(log, "w") as stream:
        result = subprocess.run(
            [sys.executable, str(REPO / "train.py"), *tiny_args(backbone_dir, tmp_path / "out", *QUICK)],
            env=ENV, stdout=stream, stderr=subprocess.STDOUT, timeout=300,
        )  # fmt: skip
    text = log.read_text()
    assert result.returncode == 0, text[-3000:]
    assert "\r" not in text and "\x1b[" not in text and "it/s]" not in text, text[-3000:]
