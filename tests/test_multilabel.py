"""Multi-label tasks beside single-label ones (issue 12): the config's task kinds and thresholds, the loss, decoding,
reading multi-label data, threshold tuning, the metrics, train.py and predict.py end to end, the pipeline and the ONNX
model, and adding a task to a trained model."""

import json
import shutil

import numpy as np
import pytest
import torch
from helpers import REPO, TASKS, tiny_args, write_jsonl
from transformers import AutoTokenizer, pipeline
from transformers.trainer_utils import EvalPrediction

import predict
import train
import training_args
from configuration_multitask import MultiTaskConfig
from modeling_multitask import MultiTaskModel, task_loss
from multitask_data import DataError, label_counts, load_split
from onnx_multitask import OnnxMultiTaskModel, output_names
from trainer_multitask import best_thresholds, distillation_loss, make_compute_metrics, per_label_table

# A multi-label task made from the bundled data: money (Finance/Tech), fun (Entertainment/Sports), good (Positive).
# A Health/Lifestyle sentence with a negative sentiment has none of them: `[]`.
TAGS = ["money", "fun", "good"]
MIXED = {**TASKS, "tags": TAGS}
TEXTS = ["the movie was good", "stock market price " * 30, "bad food", "the team lost the match"]


def tags_of(row):
    return [
        tag
        for tag, applies in zip(
            TAGS,
            (row["topic"] == "Finance/Tech", row["topic"] == "Entertainment/Sports", row["sentiment"] == "Positive"),
            strict=True,
        )
        if applies
    ]


def tags_file(path, split, n):
    """A single-task file of the tags task, `{"text", "labels": [...]}` as in GoEmotions, from the bundled `split`."""
    rows = [json.loads(line) for line in (REPO / "data" / f"{split}.jsonl").read_text().splitlines()[:n]]
    return write_jsonl(path, [{"text": r["text"], "labels": tags_of(r)} for r in rows])


def mixed_model(backbone_config, thresholds=None):
    torch.manual_seed(0)
    config = MultiTaskConfig(
        backbone_config=backbone_config, tasks=MIXED, multi_label_tasks=["tags"], label_thresholds=thresholds
    )
    return MultiTaskModel(config).eval()


# ----- config --------------------------------------------------------------------------------------------------------


def test_config_round_trip_with_mixed_kinds(bert_config, tmp_path):
    config = MultiTaskConfig(
        backbone_config=bert_config,
        tasks=MIXED,
        multi_label_tasks=["tags"],
        label_thresholds={"tags": [0.3, 0.5, 0.75]},
    )
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["tasks"] == [[task, labels] for task, labels in MIXED.items()]  # still pairs, in order
    assert saved["multi_label_tasks"] == ["tags"] and saved["label_thresholds"] == {"tags": [0.3, 0.5, 0.75]}
    loaded = MultiTaskConfig.from_pretrained(tmp_path)
    assert loaded.tasks == MIXED and loaded.multi_label_tasks == ["tags"]
    assert loaded.thresholds("tags") == [0.3, 0.5, 0.75]
    with pytest.raises(ValueError, match=r"has multi-label tasks \['tags'\] but \[\] were asked for"):
        MultiTaskConfig.from_pretrained(tmp_path, multi_label_tasks=[])


