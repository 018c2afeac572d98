"""Robustness options of train.py on a tiny random BERT: named evaluation sets (reported in the metrics, the results
table, all_results.json and the model card), best-model selection over them, label smoothing and WiSE-FT."""

import json
import os

import numpy as np
import pytest
import torch
from helpers import REPO, TASKS, tiny_args, write_jsonl
from huggingface_hub import ModelCard
from safetensors.torch import load_file
from transformers import set_seed

import modeling_multitask
import train
import trainer_multitask
import training_args
from modeling_multitask import MultiTaskModel


def other_source_entries(tmp_path):
    """An 'ood' evaluation set as two single-task files (TASK=PATH entries) made from the bundled test split."""
    rows = [json.loads(line) for line in (REPO / "data" / "test.jsonl").read_text().splitlines()[:32]]
    return [
        f"ood:{task}={write_jsonl(tmp_path / f'{task}_ood.jsonl', [{'text': r['text'], 'label': r[task]} for r in rows])}"
        for task in TASKS
    ]


def eval_history(out):
    """The evaluations logged during training: one dict per logged entry that holds an eval_* metric."""
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    return [h for h in history if any(k.startswith("eval_") for k in h)]


def test_named_evaluation_sets_are_reported_everywhere(backbone_dir, tmp_path):
    out = tmp_path / "named"
    options = ["--max_train_samples", "32", "--num_train_epochs", "2", "--eval_file", *other_source_entries(tmp_path)]
    metrics = train.main(tiny_args(backbone_dir, out, *options))
    for name in ("validation", "ood"):  # each set's figures per task, and their mean
        for metric in ("accuracy", "f1"):
            per_task = [metrics[f"eval_{name}_{task}_{metric}"] for task in TASKS]
            assert metrics[f"eval_{name}_mean_{metric}"] == pytest.approx(np.mean(per_task)), (name, metric)
    assert "eval_topic_accuracy" not in metrics  # with named sets every set is named, the validation set too
    # the selection metric: every set weighted alike (default --selection_sets: all)
    mean = (metrics["eval_validation_mean_f1"] + metrics["eval_ood_mean_f1"]) / 2
    assert metrics["eval_mean_f1"] == pytest.approx(mean)
    saved = json.loads((out / "all_results.json").read_text())
    assert saved == pytest.approx({k: v for k, v in metrics.items() if k in saved}) and "eval_ood_topic_f1" in saved
    # during training too: each evaluation logs each set, then the selection metric that picks the best model
    selections = [h for h in eval_history(out) if "eval_mean_f1" in h]
    assert len(selections) == 3  # two epochs and the final evaluation
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["best_metric"] == max(h["eval_mean_f1"] for h in selections[:2])
    card = ModelCard.load(out / "README.md")
    results = {(r.dataset_config, r.dataset_split, r.metric_type): r.metric_value for r in card.data.eval_results}
    for task in TASKS:
        for split, prefix in (("validation", "eval_validation"), ("ood", "eval_ood"), ("test", "test")):
            assert results[(task, split, "accuracy")] == round(metrics[f"{prefix}_{task}_accuracy"], 4)
    text = (out / "README.md").read_text()
    assert "| ood | topic |" in text and "| validation | sentiment |" in text and "| test | topic |" in text
    assert "- evaluation set `ood`: `ood:topic=topic_ood.jsonl`" not in text  # the set's name is said once
    assert "- evaluation set `ood`: `topic=topic_ood.jsonl`, `sentiment=sentiment_ood.jsonl`" in text
    assert str(tmp_path) not in text  # no path of this machine in the card (the command names the files' names)
    assert "--eval_file ood:topic=topic_ood.jsonl" in text
    record = json.loads((out / "run.json").read_text())  # resume fingerprint: the files by content
    assert [e.split("#")[0] for e in record["eval_file"]] == [
        "ood:topic=topic_ood.jsonl",
        "ood:sentiment=sentiment_ood.jsonl",
    ]
    assert not any(e.endswith("#missing") for e in record["eval_file"])


