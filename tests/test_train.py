"""train.py end to end on a tiny random BERT: loss, metrics, saving, freezing, resuming, DDP, Hub push, bad data."""

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from helpers import REPO, TASKS, run_child, tiny_args, write_jsonl
from huggingface_hub import ModelCard
from safetensors.torch import load_file
from transformers import AutoTokenizer, set_seed

import train
import trainer_multitask
import training_args
import training_run
from modeling_multitask import MultiTaskModel
from multitask_data import load_split


def test_end_to_end_loss_falls_and_metrics_saved(trained):
    out, metrics = trained
    history = [h["loss"] for h in json.loads((out / "trainer_state.json").read_text())["log_history"] if "loss" in h]
    assert len(history) >= 20
    assert sum(history[-5:]) / 5 < sum(history[:5]) / 5
    saved = json.loads((out / "all_results.json").read_text())
    # the test accuracy is the saved model's on the 32 test rows train.py read (--max_eval_samples 32), and the means
    # are the means of the tasks' figures
    rows = load_split([str(REPO / "data" / "test.jsonl")], TASKS, 32)
    predictions = MultiTaskModel.from_pretrained(out).predict(rows["text"], AutoTokenizer.from_pretrained(out))
    for task, labels in TASKS.items():
        right = [
            labels.index(p[task]["label"]) == gold for p, gold in zip(predictions, rows[f"labels_{task}"], strict=True)
        ]
        assert saved[f"test_{task}_accuracy"] == pytest.approx(sum(right) / len(right)), task
    for split in ("eval", "test"):
        for metric in ("accuracy", "f1"):
            tasks = [saved[f"{split}_{task}_{metric}"] for task in TASKS]
            assert saved[f"{split}_mean_{metric}"] == pytest.approx(sum(tasks) / len(tasks))
    assert saved == pytest.approx({k: v for k, v in metrics.items() if k in saved})
    # per-task training losses are logged next to the total
    assert any(
        "loss_topic" in h and "loss_sentiment" in h
        for h in json.loads((out / "trainer_state.json").read_text())["log_history"]
    )


def test_output_directory_contents(trained):
    out, _ = trained
    names = {p.name for p in out.iterdir()}
    expected = {"config.json", "model.safetensors", "configuration_multitask.py", "modeling_multitask.py"}
    assert expected | {"tokenizer.json", "tokenizer_config.json", "README.md", "all_results.json"} <= names
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pth", ".pkl"))]
    assert not (out / ".tmp-final-model").exists()
    config = json.loads((out / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_multitask.MultiTaskConfig",
        "AutoModel": "modeling_multitask.MultiTaskModel",
    }
    assert dict(config["tasks"]) == TASKS
    card = (out / "README.md").read_text()
    assert "| test | sentiment |" in card and "python train.py" in card
    assert not list(out.glob("checkpoint-*"))  # removed at the end of a finished run (--keep_checkpoints keeps them)


@pytest.mark.slow  # a fresh interpreter (in the fast tier: test_modeling's test_trust_remote_code_in_fresh_process)
def test_trained_model_loads_with_remote_code_in_fresh_process(trained, tmp_path):
    out, _ = trained
    stdout = run_child(
        f"""
        import json, sys
        from transformers import AutoModel, AutoTokenizer
        try:
            import modeling_multitask
            sys.exit("the repository is importable; the test would prove nothing")
        except ImportError:
            pass
        model = AutoModel.from_pretrained({str(out)!r}, trust_remote_code=True)
        tokenizer = AutoTokenizer.from_pretrained({str(out)!r}, trust_remote_code=True)
        print(json.dumps(model.predict(["the stock market was great", "ok"], tokenizer)))
        """,
        cwd=tmp_path,
    )
    predictions = json.loads(stdout.strip().splitlines()[-1])
    assert len(predictions) == 2
    for prediction in predictions:
        assert prediction["topic"]["label"] in TASKS["topic"]
        assert prediction["sentiment"]["label"] in TASKS["sentiment"]


@pytest.mark.slow  # the real command (in this process: test_cli_rejects_bad_data_before_writing_anything)
def test_cli_bad_data_is_one_line_and_writes_nothing(tmp_path, backbone_dir):
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"text": "x", "topic": "Politics", "sentiment": "Positive"}])
    out = tmp_path / "out"
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "train.py"),
            "--backbone",
            backbone_dir,
            "--train_file",
            bad,
            "--output_dir",
            str(out),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {bad}:1: unknown topic label 'Politics'; allowed: ['Finance/Tech', 'Health/Lifestyle', 'Entertainment/Sports']"
    )
    assert "Traceback" not in result.stderr
    assert not out.exists()