def test_an_old_config_json_loads_unchanged(bert_config, tmp_path):
    """A config.json written before task kinds existed: no multi_label_tasks, no label_thresholds."""
    MultiTaskConfig(backbone_config=bert_config, tasks=TASKS).save_pretrained(tmp_path)
    old = json.loads((tmp_path / "config.json").read_text())
    del old["multi_label_tasks"], old["label_thresholds"]
    (tmp_path / "config.json").write_text(json.dumps(old))
    config = MultiTaskConfig.from_pretrained(tmp_path)
    assert config.tasks == TASKS and config.multi_label_tasks == [] and config.label_thresholds == {}


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"multi_label_tasks": ["emotion"]}, "multi_label_tasks names unknown task 'emotion'; tasks are"),
        ({"multi_label_tasks": "tags"}, "multi_label_tasks must be a list of task names, got 'tags'"),
        (
            {"multi_label_tasks": ["tags"], "label_thresholds": {"topic": [0.5, 0.5, 0.5]}},
            "label_thresholds names task 'topic', which is not in multi_label_tasks",
        ),
        (
            {"multi_label_tasks": ["tags"], "label_thresholds": {"tags": [0.5]}},
            r"label_thresholds\['tags'\] must be a list of 3 thresholds \(one per label\), got \[0.5\]",
        ),
        (
            {"multi_label_tasks": ["tags"], "label_thresholds": {"tags": [0.5, 1.5, 0.5]}},
            r"label_thresholds\['tags'\] must hold numbers in \[0, 1\], got \[0.5, 1.5, 0.5\]",
        ),
        ({"tasks": {"tags": ["x"]}}, r"task 'tags' has 1 label\(s\) \['x'\]; a task needs at least 2"),
    ],
)
def test_bad_kinds_are_one_line_errors(bert_config, kwargs, message):
    with pytest.raises(ValueError, match=message) as info:
        MultiTaskConfig(backbone_config=bert_config, **{"tasks": MIXED, **kwargs})
    assert "\n" not in str(info.value)


def test_a_multi_label_task_may_have_one_label(bert_config):
    config = MultiTaskConfig(backbone_config=bert_config, tasks={"spam": ["spam"]}, multi_label_tasks=["spam"])
    assert config.thresholds("spam") == [0.5]


# ----- loss and decoding ---------------------------------------------------------------------------------------------


def test_multi_label_loss_by_hand():
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.0, 3.0, -2.0], [1.0, 1.0, 1.0]], requires_grad=True)
    labels = torch.tensor([[1.0, 0.0, 1.0], [-100.0, -100.0, -100.0], [0.0, 0.0, 0.0]])  # row 2: "none of these"
    kept = [(0, 0, 1), (0, 1, 0), (0, 2, 1), (2, 0, 0), (2, 1, 0), (2, 2, 0)]  # (row, label, target)
    by_hand = (
        sum(
            -(t * torch.log(torch.sigmoid(logits[r, j])) + (1 - t) * torch.log(1 - torch.sigmoid(logits[r, j])))
            for r, j, t in kept
        )
        / 2
    )  # summed over the labels, averaged over the 2 labelled rows (row 1 has no label)
    assert torch.allclose(task_loss(logits, labels, multi_label=True), by_hand)


def test_multi_label_loss_is_exactly_zero_and_connected_without_labels(bert_config):
    model = mixed_model(bert_config).train()
    ids = torch.tensor([[2, 10, 11, 3], [2, 12, 3, 0]])
    out = model(input_ids=ids, attention_mask=(ids > 0).long(), labels_tags=torch.full((2, 3), -100.0))
    assert out.task_losses["tags"].item() == 0.0 and str(out.task_losses["tags"].item()) == "0.0"  # not -0.0
    out.loss.backward()
    grad = model.heads["tags"].out_proj.weight.grad
    assert grad is not None and torch.count_nonzero(grad) == 0  # in the graph (DDP), with a zero gradient


def test_forward_mixes_both_kinds(bert_config):
    model = mixed_model(bert_config)
    ids = torch.tensor([[2, 10, 11, 3], [2, 12, 3, 0]])
    tags = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    out = model(input_ids=ids, attention_mask=(ids > 0).long(), labels_topic=torch.tensor([0, -100]), labels_tags=tags)
    expected_tags = torch.nn.functional.binary_cross_entropy_with_logits(out.logits["tags"], tags, reduction="sum") / 2
    expected_topic = torch.nn.functional.cross_entropy(out.logits["topic"][:1], torch.tensor([0]))
    assert torch.allclose(out.task_losses["tags"], expected_tags)
    assert torch.allclose(out.loss, expected_tags + expected_topic)


