import json
import re

import pytest
from transformers import BertConfig, DistilBertConfig

from configuration_multitask import DEFAULT_TASKS, MultiTaskConfig
from modeling_multitask import MultiTaskModel

# Alphabetical order (apple, mango, zebra) differs from the given order, so a sorted-keys JSON dump would show.
ORDERED_TASKS = {"zebra": ["z1", "z2"], "apple": ["a1", "a2", "a3"], "mango": ["m2", "m1"]}


def test_defaults():
    config = MultiTaskConfig()
    assert isinstance(config.backbone_config, DistilBertConfig)
    assert config.tasks == DEFAULT_TASKS
    assert list(config.tasks) == ["topic", "sentiment"]
    assert config.tasks["topic"] == ["Finance/Tech", "Health/Lifestyle", "Entertainment/Sports"]
    assert config.tasks["sentiment"] == ["Negative", "Positive"]
    assert config.pooling == "mean"
    assert config.loss_weights == {"topic": 1.0, "sentiment": 1.0}
    assert config.hidden_size == config.backbone_config.dim


def test_task_id2label_and_label2id():
    config = MultiTaskConfig(tasks=ORDERED_TASKS)
    assert config.task_id2label == {
        "zebra": {0: "z1", 1: "z2"},
        "apple": {0: "a1", 1: "a2", 2: "a3"},
        "mango": {0: "m2", 1: "m1"},
    }
    assert config.task_label2id == {
        "zebra": {"z1": 0, "z2": 1},
        "apple": {"a1": 0, "a2": 1, "a3": 2},
        "mango": {"m2": 0, "m1": 1},
    }


def test_unnamed_loss_weights_default_to_one():
    config = MultiTaskConfig(tasks=ORDERED_TASKS, loss_weights={"apple": 0.25})
    assert config.loss_weights == {"zebra": 1.0, "apple": 0.25, "mango": 1.0}


@pytest.mark.parametrize(
    ("backbone", "backbone_class"),
    [("distilbert_config", DistilBertConfig), ("bert_config", BertConfig)],
)
def test_json_round_trip(backbone, backbone_class, request, tmp_path):
    config = MultiTaskConfig(
        backbone_config=request.getfixturevalue(backbone),
        tasks=ORDERED_TASKS,
        pooling="max",
        classifier_dropout=0.25,
        head_hidden_size=16,
        head_activation="tanh",
        loss_weights={"zebra": 0.5, "mango": 2.0},
    )
    config.save_pretrained(tmp_path)
    loaded = MultiTaskConfig.from_pretrained(tmp_path)

    assert type(loaded.backbone_config) is backbone_class
    assert loaded.backbone_config.to_dict() == config.backbone_config.to_dict()
    assert loaded.tasks == ORDERED_TASKS
    assert list(loaded.tasks) == ["zebra", "apple", "mango"]  # order survives, not alphabetical
    assert loaded.loss_weights == {"zebra": 0.5, "apple": 1.0, "mango": 2.0}
    assert (loaded.pooling, loaded.classifier_dropout) == ("max", 0.25)
    assert (loaded.head_hidden_size, loaded.head_activation) == (16, "tanh")
    # on disk the tasks are an ordered list of [name, labels] pairs
    assert json.loads((tmp_path / "config.json").read_text())["tasks"] == [[k, v] for k, v in ORDERED_TASKS.items()]


