"""Options that earn their place (issue 28, part 3): the options whose comparison was measured and lost are gone
from the command line; a model saved with one of them still loads and predicts where its weights fit, and is refused
in one line naming the setting where they do not; the bundled data is the default only when no data file is given."""

import json
import shutil

import pytest
from helpers import REPO, tiny_args, write_jsonl
from tokenizers import Regex, normalizers
from transformers import HfArgumentParser, TokenizersBackend

import train
import training_args
from configuration_multitask import MultiTaskConfig
from modeling_multitask import load_saved_model, load_saved_tokenizer

REMOVED = {
    "--text_normalization": "ptb",
    "--weight_averaging": "ema",
    "--ema_decay": "0.9",
    "--swa_start": "0.5",
    "--linear_probe_epochs": "1",
    "--task_layers": "1",
    "--task_sampling": "temperature",
    "--sampling_temperature": "2",
}
TEXTS = ["the stock doesn't rise", "a great game", "the movie cannot be fun"]


def test_help_lists_no_removed_option():
    parser = HfArgumentParser(
        (training_args.ModelArguments, training_args.DataArguments, training_args.MultiTaskTrainingArguments)
    )
    text = parser.format_help()
    kept = ["--wise_ft_alpha", "--batch_by_task", "--distill_weight", "--add_tasks", "--freeze_layers",
            "--head_learning_rate", "--layerwise_lr_decay"]  # fmt: skip
    assert all(option in text for option in kept)
    assert [option for option in REMOVED if option in text] == []