def test_decode_uses_the_thresholds(bert_config):
    model = mixed_model(bert_config, thresholds={"tags": [0.3, 0.9, 0.5]})
    # sigmoid scores: money 0.4, fun 0.8, good 0.6 (row 0); 0.2, 0.15, 0.1 (row 1)
    scores = torch.tensor([[0.4, 0.8, 0.6], [0.2, 0.15, 0.1]])
    logits = {"topic": torch.tensor([[0.0, 2.0, 1.0]] * 2), "sentiment": torch.zeros(2, 2), "tags": scores.logit()}
    rows = model.decode(logits)
    assert [item["label"] for item in rows[0]["tags"]] == ["good", "money"]  # above their thresholds, best first
    assert rows[0]["tags"][0]["score"] == pytest.approx(0.6)
    assert rows[1]["tags"] == []  # none above its threshold: an empty list
    assert rows[0]["topic"] == {"label": "Health/Lifestyle", "score": pytest.approx(0.6652, abs=1e-4)}  # unchanged
    top2 = model.decode(logits, top_k=2)
    assert [item["label"] for item in top2[1]["tags"]] == ["money", "fun"]  # the 2 best whatever the thresholds
    assert [item["label"] for item in top2[0]["tags"]] == ["fun", "good"]
    assert [item["label"] for item in top2[0]["topic"]] == ["Health/Lifestyle", "Entertainment/Sports"]
    assert isinstance(model.decode(logits, top_k=1)[0]["tags"], list)  # a multi-label result is always a list


# ----- data ----------------------------------------------------------------------------------------------------------


def test_reading_multi_label_data(tmp_path):
    jsonl = write_jsonl(
        tmp_path / "tags.jsonl",
        [{"text": "a", "labels": ["money", "good"]}, {"text": "b", "labels": []}, {"text": "c", "labels": None}],
    )
    csv_path = tmp_path / "mixed.csv"
    csv_path.write_text(
        'text,topic,tags\nd,Finance/Tech,money|good\ne,,\nf,Health/Lifestyle,[]\ng,,"[""fun""]"\n', encoding="utf-8"
    )
    ds = load_split([f"tags={jsonl}", str(csv_path)], MIXED, multi_label=["tags"])
    none = [-100.0] * 3
    assert ds["labels_tags"] == [[1, 0, 1], [0, 0, 0], none, [1, 0, 1], none, [0, 0, 0], [0, 1, 0]]
    assert ds["labels_topic"] == [-100, -100, -100, 0, -100, 1, -100]
    assert label_counts(ds, MIXED) == {"topic": 2, "sentiment": 0, "tags": 5}


@pytest.mark.parametrize(
    "content, message",
    [
        (
            '{"text": "a", "labels": ["good"]}\n{"text": "b", "labels": ["sad"]}\n',
            ":2: unknown tags label 'sad'; allowed",
        ),
        ('{"text": "a", "labels": 3}\n', ":1: tags labels are 3; expected a list of label names (or names separated"),
        ('{"text": "a", "labels": "[good"}\n', ":1: tags labels '[good' are not a JSON list"),
        ('{"text": "a", "label": ["good"], "x": 1}\n{"text": "b"}\n', ":2: no 'labels' column for task 'tags'"),
    ],
)
def test_bad_multi_label_data_is_one_line_error_with_file_and_line(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError) as info:
        load_split([f"tags={path}"], MIXED, multi_label=["tags"])
    assert str(info.value).startswith(f"{path}{message}") and "\n" not in str(info.value)


