"""Configuration of the multi-task sentence classifier.

Everything the model needs to rebuild itself lives here: the backbone's own config (nested),
the task schema (task name -> label names, in column order), pooling, head options and loss
weights. `save_pretrained` / `from_pretrained` round-trip all of it through `config.json`.
"""

import copy
import inspect
import logging
import os
import re

from huggingface_hub import constants
from huggingface_hub.utils import HFValidationError, validate_repo_id
from transformers import AutoConfig, DistilBertConfig, PretrainedConfig

DEFAULT_TASKS = {
    "topic": ["Finance/Tech", "Health/Lifestyle", "Entertainment/Sports"],
    "sentiment": ["Negative", "Positive"],
}
POOLING_MODES = ("mean", "cls", "max")
DEFAULT_THRESHOLD = 0.5  # a multi-label task's decision threshold for a label with no tuned one
HEAD_ACTIVATIONS = ("gelu", "relu", "tanh")
logger = logging.getLogger(__name__)
_SAVED_ALONGSIDE = ("auto_map", "custom_pipelines")  # config.json keys written for remote code and the pipeline
# Generic settings that transformers, Trainer or train.py set on any config (the tokenizer's pad id, use_cache off
# while training): saved by this version too, so not a sign of a newer one.
_SET_BY_TRANSFORMERS = (
    "pad_token_id",
    "bos_token_id",
    "eos_token_id",
    "sep_token_id",
    "use_cache",
    "tie_word_embeddings",
)
# Settings of earlier versions, removed since (docs/results.md), with the value that meant "off": a config.json with
# that value (or without the key) loads as before; with any other value its weights do not fit this model, so it is
# refused in one line.
_REMOVED_SETTINGS = {"task_layers": 0}  # partial sharing: each task its own copy of the encoder's top layers
_TASK_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Keys of predict.py's output lines beside the task names (`{"line": N, "id": ..., "<task>": ..., "embedding": ...}`):
# no task may take one of them.
RESERVED_TASK_NAMES = ("line", "id", "embedding")
# A distilled student's provenance (train.py --teacher): written to config.json only when set, so that every other
# model's config.json is as before.
_PROVENANCE = ("distilled_from", "student_layers")


def looks_local(name_or_path):
    """True when `name_or_path` can only mean a local path, not a Hub name (`name` or `owner/name`): it exists, starts
    with `.`, `/` or `~`, has more than one `/` or an OS separator other than `/`, is no valid Hub name, or names a
    folder of an existing one (`outputs/typo` where `outputs/` exists)."""
    name = os.fspath(name_or_path)
    if os.path.exists(name) or name.startswith((".", "/", "~")) or name.count("/") > 1:
        return True
    if any(sep and sep != "/" and sep in name for sep in (os.sep, os.altsep)):
        return True
    try:
        validate_repo_id(name)
    except HFValidationError:
        return True
    return "/" in name and os.path.isdir(name.split("/")[0])


def check_model_source(name_or_path):
    """Fail at once, with a one-line ValueError, for a model path that is not a directory: a file, a name that
    `looks_local` but is not there, or any name while HF_HUB_OFFLINE=1 rules out the Hub. A name that may be on the
    Hub is left to the Hub; nothing here touches the network."""
    name = os.fspath(name_or_path)
    if os.path.isdir(name):
        return
    if os.path.exists(name):
        raise ValueError(f"{name}: is a file, not a model directory; give the folder that holds its config.json")
    if looks_local(name):
        raise ValueError(f"{name}: no such model directory")
    if constants.HF_HUB_OFFLINE:
        raise ValueError(f"{name}: no such model directory (and HF_HUB_OFFLINE=1 rules out the Hub)")


def _schema(tasks):
    """A task schema as a plain ordered dict; accepts a mapping or a list of (name, labels) pairs, which is how
    config.json stores it (JSON objects are written with sorted keys, which would lose the task order)."""
    pairs = tasks.items() if hasattr(tasks, "items") else tasks
    return {name: list(labels) for name, labels in pairs}


