"""Partial sharing (`task_layers`): each task its own copy of the encoder's top layers, on the shared lower ones.

The copies start as the pretrained blocks (so before training every task sees the full pretrained encoder), take the
attention mask the encoder prepared (padding changes nothing), save and reload, and are part of the encoder for
WiSE-FT, freezing, LP-FT and layer-wise learning-rate decay; train.py trains such a model (tests/test_train.py: and
refuses to continue it with another --task_layers)."""

import json

import pytest
import torch
from helpers import tiny_args
from transformers import AutoModel, AutoTokenizer

import onnx_multitask
import train
from configuration_multitask import DEFAULT_TASKS, MultiTaskConfig
from modeling_multitask import MultiTaskModel, pool
from trainer_multitask import LinearProbeCallback, freeze, parameter_groups, wise_ft

SENTENCES = ["i love this movie", "the stock market was very bad today and the bank lost money"]


def features_seen_by_heads(model, batch):
    """`{task: the pooled features its head received}` in one forward pass."""
    seen = {}
    hooks = [
        head.register_forward_hook(lambda module, args, output, task=task: seen.__setitem__(task, args[0]))
        for task, head in model.heads.items()
    ]
    try:
        with torch.no_grad():
            output = model(**batch)
    finally:
        for hook in hooks:
            hook.remove()
    return seen, output


def saved_backbone(backbone_config, directory):
    torch.manual_seed(0)
    backbone = AutoModel.from_config(backbone_config).eval()
    backbone.save_pretrained(directory)
    return backbone


def test_every_task_starts_from_the_whole_pretrained_encoder(backbone_config, tiny_tokenizer, tmp_path):
    backbone = saved_backbone(backbone_config, tmp_path / "backbone")
    model = MultiTaskModel.from_backbone(str(tmp_path / "backbone"), task_layers=1).eval()
    batch = tiny_tokenizer(SENTENCES, padding=True, return_tensors="pt")
    with torch.no_grad():
        whole = pool(backbone(**batch).last_hidden_state, batch["attention_mask"], "mean")
        below_top = pool(
            backbone(**batch, output_hidden_states=True).hidden_states[-2], batch["attention_mask"], "mean"
        )
    seen, output = features_seen_by_heads(model, batch)
    assert list(seen) == list(DEFAULT_TASKS)
    for task in DEFAULT_TASKS:
        torch.testing.assert_close(seen[task], whole, atol=1e-6, rtol=0)
    # the shared part is the encoder without its top block, and `embeddings` are its pooled output
    torch.testing.assert_close(output.embeddings, below_top, atol=1e-6, rtol=0)
    assert not torch.allclose(output.embeddings, whole)
    depth = backbone_config.num_hidden_layers
    assert len(model.encoder_depths()) == depth
    assert [len(d) for d in model.encoder_depths()] == [1] * (depth - 1) + [len(DEFAULT_TASKS)]
    assert model.task_layers["topic"][0] is not model.task_layers["sentiment"][0]  # copies, not one shared block


def test_bundled_encoder_with_two_task_layers(bundled_encoder_path):
    tokenizer = AutoTokenizer.from_pretrained(bundled_encoder_path)
    batch = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    encoder = AutoModel.from_pretrained(bundled_encoder_path).eval()
    with torch.no_grad():
        whole = pool(encoder(**batch).last_hidden_state, batch["attention_mask"], "mean")
    model = MultiTaskModel.from_backbone(bundled_encoder_path, task_layers=2).eval()
    assert len(model.backbone.encoder.layer) == 4
    assert all(len(branch) == 2 for branch in model.task_layers.values())
    seen, _ = features_seen_by_heads(model, batch)
    for task in DEFAULT_TASKS:
        torch.testing.assert_close(seen[task], whole, atol=1e-5, rtol=0)


def test_padding_changes_nothing(backbone_config, tiny_tokenizer):
    torch.manual_seed(0)
    model = MultiTaskModel(MultiTaskConfig(backbone_config=backbone_config, task_layers=1)).eval()
    alone = tiny_tokenizer(SENTENCES[:1], return_tensors="pt")
    padded = tiny_tokenizer(SENTENCES, padding=True, return_tensors="pt")
    assert padded["attention_mask"][0].sum() < padded["attention_mask"].shape[1]
    with torch.no_grad():
        a, p = model(**alone), model(**padded)
    for task in DEFAULT_TASKS:
        torch.testing.assert_close(p.logits[task][0], a.logits[task][0], atol=1e-5, rtol=0)


def test_save_and_reload(backbone_config, tmp_path):
    torch.manual_seed(0)
    model = MultiTaskModel(MultiTaskConfig(backbone_config=backbone_config, task_layers=1)).eval()
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["task_layers"] == 1
    loaded = MultiTaskModel.from_pretrained(tmp_path).eval()
    assert loaded.state_dict().keys() == model.state_dict().keys()
    assert any(key.startswith("task_layers.sentiment.0.") for key in loaded.state_dict())
    assert all(torch.equal(loaded.state_dict()[k], t) for k, t in model.state_dict().items())
    ids = torch.randint(5, 99, (3, 6))
    with torch.no_grad():
        for task in DEFAULT_TASKS:
            assert torch.equal(loaded(input_ids=ids).logits[task], model(input_ids=ids).logits[task])


@pytest.mark.parametrize("value", [-1, 2, 1.0, True])
def test_config_refuses_bad_values(bert_config, value):
    with pytest.raises(ValueError, match="task_layers"):
        MultiTaskConfig(backbone_config=bert_config, task_layers=value)  # the tiny BERT has 2 layers