def test_csv_unknown_label_names_the_line(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("text,tags\na,money\nb,money|sports\n", encoding="utf-8")
    with pytest.raises(
        DataError, match=r"bad\.csv:3: unknown tags label 'sports'; allowed: \['money', 'fun', 'good'\]"
    ):
        load_split([str(path)], MIXED, multi_label=["tags"])


# ----- thresholds and metrics ---------------------------------------------------------------------------------------


def test_threshold_tuning_finds_a_threshold_other_than_half_and_falls_back():
    # label 0: positives score 0.30-0.45, negatives 0.05-0.20: every threshold in (0.20, 0.30] is perfect, and 0.5
    # would miss every positive; ties go to the one nearest 0.5. Label 1: 3 positives at 0.9, negatives at 0.6 and
    # 0.1: below the 10 positives needed to tune, it keeps 0.5; tuned anyway, it is 0.61.
    scores = np.array(
        [[0.3 + 0.01 * i, 0.9 if i < 3 else 0.6] for i in range(16)] + [[0.05 + 0.01 * i, 0.1] for i in range(16)]
    )
    targets = np.array([[1, int(i < 3)] for i in range(16)] + [[0, 0] for _ in range(16)])
    thresholds = best_thresholds(scores, targets)
    assert thresholds == [0.3, 0.5]
    assert best_thresholds(scores, targets, min_positives=3) == [0.3, 0.61]


def test_metrics_micro_macro_and_per_label_table():
    # labels: 4 rows x 3 labels (the last row has no label for the task); thresholds 0.5, 0.5, 0.2
    scores = np.array([[0.9, 0.1, 0.3], [0.8, 0.7, 0.1], [0.2, 0.6, 0.25], [0.9, 0.9, 0.9]], dtype=np.float32)
    labels = np.array([[1, 0, 1], [0, 1, 0], [0, 0, 1], [-100, -100, -100]], dtype=np.float32)
    topic_logits = np.array([[2.0, 0, 0], [0, 2, 0], [0, 2, 0], [0, 0, 2]], dtype=np.float32)
    topic_labels = np.array([0, 1, 0, -100])

    class Config:  # what make_compute_metrics reads from a model config
        multi_label_tasks = ["tags"]

        @staticmethod
        def thresholds(task):
            return [0.5, 0.5, 0.2]

    logits = np.log(scores / (1 - scores))
    compute = make_compute_metrics(["topic", "tags"], Config)
    metrics = compute(EvalPrediction(predictions=(topic_logits, logits), label_ids=(topic_labels, labels)))
    # predicted: [1,0,1], [1,1,0], [0,1,1]; per label (tp, fp, fn): money (1,1,0), fun (1,1,0), good (2,0,0)
    f1 = [2 / 3, 2 / 3, 1.0]
    assert metrics["tags_f1"] == pytest.approx(np.mean(f1))
    assert metrics["tags_micro_f1"] == pytest.approx(2 * 4 / (2 * 4 + 2 + 0))
    assert metrics["tags_accuracy"] == pytest.approx(1 / 3)  # exact match: row 0 only
    assert metrics["tags_f1_untuned"] == pytest.approx(np.mean([2 / 3, 2 / 3, 0.0]))  # good at 0.5: none predicted
    assert metrics["mean_f1"] == pytest.approx((metrics["topic_f1"] + metrics["tags_f1"]) / 2)
    table = per_label_table(logits, labels, TAGS, [0.5, 0.5, 0.2])
    assert table["money"] == {
        "precision": 0.5,
        "recall": 1.0,
        "f1": pytest.approx(2 / 3),
        "support": 1,
        "threshold": 0.5,
    }
    assert table["good"]["support"] == 2 and table["good"]["f1"] == 1.0 and table["good"]["threshold"] == 0.2


# ----- end to end ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def multi_label_run(backbone_dir, tmp_path_factory):
    """(output directory, metrics) of a train.py run with topic, sentiment and the multi-label tags task, whose
    training and validation files hold `labels` lists."""
    tmp = tmp_path_factory.mktemp("multilabel")
    data = REPO / "data"
    args = tiny_args(backbone_dir, tmp / "model", "--num_train_epochs", "2")
    args[args.index("--train_file") + 1 : args.index("--train_file") + 2] = [
        str(data / "train.jsonl"),
        f"tags={tags_file(tmp / 'tags_train.jsonl', 'train', 64)}",
    ]
    args[args.index("--validation_file") + 1 : args.index("--validation_file") + 2] = [
        str(data / "validation.jsonl"),
        f"tags={tags_file(tmp / 'tags_dev.jsonl', 'validation', 48)}",
    ]
    args += ["--tasks", json.dumps({**TASKS, "tags": {"labels": TAGS, "multi_label": True}})]
    return tmp / "model", train.main(args)


def test_train_with_a_multi_label_task(multi_label_run):
    out, metrics = multi_label_run
    assert {"eval_tags_f1", "eval_tags_micro_f1", "eval_tags_accuracy", "eval_tags_f1_untuned"} <= metrics.keys()
    # the tags' macro-F1 is the mean of its labels' F1 in the per-label table of the same evaluation
    per_label = json.loads((out / "per_label_results.json").read_text())
    assert metrics["eval_tags_f1"] == pytest.approx(np.mean([row["f1"] for row in per_label["eval"]["tags"].values()]))
    assert metrics["eval_mean_f1"] == pytest.approx(
        np.mean([metrics["eval_topic_f1"], metrics["eval_sentiment_f1"], metrics["eval_tags_f1"]])
    )
    config = json.loads((out / "config.json").read_text())
    assert config["multi_label_tasks"] == ["tags"] and len(config["label_thresholds"]["tags"]) == 3
    assert set(per_label) == {"eval", "test"} and list(per_label["eval"]["tags"]) == TAGS
    assert per_label["eval"]["tags"]["good"]["threshold"] == config["label_thresholds"]["tags"][2]
    assert sum(row["support"] for row in per_label["eval"]["tags"].values()) > 0
    assert "`tags` (multi-label)" in (out / "README.md").read_text()


def test_predict_py_and_the_pipeline_use_the_saved_thresholds(multi_label_run, tmp_path):
    out = tmp_path / "model"
    shutil.copytree(multi_label_run[0], out)
    model = MultiTaskModel.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out, config=model.config.backbone_config)
    # thresholds that make the answer known: money never, fun always, good as tuned
    thresholds = [1.0, 0.0, model.config.thresholds("tags")[2]]
    model.config.label_thresholds = {"tags": thresholds}
    model.save_pretrained(out)
    texts = [t for t in TEXTS if t]  # a blank text is a bad line of predict.py
    expected = model.predict(texts, tokenizer)
    assert all("fun" in [t["label"] for t in r["tags"]] and "money" not in [t["label"] for t in r["tags"]]
               for r in expected)  # fmt: skip
    (tmp_path / "in.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    assert predict.main(["--model", str(out), "--input", str(tmp_path / "in.txt"), "--output",
                         str(tmp_path / "out.jsonl")]) == 0  # fmt: skip
    written = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [[t["label"] for t in row["tags"]] for row in written] == [[t["label"] for t in r["tags"]] for r in expected]
    assert written[0]["topic"]["label"] == expected[0]["topic"]["label"]  # single-label output as before
    classify = pipeline(model=str(out), trust_remote_code=True)
    assert [[t["label"] for t in r["tags"]] for r in classify(texts)] == [
        [t["label"] for t in r["tags"]] for r in expected
    ]