class MultiTaskConfig(PretrainedConfig):
    r"""
    Configuration for [`MultiTaskModel`]: one shared sentence encoder, one classification head per task.

    Args:
        backbone_config (`PretrainedConfig` or `dict`, *optional*):
            The encoder's own configuration; any config `AutoModel.from_config` can build. A dict must hold a
            `model_type`. Defaults to `DistilBertConfig()`, the original design's encoder.
        tasks (`dict[str, list[str]]`, *optional*):
            Ordered mapping task name -> label names. Column `i` of a task's logits is label `tasks[task][i]`.
            Task names are Python identifiers (they become the `labels_<task>` keyword of `forward`).
            Defaults to topic (3 labels) and sentiment (2 labels).
        pooling (`str`, *optional*, defaults to `"mean"`):
            How token states become one sentence embedding: `"mean"` (masked mean over real tokens), `"cls"`
            (first token) or `"max"` (masked max over real tokens).
        classifier_dropout (`float`, *optional*, defaults to 0.1):
            Dropout applied to the sentence embedding before each head (and after the hidden layer, if any).
        head_hidden_size (`int`, *optional*, defaults to 0):
            Size of an optional hidden layer in every head; 0 means each head is a single linear layer.
        head_activation (`str`, *optional*, defaults to `"gelu"`):
            Activation of the hidden layer (`"gelu"`, `"relu"` or `"tanh"`); unused when `head_hidden_size` is 0.
        loss_weights (`dict[str, float]`, *optional*):
            Weight of each task's mean cross-entropy in the total loss. Tasks not named get 1.0, so the default is
            the plain sum of the original design.
        max_seq_length (`int`, *optional*):
            Token limit the model was trained with (`train.py --max_seq_length`). Inference truncates to it by default
            (overridable per call), so the model sees at serving time what it saw in training. `None`: the encoder's
            own limit.
        multi_label_tasks (`list[str]`, *optional*):
            The tasks that are multi-label: a text has any number of their labels (sigmoid per label, binary
            cross-entropy). Every other task is single-label (softmax, cross-entropy), the default. A multi-label task
            may have a single label.
        label_thresholds (`dict[str, list[float]]`, *optional*):
            Per multi-label task, one decision threshold per label, in label order: a label is predicted when its
            sigmoid score is >= its threshold (`train.py` tunes them on the validation set). A task not named uses
            `DEFAULT_THRESHOLD` (0.5) for every label.
        distilled_from (`str`, *optional*):
            A student's teacher (`train.py --teacher`): its Hub id or folder name, as the model card names it. `None`:
            not a distilled student. Provenance only; the network is `backbone_config`'s.
        student_layers (`list[int]`, *optional*):
            A student's encoder layers as the teacher's layer indices they were copied from (0 = the lowest).
        kwargs (*optional*):
            Passed to [`PretrainedConfig`].

    Example:

    ```python
    >>> from transformers import BertConfig
    >>> from configuration_multitask import MultiTaskConfig

    >>> # a tiny random encoder's config; any AutoConfig works (DistilBertConfig() when none is given)
    >>> backbone = BertConfig(
    ...     vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37
    ... )
    >>> tasks = {"topic": ["Finance/Tech", "Health/Lifestyle", "Sports"], "sentiment": ["Negative", "Positive"]}
    >>> config = MultiTaskConfig(backbone_config=backbone, tasks=tasks, loss_weights={"topic": 2.0})
    >>> config.task_id2label["sentiment"]
    {0: 'Negative', 1: 'Positive'}
    >>> config.loss_weights
    {'topic': 2.0, 'sentiment': 1.0}
    ```
    """

    model_type = "multitask_sentence_classifier"
    sub_configs = {"backbone_config": AutoConfig}

    def __init__(
        self,
        backbone_config=None,
        tasks=None,
        pooling="mean",
        classifier_dropout=0.1,
        head_hidden_size=0,
        head_activation="gelu",
        loss_weights=None,
        max_seq_length=None,
        multi_label_tasks=None,
        label_thresholds=None,
        distilled_from=None,
        student_layers=None,
        **kwargs,
    ):
        if backbone_config is None:
            backbone_config = DistilBertConfig()
        elif isinstance(backbone_config, dict):
            if "model_type" not in backbone_config:
                raise ValueError("backbone_config is a dict without 'model_type'; cannot tell which encoder to build")
            backbone_config = dict(backbone_config)
            backbone_config = AutoConfig.for_model(backbone_config.pop("model_type"), **backbone_config)
        elif not isinstance(backbone_config, PretrainedConfig):
            raise TypeError(
                f"backbone_config must be a PretrainedConfig, a dict or None, got {type(backbone_config).__name__}"
            )
        else:
            # A copy: the caller's config stays as it was (PretrainedConfig.__init__ below resets the attention
            # implementation of every declared sub-config, which would switch a live encoder's attention kernel).
            backbone_config = copy.deepcopy(backbone_config)
        tasks = _schema(DEFAULT_TASKS if tasks is None else tasks)
        self._validate_kinds(tasks, multi_label_tasks or [], label_thresholds or {})
        multi_label_tasks = [task for task in tasks if task in (multi_label_tasks or [])]  # in schema order
        self._validate(
            tasks, pooling, classifier_dropout, head_hidden_size, head_activation, loss_weights, multi_label_tasks
        )
        if max_seq_length is not None and (
            isinstance(max_seq_length, bool) or not isinstance(max_seq_length, int) or max_seq_length < 1
        ):
            raise ValueError(f"max_seq_length must be a positive int or None, got {max_seq_length!r}")
        for name, off in _REMOVED_SETTINGS.items():
            value = kwargs.pop(name, off)
            if value is not None and value != off:
                raise ValueError(
                    f"{name} {value!r}: this setting was removed (last in commit 1c682d9); a model saved with it "
                    f"cannot be loaded by this version (only {name} {off!r} can)"
                )

        self.backbone_config = backbone_config
        self.tasks = tasks
        self.pooling = pooling
        self.classifier_dropout = classifier_dropout
        self.head_hidden_size = head_hidden_size
        self.head_activation = head_activation
        self.loss_weights = {task: float((loss_weights or {}).get(task, 1.0)) for task in tasks}
        self.max_seq_length = max_seq_length
        self.multi_label_tasks = multi_label_tasks
        self.label_thresholds = {task: [float(t) for t in values] for task, values in (label_thresholds or {}).items()}
        self.distilled_from = distilled_from
        self.student_layers = list(student_layers) if student_layers is not None else None
        super().__init__(**kwargs)

    @staticmethod
    def _validate(tasks, pooling, classifier_dropout, head_hidden_size, head_activation, loss_weights, multi_label=()):
        if not tasks:
            raise ValueError("tasks is empty: give at least one task, e.g. {'sentiment': ['Negative', 'Positive']}")
        for task, labels in tasks.items():
            if not isinstance(task, str) or not _TASK_NAME.fullmatch(task):
                raise ValueError(f"task name {task!r} is not a Python identifier (letters, digits, '_')")
            if task in RESERVED_TASK_NAMES:
                raise ValueError(
                    f"task name {task!r} is reserved: predict.py's output lines use the keys "
                    f"{list(RESERVED_TASK_NAMES)} beside the task names; rename the task in tasks"
                )
            if len(labels) < (1 if task in multi_label else 2):
                need = "a multi-label task needs at least 1" if task in multi_label else "a task needs at least 2"
                raise ValueError(f"task {task!r} has {len(labels)} label(s) {labels}; {need}")
            if not all(isinstance(label, str) and label for label in labels):
                raise ValueError(f"task {task!r} has a label that is not a non-empty string: {labels}")
            duplicates = sorted({label for label in labels if labels.count(label) > 1})
            if duplicates:
                raise ValueError(f"task {task!r} has duplicate labels {duplicates}")
        if pooling not in POOLING_MODES:
            raise ValueError(f"pooling {pooling!r} is not one of {list(POOLING_MODES)}")
        if not 0.0 <= classifier_dropout < 1.0:
            raise ValueError(f"classifier_dropout must be in [0, 1), got {classifier_dropout}")
        if head_hidden_size < 0:
            raise ValueError(f"head_hidden_size must be >= 0 (0 = no hidden layer), got {head_hidden_size}")
        if head_activation not in HEAD_ACTIVATIONS:
            raise ValueError(f"head_activation {head_activation!r} is not one of {list(HEAD_ACTIVATIONS)}")
        for task, weight in (loss_weights or {}).items():
            if task not in tasks:
                raise ValueError(f"loss_weights names unknown task {task!r}; tasks are {list(tasks)}")
            if not 0 <= weight < float("inf"):  # NaN too
                raise ValueError(f"loss weight of task {task!r} must be a number >= 0, got {weight}")

    @staticmethod
    def _validate_kinds(tasks, multi_label_tasks, label_thresholds):
        if isinstance(multi_label_tasks, str) or not isinstance(multi_label_tasks, (list, tuple)):
            raise ValueError(f"multi_label_tasks must be a list of task names, got {multi_label_tasks!r}")
        for task in multi_label_tasks:
            if task not in tasks:
                raise ValueError(f"multi_label_tasks names unknown task {task!r}; tasks are {list(tasks)}")
        if not isinstance(label_thresholds, dict):
            raise ValueError(f"label_thresholds must be a dict task -> [threshold per label], got {label_thresholds!r}")
        for task, values in label_thresholds.items():
            if task not in multi_label_tasks:
                raise ValueError(f"label_thresholds names task {task!r}, which is not in multi_label_tasks")
            if not isinstance(values, (list, tuple)) or len(values) != len(tasks[task]):
                raise ValueError(
                    f"label_thresholds[{task!r}] must be a list of {len(tasks[task])} thresholds (one per label), "
                    f"got {values!r}"
                )
            if not all(isinstance(t, (int, float)) and not isinstance(t, bool) and 0.0 <= t <= 1.0 for t in values):
                raise ValueError(f"label_thresholds[{task!r}] must hold numbers in [0, 1], got {values}")

    def __setattr__(self, key, value):
        # `from_pretrained(path, tasks=...)` sets attributes on the loaded config. Changing the schema of a config
        # that already has one would silently pair checkpoint heads with the wrong labels (or the wrong loss), so
        # refuse it; `add_task` is the one way to grow a schema.
        if key == "tasks":
            value = _schema(value)  # store the ordered-dict form whichever accepted form was given
            if "tasks" in self.__dict__ and value != self.__dict__["tasks"]:
                raise ValueError(
                    f"this config (or checkpoint) was built for tasks {self.__dict__['tasks']} but tasks "
                    f"{value} were asked for; to train new heads, use MultiTaskModel.from_backbone(...), or "
                    "MultiTaskModel.add_task(...) to add one"
                )
        if key == "multi_label_tasks" and "multi_label_tasks" in self.__dict__:
            if list(value or []) != self.__dict__["multi_label_tasks"]:
                raise ValueError(
                    f"this config (or checkpoint) has multi-label tasks {self.__dict__['multi_label_tasks']} but "
                    f"{value} were asked for; a task's kind is part of its trained head"
                )
        if key == "label_thresholds" and "multi_label_tasks" in self.__dict__:
            self._validate_kinds(self.tasks, self.multi_label_tasks, value)
            value = {task: [float(t) for t in values] for task, values in value.items()}
        super().__setattr__(key, value)

    def add_task(self, name, labels, multi_label=False):
        r"""
        Add a task to the schema, after the existing tasks, with loss weight 1.0; validated like a new config.

        This only changes the config: [`MultiTaskModel.add_task`] also adds the task's head.

        Args:
            name (`str`):
                The new task's name, a Python identifier not yet in `tasks`.
            labels (`list[str]`):
                Its label names, in column order.
            multi_label (`bool`, *optional*, defaults to `False`):
                Whether the task is multi-label (a sigmoid per label) rather than single-label (softmax).

        Example:

        ```python
        >>> from configuration_multitask import MultiTaskConfig

        >>> config = MultiTaskConfig(tasks={"sentiment": ["Negative", "Positive"]})
        >>> config.add_task("emotion", ["joy", "anger", "fear"], multi_label=True)
        >>> list(config.tasks), config.multi_label_tasks
        (['sentiment', 'emotion'], ['emotion'])
        ```
        """
        if name in self.tasks:
            raise ValueError(f"task {name!r} already exists; tasks are {list(self.tasks)}")
        if isinstance(labels, str) or not isinstance(labels, (list, tuple)):
            raise ValueError(f"labels of task {name!r} must be a list of label names, got {labels!r}")
        tasks = {**self.tasks, name: list(labels)}
        multi_label_tasks = [*self.multi_label_tasks, name] if multi_label else list(self.multi_label_tasks)
        self._validate(
            tasks,
            self.pooling,
            self.classifier_dropout,
            self.head_hidden_size,
            self.head_activation,
            self.loss_weights,
            multi_label_tasks,
        )
        self.__dict__["tasks"] = tasks  # the one sanctioned change of a schema (see __setattr__)
        self.__dict__["multi_label_tasks"] = multi_label_tasks
        self.loss_weights = {**self.loss_weights, name: 1.0}

    def thresholds(self, task):
        """The decision thresholds of a multi-label task, one per label (DEFAULT_THRESHOLD where none was tuned)."""
        return self.label_thresholds.get(task, [DEFAULT_THRESHOLD] * len(self.tasks[task]))

    def to_dict(self):
        output = super().to_dict()
        output["tasks"] = [[task, labels] for task, labels in self.tasks.items()]
        for key in _PROVENANCE:
            if output.get(key) is None:
                output.pop(key, None)
        return output

    @classmethod
    def from_saved_model(cls, name_or_path, **kwargs):
        r"""
        The config of a multi-task model saved by this repository; [`PretrainedConfig.from_pretrained`] with checks.

        Args:
            name_or_path (`str` or `os.PathLike`):
                A saved model's local directory or Hub name.
            kwargs (*optional*):
                Passed to `from_pretrained`.

        Returns:
            [`MultiTaskConfig`]. Raises a one-line `ValueError` naming `name_or_path` when it is not such a model (no
            such directory, no config.json, another kind of model, a removed setting).

        Example:

        ```python
        >>> config = MultiTaskConfig.from_saved_model("outputs/multitask-minilm")  # doctest: +SKIP
        >>> list(config.tasks)  # doctest: +SKIP
        ['topic', 'sentiment']
        ```
        """
        check_model_source(name_or_path)
        if os.path.isdir(name_or_path) and not os.path.isfile(os.path.join(name_or_path, "config.json")):
            raise ValueError(f"{name_or_path}: no config.json in it; not a saved model directory")
        try:
            config_dict, _ = cls.get_config_dict(name_or_path, **kwargs)
        except OSError as e:
            raise ValueError(f"{name_or_path}: cannot load a model config ({str(e).splitlines()[0]})") from None
        if config_dict.get("model_type") != cls.model_type:
            raise ValueError(
                f"{name_or_path}: not a multi-task model saved by train.py (its config.json has model_type "
                f"{config_dict.get('model_type')!r}, expected {cls.model_type!r}); to put new heads on an encoder, "
                "use --backbone / MultiTaskModel.from_backbone"
            )
        for name, off in _REMOVED_SETTINGS.items():
            if config_dict.get(name, off) not in (off, None):
                raise ValueError(
                    f"{name_or_path}: its config.json has {name} {config_dict[name]!r}, a setting this version removed "
                    f"(last in commit 1c682d9); its weights do not fit this model (only {name} {off!r} loads)"
                )
        config = cls.from_pretrained(name_or_path, **kwargs)
        known = {
            *cls().to_dict(),
            *inspect.signature(PretrainedConfig.__init__).parameters,
            *_SAVED_ALONGSIDE,
            *_SET_BY_TRANSFORMERS,
            *_REMOVED_SETTINGS,
            *_PROVENANCE,
        }
        unknown = sorted(set(config_dict) - known - set(kwargs))
        if unknown:  # saved by a newer version of this code: what these settings change is not applied here
            logger.warning(
                "%s: config.json has settings this version does not know, %s: it was saved by a newer version, "
                "whose model may compute differently; update this code to use it as saved",
                name_or_path,
                unknown,
            )
        return config

    @property
    def task_id2label(self):
        """Per-task `id2label`: `{task: {0: label, 1: label, ...}}`."""
        return {task: dict(enumerate(labels)) for task, labels in self.tasks.items()}

    @property
    def task_label2id(self):
        """Per-task `label2id`: `{task: {label: 0, ...}}`."""
        return {task: {label: i for i, label in enumerate(labels)} for task, labels in self.tasks.items()}

    @property
    def hidden_size(self):
        return self.backbone_config.hidden_size


# Known to AutoConfig by its model_type once this code is imported (from the repository, or as a saved model's remote
# code that was trusted): AutoTokenizer.from_pretrained(DIR), which reads config.json to find the tokenizer class, then
# neither asks to run the custom code again nor falls back to a bare config with a warning about its type.
AutoConfig.register(MultiTaskConfig.model_type, MultiTaskConfig, exist_ok=True)
