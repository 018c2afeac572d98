import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModel, AutoTokenizer

import modeling_multitask
from configuration_multitask import DEFAULT_TASKS, MultiTaskConfig
from modeling_multitask import IGNORE_INDEX, MultiTaskModel, pool

REPO_ROOT = Path(__file__).resolve().parent.parent
POOLING_MODES = ["mean", "cls", "max"]
THREE_TASKS = {"topic": ["tech", "health", "sports"], "sentiment": ["neg", "pos"], "urgency": ["low", "mid", "high"]}
SENTENCES = [
    "the stock market was very bad today",
    "i love this movie",
    "the doctor said sleep and food are good for health",
    "we lost the match",
]
# Fixed inputs shared by the parent and the remote-code child: row 0 is padded.
INPUT_IDS = [[2, 10, 11, 12, 3, 0, 0], [2, 20, 21, 22, 23, 24, 3]]
ATTENTION_MASK = [[1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1, 1]]


def build_model(backbone_config, seed=0, **config_kwargs):
    torch.manual_seed(seed)
    return MultiTaskModel(MultiTaskConfig(backbone_config=backbone_config, **config_kwargs)).eval()


def random_batch(batch=3, seq=6, seed=1):
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(5, 99, (batch, seq), generator=generator)
    attention_mask = torch.ones(batch, seq, dtype=torch.long)
    attention_mask[0, seq - 2 :] = 0  # one padded row
    return {"input_ids": input_ids, "attention_mask": attention_mask}


# ----- forward: shapes, pooling, loss ---------------------------------------------------------------------------


@pytest.mark.parametrize("pooling", POOLING_MODES)
def test_forward_shapes(backbone_config, pooling):
    model = build_model(backbone_config, pooling=pooling)
    out = model(**random_batch(batch=3))
    assert list(out.logits) == ["topic", "sentiment"]
    assert out.logits["topic"].shape == (3, 3)
    assert out.logits["sentiment"].shape == (3, 2)
    assert out.embeddings.shape == (3, 32)
    assert out.loss is None and out.task_losses is None


def test_three_tasks_with_head_hidden_layer(backbone_config):
    model = build_model(backbone_config, tasks=THREE_TASKS, head_hidden_size=8, head_activation="relu")
    labels = {"labels_topic": torch.tensor([0, 1, 2]), "labels_sentiment": torch.tensor([1, 0, 1])}
    out = model(**random_batch(batch=3), **labels, labels_urgency=torch.tensor([2, -100, 0]))
    assert {task: tuple(logits.shape) for task, logits in out.logits.items()} == {
        "topic": (3, 3),
        "sentiment": (3, 2),
        "urgency": (3, 3),
    }
    assert set(out.task_losses) == set(THREE_TASKS)
    assert torch.isfinite(out.loss)


def test_pool_by_hand():
    hidden = torch.tensor(
        [
            [[1.0, 2.0], [3.0, -4.0], [100.0, 100.0]],  # last token is padding
            [[-1.0, 5.0], [50.0, 50.0], [50.0, 50.0]],  # only the first token is real
        ]
    )  # (batch=2, seq=3, hidden=2)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    torch.testing.assert_close(pool(hidden, mask, "mean"), torch.tensor([[2.0, -1.0], [-1.0, 5.0]]))
    torch.testing.assert_close(pool(hidden, mask, "max"), torch.tensor([[3.0, 2.0], [-1.0, 5.0]]))
    torch.testing.assert_close(pool(hidden, mask, "cls"), torch.tensor([[1.0, 2.0], [-1.0, 5.0]]))
    with pytest.raises(ValueError, match="unknown pooling mode 'sum'"):
        pool(hidden, mask, "sum")


@pytest.mark.parametrize("pooling", POOLING_MODES)
def test_embeddings_do_not_depend_on_padding(backbone_config, tiny_tokenizer, pooling):
    model = build_model(backbone_config, pooling=pooling)
    short, long = "i love this movie", "the stock market was very bad today and the bank lost money"
    alone = tiny_tokenizer([short], return_tensors="pt")
    padded = tiny_tokenizer([short, long], padding=True, return_tensors="pt")
    assert padded["attention_mask"][0].sum() < padded["attention_mask"].shape[1]  # the short one really is padded
    with torch.no_grad():
        emb_alone = model(**alone).embeddings[0]
        emb_padded = model(**padded).embeddings[0]
    torch.testing.assert_close(emb_padded, emb_alone, atol=1e-5, rtol=0)