def test_freezing_keeps_parameters_bit_identical(backbone_dir, tmp_path):
    out = tmp_path / "frozen"
    train.main(
        tiny_args(
            backbone_dir,
            out,
            "--max_steps",
            "6",
            "--freeze_layers",
            "1",
            "--freeze_heads",
            "sentiment",
            "--save_strategy",
            "no",
            "--eval_strategy",
            "no",
            "--load_best_model_at_end",
            "false",
        )
    )
    set_seed(42)  # train.main seeds the same way before building the model, so this rebuilds its initial weights
    initial = MultiTaskModel.from_backbone(backbone_dir, tasks=TASKS).state_dict()
    final = load_file(out / "model.safetensors")
    frozen_prefixes = ("backbone.embeddings.", "backbone.encoder.layer.0.", "heads.sentiment.")
    for name, value in final.items():
        if name.startswith(frozen_prefixes):
            assert torch.equal(value, initial[name]), f"{name} changed although frozen"
    for name in ("backbone.encoder.layer.1.attention.self.query.weight", "heads.topic.out_proj.weight"):
        assert not torch.equal(final[name], initial[name]), f"{name} did not train"


def test_parameter_groups_layerwise_decay_and_head_lr(backbone_dir):
    model = MultiTaskModel.from_backbone(backbone_dir, tasks=TASKS)
    groups = trainer_multitask.parameter_groups(
        model, lr=1.0, weight_decay=0.0, decay_names=set(), head_lr=5.0, layer_decay=0.5
    )
    rate = {id(p): g["lr"] for g in groups for p in g["params"]}
    assert rate[id(model.heads["topic"].out_proj.weight)] == 5.0
    assert rate[id(model.backbone.encoder.layer[1].output.dense.weight)] == 0.5
    assert rate[id(model.backbone.encoder.layer[0].output.dense.weight)] == 0.25
    assert rate[id(model.backbone.embeddings.word_embeddings.weight)] == 0.125
    trainer_multitask.freeze(model, backbone=True)
    groups = trainer_multitask.parameter_groups(model, lr=1.0, weight_decay=0.0, decay_names=set())
    assert {id(p) for g in groups for p in g["params"]} == {id(p) for p in model.heads.parameters()}


def test_resume_from_checkpoint_matches_uninterrupted_run(backbone_dir, tmp_path):
    common = ["--max_steps", "6", "--save_steps", "3", "--save_strategy", "steps", "--eval_strategy", "no", "--load_best_model_at_end", "false", "--save_total_limit", "5"]  # fmt: skip
    train.main(tiny_args(backbone_dir, tmp_path / "full", *common))
    partial = tmp_path / "resumed"
    train.main(
        tiny_args(
            backbone_dir,
            partial,
            "--max_steps",
            "6",
            "--save_steps",
            "3",
            "--save_strategy",
            "steps",
            "--eval_strategy",
            "no",
            "--load_best_model_at_end",
            "false",
            "--keep_checkpoints",
        )
    )
    train.main(tiny_args(backbone_dir, partial, *common, "--resume_from_checkpoint", str(partial / "checkpoint-3")))
    full, resumed = load_file(tmp_path / "full" / "model.safetensors"), load_file(partial / "model.safetensors")
    assert full.keys() == resumed.keys()
    for name in full:
        assert torch.equal(full[name], resumed[name]), name