def test_the_onnx_model_decodes_with_the_thresholds(bert_config, tiny_tokenizer):
    """OnnxMultiTaskModel only runs the graph; the labels come from the shared `decode`, thresholds included."""
    model = mixed_model(bert_config, thresholds={"tags": [0.0, 1.0, 0.5]})

    class Session:  # stands in for an ONNX Runtime session of the model's graph
        def get_inputs(self):
            return [type("Input", (), {"name": name}) for name in ("input_ids", "attention_mask")]

        def get_outputs(self):
            return [type("Output", (), {"name": name}) for name in output_names(model.config)]

        def run(self, names, feed):
            with torch.no_grad():
                out = model(**{k: torch.from_numpy(v) for k, v in feed.items()})
            return [*(out.logits[task].numpy() for task in model.config.tasks), out.embeddings.numpy()]

    onnx_model = OnnxMultiTaskModel(model.config, Session())
    results = onnx_model.predict(TEXTS, tiny_tokenizer)
    assert results == model.predict(TEXTS, tiny_tokenizer)
    assert all("money" in [t["label"] for t in r["tags"]] for r in results)  # threshold 0.0: always
    assert all("fun" not in [t["label"] for t in r["tags"]] for r in results)  # threshold 1.0: never


# ----- adding a task -------------------------------------------------------------------------------------------------