def test_masked_weighted_loss_by_hand(backbone_config):
    weights = {"topic": 0.5, "sentiment": 2.0}
    model = build_model(backbone_config, loss_weights=weights)  # eval(): dropout off
    topic = torch.tensor([0, IGNORE_INDEX, 2, 1])
    sentiment = torch.tensor([IGNORE_INDEX, 1, 0, IGNORE_INDEX])
    out = model(**random_batch(batch=4), labels_topic=topic, labels_sentiment=sentiment)

    def masked_ce(logits, labels):
        rows = labels != IGNORE_INDEX
        log_probs = logits[rows].log_softmax(dim=-1)  # (labelled, n_labels)
        return -log_probs[torch.arange(int(rows.sum())), labels[rows]].mean()

    expected = {
        "topic": masked_ce(out.logits["topic"], topic),
        "sentiment": masked_ce(out.logits["sentiment"], sentiment),
    }
    for task in expected:
        torch.testing.assert_close(out.task_losses[task], expected[task])
    torch.testing.assert_close(out.loss, 0.5 * expected["topic"] + 2.0 * expected["sentiment"])


def test_task_without_any_label_in_batch(backbone_config):
    model = build_model(backbone_config)
    out = model(
        **random_batch(batch=3),
        labels_topic=torch.tensor([0, 1, 2]),
        labels_sentiment=torch.full((3,), IGNORE_INDEX),
    )
    assert out.task_losses["sentiment"].item() == 0.0
    assert torch.isfinite(out.loss)
    torch.testing.assert_close(out.loss, out.task_losses["topic"])
    out.loss.backward()
    for name, param in model.heads["sentiment"].named_parameters():
        assert param.grad is not None and torch.count_nonzero(param.grad) == 0, name
    assert all(torch.count_nonzero(param.grad) > 0 for param in model.heads["topic"].parameters())


def test_task_losses_only_for_given_labels(backbone_config):
    model = build_model(backbone_config, tasks=THREE_TASKS, loss_weights={"sentiment": 3.0})
    out = model(**random_batch(batch=2), labels_sentiment=torch.tensor([0, 1]))
    assert list(out.task_losses) == ["sentiment"]
    torch.testing.assert_close(out.loss, 3.0 * out.task_losses["sentiment"])


def test_label_kwarg_that_is_none_means_no_label(distilbert_config):
    model = build_model(distilbert_config)
    out = model(**random_batch(), labels_topic=None)
    assert out.loss is None and out.task_losses is None
    out = model(**random_batch(), labels_topic=None, labels_sentiment=torch.tensor([0, 1, 1]))
    assert list(out.task_losses) == ["sentiment"]


@pytest.mark.parametrize("kwarg", ["labels_xxx", "labels", "topic", "label_topic"])
def test_unknown_label_kwarg_raises(distilbert_config, kwarg):
    model = build_model(distilbert_config)
    message = f"unexpected keyword argument(s) ['{kwarg}']; task labels are ['labels_topic', 'labels_sentiment']"
    with pytest.raises(TypeError, match=re.escape(message)):
        model(**random_batch(), **{kwarg: torch.tensor([0, 1, 1])})


def test_token_type_ids_accepted(backbone_config):
    model = build_model(backbone_config)
    batch = random_batch()
    zeros, ones = torch.zeros_like(batch["input_ids"]), torch.ones_like(batch["input_ids"])
    with torch.no_grad():
        plain = model(**batch).embeddings
        with_zeros = model(**batch, token_type_ids=zeros).embeddings
        with_ones = model(**batch, token_type_ids=ones).embeddings
    assert torch.equal(with_zeros, plain)
    if backbone_config.model_type == "distilbert":
        assert torch.equal(with_ones, plain)  # DistilBERT has no segment embeddings: ignored
    else:
        assert not torch.allclose(with_ones, plain)  # BERT uses them


