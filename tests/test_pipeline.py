"""The `multitask-classification` pipeline: in-process behaviour, `save_pipeline`, and loading the saved directory with
`pipeline(model=DIR, trust_remote_code=True)` in a fresh process that cannot import this repository."""

import json
import os
import subprocess
import sys

import pytest
from helpers import TASKS

from pipeline_multitask import TASK, MultiTaskClassificationPipeline, custom_pipelines, save_pipeline

# Edge cases included: characters outside the vocabulary, a text longer than the 64 positions.
TEXTS = ["the movie was good", "😀 i love it!", "stock market price " * 30, "bad food", "the team lost the match"]


def assert_same_predictions(actual, expected, atol=1e-5):
    """Same structure and labels; scores within `atol`."""
    if isinstance(expected, list):
        assert isinstance(actual, list) and len(actual) == len(expected)
        for a, e in zip(actual, expected, strict=True):
            assert_same_predictions(a, e, atol)
    elif "label" in expected:
        assert actual["label"] == expected["label"]
        assert actual["score"] == pytest.approx(expected["score"], abs=atol)
    else:
        assert list(actual) == list(expected)
        for task in expected:
            assert_same_predictions(actual[task], expected[task], atol)


@pytest.fixture
def saved_model(tmp_path, bert_config, tiny_tokenizer, make_tiny_model):
    model = make_tiny_model(bert_config)
    directory = tmp_path / "model"
    model.save_pretrained(directory)
    tiny_tokenizer.save_pretrained(directory)
    return model, directory


def test_pipeline_matches_model_predict(make_tiny_model, backbone_config, tiny_tokenizer):
    model = make_tiny_model(backbone_config)
    pipe = MultiTaskClassificationPipeline(model=model, tokenizer=tiny_tokenizer, device="cpu")
    expected = model.predict(TEXTS, tiny_tokenizer)
    assert len({p["topic"]["label"] for p in expected}) > 1, "a test where every text gets one label proves little"
    assert_same_predictions(pipe(TEXTS[0]), expected[0])
    assert_same_predictions(pipe(TEXTS, batch_size=4), expected)
    assert_same_predictions(pipe(TEXTS, top_k=2), model.predict(TEXTS, tiny_tokenizer, top_k=2))


def test_top_k_above_the_number_of_labels_gives_every_label(make_tiny_model, bert_config, tiny_tokenizer):
    model = make_tiny_model(bert_config)
    pipe = MultiTaskClassificationPipeline(model=model, tokenizer=tiny_tokenizer, device="cpu")
    result = pipe("the movie was good", top_k=10)
    for task, labels in TASKS.items():
        scores = [entry["score"] for entry in result[task]]
        assert sorted(entry["label"] for entry in result[task]) == sorted(labels)
        assert scores == sorted(scores, reverse=True)
        assert sum(scores) == pytest.approx(1.0, abs=1e-6)


def test_bad_inputs(make_tiny_model, bert_config, tiny_tokenizer):
    pipe = MultiTaskClassificationPipeline(model=make_tiny_model(bert_config), tokenizer=tiny_tokenizer, device="cpu")
    with pytest.raises(TypeError, match=r"^input is int \(5\); expected a str or a list of str$"):
        pipe(5)
    with pytest.raises(ValueError, match=r"^top_k must be a positive int, got 0$"):
        pipe("good", top_k=0)


def test_save_pipeline_adds_only_custom_pipelines(saved_model):
    model, directory = saved_model
    before = json.loads((directory / "config.json").read_text())
    assert "custom_pipelines" not in before

    save_pipeline(directory, model)

    after = json.loads((directory / "config.json").read_text())
    assert after.pop("custom_pipelines") == {
        TASK: {"impl": "pipeline_multitask.MultiTaskClassificationPipeline", "pt": ["AutoModel"], "type": "text"}
    }
    assert after == before
    assert (directory / "pipeline_multitask.py").is_file()
    assert sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp")) == []
    # The model's own config carries the entry too, so a later save (e.g. Trainer.push_to_hub's) keeps it.
    model.save_pretrained(directory)
    assert json.loads((directory / "config.json").read_text())["custom_pipelines"] == custom_pipelines()


def test_save_pipeline_writes_what_pipeline_save_pretrained_writes(saved_model, tiny_tokenizer, tmp_path):
    model, directory = saved_model
    save_pipeline(directory)
    MultiTaskClassificationPipeline(model=model, tokenizer=tiny_tokenizer, device="cpu").save_pretrained(
        tmp_path / "by_transformers"
    )
    ours = json.loads((directory / "config.json").read_text())
    theirs = json.loads((tmp_path / "by_transformers" / "config.json").read_text())
    assert ours["custom_pipelines"] == theirs["custom_pipelines"]
    assert ours["auto_map"] == theirs["auto_map"]


def test_save_pipeline_needs_a_saved_model(tmp_path):
    with pytest.raises(FileNotFoundError, match="save the model"):
        save_pipeline(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match=r"has no auto_map\['AutoModel'\]"):
        save_pipeline(tmp_path)


CHILD = """
import importlib.util, json, os, sys
assert os.environ["PYTHONPATH"] == ""
for name in ("pipeline_multitask", "modeling_multitask", "configuration_multitask"):
    assert importlib.util.find_spec(name) is None, f"{name} is importable: the test would not test remote code"
from transformers import pipeline
pipe = pipeline(model=sys.argv[1], trust_remote_code=True)
assert type(pipe).__module__.startswith("transformers_modules."), type(pipe).__module__
assert type(pipe.model).__module__.startswith("transformers_modules."), type(pipe.model).__module__
texts = json.loads(sys.stdin.read())
print(json.dumps({"one": pipe(texts[0]), "batched": pipe(texts, batch_size=2), "top_k": pipe(texts, top_k=2)}))
"""


def test_saved_pipeline_loads_in_a_fresh_process_without_the_repo(saved_model, tiny_tokenizer, tmp_path):
    model, directory = saved_model
    save_pipeline(directory, model)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {
        **os.environ,
        "PYTHONPATH": "",
        "HF_HUB_OFFLINE": "1",
        "HF_MODULES_CACHE": str(tmp_path / "modules"),
        "TRANSFORMERS_VERBOSITY": "error",
    }
    child = subprocess.run(
        [sys.executable, "-c", CHILD, str(directory)],
        input=json.dumps(TEXTS),
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert child.returncode == 0, child.stderr
    got = json.loads(child.stdout)

    expected = model.predict(TEXTS, tiny_tokenizer)
    assert_same_predictions(got["one"], expected[0])
    assert_same_predictions(got["batched"], expected)
    assert_same_predictions(got["top_k"], model.predict(TEXTS, tiny_tokenizer, top_k=2))