def test_add_task_updates_the_config_and_round_trips(saved_tiny_model, tmp_path):
    model, _, directory = saved_tiny_model
    model = MultiTaskModel.from_pretrained(directory)
    head = model.add_task("tags", TAGS, multi_label=True)
    assert list(model.config.tasks) == ["topic", "sentiment", "tags"] and model.config.multi_label_tasks == ["tags"]
    assert head.out_proj.weight.shape == (3, model.config.hidden_size) and torch.all(head.out_proj.bias == 0)
    assert 0.005 < head.out_proj.weight.std().item() < 0.05  # initialised like every head (std 0.02)
    assert model.config.loss_weights["tags"] == 1.0
    model.save_pretrained(tmp_path)
    loaded = MultiTaskModel.from_pretrained(tmp_path)
    assert torch.equal(loaded.heads["tags"].out_proj.weight, head.out_proj.weight)
    with pytest.raises(ValueError, match=r"task 'topic' already exists; tasks are \['topic', 'sentiment', 'tags'\]"):
        model.add_task("topic", ["a", "b"])


def test_add_a_task_with_train_py_frozen_keeps_old_outputs_bit_identical(trained, tmp_path):
    base, _ = trained
    out = tmp_path / "added"
    args = tiny_args("unused", out, "--max_steps", "4", "--eval_strategy", "no", "--save_strategy", "no")
    args[args.index("--backbone") : args.index("--backbone") + 2] = ["--model_name_or_path", str(base)]
    args[args.index("--train_file") + 1] = f"tags={tags_file(tmp_path / 'tags.jsonl', 'train', 32)}"
    args += ["--add_tasks", json.dumps({"tags": {"labels": TAGS, "multi_label": True}}),
             "--freeze_backbone", "--freeze_heads", "topic", "sentiment"]  # fmt: skip
    train.main(args)
    before, after = MultiTaskModel.from_pretrained(base).eval(), MultiTaskModel.from_pretrained(out).eval()
    assert list(after.config.tasks) == ["topic", "sentiment", "tags"] and after.config.multi_label_tasks == ["tags"]
    tokenizer = AutoTokenizer.from_pretrained(out, config=after.config.backbone_config)
    batch = tokenizer(TEXTS, padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        old, new = before(**batch), after(**batch)
    for task in TASKS:
        assert torch.equal(old.logits[task], new.logits[task])
    assert not torch.equal(new.logits["tags"], torch.zeros_like(new.logits["tags"]))


def test_distillation_loss_by_hand():
    torch.manual_seed(0)
    teacher, student = torch.randn(4, 3), torch.randn(4, 3, requires_grad=True)
    for multi_label in (False, True):
        assert distillation_loss(teacher, teacher, multi_label, 2.0).item() == pytest.approx(0.0, abs=1e-6)
    p, q = torch.softmax(teacher / 2, -1), torch.softmax(student / 2, -1)
    by_hand = (p * (p.log() - q.log())).sum(-1).mean() * 4  # KL(teacher || student) at T = 2, times T**2
    loss = distillation_loss(student, teacher, temperature=2.0)
    assert loss.item() == pytest.approx(by_hand.item(), rel=1e-5) and loss.item() > 0
    p, q = torch.sigmoid(teacher), torch.sigmoid(student)
    bernoulli = p * (p.log() - q.log()) + (1 - p) * ((1 - p).log() - (1 - q).log())  # per label, summed over them
    loss = distillation_loss(student, teacher, multi_label=True, temperature=1.0)
    assert loss.item() == pytest.approx(bernoulli.sum(-1).mean().item(), rel=1e-5)
    loss.backward()
    assert student.grad.abs().sum() > 0


def changed_answers(base, out):
    """How many of the old tasks' answers on 32 bundled validation sentences differ between the saved models `base`
    and `out` (summed over the tasks)."""
    texts = [json.loads(line)["text"] for line in (REPO / "data" / "validation.jsonl").read_text().splitlines()[:32]]
    before, after = MultiTaskModel.from_pretrained(base).eval(), MultiTaskModel.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out, config=after.config.backbone_config)
    batch = tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        old, new = before(**batch), after(**batch)
    return sum((old.logits[task].argmax(-1) != new.logits[task].argmax(-1)).sum().item() for task in TASKS)


