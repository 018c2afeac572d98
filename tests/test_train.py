"""train.py end to end on a tiny random BERT: loss, metrics, saving, freezing, resuming, DDP, Hub push, bad data."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file
from transformers import BertConfig, BertModel, BertTokenizerFast, set_seed

import train
from multitask_data import DataError, load_split

REPO = Path(__file__).resolve().parent.parent
TASKS = {"topic": ["Finance/Tech", "Health/Lifestyle", "Entertainment/Sports"], "sentiment": ["Negative", "Positive"]}
WORDS = (
    "the a is was of and to in it for on with this that movie film stock market bank app phone health diet sleep "
    "game team win lost great bad good awful love hate price shares tech sports music show fun boring slow fast"
).split()


@pytest.fixture(scope="module")
def backbone_dir(tmp_path_factory):
    """A tiny random BERT (hidden 32, 2 layers) with a word-level vocabulary, saved like a Hub checkpoint."""
    out = tmp_path_factory.mktemp("tiny-bert")
    vocab = list(
        dict.fromkeys(
            ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, *"abcdefghijklmnopqrstuvwxyz0123456789.,!?'"]
        )
    )
    (out / "vocab.txt").write_text("\n".join(vocab) + "\n")
    # transformers 5 ignores vocab_file in the constructor; from_pretrained reads vocab.txt from the folder
    tokenizer = BertTokenizerFast.from_pretrained(out, model_max_length=64)
    assert len(tokenizer) == len(vocab)
    tokenizer.save_pretrained(out)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=64,
    )
    BertModel(config).save_pretrained(out)
    return str(out)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return str(path)


def tiny_args(backbone_dir, out, *extra):
    data = REPO / "data"
    return [
        "--backbone", backbone_dir,
        "--train_file", str(data / "train.jsonl"),
        "--validation_file", str(data / "validation.jsonl"),
        "--test_file", str(data / "test.jsonl"),
        "--max_train_samples", "64",
        "--max_eval_samples", "32",
        "--per_device_train_batch_size", "8",
        "--learning_rate", "1e-3",
        "--logging_steps", "1",
        "--output_dir", str(out),
        "--use_cpu",
        *extra,
    ]  # fmt: skip


def run_child(code, cwd):
    """Run `code` in a fresh interpreter outside the repository, offline, with the repository not importable."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.fixture(scope="module")