def test_backbone_config_from_dict():
    config = MultiTaskConfig(backbone_config={"model_type": "bert", "hidden_size": 32, "num_attention_heads": 2})
    assert isinstance(config.backbone_config, BertConfig)
    assert config.hidden_size == 32


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"pooling": "sum"}, "pooling 'sum' is not one of ['mean', 'cls', 'max']", id="unknown-pooling"),
        pytest.param({"tasks": {}}, "tasks is empty: give at least one task", id="empty-tasks"),
        pytest.param(
            {"tasks": {"spam": ["yes"]}}, "task 'spam' has 1 label(s) ['yes']; a task needs at least 2", id="one-label"
        ),
        pytest.param(
            {"tasks": {"spam": ["yes", "no", "yes"]}}, "task 'spam' has duplicate labels ['yes']", id="duplicate-labels"
        ),
        pytest.param(
            {"tasks": {"spam": ["yes", ""]}}, "task 'spam' has a label that is not a non-empty string", id="empty-label"
        ),
        pytest.param(
            {"loss_weights": {"spam": 2.0}},
            "loss_weights names unknown task 'spam'; tasks are ['topic', 'sentiment']",
            id="weight-unknown-task",
        ),
        pytest.param(
            {"loss_weights": {"topic": -1.0}},
            "loss weight of task 'topic' must be a number >= 0, got -1.0",
            id="negative-weight",
        ),
        pytest.param(
            {"loss_weights": {"topic": float("nan")}},
            "loss weight of task 'topic' must be a number >= 0, got nan",
            id="nan-weight",
        ),
        pytest.param(
            {"tasks": {"topic": ["a", "b"], "id": ["a", "b"]}},
            "task name 'id' is reserved: predict.py's output lines use the keys ['line', 'id', 'embedding']",
            id="reserved-task-name",
        ),
        pytest.param(
            {"tasks": {"my-task": ["a", "b"]}}, "task name 'my-task' is not a Python identifier", id="task-name-dash"
        ),
        pytest.param(
            {"tasks": {"1st": ["a", "b"]}}, "task name '1st' is not a Python identifier", id="task-name-digit"
        ),
        pytest.param({"classifier_dropout": 1.0}, "classifier_dropout must be in [0, 1), got 1.0", id="dropout-one"),
        pytest.param(
            {"classifier_dropout": -0.1}, "classifier_dropout must be in [0, 1), got -0.1", id="dropout-negative"
        ),
        pytest.param(
            {"head_hidden_size": -1},
            "head_hidden_size must be >= 0 (0 = no hidden layer), got -1",
            id="negative-head-hidden",
        ),
        pytest.param(
            {"head_activation": "swish"},
            "head_activation 'swish' is not one of ['gelu', 'relu', 'tanh']",
            id="unknown-activation",
        ),
        pytest.param(
            {"backbone_config": {"hidden_size": 32}},
            "backbone_config is a dict without 'model_type'",
            id="dict-without-model-type",
        ),
    ],
)
def test_validation_errors(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        MultiTaskConfig(**kwargs)


def test_backbone_config_of_wrong_type():
    with pytest.raises(TypeError, match="backbone_config must be a PretrainedConfig, a dict or None, got str"):
        MultiTaskConfig(backbone_config="bert-base-uncased")


# Same shape as the saved sentiment task (2 labels), only the label order differs: without the check, the checkpoint's
# column 0 ("Negative") would silently be reported as "Positive".
SWAPPED_SENTIMENT = {"topic": DEFAULT_TASKS["topic"], "sentiment": ["Positive", "Negative"]}
OTHER_SHAPE = {"spam": ["ham", "spam"]}


def _assert_names_both_schemas(excinfo, asked):
    message = str(excinfo.value)
    assert f"was built for tasks {DEFAULT_TASKS}" in message
    assert f"but tasks {asked} were asked for" in message
    assert "MultiTaskModel.from_backbone" in message


@pytest.mark.parametrize("other", [SWAPPED_SENTIMENT, OTHER_SHAPE], ids=["same-shape", "other-shape"])
def test_changing_tasks_of_existing_config_raises(other):
    config = MultiTaskConfig()
    with pytest.raises(ValueError) as excinfo:
        config.tasks = other
    _assert_names_both_schemas(excinfo, other)
    assert config.tasks == DEFAULT_TASKS


def test_setting_the_same_tasks_again_is_allowed(distilbert_config):
    config = MultiTaskConfig(backbone_config=distilbert_config, tasks=ORDERED_TASKS)
    config.tasks = [[k, v] for k, v in ORDERED_TASKS.items()]  # the config.json form is the same schema
    assert isinstance(config.tasks, dict) and config.tasks == ORDERED_TASKS  # stored as a dict, not the list given
    assert list(MultiTaskModel(config).heads) == list(ORDERED_TASKS)


@pytest.fixture(scope="module")
def saved_default_model(tmp_path_factory, make_backbone_config):
    config = MultiTaskConfig(backbone_config=make_backbone_config("distilbert"))
    path = tmp_path_factory.mktemp("default_model")
    MultiTaskModel(config).save_pretrained(path)
    return path


@pytest.mark.parametrize("other", [SWAPPED_SENTIMENT, OTHER_SHAPE], ids=["same-shape", "other-shape"])
def test_from_pretrained_with_other_tasks_raises(saved_default_model, other):
    with pytest.raises(ValueError) as excinfo:
        MultiTaskModel.from_pretrained(saved_default_model, tasks=other)
    _assert_names_both_schemas(excinfo, other)
    with pytest.raises(ValueError) as excinfo:
        MultiTaskConfig.from_pretrained(saved_default_model, tasks=other)
    _assert_names_both_schemas(excinfo, other)


def test_from_pretrained_with_the_same_tasks_loads(saved_default_model):
    model = MultiTaskModel.from_pretrained(saved_default_model, tasks=dict(DEFAULT_TASKS))
    assert model.config.tasks == DEFAULT_TASKS
    model = MultiTaskModel.from_pretrained(saved_default_model, tasks=list(DEFAULT_TASKS.items()))
    assert isinstance(model.config.tasks, dict) and model.config.tasks == DEFAULT_TASKS


@pytest.mark.slow  # the bundled encoder (the tiny one: the test below)
def test_building_a_config_leaves_the_given_backbone_config_as_it_was(bundled_encoder_path):
    """A composite config resets its sub-configs' attention implementation; the caller's (live) one must not change."""
    from transformers import AutoModel

    encoder = AutoModel.from_pretrained(bundled_encoder_path)
    before = encoder.config._attn_implementation
    config = MultiTaskConfig(backbone_config=encoder.config)
    assert encoder.config._attn_implementation == before is not None
    assert config.backbone_config is not encoder.config


def test_building_a_config_leaves_a_tiny_encoders_live_config_as_it_was(bert_config):
    """The test above on the tiny BERT: a built encoder's config has its attention implementation set, as a loaded
    one has."""
    from transformers import AutoModel

    encoder = AutoModel.from_config(bert_config)
    before = encoder.config._attn_implementation
    config = MultiTaskConfig(backbone_config=encoder.config)
    assert encoder.config._attn_implementation == before is not None
    assert config.backbone_config is not encoder.config