def test_selection_sets_from_an_arguments_file(backbone_dir, tmp_path):
    data = REPO / "data"
    args = {
        "backbone": backbone_dir,
        "train_file": [str(data / "train.jsonl")],
        "validation_file": [str(data / "validation.jsonl")],
        "eval_file": other_source_entries(tmp_path),
        "test_file": [],
        "selection_sets": "ood",
        "max_train_samples": 32,
        "max_eval_samples": 16,
        "num_train_epochs": 2,
        "per_device_train_batch_size": 8,
        "learning_rate": 1e-3,
        "output_dir": str(tmp_path / "out"),
        "use_cpu": True,
    }
    (tmp_path / "args.json").write_text(json.dumps(args))
    metrics = train.main([str(tmp_path / "args.json")])
    assert metrics["eval_mean_f1"] == metrics["eval_ood_mean_f1"] != metrics["eval_validation_mean_f1"]
    selections = [h for h in eval_history(tmp_path / "out") if "eval_mean_f1" in h]
    ood = [h["eval_ood_mean_f1"] for h in eval_history(tmp_path / "out") if "eval_ood_mean_f1" in h]
    assert [h["eval_mean_f1"] for h in selections] == ood


def test_results_table_has_a_row_per_named_set_and_task():
    metrics = {
        f"{p}_{t}_{m}": 0.5 for p in ("eval_validation", "eval_ood", "test") for t in TASKS for m in ("accuracy", "f1")
    }
    rows = trainer_multitask.results_table(metrics, TASKS, ["validation", "ood"]).splitlines()[2:]
    assert [r.split(" | ")[0:2] for r in rows] == [
        ["| validation", "topic"], ["| validation", "sentiment"], ["| ood", "topic"], ["| ood", "sentiment"],
        ["| test", "topic"], ["| test", "sentiment"],
    ]  # fmt: skip


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--eval_file", "ood"], "--eval_file ood: expected NAME:PATH or NAME:TASK=PATH"),
        (["--eval_file", "validation:x.jsonl"], "the set 'validation' is --validation_file's"),
        (
            ["--selection_sets", "ood"],
            "--selection_sets 'ood': unknown set(s) ['ood']; the evaluation sets are ['validation']",
        ),
        (["--wise_ft_alpha", "1.5"], "--wise_ft_alpha must be in [0, 1], got 1.5"),
        (["--label_smoothing_factor", "1"], "--label_smoothing_factor must be in [0, 1), got 1"),
    ],
)
def test_bad_robustness_options_are_one_line_errors_that_write_nothing(extra, message, backbone_dir, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(training_args.ArgumentError) as info:
        train.main(tiny_args(backbone_dir, out, *extra))
    assert message in str(info.value) and "\n" not in str(info.value)
    assert not out.exists()


def test_label_smoothing_by_hand():
    logits, labels, eps = torch.tensor([[2.0, -1.0, 0.5], [0.0, 1.0, 3.0]]), torch.tensor([0, -100]), 0.3
    log_p = torch.log_softmax(logits[0], dim=-1)
    by_hand = -(1 - eps) * log_p[0] - eps * log_p.mean()  # the target: 1 - eps + eps/3 on label 0, eps/3 elsewhere
    smoothed = modeling_multitask.task_loss(logits, labels, label_smoothing=eps)
    assert smoothed.item() == pytest.approx(by_hand.item(), rel=1e-6)
    assert smoothed.item() > modeling_multitask.task_loss(logits, labels).item() == pytest.approx(-log_p[0].item())


def test_label_smoothing_factor_smooths_the_training_loss_only(backbone_dir, tmp_path):
    """TrainingArguments' --label_smoothing_factor is Trainer's only for a `labels` input; ours are per task."""
    model = MultiTaskModel.from_backbone(backbone_dir, tasks=TASKS)
    args = training_args.MultiTaskTrainingArguments(
        output_dir=str(tmp_path), label_smoothing_factor=0.2, use_cpu=True, eval_strategy="no", report_to="none"
    )
    trainer = trainer_multitask.MultiTaskTrainer(model=model, args=args)
    inputs = {"input_ids": torch.randint(5, 90, (4, 7)), "attention_mask": torch.ones(4, 7, dtype=torch.long),
              "labels_topic": torch.tensor([0, 2, -100, 1]), "labels_sentiment": torch.tensor([-100, 1, 0, -100])}  # fmt: skip
    model.train()
    torch.manual_seed(0)  # the same dropout masks in both forward passes
    loss = trainer.compute_loss(model, inputs)
    torch.manual_seed(0)
    logits = model(**{k: v for k, v in inputs.items() if not k.startswith("labels_")}).logits
    expected = sum(
        model.config.loss_weights[task]
        * modeling_multitask.task_loss(logits[task], inputs[f"labels_{task}"], label_smoothing=0.2)
        for task in TASKS
    )
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    torch.manual_seed(0)
    assert abs(loss.item() - model(**inputs).loss.item()) > 1e-4  # not the plain cross-entropy
    model.eval()  # evaluation reports the plain cross-entropy
    assert trainer.compute_loss(model, inputs).item() == pytest.approx(model(**inputs).loss.item(), rel=1e-6)


def initial_weights(backbone_dir):
    set_seed(42)  # train.main seeds the same way before building the model, so this rebuilds its initial weights
    return MultiTaskModel.from_backbone(backbone_dir, tasks=TASKS).state_dict()


def test_wise_ft_interpolates_the_encoder_only(backbone_dir):
    model = MultiTaskModel.from_backbone(backbone_dir, tasks=TASKS)
    pretrained = {name: t.clone() for name, t in model.encoder_state_dict().items()}
    assert pretrained and all(name.startswith("backbone.") for name in pretrained)
    with torch.no_grad():  # "fine-tuning": every weight moves
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    tuned = {name: t.clone() for name, t in model.state_dict().items()}

    def interpolated(alpha):
        model.load_state_dict(tuned)
        trainer_multitask.wise_ft(model, pretrained, alpha)
        return {name: t.clone() for name, t in model.state_dict().items()}

    at_0, at_1 = interpolated(0.0), interpolated(1.0)
    for name, value in tuned.items():
        if name.startswith("backbone."):
            assert torch.equal(at_0[name], pretrained[name])
        else:
            assert torch.equal(at_0[name], value)  # heads stay as trained
        assert torch.equal(at_1[name], value)
    half = interpolated(0.5)["backbone.encoder.layer.0.output.dense.weight"]
    start = pretrained["backbone.encoder.layer.0.output.dense.weight"]
    np.testing.assert_allclose(half, (start + tuned["backbone.encoder.layer.0.output.dense.weight"]) / 2, atol=1e-6)
    with pytest.raises(ValueError, match="alpha must be in"):
        trainer_multitask.wise_ft(model, pretrained, 1.5)


def test_wise_ft_alpha_0_saves_the_pretrained_encoder_with_trained_heads(backbone_dir, tmp_path):
    out = tmp_path / "wise"
    train.main(tiny_args(backbone_dir, out, "--max_steps", "4", "--wise_ft_alpha", "0", "--save_strategy", "no",
                         "--eval_strategy", "no"))  # fmt: skip
    initial, final = initial_weights(backbone_dir), load_file(out / "model.safetensors")
    assert all(torch.equal(final[name], initial[name]) for name in final if name.startswith("backbone."))
    assert not torch.equal(final["heads.topic.out_proj.weight"], initial["heads.topic.out_proj.weight"])
    assert json.loads((out / "training_args.json").read_text())["wise_ft_alpha"] == 0.0
    assert os.path.isfile(out / "config.json")


def test_wise_ft_0_8_is_the_default_and_interpolates_the_saved_encoder(backbone_dir, tmp_path):
    """Defaults: the saved encoder is lerp(initial, fine-tuned, 0.8), the fine-tuned one being the last checkpoint's
    raw weights (no best-model reload here); the heads are the checkpoint's, untouched."""
    out = tmp_path / "default"
    train.main(tiny_args(backbone_dir, out, "--max_steps", "4", "--save_steps", "4", "--eval_strategy", "no",
                         "--load_best_model_at_end", "false", "--keep_checkpoints"))  # fmt: skip
    assert json.loads((out / "training_args.json").read_text())["wise_ft_alpha"] == 0.8
    initial, final = initial_weights(backbone_dir), load_file(out / "model.safetensors")
    tuned = load_file(out / "checkpoint-4" / "model.safetensors")
    encoder = [name for name in final if name.startswith("backbone.") and final[name].is_floating_point()]
    assert encoder and all(torch.equal(final[n], torch.lerp(initial[n], tuned[n], 0.8)) for n in encoder)
    assert any(not torch.equal(final[n], tuned[n]) for n in encoder)  # it did move back towards the initial encoder
    heads = [name for name in final if name.startswith("heads.")]
    assert heads and all(torch.equal(final[n], tuned[n]) for n in heads)