# ----- save / load ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("pooling", POOLING_MODES)
def test_save_and_load_round_trip(backbone_config, tmp_path, pooling):
    model = build_model(backbone_config, pooling=pooling, tasks=THREE_TASKS, head_hidden_size=8)
    model.save_pretrained(tmp_path)
    loaded = MultiTaskModel.from_pretrained(tmp_path).eval()

    batch = random_batch()
    with torch.no_grad():
        expected, actual = model(**batch), loaded(**batch)
    for task in THREE_TASKS:
        assert torch.equal(actual.logits[task], expected.logits[task])
    assert torch.equal(actual.embeddings, expected.embeddings)
    assert loaded.config.tasks == THREE_TASKS and list(loaded.config.tasks) == list(THREE_TASKS)
    assert loaded.config.pooling == pooling
    assert type(loaded.backbone) is type(model.backbone)


def test_saved_files(backbone_config, tmp_path):
    build_model(backbone_config).save_pretrained(tmp_path)
    files = {path.name for path in tmp_path.iterdir()}
    assert {"config.json", "model.safetensors", "configuration_multitask.py", "modeling_multitask.py"} <= files
    assert not [name for name in files if name.endswith((".bin", ".pt", ".pth", ".pkl", ".ckpt"))]
    config = MultiTaskConfig.from_pretrained(tmp_path)
    assert config.auto_map == {
        "AutoConfig": "configuration_multitask.MultiTaskConfig",
        "AutoModel": "modeling_multitask.MultiTaskModel",
    }
    assert config.architectures == ["MultiTaskModel"]


def set_distinctive_weights(model):
    """Values no initialiser produces, so a load that re-initialises anything shows up."""
    with torch.no_grad():
        model.heads["topic"].out_proj.weight.fill_(0.123)
        model.heads["topic"].out_proj.bias.fill_(0.7)
        model.backbone.embeddings.LayerNorm.weight.fill_(0.5)
        model.backbone.embeddings.LayerNorm.bias.fill_(0.25)
    return model


CHILD_SCRIPT = """
import importlib.util
import sys
from pathlib import Path

repo, out_dir, *named_dirs = sys.argv[1:]  # named_dirs: name=model_dir
# The repository must not be importable here: the model has to come from the files saved next to the weights.
assert all(Path(p or ".").resolve() != Path(repo) for p in sys.path), sys.path
assert importlib.util.find_spec("modeling_multitask") is None
assert importlib.util.find_spec("configuration_multitask") is None

import torch
from safetensors.torch import save_file
from transformers import AutoConfig, AutoModel

input_ids = torch.tensor({input_ids})
attention_mask = torch.tensor({attention_mask})
for name, model_dir in (arg.split("=", 1) for arg in named_dirs):
    config = AutoConfig.from_pretrained(model_dir, trust_remote_code=True)
    model = AutoModel.from_pretrained(model_dir, trust_remote_code=True).eval()
    assert type(config).__name__ == "MultiTaskConfig", type(config)
    assert type(model).__module__.startswith("transformers_modules."), type(model).__module__
    with torch.no_grad():
        out = model(input_ids=input_ids, attention_mask=attention_mask)
    tensors = {{"embeddings": out.embeddings}}
    tensors.update({{f"logits.{{task}}": logits for task, logits in out.logits.items()}})
    tensors.update({{f"state.{{name}}": value.contiguous() for name, value in model.state_dict().items()}})
    save_file(tensors, str(Path(out_dir) / f"{{name}}.safetensors"))
"""


