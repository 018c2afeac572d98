"""Crash and resume, determinism, interrupted saves, safe remote code, awkward inference input."""

import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import REPO, tiny_args
from safetensors.torch import load_file
from transformers import AutoModel

import train
import trainer_multitask
from configuration_multitask import MultiTaskConfig
from modeling_multitask import MultiTaskModel

LONG = ["--max_steps", "300", "--save_steps", "30", "--save_strategy", "steps", "--eval_strategy", "no",
        "--load_best_model_at_end", "false", "--save_total_limit", "3", "--logging_steps", "50",
        "--per_device_train_batch_size", "4"]  # fmt: skip


def weights(path):
    return load_file(Path(path) / "model.safetensors")


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_sigkill_mid_epoch_then_resume_equals_uninterrupted_run(backbone_dir, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    killed = tmp_path / "killed"
    cmd = [sys.executable, str(REPO / "train.py"), *tiny_args(backbone_dir, killed, *LONG)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (killed / "checkpoint-30" / "trainer_state.json").is_file():
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.time() < deadline, "no checkpoint within 120 s"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "model.safetensors").exists()  # it really died before the end (300 steps, 16 per epoch)

    resumed = subprocess.run(cmd + ["--resume_from_checkpoint", "last"], env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert re.search(r"resuming from .*checkpoint-\d+", resumed.stderr)

    train.main(tiny_args(backbone_dir, tmp_path / "uninterrupted", *LONG))
    assert_same_weights(weights(tmp_path / "uninterrupted"), weights(killed))


def test_resume_last_skips_a_checkpoint_cut_short(backbone_dir, tmp_path):
    out = tmp_path / "run"
    (out / "checkpoint-5").mkdir(parents=True)
    (out / "checkpoint-5" / "trainer_state.json").write_text("{}")
    (out / "checkpoint-9").mkdir()  # a kill while writing: no trainer_state.json
    assert trainer_multitask.last_complete_checkpoint(out) == str(out / "checkpoint-5")
    assert trainer_multitask.last_complete_checkpoint(tmp_path) is None


def test_same_seed_same_weights_and_metrics(backbone_dir, tmp_path):
    runs = []
    for name in ("a", "b"):
        metrics = train.main(tiny_args(backbone_dir, tmp_path / name, "--max_steps", "12", "--save_strategy", "no",
                                       "--load_best_model_at_end", "false", "--eval_strategy", "no"))  # fmt: skip
        runs.append({k: v for k, v in metrics.items() if "runtime" not in k and "per_second" not in k})
    assert runs[0] == runs[1]
    assert_same_weights(weights(tmp_path / "a"), weights(tmp_path / "b"))


def test_kill_during_final_save_never_leaves_a_loadable_half_model(backbone_dir, tmp_path, monkeypatch):
    out = tmp_path / "run"
    args = tiny_args(backbone_dir, out, "--max_steps", "2", "--save_strategy", "steps", "--save_steps", "2",
                     "--eval_strategy", "no", "--load_best_model_at_end", "false", "--keep_checkpoints")  # fmt: skip
    train.main(args)
    assert (out / "config.json").is_file()  # a complete earlier model is in place

    real_replace, moved = os.replace, []

    def dying_replace(src, dst):
        if Path(dst).parent != out:  # writes inside the temporary directory (e.g. config.json's pipeline entry)
            return real_replace(src, dst)
        if len(moved) == 3:
            raise KeyboardInterrupt("killed during the save")
        moved.append(Path(dst).name)
        real_replace(src, dst)

    monkeypatch.setattr(train.os, "replace", dying_replace)
    with pytest.raises(train.Interrupted):  # the run saved again over its model, from its last checkpoint
        train.main([*args, "--resume_from_checkpoint", str(out / "checkpoint-2")])
    assert "config.json" not in moved and not (out / "config.json").exists()
    with pytest.raises((OSError, ValueError)):  # what users call: no config.json, nothing to load
        AutoModel.from_pretrained(out, trust_remote_code=True)


def test_remote_code_reads_no_network_environment_or_files():
    """The files that travel with a model and run under trust_remote_code touch nothing beyond their arguments."""
    forbidden = re.compile(
        r"\b(os\.environ|getenv|urllib|requests|socket|http|subprocess|Path\(|hf_hub_download)|(?<![.\w])(open|exec|eval)\("
    )
    for name in ("configuration_multitask.py", "modeling_multitask.py"):
        code = (REPO / name).read_text()
        hits = [
            line.strip() for line in code.splitlines() if forbidden.search(line) and not line.strip().startswith("#")
        ]
        assert not hits, f"{name}: {hits}"


@pytest.fixture(scope="module")
def tiny_model(make_backbone_config):
    torch.manual_seed(0)
    return MultiTaskModel(MultiTaskConfig(backbone_config=make_backbone_config("bert"))).eval()


def test_awkward_inputs(tiny_model, tiny_tokenizer, caplog):
    texts = [
        "🙂🔥👍",
        "Всё было отлично",
        "これは素晴らしい映画です",
        "the film was great " * 5_000,
        "the film was great",
    ]
    with caplog.at_level(logging.WARNING):
        predictions = tiny_model.predict(texts, tiny_tokenizer)
    assert len(predictions) == len(texts)
    assert any("truncated to 64" in r.getMessage() for r in caplog.records)
    with pytest.raises(TypeError, match=r"texts\[2\] is int \(7\); every text must be a str"):
        tiny_model.predict(["a", "b", 7], tiny_tokenizer)
    with pytest.raises(TypeError, match=r"texts\[0\] is NoneType"):
        tiny_model.encode([None], tiny_tokenizer)


def test_ten_thousand_texts_in_one_call_match_one_by_one(tiny_model, tiny_tokenizer):
    words = ["the", "film", "was", "great", "bank", "stock", "sleep", "game", "bad", "good"]
    texts = [" ".join(words[(i * 7 + j) % 10] for j in range(1 + i % 9)) for i in range(10_000)]
    many = tiny_model.predict(texts, tiny_tokenizer, batch_size=256)
    assert len(many) == 10_000
    for i in (0, 1, 4_999, 9_999):
        alone = tiny_model.predict([texts[i]], tiny_tokenizer)[0]
        for task in alone:
            assert alone[task]["label"] == many[i][task]["label"]
            assert abs(alone[task]["score"] - many[i][task]["score"]) < 1e-5


def test_json_results_are_plain(backbone_dir, tmp_path):
    """all_results.json holds only numbers (no tensors or NaN), so other tools can read it."""
    out = tmp_path / "run"
    train.main(
        tiny_args(backbone_dir, out, "--max_steps", "2", "--save_strategy", "no", "--load_best_model_at_end", "false")
    )
    results = json.loads((out / "all_results.json").read_text())
    assert results and all(isinstance(v, int | float) and v == v for v in results.values())