@pytest.mark.parametrize("option", list(REMOVED))
def test_a_removed_option_is_refused_in_one_line_and_writes_nothing(option, backbone_dir, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(training_args.ArgumentError) as info:
        train.main(tiny_args(backbone_dir, out, option, REMOVED[option]))
    assert option in str(info.value) and "\n" not in str(info.value)
    assert not out.exists()


def saved_copy(saved_tiny_model, tmp_path, **changes):
    """A copy of the saved tiny model whose config.json has `changes` (None: the key removed), as an older version
    of this code wrote it."""
    _, _, directory = saved_tiny_model
    copy = tmp_path / "model"
    shutil.copytree(directory, copy)
    config = json.loads((copy / "config.json").read_text())
    for key, value in changes.items():
        config.pop(key, None) if value is None else config.__setitem__(key, value)
    (copy / "config.json").write_text(json.dumps(config, indent=2))
    return copy


@pytest.mark.parametrize("task_layers", [0, None])
def test_a_config_dict_with_task_layers_0_or_without_it_builds_as_before(bert_config, task_layers):
    by_hand = {**MultiTaskConfig(backbone_config=bert_config).to_dict(), "task_layers": task_layers}
    config = MultiTaskConfig.from_dict(by_hand)
    assert "task_layers" not in config.to_dict() and list(config.tasks) == ["topic", "sentiment"]
    with pytest.raises(ValueError, match=r"^task_layers 2: this setting was removed \(last in commit 1c682d9\)"):
        MultiTaskConfig.from_dict({**by_hand, "task_layers": 2})


@pytest.mark.parametrize("task_layers", [0, None])
def test_a_saved_model_with_task_layers_0_loads_and_predicts_as_before(saved_tiny_model, tmp_path, caplog, task_layers):
    model, tokenizer, _ = saved_tiny_model
    copy = saved_copy(saved_tiny_model, tmp_path, task_layers=task_layers)
    loaded = load_saved_model(copy)
    assert "newer version" not in caplog.text  # a setting of an older version, not an unknown one
    assert loaded.predict(TEXTS, tokenizer) == model.eval().predict(TEXTS, tokenizer)


def test_a_saved_model_with_task_layers_is_refused_in_one_line_naming_the_setting(
    saved_tiny_model, tmp_path, monkeypatch, capsys
):
    copy = saved_copy(saved_tiny_model, tmp_path, task_layers=1)
    before = {p.name: p.read_bytes() for p in copy.iterdir()}
    with pytest.raises(ValueError) as info:
        load_saved_model(copy)
    message = str(info.value)
    assert message == (
        f"{copy}: its config.json has task_layers 1, a setting this version removed (last in commit 1c682d9); its "
        "weights do not fit this model (only task_layers 0 loads)"
    )
    out = tmp_path / "continued"  # train.py: the same line, as its one-line error
    monkeypatch.setattr("sys.argv", ["train.py", "--model_name_or_path", str(copy), "--output_dir", str(out)])
    with pytest.raises(SystemExit) as exit_info:
        train.cli()
    assert str(exit_info.value) == f"error: {message}"
    assert not out.exists() and {p.name: p.read_bytes() for p in copy.iterdir()} == before


def test_a_saved_tokenizer_with_the_ptb_normaliser_still_loads_and_normalises(saved_tiny_model, tmp_path):
    """What `--text_normalization ptb` saved: a TokenizersBackend whose tokenizer.json has the regex normaliser in
    front of the encoder's own. It needs no code of this repository to load: it loads, and still normalises."""
    model, tokenizer, _ = saved_tiny_model
    copy = saved_copy(saved_tiny_model, tmp_path)
    backend = tokenizer.backend_tokenizer.__class__.from_str(tokenizer.backend_tokenizer.to_str())
    ptb = [(r"(?i)(?<=[a-z])n['’]t(?![a-z])", " n't"), (r"(?i)(?<=\bcan)not\b", " not")]
    backend.normalizer = normalizers.Sequence(
        [*(normalizers.Replace(Regex(pattern), to) for pattern, to in ptb), backend.normalizer]
    )
    TokenizersBackend(tokenizer_object=backend, model_max_length=64, **tokenizer.special_tokens_map).save_pretrained(
        copy
    )
    assert json.loads((copy / "tokenizer_config.json").read_text())["tokenizer_class"] == "TokenizersBackend"
    loaded = load_saved_model(copy)
    saved_tokenizer = load_saved_tokenizer(copy, loaded.config)
    assert saved_tokenizer("doesn't cannot")["input_ids"] == saved_tokenizer("does n't can not")["input_ids"]
    predictions = loaded.predict(TEXTS, saved_tokenizer)
    assert len(predictions) == 3 and all(set(p) == {"topic", "sentiment"} for p in predictions)
    # a text the normaliser leaves alone is read as before
    assert loaded.predict(TEXTS[1:2], saved_tokenizer) == model.eval().predict(TEXTS[1:2], tokenizer)


def data_files(argv):
    _, data_args, _, _ = training_args.parse_args(argv)
    return data_args.train_file, data_args.validation_file, data_args.test_file


def test_the_bundled_data_is_the_default_only_when_no_data_file_is_given(tmp_path):
    bundled = [[str(REPO / "data" / f"{split}.jsonl")] for split in ("train", "validation", "test")]
    assert list(data_files(["--output_dir", str(tmp_path / "a")])) == bundled
    mine = str(tmp_path / "mine.jsonl")
    assert data_files(["--train_file", mine, "--output_dir", str(tmp_path / "b")]) == ([mine], [], [])
    assert data_files(["--train_file", mine, "--test_file", mine]) == ([mine], [], [mine])
    assert data_files(["--eval_file", f"ood:{mine}", "--train_file", mine]) == ([mine], [], [])
    assert (
        training_args.parse_args({"test_file": []})[1].train_file == bundled[0]
    )  # an empty split is no data file given


@pytest.mark.parametrize("flag", ["--validation_file", "--test_file", "--eval_file"])
def test_data_without_training_data_is_refused_in_one_line(flag, tmp_path, monkeypatch):
    entry = str(REPO / "data" / "validation.jsonl")
    out = tmp_path / "out"
    argv = ["train.py", flag, f"ood:{entry}" if flag == "--eval_file" else entry, "--output_dir", str(out)]
    monkeypatch.setattr("sys.argv", argv)
    with pytest.raises(SystemExit) as exit_info:
        train.cli()
    assert str(exit_info.value) == (
        "error: --train_file not given: the bundled data is the default only when no data file is given at all; "
        "give your training data with --train_file"
    )
    assert not out.exists()


def test_an_emotion_only_model_trains_on_its_own_files_alone(backbone_dir, tmp_path):
    """The issue's new user: one multi-label task, its own train and validation files; the bundled test file (with
    topic and sentiment columns) is not read."""
    rows = [{"text": t, "labels": labels} for t, labels in
            [("what a joy", ["joy"]), ("so angry now", ["anger"]), ("joy and anger", ["joy", "anger"]),
             ("nothing", [])] * 4]  # fmt: skip
    train_path, dev_path = write_jsonl(tmp_path / "train.jsonl", rows), write_jsonl(tmp_path / "dev.jsonl", rows)
    out = tmp_path / "emotion"
    metrics = train.main(
        ["--backbone", backbone_dir, "--tasks", '{"emotion": {"labels": ["joy", "anger"], "multi_label": true}}',
         "--train_file", f"emotion={train_path}", "--validation_file", f"emotion={dev_path}", "--max_steps", "2",
         "--per_device_train_batch_size", "8", "--use_cpu", "--output_dir", str(out)]
    )  # fmt: skip
    assert "eval_emotion_f1" in metrics and not any(key.startswith("test_") for key in metrics)
    assert "- test: none" in (out / "README.md").read_text()
    assert load_saved_model(out).config.tasks == {"emotion": ["joy", "anger"]}