def test_push_to_hub_uploads_a_loadable_model(backbone_dir, tmp_path, monkeypatch):
    uploaded = tmp_path / "uploaded"

    class FakeApi:
        def create_repo(self, repo_id, **kwargs):
            return SimpleNamespace(repo_id=repo_id)

        def upload_folder(self, repo_id, folder_path, ignore_patterns=(), **kwargs):
            import fnmatch
            import shutil

            for path in Path(folder_path).iterdir():
                if path.is_file() and not any(fnmatch.fnmatch(path.name, pat) for pat in ignore_patterns):
                    uploaded.mkdir(exist_ok=True)
                    shutil.copy(path, uploaded / path.name)

    import transformers.trainer

    monkeypatch.setattr(transformers.trainer, "hf_api", lambda *a, **k: FakeApi())
    train.main(
        tiny_args(backbone_dir, tmp_path / "out", "--max_steps", "2", "--push_to_hub", "--hub_model_id", "me/multitask")
    )
    names = {p.name for p in uploaded.iterdir()}
    assert {
        "config.json",
        "model.safetensors",
        "configuration_multitask.py",
        "modeling_multitask.py",
        "handler.py",
        "tokenizer.json",
        "README.md",
    } <= names
    run_child(
        f"""
        from transformers import AutoModel, AutoTokenizer
        model = AutoModel.from_pretrained({str(uploaded)!r}, trust_remote_code=True)
        assert model.predict(["great game"], AutoTokenizer.from_pretrained({str(uploaded)!r}, trust_remote_code=True))[0]["topic"]["label"]
        """,
        cwd=tmp_path,
    )


def test_arguments_from_one_json_file(backbone_dir, tmp_path):
    data = REPO / "data"
    args = {
        "backbone": backbone_dir,
        "train_file": [str(data / "train.jsonl")],
        "validation_file": [str(data / "validation.jsonl")],
        "test_file": [str(data / "test.jsonl")],
        "max_train_samples": 32,
        "max_eval_samples": 16,
        "max_steps": 2,
        "save_strategy": "no",
        "load_best_model_at_end": False,
        "output_dir": str(tmp_path / "out"),
        "use_cpu": True,
    }
    (tmp_path / "args.json").write_text(json.dumps(args))
    metrics = train.main([str(tmp_path / "args.json")])
    assert "test_topic_accuracy" in metrics and (tmp_path / "out" / "model.safetensors").is_file()