def trained(backbone_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "model"
    metrics = train.main(tiny_args(backbone_dir, out, "--num_train_epochs", "3"))
    return out, metrics


def test_end_to_end_loss_falls_and_metrics_saved(trained):
    out, metrics = trained
    history = [h["loss"] for h in json.loads((out / "trainer_state.json").read_text())["log_history"] if "loss" in h]
    assert len(history) >= 20
    assert sum(history[-5:]) / 5 < sum(history[:5]) / 5
    saved = json.loads((out / "all_results.json").read_text())
    for split in ("eval", "test"):
        for key in ("topic_accuracy", "topic_f1", "sentiment_accuracy", "sentiment_f1", "mean_f1", "mean_accuracy"):
            assert 0.0 <= saved[f"{split}_{key}"] <= 1.0
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
    checkpoints = sorted(out.glob("checkpoint-*"))
    assert checkpoints and (checkpoints[-1] / "modeling_multitask.py").is_file()


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
        print(json.dumps(model.predict(["the stock market was great", ""], tokenizer)))
        """,
        cwd=tmp_path,
    )
    predictions = json.loads(stdout.strip().splitlines()[-1])
    assert len(predictions) == 2
    for prediction in predictions:
        assert prediction["topic"]["label"] in TASKS["topic"]
        assert prediction["sentiment"]["label"] in TASKS["sentiment"]


def test_mixed_single_task_files(tmp_path):
    topic = write_jsonl(tmp_path / "t.jsonl", [{"text": "bank shares", "label": "Finance/Tech"}])
    sentiment = write_jsonl(tmp_path / "s.jsonl", [{"text": "awful film", "label": "Negative"}])
    both = write_jsonl(
        tmp_path / "b.jsonl", [{"text": "great game", "topic": "Entertainment/Sports", "sentiment": "Positive"}]
    )
    ds = load_split([f"topic={topic}", f"sentiment={sentiment}", both], TASKS)
    assert ds["text"] == ["bank shares", "awful film", "great game"]
    assert ds["labels_topic"] == [0, -100, 2]
    assert ds["labels_sentiment"] == [-100, 0, 1]


def test_temperature_sampling_upsamples_small_sources(tmp_path):
    big = write_jsonl(tmp_path / "big.jsonl", [{"text": f"t{i}", "label": "Negative"} for i in range(90)])
    small = write_jsonl(tmp_path / "small.jsonl", [{"text": f"s{i}", "label": "Finance/Tech"} for i in range(10)])
    entries = [f"sentiment={big}", f"topic={small}"]
    proportional = load_split(entries, TASKS)
    uniform = load_split(entries, TASKS, strategy="temperature", temperature=1e6)
    assert sum(t.startswith("s") for t in proportional["text"]) == 10
    assert sum(t.startswith("s") for t in uniform["text"]) == 50  # sizes equalised, total kept
    assert len(uniform) == 100


@pytest.mark.parametrize(
    "rows, message",
    [
        ([{"text": "x", "topic": "Sports", "sentiment": "Positive"}], "bad.jsonl:1: unknown topic label 'Sports'; allowed: ['Finance/Tech'"),
        ([{"txt": "x", "topic": "Finance/Tech"}], "bad.jsonl:1: no 'text' column"),
        ([{"text": "ok", "topic": "Finance/Tech"}, {"text": "  ", "topic": "Finance/Tech"}], "bad.jsonl:2: text is '  '; expected a non-empty string"),
        ([{"text": "x", "topic": "Finance/Tech", "genre": "news"}], "bad.jsonl:1: column(s) ['genre'] are not tasks of the model"),
    ],
)  # fmt: skip
def test_bad_rows_name_file_line_and_value(tmp_path, rows, message):
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(DataError) as info:
        load_split([path], TASKS)
    assert message in str(info.value)


def test_bad_files(tmp_path):
    malformed = tmp_path / "m.jsonl"
    malformed.write_text('{"text": "a", "topic": "Finance/Tech"}\n{"text": "b", \n')
    with pytest.raises(DataError, match=r"m.jsonl:2: malformed JSON"):
        load_split([str(malformed)], TASKS)
    with pytest.raises(DataError, match=r"nope.jsonl: file not found"):
        load_split([str(tmp_path / "nope.jsonl")], TASKS)
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(DataError, match=r"empty.jsonl: no examples \(the file is empty\)"):
        load_split([str(tmp_path / "empty.jsonl")], TASKS)
    with pytest.raises(
        DataError, match=r"unknown task 'genre' in TASK=PATH; the model's tasks are \['topic', 'sentiment'\]"
    ):
        load_split([f"genre={malformed}"], TASKS)
    latin1 = tmp_path / "l.jsonl"
    latin1.write_bytes('{"text": "caf\xe9", "topic": "Finance/Tech"}\n'.encode("latin-1"))
    with pytest.raises(DataError, match=r"l.jsonl:1: not valid UTF-8"):
        load_split([str(latin1)], TASKS)
    semicolon = tmp_path / "s.csv"
    semicolon.write_text("text;topic\nhello;Finance/Tech\n")
    with pytest.raises(
        DataError, match=r"s.csv:1: header 'text;topic' is one column; the file seems to use another delimiter"
    ):
        load_split([str(semicolon)], TASKS)
    bom = tmp_path / "bom.csv"
    bom.write_text("\ufefftext,topic\nhello,Finance/Tech\n", encoding="utf-8")
    assert load_split([str(bom)], TASKS)["labels_topic"] == [0]


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
    initial = train.build_model(train.ModelArguments(backbone=backbone_dir), TASKS).state_dict()
    final = load_file(out / "model.safetensors")
    frozen_prefixes = ("backbone.embeddings.", "backbone.encoder.layer.0.", "heads.sentiment.")
    for name, value in final.items():
        if name.startswith(frozen_prefixes):
            assert torch.equal(value, initial[name]), f"{name} changed although frozen"
    for name in ("backbone.encoder.layer.1.attention.self.query.weight", "heads.topic.out_proj.weight"):
        assert not torch.equal(final[name], initial[name]), f"{name} did not train"


def test_parameter_groups_layerwise_decay_and_head_lr(backbone_dir):
    model = train.build_model(train.ModelArguments(backbone=backbone_dir), TASKS)
    groups = train.parameter_groups(model, lr=1.0, weight_decay=0.0, decay_names=set(), head_lr=5.0, layer_decay=0.5)
    rate = {id(p): g["lr"] for g in groups for p in g["params"]}
    assert rate[id(model.heads["topic"].out_proj.weight)] == 5.0
    assert rate[id(model.backbone.encoder.layer[1].output.dense.weight)] == 0.5
    assert rate[id(model.backbone.encoder.layer[0].output.dense.weight)] == 0.25
    assert rate[id(model.backbone.embeddings.word_embeddings.weight)] == 0.125
    train.freeze(model, backbone=True)
    groups = train.parameter_groups(model, lr=1.0, weight_decay=0.0, decay_names=set())
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


def test_accelerate_two_processes(backbone_dir, tmp_path):
    # single-task files mixed: with batches of 4, some batches hold no label of one task (its head gets a zero
    # gradient, which DDP must accept)
    rows = [json.loads(line) for line in (REPO / "data" / "train.jsonl").read_text().splitlines()[:80]]
    topic = write_jsonl(tmp_path / "t.jsonl", [{"text": r["text"], "label": r["topic"]} for r in rows[:40]])
    sentiment = write_jsonl(tmp_path / "s.jsonl", [{"text": r["text"], "label": r["sentiment"]} for r in rows[40:]])
    out = tmp_path / "ddp"
    args = tiny_args(backbone_dir, out, "--max_steps", "4", "--per_device_train_batch_size", "4")
    args[args.index("--train_file") + 1] = f"topic={topic}"
    args.insert(args.index("--train_file") + 2, f"sentiment={sentiment}")
    launch = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--cpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
    ]
    launch += ["--mixed_precision", "no", "--dynamo_backend", "no", str(REPO / "train.py")]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(launch + args, capture_output=True, text=True, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 4


def test_csv_and_parquet_files(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    csv_path = tmp_path / "d.csv"
    csv_path.write_text(
        'text,topic,sentiment\n"shares rose, again",Finance/Tech,Positive\nawful diet,Health/Lifestyle,\n'
    )
    parquet_path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"text": ["great game"], "label": ["Positive"]}), parquet_path)
    ds = load_split([str(csv_path), f"sentiment={parquet_path}"], TASKS)
    assert ds["text"] == ["shares rose, again", "awful diet", "great game"]
    assert ds["labels_topic"] == [0, 1, -100]
    assert ds["labels_sentiment"] == [1, -100, 1]
    pq.write_table(pa.table({"text": ["x"], "label": ["Neutral"]}), tmp_path / "bad.parquet")
    with pytest.raises(DataError, match=r"bad.parquet: row 1: unknown sentiment label 'Neutral'"):
        load_split([f"sentiment={tmp_path / 'bad.parquet'}"], TASKS)


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