@pytest.fixture(scope="module")
def remote_code_run(tmp_path_factory, make_backbone_config):
    """Save one tiny model per backbone, then load them all in ONE fresh Python process with
    `AutoModel.from_pretrained(..., trust_remote_code=True)` (one interpreter start keeps the suite fast)."""
    models = {}
    for name in ["distilbert", "bert"]:
        model = set_distinctive_weights(build_model(make_backbone_config(name), pooling="mean"))
        model_dir = tmp_path_factory.mktemp(name) / "model"
        model.save_pretrained(model_dir)
        models[name] = (model, model_dir)

    child_dir = tmp_path_factory.mktemp("child")  # not the repo: cwd and the script's directory
    script = child_dir / "load_remote_code.py"
    script.write_text(CHILD_SCRIPT.format(input_ids=INPUT_IDS, attention_mask=ATTENTION_MASK))
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": "",
        "HF_MODULES_CACHE": str(tmp_path_factory.mktemp("hf_modules")),  # keep the user's cache clean
    }
    result = subprocess.run(
        [
            sys.executable,
            str(script),
            str(REPO_ROOT),
            str(child_dir),
            *(f"{name}={d}" for name, (_, d) in models.items()),
        ],
        cwd=child_dir,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return {name: (*saved, load_file(child_dir / f"{name}.safetensors")) for name, saved in models.items()}


@pytest.mark.parametrize("name", ["distilbert", "bert"])
def test_trust_remote_code_in_fresh_process(remote_code_run, name):
    model, _, child = remote_code_run[name]
    with torch.no_grad():
        out = model(input_ids=torch.tensor(INPUT_IDS), attention_mask=torch.tensor(ATTENTION_MASK))
    for task in DEFAULT_TASKS:
        assert torch.equal(child[f"logits.{task}"], out.logits[task]), task
    assert torch.equal(child["embeddings"], out.embeddings)


@pytest.mark.parametrize("name", ["distilbert", "bert"])
def test_loaded_weights_are_not_reinitialised(remote_code_run, name):
    model, model_dir, child = remote_code_run[name]
    expected = model.state_dict()
    assert torch.all(expected["heads.topic.out_proj.weight"] == 0.123)

    loaded = MultiTaskModel.from_pretrained(model_dir).state_dict()
    assert loaded.keys() == expected.keys()
    assert [key for key in expected if not torch.equal(loaded[key], expected[key])] == []

    remote = {key.removeprefix("state."): value for key, value in child.items() if key.startswith("state.")}
    assert remote.keys() == expected.keys()
    assert [key for key in expected if not torch.equal(remote[key], expected[key])] == []


# ----- from_backbone --------------------------------------------------------------------------------------------


def test_from_backbone_local_checkpoint(backbone_config, tmp_path):
    torch.manual_seed(0)
    backbone = AutoModel.from_config(backbone_config)
    backbone.save_pretrained(tmp_path / "backbone")

    model = MultiTaskModel.from_backbone(str(tmp_path / "backbone"), tasks=THREE_TASKS, pooling="cls")
    expected, actual = backbone.state_dict(), model.backbone.state_dict()
    # the encoder's own pooler (BERT) is left out: the model pools itself
    assert actual.keys() == {key for key in expected if not key.startswith("pooler.")}
    assert all(torch.equal(actual[key], expected[key]) for key in actual)
    assert not hasattr(model.backbone, "pooler") or model.backbone.pooler is None
    assert type(model.config.backbone_config) is type(backbone_config)
    assert model.config.pooling == "cls" and model.config.tasks == THREE_TASKS
    assert {task: head.out_proj.out_features for task, head in model.heads.items()} == {
        "topic": 3,
        "sentiment": 2,
        "urgency": 3,
    }

    # and the result saves and reloads like any other model
    model.eval().save_pretrained(tmp_path / "multitask")
    loaded = MultiTaskModel.from_pretrained(tmp_path / "multitask").eval()
    batch = random_batch()
    with torch.no_grad():
        assert torch.equal(loaded(**batch).logits["urgency"], model(**batch).logits["urgency"])


def test_from_backbone_builds_no_random_encoder(backbone_config, tmp_path, monkeypatch):
    AutoModel.from_config(backbone_config).save_pretrained(tmp_path / "backbone")

    def no_random_encoder(*args, **kwargs):
        raise AssertionError("from_backbone built a random encoder")

    monkeypatch.setattr(modeling_multitask.AutoModel, "from_config", no_random_encoder)
    model = MultiTaskModel.from_backbone(str(tmp_path / "backbone"), backbone_name="org/tiny-encoder")
    assert model.backbone.config is model.config.backbone_config  # one config object
    assert model.config.backbone_config._name_or_path == "org/tiny-encoder"


def test_transformers_composite_conventions(backbone_config):
    assert MultiTaskConfig.sub_configs == {"backbone_config": AutoConfig}
    model = MultiTaskModel(MultiTaskConfig(backbone_config=backbone_config))
    assert model.base_model is model.backbone  # base_model_prefix names the attribute that holds the encoder


@pytest.mark.slow  # the bundled encoder (the tiny one: test_from_backbone_local_checkpoint)
def test_from_backbone_bundled_encoder(bundled_encoder_path):
    model = MultiTaskModel.from_backbone(bundled_encoder_path)
    # the weights file itself, so nothing in transformers' loading path can hide a re-initialisation
    reference = load_file(os.path.join(bundled_encoder_path, "model.safetensors"))
    reference = {k: v for k, v in reference.items() if not k.startswith("pooler.") and k != "embeddings.position_ids"}
    actual = model.backbone.state_dict()
    assert set(reference) <= actual.keys()
    assert all(torch.equal(actual[key], reference[key]) for key in reference)
    assert model.config.tasks == DEFAULT_TASKS
    assert model.heads["topic"].out_proj.in_features == model.config.hidden_size == 384


# ----- encode / predict -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("pooling", POOLING_MODES)
def test_encode(backbone_config, tiny_tokenizer, pooling):
    model = build_model(backbone_config, pooling=pooling)
    embeddings = model.encode(SENTENCES, tiny_tokenizer, batch_size=3)
    assert embeddings.shape == (len(SENTENCES), 32)
    one_by_one = torch.cat([model.encode([text], tiny_tokenizer) for text in SENTENCES])
    torch.testing.assert_close(embeddings, one_by_one, atol=1e-5, rtol=0)

    normalized = model.encode(SENTENCES, tiny_tokenizer, normalize=True)
    torch.testing.assert_close(normalized.norm(dim=-1), torch.ones(len(SENTENCES)))
    torch.testing.assert_close(normalized, F.normalize(embeddings, dim=-1), atol=1e-5, rtol=0)


def test_encode_keeps_training_mode(distilbert_config, tiny_tokenizer):
    model = build_model(distilbert_config).train()
    first = model.encode(SENTENCES, tiny_tokenizer)
    assert model.training
    assert torch.equal(model.encode(SENTENCES, tiny_tokenizer), first)  # dropout was off while encoding


def test_predict(backbone_config, tiny_tokenizer):
    model = build_model(backbone_config)
    predictions = model.predict(SENTENCES, tiny_tokenizer)
    assert len(predictions) == len(SENTENCES)
    for prediction in predictions:
        assert list(prediction) == ["topic", "sentiment"]
        for task, labels in DEFAULT_TASKS.items():
            assert prediction[task]["label"] in labels
            assert 0.0 <= prediction[task]["score"] <= 1.0


def test_predict_top_k(distilbert_config, tiny_tokenizer):
    model = build_model(distilbert_config)
    top1 = model.predict(SENTENCES, tiny_tokenizer)
    for prediction, best in zip(model.predict(SENTENCES, tiny_tokenizer, top_k=2), top1, strict=True):
        for task in DEFAULT_TASKS:
            ranked = prediction[task]
            assert isinstance(ranked, list) and len(ranked) == 2
            assert ranked[0]["score"] >= ranked[1]["score"]
            assert ranked[0]["label"] != ranked[1]["label"]
            assert ranked[0] == best[task]
        # sentiment has only 2 labels: its two scores are the whole distribution
        assert sum(item["score"] for item in prediction["sentiment"]) == pytest.approx(1.0)


LONG_TEXT = "the team lost the match and the bank lost money " * 8  # ~80 tokens > 64


@pytest.mark.parametrize("text", ["😀🔥👍", "i love it 😀", LONG_TEXT], ids=["emoji", "mixed", "long"])
def test_predict_edge_case_texts(backbone_config, tiny_tokenizer, text, caplog):
    assert len(tiny_tokenizer(LONG_TEXT)["input_ids"]) > 64
    model = build_model(backbone_config)
    with caplog.at_level(logging.WARNING, logger="modeling_multitask"):
        (prediction,) = model.predict([text], tiny_tokenizer)
        embeddings = model.encode([text, "i love this movie"], tiny_tokenizer)
    assert prediction["topic"]["label"] in DEFAULT_TASKS["topic"]
    assert torch.isfinite(embeddings).all()
    truncation_warnings = [r for r in caplog.records if "truncated to 64" in r.getMessage()]
    if text is LONG_TEXT:
        assert truncation_warnings and truncation_warnings[0].name == "modeling_multitask"
        assert f"text of {len(LONG_TEXT)} characters" in truncation_warnings[0].getMessage()
    else:
        assert not truncation_warnings


def test_predict_rejects_non_strings(distilbert_config, tiny_tokenizer):
    model = build_model(distilbert_config)
    with pytest.raises(TypeError, match=r"texts\[2\] is int \(42\); every text must be a str"):
        model.predict(["a", "b", 42], tiny_tokenizer)
    with pytest.raises(TypeError, match=r"texts\[0\] is NoneType"):
        model.encode([None], tiny_tokenizer)


def test_predict_accepts_a_single_string(distilbert_config, tiny_tokenizer):
    model = build_model(distilbert_config)
    assert model.predict("i love this movie", tiny_tokenizer) == model.predict(["i love this movie"], tiny_tokenizer)


@pytest.mark.parametrize("pooling", POOLING_MODES)
def test_prediction_does_not_depend_on_batch(backbone_config, tiny_tokenizer, pooling):
    model = build_model(backbone_config, pooling=pooling)
    text = "i love this movie"
    batch = [SENTENCES[0], "a", text, LONG_TEXT, "ok"]
    (alone,) = model.predict([text], tiny_tokenizer, top_k=3)
    in_batch = model.predict(batch, tiny_tokenizer, top_k=3, batch_size=2)[2]
    for task in DEFAULT_TASKS:
        assert [item["label"] for item in in_batch[task]] == [item["label"] for item in alone[task]]
        for got, want in zip(in_batch[task], alone[task], strict=True):
            assert got["score"] == pytest.approx(want["score"], abs=1e-5)


# ----- parity with sentence-transformers (the bundled all-MiniLM-L6-v2) -----------------------------------------


@pytest.mark.slow  # the bundled encoder, twice
def test_encode_matches_sentence_transformers(bundled_encoder_path):
    from sentence_transformers import SentenceTransformer

    texts = [
        "The stock market fell sharply after the earnings report.",
        "I absolutely loved this film!",
        "Doctors recommend eight hours of sleep 😴",
        "ok",
        "A much longer sentence, with punctuation; numbers like 42 and 3.14, and MIXED case words.",
    ]
    model = MultiTaskModel.from_backbone(bundled_encoder_path, pooling="mean")
    tokenizer = AutoTokenizer.from_pretrained(bundled_encoder_path)
    ours = model.encode(texts, tokenizer, normalize=True)
    reference = SentenceTransformer(bundled_encoder_path, device="cpu").encode(texts, normalize_embeddings=True)
    torch.testing.assert_close(ours, torch.from_numpy(reference), atol=1e-5, rtol=0)


# ----- activation (gradient) checkpointing ----------------------------------------------------------------------


@pytest.mark.parametrize("method", ["activation_checkpointing_enable", "gradient_checkpointing_enable"])
def test_gradient_checkpointing(backbone_config, method):
    batch = random_batch()
    labels = {"labels_topic": torch.tensor([0, 1, 2]), "labels_sentiment": torch.tensor([1, -100, 0])}

    def grads(model):
        torch.manual_seed(123)  # same dropout masks in both runs (checkpointing replays the RNG state)
        model(**batch, **labels).loss.backward()
        return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    reference = grads(build_model(backbone_config).train())
    model = build_model(backbone_config).train()
    if method == "gradient_checkpointing_enable":  # transformers 5: deprecated alias, still works
        with pytest.warns(FutureWarning, match="activation_checkpointing_enable"):
            getattr(model, method)()
    else:
        getattr(model, method)()
    assert model.is_activation_checkpointing
    layers = [m for m in model.backbone.modules() if hasattr(m, "gradient_checkpointing")]
    assert layers and all(m.gradient_checkpointing for m in layers)

    checkpointed = grads(model)
    assert checkpointed.keys() == reference.keys()
    assert any(name.startswith("backbone.") for name in checkpointed)
    for name in reference:
        torch.testing.assert_close(checkpointed[name], reference[name], msg=name)


def test_roberta_family_backbone_round_trip(tmp_path):
    """Any encoder AutoModel.from_config builds: a tiny RoBERTa (no token_type_ids use, position offset)."""
    from transformers import RobertaConfig

    backbone = RobertaConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                             intermediate_size=37, max_position_embeddings=66)  # fmt: skip
    torch.manual_seed(0)
    model = MultiTaskModel(MultiTaskConfig(backbone_config=backbone)).eval()
    batch = {"input_ids": torch.randint(3, 99, (2, 9)), "attention_mask": torch.ones(2, 9, dtype=torch.long)}
    with torch.no_grad():
        out = model(**batch)
    assert out.logits["topic"].shape == (2, 3) and out.embeddings.shape == (2, 32)
    model.save_pretrained(tmp_path)
    loaded = MultiTaskModel.from_pretrained(tmp_path).eval()
    assert type(loaded.config.backbone_config) is RobertaConfig
    with torch.no_grad():
        assert torch.equal(loaded(**batch).logits["sentiment"], out.logits["sentiment"])