BAD_FILES = {
    "unknown label": ('{"text": "x", "topic": "Politics"}\n', "bad.jsonl:1: unknown topic label 'Politics'; allowed: "),
    "label for a task the model lacks": ('{"text": "x", "genre": "news"}\n', "bad.jsonl:1: column(s) ['genre'] are not tasks"),
    "no text column": ('{"sentence": "x", "topic": "Finance/Tech"}\n', "bad.jsonl:1: no 'text' column (columns: ['sentence', 'topic'])"),
    "whitespace text": ('{"text": " ", "topic": "Finance/Tech"}\n', "bad.jsonl:1: text is ' '; expected a non-empty string"),
    "malformed line": ('{"text": "x", "topic": "Finance/Tech"}\n{"text": \n', "bad.jsonl:2: malformed JSON"),
    "empty file": ("", "bad.jsonl: no examples (the file is empty)"),
    "non-UTF-8": (b'{"text": "caf\xe9", "topic": "Finance/Tech"}\n', "bad.jsonl:1: not valid UTF-8"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_cli_rejects_bad_data_before_writing_anything(case, tmp_path, monkeypatch, capsys):
    content, message = BAD_FILES[case]
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(content if isinstance(content, bytes) else content.encode())
    out = tmp_path / "out"
    monkeypatch.setattr(sys, "argv", ["train.py", "--train_file", str(bad), "--output_dir", str(out)])
    with pytest.raises(SystemExit) as info:
        train.cli()
    assert str(info.value).startswith(f"error: {tmp_path}/") and message in str(info.value)
    assert "\n" not in str(info.value)  # one line
    assert not out.exists()


@pytest.mark.parametrize(
    "entries, message",
    [
        (["{dir}/missing.jsonl"], "missing.jsonl: file not found"),
        (["genre={dir}/x.jsonl"], "genre={dir}/x.jsonl: unknown task 'genre' in TASK=PATH; the model's tasks are"),
    ],
)
def test_cli_rejects_bad_entries(entries, message, tmp_path, monkeypatch):
    argv = ["train.py", "--train_file", *[e.format(dir=tmp_path) for e in entries], "--output_dir", str(tmp_path / "o")]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as info:
        train.cli()
    assert message.format(dir=tmp_path) in str(info.value)
    assert not (tmp_path / "o").exists()


def test_cli_rejects_a_csv_with_another_delimiter(tmp_path, monkeypatch):
    bad = tmp_path / "semicolons.csv"
    bad.write_text("text;topic;sentiment\nhello;Finance/Tech;Positive\n")
    monkeypatch.setattr(sys, "argv", ["train.py", "--train_file", str(bad), "--output_dir", str(tmp_path / "o")])
    with pytest.raises(SystemExit) as info:
        train.cli()
    assert str(info.value) == (
        f"error: {bad}:1: header 'text;topic;sentiment' is one column; the file seems to use another delimiter "
        "than ',' (expected comma-separated columns)"
    )
    assert not (tmp_path / "o").exists()


# ----- continuing a saved model, config flags, train/serve length, nothing machine-specific in what is shared -----


def test_continuing_a_saved_model_keeps_its_schema_and_architecture(trained, tmp_path):
    saved, _ = trained
    out = tmp_path / "continued"
    metrics = train.main(
        [
            "--model_name_or_path", str(saved), "--train_file", str(REPO / "data" / "train.jsonl"),
            "--validation_file", str(REPO / "data" / "validation.jsonl"), "--test_file", str(REPO / "data" / "test.jsonl"),
            "--max_train_samples", "16", "--max_eval_samples", "16", "--max_steps", "2", "--use_cpu",
            "--loss_weights", "sentiment=2", "--output_dir", str(out),
        ]
    )  # fmt: skip
    assert "test_mean_f1" in metrics
    before = json.loads((saved / "config.json").read_text())
    after = json.loads((out / "config.json").read_text())
    for key in ("tasks", "pooling", "head_hidden_size", "head_activation", "backbone_config", "max_seq_length"):
        assert after[key] == before[key], key
    assert after["loss_weights"] == {"topic": 1.0, "sentiment": 2.0}  # a training setting may change


@pytest.mark.parametrize(
    "flag, value, message",
    [
        ("--pooling", "cls", "error: --pooling 'cls' differs from the saved model's 'mean'"),
        ("--head_hidden_size", "8", "error: --head_hidden_size 8 differs from the saved model's 0"),
        ("--tasks", '{"topic": ["a", "b"]}', "error: --tasks {'topic': ['a', 'b']} differs from the saved model's"),
    ],
)
def test_continuing_refuses_flags_that_change_the_architecture(
    trained, tmp_path, monkeypatch, capsys, flag, value, message
):
    saved, _ = trained
    out = tmp_path / "continued"
    monkeypatch.setattr(
        sys, "argv", ["train.py", "--model_name_or_path", str(saved), flag, value, "--output_dir", str(out)]
    )
    with pytest.raises(SystemExit) as exit_info:
        train.cli()
    assert str(exit_info.value).startswith(message), exit_info.value
    assert "a saved model keeps its architecture" in str(exit_info.value)
    assert not out.exists()


def test_head_activation_flag_reaches_the_config_and_the_heads(backbone_dir, tmp_path):
    out = tmp_path / "model"
    train.main(
        tiny_args(backbone_dir, out, "--head_hidden_size", "8", "--head_activation", "tanh", "--max_steps", "1",
                  "--eval_strategy", "no", "--save_strategy", "no", "--load_best_model_at_end", "false")
    )  # fmt: skip
    config = json.loads((out / "config.json").read_text())
    assert (config["head_hidden_size"], config["head_activation"]) == (8, "tanh")
    model = MultiTaskModel.from_pretrained(out)
    assert any(isinstance(m, torch.nn.Tanh) for m in model.heads["topic"].modules())


def test_training_length_is_the_default_at_inference(backbone_dir, tmp_path):
    out = tmp_path / "model"
    train.main(
        tiny_args(backbone_dir, out, "--max_seq_length", "12", "--max_steps", "1", "--eval_strategy", "no",
                  "--save_strategy", "no", "--load_best_model_at_end", "false")
    )  # fmt: skip
    model = MultiTaskModel.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out, config=model.config)
    assert model.config.max_seq_length == 12
    long_text = "the stock market was great " * 20  # 100 words, far above 12 tokens
    assert model.tokenize([long_text], tokenizer)["input_ids"].shape == (1, 12)  # what training saw
    assert model.tokenize([long_text], tokenizer, max_length=40)["input_ids"].shape == (1, 40)  # overridable


def test_saved_config_and_model_card_hold_no_path_of_this_machine(trained, backbone_dir):
    out, _ = trained
    shared = {name: (out / name).read_text() for name in ("config.json", "README.md")}
    for name, text in shared.items():
        for local in (backbone_dir, str(REPO), str(out), os.path.expanduser("~")):
            assert local not in text, f"{name} holds the local path {local}"
    config = json.loads(shared["config.json"])
    assert config["backbone_config"]["_name_or_path"] == Path(backbone_dir).name
    assert "data/train.jsonl" in shared["README.md"]  # data files are named relative to where they were given


def test_bundled_encoder_is_named_by_its_public_name():
    args = training_args.ModelArguments()
    model = training_run.build_model(args, training_run.model_config(args))
    assert model.config.backbone_config._name_or_path == "sentence-transformers/all-MiniLM-L6-v2"
    assert "site-packages" not in model.config.to_json_string()


def test_model_card_follows_the_hub_conventions(trained):
    out, metrics = trained
    card = ModelCard.load(out / "README.md")
    data = card.data.to_dict()
    assert (
        data["base_model"]
        == Path(json.loads((out / "config.json").read_text())["backbone_config"]["_name_or_path"]).name
    )
    assert data["license"] == "apache-2.0" and data["library_name"] == "transformers"
    results = {
        (r.dataset_config, r.dataset_split, r.metric_type): r.metric_value for r in card.data.eval_results
    }  # model-index, as the Hub reads it
    for task in TASKS:
        for split, prefix in (("validation", "eval"), ("test", "test")):
            assert results[(task, split, "accuracy")] == round(metrics[f"{prefix}_{task}_accuracy"], 4)
            assert results[(task, split, "f1")] == round(metrics[f"{prefix}_{task}_f1"], 4)


def test_task_grouped_sampler_batches_one_task_each_and_every_row_once():
    groups = [("topic",)] * 10 + [("sentiment",)] * 7 + [("topic", "sentiment")] * 3
    lengths = list(range(20))
    sampler = trainer_multitask.TaskGroupedSampler(4, groups, lengths, seed=5)
    batches = sampler.batches()
    assert sorted(i for b in batches for i in b) == list(range(20)) and list(sampler) == [i for b in batches for i in b]
    full = [b for b in batches if len(b) == 4]
    assert len(full) == 2 + 1 + 0 and batches[: len(full)] == full  # full batches first, the partial ones last
    assert all(len({groups[i] for i in b}) == 1 for b in batches)  # here each partial batch is a whole group's rest
    assert all(lengths[b[0]] >= lengths[b[-1]] for b in full)  # length-grouped within the task
    assert trainer_multitask.TaskGroupedSampler(4, groups, lengths, seed=5).batches() == batches  # (seed, epoch)
    sampler.set_epoch(1)
    assert sampler.batches() != batches


@pytest.mark.parametrize("batch_by_task", [True, False])
def test_batch_by_task_gives_every_training_batch_one_task(batch_by_task, backbone_dir, tmp_path, monkeypatch):
    rows = [json.loads(line) for line in (REPO / "data" / "train.jsonl").read_text().splitlines()[:40]]
    files = [
        f"{task}=" + write_jsonl(tmp_path / f"{task}.jsonl", [{"text": r["text"], "label": r[task]} for r in part])
        for task, part in (("topic", rows[:20]), ("sentiment", rows[20:]))
    ]
    seen = []
    compute_loss = trainer_multitask.MultiTaskTrainer.compute_loss

    def spy(self, model, inputs, *args, **kwargs):
        if model.training:
            seen.append(tuple(task for task in TASKS if (inputs[f"labels_{task}"] != -100).any()))
        return compute_loss(self, model, inputs, *args, **kwargs)

    monkeypatch.setattr(trainer_multitask.MultiTaskTrainer, "compute_loss", spy)
    extra = ["--train_file", *files, "--max_train_samples", "40", "--num_train_epochs", "2", "--per_device_train_batch_size", "4",
             "--train_sampling_strategy", "random", "--eval_strategy", "no", "--save_strategy", "no",
             "--load_best_model_at_end", "false"]  # fmt: skip
    train.main(tiny_args(backbone_dir, tmp_path / "out", *extra, *(["--batch_by_task"] if batch_by_task else [])))
    assert len(seen) == 2 * 40 // 4  # 5 + 5 full batches an epoch
    mixed = [tasks for tasks in seen if len(tasks) > 1]
    if batch_by_task:
        assert not mixed and {tasks for tasks in seen} == {("topic",), ("sentiment",)}
    else:  # the spy does see mixed batches: random batches of 2 x 20 rows are almost never all one task
        assert mixed