def test_add_a_task_unfrozen_with_distillation_keeps_the_old_tasks_answers(trained, tmp_path):
    """Learning without forgetting: the new task's data alone, encoder and old heads unfrozen, a large step. Without
    distillation many of the old tasks' answers change; with it few do, and the run logs the distillation loss."""
    base, _ = trained
    changed = {}
    for weight in ("0", "10"):
        out = tmp_path / f"distill-{weight}"
        args = tiny_args("unused", out, "--max_steps", "16", "--eval_strategy", "no", "--save_strategy", "no",
                         "--learning_rate", "1e-2", "--wise_ft_alpha", "1", "--distill_weight", weight)  # fmt: skip
        args[args.index("--backbone") : args.index("--backbone") + 2] = ["--model_name_or_path", str(base)]
        args[args.index("--train_file") + 1] = f"tags={tags_file(tmp_path / 'tags.jsonl', 'train', 64)}"
        args += ["--add_tasks", json.dumps({"tags": {"labels": TAGS, "multi_label": True}})]
        train.main(args)
        changed[weight] = changed_answers(base, out)
        logged = [entry for entry in json.loads((out / "trainer_state.json").read_text())["log_history"]
                  if "loss" in entry]  # fmt: skip
        assert len(logged) == 16 and all(("loss_distill" in entry) == (weight != "0") for entry in logged)
    assert changed["0"] >= 16 and changed["10"] <= changed["0"] / 4, changed  # of 64 answers (2 tasks x 32)


def test_add_tasks_is_refused_when_it_cannot_apply(trained, backbone_dir, tmp_path):
    base, _ = trained
    with pytest.raises(training_args.ArgumentError, match="--add_tasks adds tasks to a saved model"):
        train.main(tiny_args(backbone_dir, tmp_path / "a", "--add_tasks", '{"tags": ["a", "b"]}'))
    args = tiny_args("unused", tmp_path / "b", "--add_tasks", '{"topic": ["a", "b"]}')
    args[args.index("--backbone") : args.index("--backbone") + 2] = ["--model_name_or_path", str(base)]
    with pytest.raises(
        training_args.ArgumentError, match=r"--add_tasks: the saved model already has task\(s\) \['topic'\]"
    ):
        train.main(args)
    args[args.index("--add_tasks") + 1] = '{"tags": {"labels": ["a"], "multi": true}}'
    with pytest.raises(
        training_args.ArgumentError, match="--add_tasks: task 'tags' is .*; expected a list of labels or"
    ):
        train.main(args)
    with pytest.raises(
        training_args.ArgumentError, match="--distill_weight keeps a saved model's tasks .* --model_name_or_path"
    ):
        train.main(tiny_args(backbone_dir, tmp_path / "c", "--distill_weight", "1"))
    for option, value, message in (("--distill_weight", "-1", "--distill_weight must be a number >= 0, got -1"),
                                   ("--distill_weight", "nan", "--distill_weight must be a number >= 0, got nan"),
                                   ("--distill_temperature", "0", "--distill_temperature must be > 0, got 0")):  # fmt: skip
        with pytest.raises(training_args.ArgumentError, match=message):
            train.main(tiny_args(backbone_dir, tmp_path / "d", option, value))