def test_gradients_reach_each_tasks_own_layers_only_from_its_loss(bert_config):
    torch.manual_seed(0)
    model = MultiTaskModel(MultiTaskConfig(backbone_config=bert_config, task_layers=1)).train()
    ids = torch.randint(5, 99, (4, 6))
    model(input_ids=ids, labels_topic=torch.tensor([0, 1, 2, 0])).loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.task_layers["topic"].parameters())
    assert all(p.grad is None for p in model.task_layers["sentiment"].parameters())
    assert all(p.grad is not None for p in model.backbone.encoder.layer.parameters())


def test_wise_ft_freezing_and_learning_rates_cover_the_task_layers(bert_config):
    torch.manual_seed(0)
    model = MultiTaskModel(MultiTaskConfig(backbone_config=bert_config, task_layers=1))
    start = {name: t.clone() for name, t in model.encoder_state_dict().items()}
    assert any(name.startswith("task_layers.topic.") for name in start)
    assert not any(name.startswith("heads.") for name in start)
    heads = {name: t.clone() for name, t in model.heads.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5)
    trained = {name: t.clone() for name, t in model.encoder_state_dict().items()}
    wise_ft(model, start, 0.0)  # alpha 0: the encoder as it started, task layers included; heads as trained
    assert all(torch.equal(t, start[name]) for name, t in model.encoder_state_dict().items())
    assert all(torch.equal(t, heads[name] + 0.5) for name, t in model.heads.state_dict().items())
    wise_ft(model, {name: t.clone() for name, t in trained.items()}, 1.0)
    assert all(torch.equal(t, start[name]) for name, t in model.encoder_state_dict().items())

    # layer-wise decay: each task's copy of the top block learns at the top block's rate
    groups = parameter_groups(model, 1e-4, 0.0, set(), layer_decay=0.5)
    rate = {id(p): group["lr"] for group in groups for p in group["params"]}
    top = {rate[id(p)] for branch in model.task_layers.values() for p in branch.parameters()}
    lower = {rate[id(p)] for p in model.backbone.encoder.layer.parameters()}
    assert top == {1e-4 * 0.5} and lower == {1e-4 * 0.5**2}

    # --freeze_layers 2 (the whole depth) freezes every task's top block; --freeze_layers 1 only the shared one
    frozen = freeze(model, layers=1)
    assert frozen and all(name.startswith("backbone.") for name in frozen)
    assert all(p.requires_grad for p in model.task_layers.parameters())
    freeze(model, layers=2)
    assert not any(p.requires_grad for p in model.task_layers.parameters())


def test_linear_probe_freezes_the_task_layers_too(bert_config):
    model = MultiTaskModel(MultiTaskConfig(backbone_config=bert_config, task_layers=1))
    probe = LinearProbeCallback(epochs=1.0)

    class State:
        epoch = 0.0

    probe.on_train_begin(None, State(), None, model=model)
    assert not any(p.requires_grad for p in model.task_layers.parameters())
    assert all(p.requires_grad for p in model.heads.parameters())
    probe.on_train_end(None, State(), None)
    assert all(p.requires_grad for p in model.parameters())


def test_add_task_copies_the_first_tasks_layers(bert_config):
    torch.manual_seed(0)
    model = MultiTaskModel(MultiTaskConfig(backbone_config=bert_config, task_layers=1)).eval()
    model.add_task("urgency", ["low", "high"])
    assert list(model.task_layers) == [*DEFAULT_TASKS, "urgency"]
    new, first = model.task_layers["urgency"].state_dict(), model.task_layers["topic"].state_dict()
    assert all(torch.equal(new[k], first[k]) for k in first)
    assert model.task_layers["urgency"][0] is not model.task_layers["topic"][0]
    with torch.no_grad():
        assert model(input_ids=torch.randint(5, 99, (2, 5))).logits["urgency"].shape == (2, 2)


def test_onnx_export_matches_pytorch(bert_config, tiny_tokenizer, tmp_path):
    bert_config.max_position_embeddings = 512
    torch.manual_seed(0)
    model = MultiTaskModel(MultiTaskConfig(backbone_config=bert_config, task_layers=1)).eval()
    model.save_pretrained(tmp_path)
    tiny_tokenizer.save_pretrained(tmp_path)
    onnx_multitask.export(tmp_path)
    onnx_model = onnx_multitask.OnnxMultiTaskModel.from_pretrained(tmp_path)
    texts = ["the movie was good", "stock market price " * 10, "bad food"]
    got, expected = onnx_model.predict(texts, tiny_tokenizer), model.predict(texts, tiny_tokenizer)
    for g, e in zip(got, expected, strict=True):
        for task in DEFAULT_TASKS:
            assert g[task]["label"] == e[task]["label"]
            assert abs(g[task]["score"] - e[task]["score"]) <= 1e-4


def test_train_py_trains_a_partly_shared_model(backbone_dir, tmp_path):
    metrics = train.main(tiny_args(backbone_dir, tmp_path / "run", "--task_layers", "1", "--num_train_epochs", "1"))
    assert "test_mean_f1" in metrics
    saved = MultiTaskModel.from_pretrained(tmp_path / "run")
    assert saved.config.task_layers == 1 and len(saved.backbone.encoder.layer) == 1
    start = MultiTaskModel.from_backbone(backbone_dir, task_layers=1)
    # trained (and WiSE-FT 0.8 towards the copies they started from): each task's layer moved its own way
    topic, sentiment, pretrained = (m.state_dict() for m in (*saved.task_layers.values(), start.task_layers["topic"]))
    key = "0.attention.self.query.weight"
    assert not torch.equal(topic[key], pretrained[key]) and not torch.equal(sentiment[key], pretrained[key])
    assert not torch.equal(topic[key], sentiment[key])
