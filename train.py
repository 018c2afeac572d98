"""Train the multi-task sentence classifier with the Hugging Face Trainer.

    python train.py                                     # bundled data/ + bundled all-MiniLM-L6-v2, CPU, minutes
    python train.py --backbone distilbert-base-uncased  # the original design's encoder (needs the Hub)
    python train.py args.json                           # every argument from one JSON file

Arguments: ModelArguments and DataArguments below, plus every `TrainingArguments` option. The library pieces (the
trainer, metrics, freezing, the sampler) live in `trainer_multitask.py`; this script only wires them to a command
line: parse, read the data, build the model, train, evaluate, save, write the model card.
"""

import copy
import errno
import fnmatch
import json
import logging
import math
import os
import pickle
import re
import shutil
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import torch
import transformers
from huggingface_hub import EvalResult, ModelCard, ModelCardData
from transformers import (
    AutoConfig,
    DataCollatorWithPadding,
    HfArgumentParser,
    TrainingArguments,
    set_seed,
)
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, HubStrategy, IntervalStrategy, SaveStrategy

from configuration_multitask import RESERVED_TASK_NAMES, MultiTaskConfig, check_model_source
from modeling_multitask import MultiTaskModel, load_saved_model, load_saved_tokenizer
from multitask_data import DataError, UserError, label_counts, load_split
from onnx_multitask import sha256_file
from pipeline_multitask import save_pipeline
from trainer_multitask import (
    BUNDLED,
    BUNDLED_NAME,
    PER_LABEL_RESULTS,
    RUN_RECORD,
    MultiTaskTrainer,
    RunRecordCallback,
    freeze,
    last_complete_checkpoint,
    make_compute_metrics,
    read_run_record,
    resolve_backbone,
    results_table,
    setting_differences,
    wise_ft,
    write_run_record,
)

logger = logging.getLogger(__name__)
REPO_DIR = Path(__file__).resolve().parent
# Config fields that shape the network: a saved model keeps them (continuing it with other values is refused).
ARCHITECTURE_FIELDS = ("tasks", "multi_label_tasks", "pooling", "head_hidden_size", "head_activation")
# Config fields that only change training (or the default input length): a continued model may take new values.
TRAINING_FIELDS = ("classifier_dropout", "loss_weights", "max_seq_length")


class ArgumentError(UserError):
    """A bad command-line argument; the message names it and is shown as it is, without a traceback."""


class OutputError(UserError):
    """The output folder cannot be written (no space left, no permission); shown in one line, without a traceback."""


@dataclass
class ModelArguments:
    backbone: str = field(
        default=BUNDLED,
        metadata={"help": f"Encoder: a Hub name or local directory. '{BUNDLED}' is the offline default."},
    )
    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Continue training a saved multi-task model: its task schema and architecture are kept."},
    )
    tasks: str | None = field(
        default=None,
        metadata={
            "help": 'Task schema as JSON, e.g. \'{"topic": ["A", "B"], "emotion": {"labels": ["joy", "anger"], '
            '"multi_label": true}}\': a list of labels (single-label) or labels and kind. Default: topic, sentiment.'
        },
    )
    add_tasks: str | None = field(
        default=None,
        metadata={
            "help": "With --model_name_or_path: tasks to add to the saved model, each with a new head, as JSON in "
            '--tasks\' form, e.g. \'{"emotion": {"labels": ["joy", "anger"], "multi_label": true}}\'.'
        },
    )
    pooling: str | None = field(default=None, metadata={"help": "mean (default), cls or max."})
    classifier_dropout: float | None = field(default=None, metadata={"help": "Dropout before each head (0.1)."})
    head_hidden_size: int | None = field(
        default=None, metadata={"help": "Hidden layer size in each head; 0 (default) = linear heads."}
    )
    head_activation: str | None = field(
        default=None, metadata={"help": "Activation of the heads' hidden layer: gelu (default), relu or tanh."}
    )
    loss_weights: str | None = field(
        default=None, metadata={"help": "e.g. 'topic=1.0,sentiment=2.0'; default 1.0 each."}
    )
    max_seq_length: int | None = field(
        default=None,
        metadata={"help": "Longer texts are truncated (default 128); saved in the config as inference's default."},
    )
    freeze_backbone: bool = field(default=False, metadata={"help": "Train the heads only."})
    freeze_embeddings: bool = field(default=False, metadata={"help": "Freeze the encoder's embedding layer."})
    freeze_layers: int = field(default=0, metadata={"help": "Freeze the lowest N encoder layers (and embeddings)."})
    freeze_heads: list[str] = field(default_factory=list, metadata={"help": "Task heads to keep fixed."})
    head_learning_rate: float | None = field(
        default=None, metadata={"help": "Heads' learning rate (default: --learning_rate)."}
    )
    layerwise_lr_decay: float = field(
        default=1.0, metadata={"help": "Encoder layer k from the top gets learning_rate * decay**k; 1.0 = off."}
    )
    license: str = field(
        default="apache-2.0",
        metadata={"help": "Licence in the model card (the bundled encoder's is apache-2.0; check your encoder's)."},
    )

    def __post_init__(self):
        if self.freeze_layers < 0:
            raise ArgumentError(f"--freeze_layers must be >= 0, got {self.freeze_layers}")
        if not 0.0 < self.layerwise_lr_decay <= 1.0:
            raise ArgumentError(f"--layerwise_lr_decay must be in (0, 1], got {self.layerwise_lr_decay}")
        if self.max_seq_length is not None and self.max_seq_length < 1:
            raise ArgumentError(f"--max_seq_length must be >= 1, got {self.max_seq_length}")
        if self.head_learning_rate is not None and not 0 < self.head_learning_rate < math.inf:
            raise ArgumentError(f"--head_learning_rate must be a number > 0, got {self.head_learning_rate:g}")
        if self.head_hidden_size is not None and self.head_hidden_size < 0:
            raise ArgumentError(f"--head_hidden_size must be >= 0 (0 = linear heads), got {self.head_hidden_size}")
        if self.classifier_dropout is not None and not 0.0 <= self.classifier_dropout < 1.0:
            raise ArgumentError(f"--classifier_dropout must be in [0, 1), got {self.classifier_dropout:g}")
        if self.model_name_or_path and self.backbone != BUNDLED:
            raise ArgumentError(
                "--backbone and --model_name_or_path both given: a saved model already has its encoder; drop one"
            )
        if self.add_tasks and not self.model_name_or_path:
            raise ArgumentError(
                "--add_tasks adds tasks to a saved model (--model_name_or_path); for a new model, put them in --tasks"
            )

    def task_schema(self):
        """`--tasks` as `(tasks, multi_label_tasks)`, or (None, None) when not given."""
        return (None, None) if self.tasks is None else task_specs(self.tasks, "tasks")

    def added_tasks(self):
        """`--add_tasks` as `(tasks, multi_label_tasks)`; ({}, []) when not given."""
        return ({}, []) if not self.add_tasks else task_specs(self.add_tasks, "add_tasks")

    def loss_weight_dict(self):
        if not self.loss_weights:
            return None
        weights = {}
        for item in self.loss_weights.split(","):
            task, sep, weight = item.partition("=")
            try:
                weights[task.strip()] = float(weight) if sep else None
            except ValueError:
                weights[task.strip()] = None
            if weights[task.strip()] is None:
                raise ArgumentError(f"--loss_weights item {item!r} is not TASK=NUMBER (e.g. 'topic=1.0,sentiment=2.0')")
            if not 0 <= weights[task.strip()] < math.inf:
                raise ArgumentError(f"--loss_weights item {item!r}: a weight must be a number >= 0")
        return weights

    def config_settings(self):
        """The config fields given on the command line, as `MultiTaskConfig` keyword arguments."""
        tasks, multi_label_tasks = self.task_schema()
        given = {
            "tasks": tasks,
            "multi_label_tasks": multi_label_tasks,
            "pooling": self.pooling,
            "head_hidden_size": self.head_hidden_size,
            "head_activation": self.head_activation,
            "classifier_dropout": self.classifier_dropout,
            "loss_weights": self.loss_weight_dict(),
            "max_seq_length": self.max_seq_length,
        }
        return {name: value for name, value in given.items() if value is not None}


def task_specs(text, option):
    """A task schema given as JSON (`--tasks`, `--add_tasks`) -> `(tasks, multi_label_tasks)`. Each task's value is
    its list of labels (a single-label task) or `{"labels": [...], "multi_label": true|false}`."""
    try:
        specs = json.loads(text)
    except json.JSONDecodeError as e:
        raise ArgumentError(f"--{option} is not valid JSON ({e.msg}, column {e.colno}): {text!r}") from None
    if not isinstance(specs, dict):
        raise ArgumentError(f'--{option} must be a JSON object {{"task": ["label", ...]}}, got {text!r}')
    tasks, multi_label_tasks = {}, []
    for task, spec in specs.items():
        labels, multi_label = spec, False
        if isinstance(spec, dict) and set(spec) <= {"labels", "multi_label"}:
            labels, multi_label = spec.get("labels"), spec.get("multi_label", False)
        if not isinstance(labels, list) or not isinstance(multi_label, bool):
            raise ArgumentError(
                f"--{option}: task {task!r} is {json.dumps(spec)}; expected a list of labels or "
                '{"labels": [...], "multi_label": true}'
            )
        if task in RESERVED_TASK_NAMES:
            raise ArgumentError(
                f"--{option}: task name {task!r} is reserved (predict.py's output lines use the keys "
                f"{', '.join(RESERVED_TASK_NAMES)} beside the task names); give the task another name"
            )
        tasks[task] = labels
        if multi_label:
            multi_label_tasks.append(task)
    return tasks, multi_label_tasks


@dataclass
class DataArguments:
    train_file: list[str] | None = field(
        default=None,
        metadata={
            "help": "One or more entries: PATH (text + one column per task) or TASK=PATH (text + label). When no data "
            "file is given at all (no --train_file, --validation_file, --test_file, --eval_file), the bundled "
            "data/train.jsonl, data/validation.jsonl and data/test.jsonl are used; else a split not given is none."
        },
    )
    validation_file: list[str] | None = field(
        default=None, metadata={"help": "Validation entries (best-model selection, thresholds); see --train_file."}
    )
    test_file: list[str] | None = field(
        default=None, metadata={"help": "Test entries, evaluated once at the end; see --train_file."}
    )
    eval_file: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Named evaluation sets besides --validation_file (named 'validation'): NAME:PATH or NAME:TASK=PATH "
            "entries; entries of one NAME form one set, e.g. ood:topic=t.jsonl ood:sentiment=s.jsonl. Each set is "
            "reported as eval_NAME_* (the validation set then as eval_validation_*)."
        },
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Cap on training examples (quick runs)."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Cap on validation and test examples."})
    batch_by_task: bool = field(
        default=False,
        metadata={
            "help": "Every training batch from one task (rows labelled for the same tasks) instead of mixed batches; "
            "length grouping, when on, applies within each task."
        },
    )
    dataset_name: str | None = field(
        default=None, metadata={"help": "Hub id of the data set the files come from, for the model card."}
    )

    def __post_init__(self):
        for name in ("max_train_samples", "max_eval_samples"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ArgumentError(f"--{name} must be >= 1 (leave it out for no cap), got {getattr(self, name)}")
        self.resolve_data_files()
        self.eval_sets()  # every --eval_file item is NAME:ENTRY, and no set takes the validation set's name

    def resolve_data_files(self):
        """The bundled files for every split when no data file is given at all; else a split not given is none (your
        own data is never tested on, or selected by, the bundled files)."""
        splits = {"train": "train_file", "validation": "validation_file", "test": "test_file"}
        own_data = self.eval_file or any(getattr(self, name) for name in splits.values())
        for split, name in splits.items():
            if getattr(self, name) is None:
                setattr(self, name, [] if own_data else [str(REPO_DIR / "data" / f"{split}.jsonl")])
        if not self.train_file:
            raise ArgumentError(
                "--train_file not given: the bundled data is the default only when no data file is given at all; "
                "give your training data with --train_file"
            )

    def eval_sets(self):
        """`{name: [entry, ...]}` of every evaluation set: 'validation' (--validation_file, if any) first, then each
        --eval_file set in the order first named."""
        sets = {"validation": list(self.validation_file)} if self.validation_file else {}
        for item in self.eval_file:
            name, entry = split_named_entry(item)
            if name == "validation" and self.validation_file:
                raise ArgumentError(
                    f"--eval_file {item}: the set 'validation' is --validation_file's; give this set another name"
                )
            sets.setdefault(name, []).append(entry)
        return sets


NAMED_ENTRY = re.compile(r"(\w+):(.+)")  # an evaluation set's entry, NAME:PATH or NAME:TASK=PATH


def split_named_entry(item):
    """`"ood:topic=t.jsonl"` -> ("ood", "topic=t.jsonl")."""
    match = NAMED_ENTRY.fullmatch(item)
    if match is None:
        raise ArgumentError(
            f"--eval_file {item}: expected NAME:PATH or NAME:TASK=PATH (NAME: letters, digits, _), e.g. ood:topic=t.jsonl"
        )
    return match.group(1), match.group(2)


def entry_path(entry):
    """The file of a data entry: PATH, TASK=PATH, NAME:PATH or NAME:TASK=PATH."""
    match = NAMED_ENTRY.fullmatch(entry)
    entry = match.group(2) if match else entry
    return entry.partition("=")[2] if "=" in entry else entry


@dataclass
class MultiTaskTrainingArguments(TrainingArguments):
    """TrainingArguments with defaults that suit this model (the bundled data, CPU, best-model selection)."""

    output_dir: str | None = field(default="outputs/multitask-minilm")
    num_train_epochs: float = field(default=5.0)
    # 1e-4 was the better of {5e-5, 1e-4} for the multi-task model on real data (benchmarks/accuracy.py)
    learning_rate: float = field(default=1e-4)
    per_device_train_batch_size: int = field(default=16)
    per_device_eval_batch_size: int = field(default=64)
    eval_strategy: IntervalStrategy | str = field(default="epoch")
    save_strategy: SaveStrategy | str = field(default="epoch")
    save_total_limit: int | None = field(default=2)
    load_best_model_at_end: bool = field(default=True)
    metric_for_best_model: str | None = field(default="mean_f1")
    selection_sets: str | None = field(
        default=None,
        metadata={
            "help": "Comma-separated names of the evaluation sets best-model selection averages (e.g. 'validation,ood'): "
            "eval_mean_f1 is the mean of each named set's mean F1, every set weighted alike. Default: every set."
        },
    )
    logging_steps: float = field(default=10)
    report_to: None | str | list[str] = field(default="none")
    hub_strategy: HubStrategy | str = field(default="end")
    train_sampling_strategy: str = field(default="group_by_length")
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Replace a non-empty --output_dir (its model and checkpoints are removed first)."},
    )
    keep_checkpoints: bool = field(
        default=False, metadata={"help": "Keep the checkpoint-* folders after a finished run (default: removed)."}
    )
    verbose: bool = field(default=False, metadata={"help": "Show the libraries' informational logs too."})
    # Fine-tuning without forgetting (benchmarks/robustness.py compares the methods; docs/design.md, "Robustness").
    # 0.8: the best of the methods tried for accuracy on text unlike the training data (benchmarks/robustness.py,
    # docs/design.md): +1 to +2 points on other-source topic headlines, in-distribution accuracy about unchanged
    wise_ft_alpha: float = field(
        default=0.8,
        metadata={
            "help": "WiSE-FT: the final encoder is (1 - alpha) * pretrained + alpha * fine-tuned (the encoder as it "
            "was before training: the pretrained one, or a continued model's); 1.0 = off (plain fine-tuning)."
        },
    )
    # Learning without forgetting (Li & Hoiem, 2016): what keeps a saved model's tasks when it trains on (mostly)
    # other data, e.g. a task added unfrozen (README, "Adding a task to a trained model")
    distill_weight: float = field(
        default=0.0,
        metadata={
            "help": "Continuing a saved model (--model_name_or_path): add W x a distillation loss that keeps its own "
            "tasks' outputs on every training row close to what the saved model answers; 0 = off."
        },
    )
    distill_temperature: float = field(default=2.0, metadata={"help": "Softmax temperature of --distill_weight."})

    def __post_init__(self):
        for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
            if getattr(self, name) < 1:
                raise ArgumentError(f"--{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.num_train_epochs < math.inf:
            raise ArgumentError(f"--num_train_epochs must be >= 0, got {self.num_train_epochs:g}")
        self.check_optimizer_options()
        for name in ("seed", "data_seed"):  # numpy's range; outside it the data shuffle fails with a traceback
            if getattr(self, name) is not None and not 0 <= getattr(self, name) < 2**32:
                raise ArgumentError(f"--{name} must be in [0, 2**32 - 1], got {getattr(self, name)}")
        if self.max_steps <= 0 and self.num_train_epochs <= 0:
            raise ArgumentError(
                f"--num_train_epochs {self.num_train_epochs:g} means no training step; give a positive number of "
                "epochs or --max_steps"
            )
        if self.output_dir and os.path.isfile(self.output_dir):
            raise ArgumentError(f"--output_dir {self.output_dir}: is a file; name a folder")
        self.check_robustness_options()
        if str(self.eval_strategy) in ("no", "IntervalStrategy.NO") and self.load_best_model_at_end:
            # best-model selection needs evaluations; without them the last model is kept
            logger.warning("--eval_strategy no: best-model selection is off, the model of the last step is kept")
            self.load_best_model_at_end = False
        if self.disable_tqdm is None and not (getattr(sys.stderr, "isatty", None) and sys.stderr.isatty()):
            self.disable_tqdm = True  # a log file or a pipe gets no progress bars (their \r and escape codes)
        if not self.use_cpu and not torch.cuda.is_available():
            self.dataloader_pin_memory = False  # pinning needs an accelerator: off, instead of a warning per epoch
        try:
            super().__post_init__()
        except ValueError as e:  # TrainingArguments' own checks
            raise ArgumentError(" ".join(str(e).split())) from None
        if self.use_cpu:
            self.dataloader_pin_memory = False

    def check_optimizer_options(self):
        """Numbers the optimizer, the scheduler and the data loader would refuse only once the model is built."""
        if not 0 < self.learning_rate < math.inf:
            raise ArgumentError(f"--learning_rate must be a number > 0, got {self.learning_rate:g}")
        for name in ("weight_decay", "adam_epsilon", "warmup_steps"):
            if not 0 <= getattr(self, name) < math.inf:
                raise ArgumentError(f"--{name} must be a number >= 0, got {getattr(self, name):g}")
        for name in ("adam_beta1", "adam_beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ArgumentError(f"--{name} must be in [0, 1), got {getattr(self, name):g}")
        if math.isnan(self.max_grad_norm):
            raise ArgumentError("--max_grad_norm must be a number (0 or less: no clipping), got nan")
        if self.dataloader_num_workers < 0:
            raise ArgumentError(f"--dataloader_num_workers must be >= 0, got {self.dataloader_num_workers}")
        if self.eval_accumulation_steps is not None and self.eval_accumulation_steps < 1:
            raise ArgumentError(f"--eval_accumulation_steps must be >= 1, got {self.eval_accumulation_steps}")

    def check_robustness_options(self):
        if not 0.0 <= self.wise_ft_alpha <= 1.0:
            raise ArgumentError(f"--wise_ft_alpha must be in [0, 1], got {self.wise_ft_alpha:g}")
        if not 0.0 <= self.distill_weight < float("inf"):
            raise ArgumentError(f"--distill_weight must be a number >= 0, got {self.distill_weight:g}")
        if not 0.0 < self.distill_temperature < float("inf"):
            raise ArgumentError(f"--distill_temperature must be > 0, got {self.distill_temperature:g}")
        if not 0.0 <= self.label_smoothing_factor < 1.0:  # cross_entropy's own check comes at the first step
            raise ArgumentError(f"--label_smoothing_factor must be in [0, 1), got {self.label_smoothing_factor:g}")

    def selection_set_names(self, eval_sets):
        """The evaluation sets best-model selection averages (`--selection_sets`, default all), checked against the
        names of `eval_sets`."""
        if self.selection_sets is None:
            return list(eval_sets)
        names = [name.strip() for name in self.selection_sets.split(",") if name.strip()]
        unknown = [name for name in names if name not in eval_sets]
        if unknown or not names:
            raise ArgumentError(
                f"--selection_sets {self.selection_sets!r}: {'unknown set(s) ' + str(unknown) if unknown else 'no set'}; "
                f"the evaluation sets are {list(eval_sets)}"
            )
        return names


def model_config(model_args):
    """The `MultiTaskConfig` of the model to train, checked before any data or weights are read.

    A new model: the encoder's config plus the settings given. A continued model (`--model_name_or_path`): the
    checkpoint's config; architecture flags must agree with it, training settings may change, and `--add_tasks`
    appends tasks (their heads are added by `build_model`)."""
    settings = model_args.config_settings()
    try:
        if not model_args.model_name_or_path:
            settings.setdefault("max_seq_length", 128)
            source = resolve_backbone(model_args.backbone)
            check_model_source(source)
            try:
                backbone_config = AutoConfig.from_pretrained(source)
            except OSError as e:
                raise ArgumentError(f"--backbone {model_args.backbone}: {str(e).splitlines()[0]}") from None
            return MultiTaskConfig(backbone_config=backbone_config, **settings)
        saved = MultiTaskConfig.from_saved_model(model_args.model_name_or_path)
        for name in ARCHITECTURE_FIELDS:
            if name in settings and settings[name] != getattr(saved, name):
                given, kept = f"--{name} {settings[name]!r}", getattr(saved, name)
                if name == "multi_label_tasks":  # task kinds are given in --tasks
                    name, given = "tasks", f"--tasks's multi-label tasks {settings[name]!r}"
                raise ArgumentError(
                    f"{given} differs from the saved model's {kept!r} "
                    f"({model_args.model_name_or_path}); a saved model keeps its architecture: drop --{name}"
                    f"{' (--add_tasks adds tasks)' if name == 'tasks' else ''}, or train a new model from --backbone"
                )
        changes = {name: settings[name] for name in TRAINING_FIELDS if name in settings}
        added, added_multi_label = model_args.added_tasks()
        existing = sorted(set(added) & set(saved.tasks))
        if existing:
            raise ArgumentError(f"--add_tasks: the saved model already has task(s) {existing}")
        if added:  # after the saved tasks, validated with them below
            changes["tasks"] = [*saved.tasks.items(), *added.items()]
            changes["multi_label_tasks"] = [*saved.multi_label_tasks, *added_multi_label]
        if "loss_weights" in changes:  # tasks not named get 1.0, as for a new model
            changes["loss_weights"] = {**dict.fromkeys(saved.tasks, 1.0), **changes["loss_weights"]}
        if changes:
            logger.info("continuing %s with %s", model_args.model_name_or_path, changes)
        return MultiTaskConfig(**{**saved.to_dict(), **changes})  # validated like a new config
    except ArgumentError:
        raise
    except ValueError as e:  # MultiTaskConfig's checks name the field and the value: name the flag instead
        raise ArgumentError(flag_message(str(e), "add_tasks" if model_args.add_tasks else "tasks")) from None


def flag_message(message, tasks_flag):
    """A MultiTaskConfig error (which names the config field) as a message about the flag that set it."""
    for name in ("pooling", "classifier_dropout", "head_hidden_size", "head_activation", "loss_weights",
                 "max_seq_length"):  # fmt: skip
        if message.startswith(name):
            return f"--{message}"
    if message.startswith(("task", "multi_label_tasks", "loss weight")):
        return f"--{tasks_flag}: {message}"
    return message


def backbone_name(name_or_path):
    """What config.json and the model card call the encoder: its public name, never a path of this machine."""
    if name_or_path == BUNDLED:
        return BUNDLED_NAME
    return Path(name_or_path).name if Path(name_or_path).is_dir() else name_or_path


def build_model(model_args, config):
    if model_args.model_name_or_path:
        # The saved model with the training settings given, then a fresh head for each task of `config` it lacks
        # (--add_tasks), added with `add_task`, as a user would.
        saved_tasks = MultiTaskConfig.from_saved_model(model_args.model_name_or_path).tasks
        training = {name: getattr(config, name) for name in TRAINING_FIELDS}
        training["loss_weights"] = {task: w for task, w in config.loss_weights.items() if task in saved_tasks}
        try:
            model = load_saved_model(model_args.model_name_or_path, **training)
        except ValueError as e:  # missing or damaged weights, a pickle that cannot be loaded safely: one line
            raise ArgumentError(str(e)) from None
        for task, labels in config.tasks.items():
            if task not in saved_tasks:
                model.add_task(task, labels, multi_label=task in config.multi_label_tasks)
        model.config.loss_weights = dict(config.loss_weights)
        return model
    settings = {k: v for k, v in config.to_dict().items() if k in ARCHITECTURE_FIELDS + TRAINING_FIELDS}
    try:
        return MultiTaskModel.from_backbone(
            resolve_backbone(model_args.backbone), backbone_name=backbone_name(model_args.backbone), **settings
        )
    except ValueError as e:
        raise ArgumentError(str(e)) from None


def load_tokenizer(model_args, config):
    """The tokenizer of the saved model or encoder being trained; an ArgumentError of one line when it cannot be
    read."""
    # config= keeps AutoTokenizer from reading a saved multi-task config.json (remote code) just to find the class
    if model_args.model_name_or_path:
        source, read_with = model_args.model_name_or_path, config
    else:
        source, read_with = resolve_backbone(model_args.backbone), config.backbone_config
    try:
        return load_saved_tokenizer(source, read_with)
    except ValueError as e:
        raise ArgumentError(str(e)) from None


def shown_path(entry):
    """A path (or a TASK=PATH, NAME:PATH, NAME:TASK=PATH data entry) as the model card shows it: relative to the working
    directory when it is below it, else its last component, so that nothing names a folder of the machine it was
    trained on."""
    named = NAMED_ENTRY.fullmatch(entry)
    name, entry = (f"{named.group(1)}:", named.group(2)) if named else ("", entry)
    task, sep, path = entry.partition("=") if "=" in entry else ("", "", entry)
    relative = os.path.relpath(os.path.abspath(path))
    shown = relative if not relative.startswith("..") else Path(path).name
    return f"{name}{task}{sep}{shown}"


def shown_command(argv):
    """`python train.py ARGS` with every argument that is a path (or TASK=PATH) shown as `shown_path` shows it."""

    def shown(arg):
        path = entry_path(arg) if not arg.startswith("-") else arg
        return shown_path(arg) if os.path.isabs(path) or os.path.exists(path) else arg

    return " ".join(["python train.py", *(shown(arg) for arg in argv)])


def model_card(model, tokenizer, model_args, data_args, metrics, command):
    """The Hub model card: metadata (base model, licence, model-index with every task's results) and a body with the
    task schema, the data, the command and the results table. Named evaluation sets (--eval_file) give one group
    of results each, under their name as the split."""
    config = model.config
    named_sets = data_args.eval_sets() if data_args.eval_file else {}
    eval_splits = [(f"eval_{name}", name, entries) for name, entries in named_sets.items()] or [
        ("eval", "validation", data_args.validation_file)
    ]
    eval_results = [
        EvalResult(
            task_type="text-classification",
            task_name=task,
            dataset_type=data_args.dataset_name or "local-files",
            dataset_name=", ".join(shown_path(e) for e in files),
            dataset_config=task,  # the Hub groups results by dataset config: one group per task
            dataset_split=split_name,
            metric_type=metric,
            metric_name=f"{task} {metric}",
            metric_value=round(metrics[f"{prefix}_{task}_{metric}"], 4),
        )
        for prefix, split_name, files in (*eval_splits, ("test", "test", data_args.test_file))
        for task in config.tasks
        for metric in ("accuracy", "f1")
        if f"{prefix}_{task}_{metric}" in metrics
    ]
    card_data = ModelCardData(
        base_model=config.backbone_config._name_or_path or None,
        license=model_args.license,
        library_name="transformers",
        pipeline_tag="text-classification",
        tags=["multi-task", "sentence-classification", "custom_code"],
        datasets=[data_args.dataset_name] if data_args.dataset_name else None,
        metrics=["accuracy", "f1"],
        model_name=Path(os.path.abspath(model.name_or_path or "multitask-model")).name,
        eval_results=eval_results or None,
    )
    schema = "\n".join(
        f"- `{task}`{' (multi-label)' if task in config.multi_label_tasks else ''}: "
        f"{', '.join(f'`{label}`' for label in labels)}"
        for task, labels in config.tasks.items()
    )
    other_sets = "".join(
        f"\n- evaluation set `{name}`: {', '.join(f'`{shown_path(e)}`' for e in entries)}"
        for name, entries in named_sets.items()
        if name != "validation"
    )
    body = f"""
# Multi-task sentence classifier

One shared encoder (`{card_data.base_model}`, {config.pooling} pooling) and one head per task; one forward pass
answers every task. Inputs are truncated to {config.max_seq_length} tokens, as in training.

## Tasks
{schema}

## Training data
- train: {", ".join(f"`{shown_path(e)}`" for e in data_args.train_file)}
- validation: {", ".join(f"`{shown_path(e)}`" for e in data_args.validation_file) or "none"}
- test: {", ".join(f"`{shown_path(e)}`" for e in data_args.test_file) or "none"}{other_sets}

## Command
```
{command}
```

## Results
{results_table(metrics, config.tasks, list(named_sets))}

## Use
```python
from transformers import AutoModel, AutoTokenizer
model = AutoModel.from_pretrained("PATH_OR_REPO", trust_remote_code=True)
tokenizer = AutoTokenizer.from_pretrained("PATH_OR_REPO", trust_remote_code=True)
print(model.predict(["Shares of the chipmaker jumped 8% after earnings."], tokenizer))
```
"""
    return ModelCard(f"---\n{card_data.to_yaml()}\n---\n{body}")


def save_final(trainer, output_dir):
    """Write the final model so that a kill at any moment never leaves a directory that loads a half-written model:
    everything goes to a temporary directory first, the old config.json is removed, the files are moved in, and
    config.json (without which nothing loads) is moved last. Safe under N processes: only the main process touches
    the folder, and the others wait for it at each step."""
    output_dir = Path(output_dir)
    tmp = output_dir / ".tmp-final-model"
    if trainer.is_world_process_zero():
        shutil.rmtree(tmp, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    try:
        trainer.save_model(str(tmp))  # every process takes part (sharded states); only the main one writes
        if trainer.is_world_process_zero():
            save_pipeline(tmp, trainer.model)  # pipeline(model=DIR, trust_remote_code=True) works on the result
            # Trainer pickles its arguments; keep the final model pickle-free and the arguments readable as JSON.
            (tmp / "training_args.bin").unlink(missing_ok=True)
            (tmp / "training_args.json").write_text(trainer.args.to_json_string(), encoding="utf-8")
            mode = 0o666 & ~current_umask()  # some writers (safetensors) make 0600 files; give the folder's usual mode
            (output_dir / "config.json").unlink(missing_ok=True)
            for path in sorted(tmp.iterdir(), key=lambda p: p.name == "config.json"):
                os.chmod(path, mode)
                os.replace(path, output_dir / path.name)
            tmp.rmdir()
    except BaseException:  # a full disk, Ctrl-C: no half-written model left behind in the temporary folder
        if trainer.is_world_process_zero():
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    trainer.accelerator.wait_for_everyone()


def current_umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


class Interrupted(Exception):
    """Ctrl-C during training; the message says where the run stopped and how to resume it."""


def run_settings(model_args, data_args, training_args):
    """What a run's result depends on, in shareable form (data files by content hash, paths as `shown_path`): the
    record that decides whether a folder or a checkpoint belongs to this run."""
    ignored = {
        "output_dir", "overwrite_output_dir", "resume_from_checkpoint", "keep_checkpoints", "verbose", "logging_dir",
        "logging_steps", "logging_strategy", "logging_first_step", "report_to", "disable_tqdm", "push_to_hub",
        "hub_model_id", "hub_strategy", "hub_token", "hub_private_repo", "save_total_limit", "log_level",
        "log_level_replica", "per_device_eval_batch_size", "dataloader_num_workers", "run_name", "license",
        "dataset_name",
    }  # fmt: skip

    def shareable(name, value):
        if name.endswith("_file"):  # data entries: by what they hold, not where they are
            return [f"{shown_path(e)}#{file_sha256(entry_path(e))}" for e in value]
        if name in ("backbone", "model_name_or_path") and value:
            return backbone_name(value)
        return value if isinstance(value, (str, int, float, bool, type(None), list)) else str(value)

    settings = {}
    for args in (model_args, data_args):
        settings.update({k: shareable(k, v) for k, v in vars(args).items() if k not in ignored})
    training = training_args.to_dict()
    settings.update({k: shareable(k, v) for k, v in training.items() if k not in ignored and not k.startswith("_")})
    return settings


def file_sha256(path):
    return sha256_file(path)[:16] if os.path.isfile(path) else "missing"


# What train.py writes in its output folder (itself, through Trainer, save_pretrained and the tokenizer), and what
# export_onnx.py adds to a model: the only names --overwrite_output_dir removes. A folder is train.py's only if it
# holds its run record (run.json) and nothing else.
RUN_OUTPUTS = (
    RUN_RECORD, f".{RUN_RECORD}.tmp", ".tmp-final-model", f"{PREFIX_CHECKPOINT_DIR}-*", "runs", "onnx",
    "README.md", "config.json", "generation_config.json", "model.safetensors", "model-*-of-*.safetensors",
    "model.safetensors.index.json", "configuration_multitask.py", "modeling_multitask.py", "pipeline_multitask.py",
    "text_normalization.py", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "chat_template.jinja", "vocab.txt", "vocab.json", "merges.txt", "spiece.model", "sentencepiece.bpe.model",
    "tokenizer.model", "all_results.json", "train_results.json", "eval_results.json", "test_results.json",
    PER_LABEL_RESULTS, "trainer_state.json", "training_args.json", "training_args.bin",
)  # fmt: skip


def is_run_output(name):
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in RUN_OUTPUTS)


def forbidden_output_dir(out, model_args, data_args):
    """Why `out` can never be an output folder (a folder train.py would write into and --overwrite_output_dir
    empty), or None: the root, the home folder, this repository, the current directory, a git repository, or a
    folder that holds an input (a data file, the model or encoder read)."""
    target = Path(os.path.realpath(out))

    def holds(path):  # `out` is `path` or one of the folders above it
        return holds_path(target, path)

    def what(path, name):
        return f"is {name}" if target == Path(os.path.realpath(path)) else f"holds {name} ({path})"

    if target == Path(target.anchor):
        return "is the root folder"
    for path, name in ((Path.home(), "your home folder"), (REPO_DIR, "this repository"), (Path.cwd(), "the current directory")):  # fmt: skip
        if holds(path) and Path(os.path.realpath(path)) != Path(target.anchor):  # a home or cwd of / holds no output
            return what(path, name)
    if (target / ".git").exists():
        return "is a git repository (it holds .git)"
    inputs = [(f"--{name}", entry_path(e)) for name in ("train_file", "validation_file", "test_file", "eval_file")
              for e in getattr(data_args, name)]  # fmt: skip
    for flag in ("model_name_or_path", "backbone"):
        source = getattr(model_args, flag)
        if source and source != BUNDLED and os.path.isdir(source):
            inputs.append((f"--{flag}", os.path.join(source, "config.json")))
    for flag, path in inputs:
        if holds(Path(os.path.realpath(path)).parent):
            return f"holds {flag} {path}"
    return None


def check_output_dir(model_args, data_args, training_args, settings):
    """Refuse, before anything is read or written, an output folder that train.py must not write into or may not
    replace, one that holds another run, or a checkpoint to resume from that does not exist or belongs to another
    run. `--overwrite_output_dir` replaces only a folder of train.py (its run record and nothing but what train.py
    writes); every refusal names only the options that would be accepted."""
    out = Path(training_args.output_dir)
    resume = training_args.resume_from_checkpoint
    forbidden = forbidden_output_dir(out, model_args, data_args)
    if forbidden:
        raise ArgumentError(
            f"--output_dir {out}: {forbidden}; train.py writes (and --overwrite_output_dir empties) a folder of its "
            "own: choose another --output_dir, e.g. outputs/NAME"
        )
    if resume and resume != "last":
        if not (Path(resume) / "trainer_state.json").is_file():
            raise ArgumentError(
                f"--resume_from_checkpoint {resume}: not a complete checkpoint folder (no trainer_state.json)"
            )
        recorded = read_run_record(resume)
        if recorded is not None and recorded != settings:
            raise ArgumentError(
                f"--resume_from_checkpoint {resume}: written by a run with other settings: "
                + "; ".join(setting_differences(recorded, settings))
            )
    if not (out.is_dir() and any(out.iterdir())):
        return
    recorded = read_run_record(out)
    foreign = sorted(path.name for path in out.iterdir() if not is_run_output(path.name))
    finished = recorded is not None and (out / "config.json").is_file()  # save_final moves config.json in last
    replaceable = recorded is not None and not foreign
    if resume and training_args.overwrite_output_dir and (resume == "last" or holds_path(out, resume)):
        raise ArgumentError(
            f"--resume_from_checkpoint {resume} and --overwrite_output_dir: the checkpoint would be removed before "
            "training resumes from it; drop one of them"
        )
    if training_args.overwrite_output_dir and replaceable:
        return
    if recorded is None:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise ArgumentError(
            f"--output_dir {out}: is not empty and holds no run of train.py (no {RUN_RECORD}; it holds {shown}); "
            "train.py replaces nothing it did not write, even with --overwrite_output_dir: choose another --output_dir"
        )
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        ways = "--resume_from_checkpoint last continues its run, or choose" if not finished else "choose"
        if not resume or finished:
            raise ArgumentError(
                f"--output_dir {out}: holds an earlier run and files train.py did not write ({shown}), which "
                f"--overwrite_output_dir would not remove; {ways} another --output_dir"
            )
    if not resume:
        if finished:
            raise ArgumentError(
                f"--output_dir {out}: is not empty (holds a finished run: its model); --overwrite_output_dir replaces "
                "it, or choose another --output_dir"
            )
        raise ArgumentError(
            f"--output_dir {out}: is not empty (holds an unfinished run); --resume_from_checkpoint last continues "
            "it, --overwrite_output_dir replaces it, or choose another --output_dir"
        )
    if finished and resume == "last":
        raise ArgumentError(
            f"--output_dir {out}: holds a finished run (its model is saved): nothing to resume; --overwrite_output_dir "
            "replaces it, or choose another --output_dir"
        )
    if recorded != settings:
        raise ArgumentError(
            f"--output_dir {out}: holds a run with other settings, which cannot be resumed with these: "
            f"{'; '.join(setting_differences(recorded, settings))}; use the settings it was started with, "
            f"{'--overwrite_output_dir, ' if not foreign else ''}or another --output_dir"
        )


def holds_path(folder, path):
    """Whether `path` is `folder` or lies below it (symlinks resolved)."""
    folder, path = Path(os.path.realpath(folder)), Path(os.path.realpath(path))
    return path == folder or folder in path.parents


def start_output_dir(training_args, settings):
    """Empty the output folder if asked (after every check has passed: only the names train.py writes), and record
    this run's settings in it. Returns what the folder held before this run wrote anything (None: it did not exist),
    for `removed_if_unfinished`."""
    out = Path(training_args.output_dir)
    if training_args.overwrite_output_dir and out.is_dir():
        logger.warning("--overwrite_output_dir: removing the earlier run in %s", out)
        for path in out.iterdir():
            if is_run_output(path.name):
                shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    before = set(os.listdir(out)) if out.is_dir() else None
    created = [p for p in (out, *out.parents) if not p.exists()]  # the folders this run makes, deepest first
    try:
        out.mkdir(parents=True, exist_ok=True)
        write_run_record(out, settings)
    except OSError as e:
        remove_new_entries(out, before, created)
        raise OutputError(f"--output_dir {out}: cannot write there ({e.strerror or e})") from None
    return before, created


def remove_new_entries(out, before, created):
    """Take back what a run wrote in `out`: every entry not in `before`, or the folders it created."""
    if before is None:
        shutil.rmtree(out, ignore_errors=True)
        for folder in created[1:]:  # the parents it made, if nothing else went into them
            try:
                folder.rmdir()
            except OSError:
                break
        return
    for path in Path(out).iterdir() if Path(out).is_dir() else ():
        if path.name not in before:
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() and not path.is_symlink() else path.unlink()


@contextmanager
def removed_if_unfinished(training_args, settings, written):
    """A run that stops before its first complete checkpoint (a full disk, Ctrl-C, a failure) takes back what it
    wrote, so the same command, or a corrected one, starts again instead of being refused as an earlier run. A run
    with a complete checkpoint keeps everything: `--resume_from_checkpoint last` continues it."""
    try:
        yield
    except BaseException:
        if written is not None and last_complete_checkpoint(training_args.output_dir, settings) is None:
            remove_new_entries(Path(training_args.output_dir), *written)
        raise


def remove_checkpoints(output_dir):
    for checkpoint in sorted(Path(output_dir).glob(f"{PREFIX_CHECKPOINT_DIR}-*")):
        shutil.rmtree(checkpoint)
        logger.info("removed %s (--keep_checkpoints keeps checkpoints)", checkpoint)


def parse_args(argv):
    parser = HfArgumentParser((ModelArguments, DataArguments, MultiTaskTrainingArguments))
    if isinstance(argv, dict):  # programmatic use: {"backbone": ..., "test_file": [], ...}
        shown = [[f"--{key}", *map(str, value if isinstance(value, list) else [value])] for key, value in argv.items()]
        return (*parser.parse_dict(argv), [token for pair in shown for token in pair])
    try:
        if len(argv) == 1 and argv[0].endswith(".json"):
            return (*parser.parse_json_file(json_file=os.path.abspath(argv[0])), argv)
        return (*parser.parse_args_into_dataclasses(args=argv), argv)
    except ArgumentError:
        raise
    except (OSError, ValueError) as e:  # a missing or malformed arguments file, arguments that are no option
        where = f"{argv[0]}: " if len(argv) == 1 and argv[0].endswith(".json") else ""
        raise ArgumentError(f"{where}{' '.join(str(e).split())}") from None


def main(argv=None):
    model_args, data_args, training_args, argv = parse_args(sys.argv[1:] if argv is None else argv)

    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", level=logging.INFO)
    log_level = training_args.get_process_log_level()
    logger.setLevel(logging.INFO if training_args.should_log else logging.WARNING)
    if training_args.verbose:
        log_level = min(log_level, logging.INFO)
    transformers.utils.logging.set_verbosity(log_level)
    datasets.utils.logging.set_verbosity(log_level if training_args.verbose else max(log_level, logging.WARNING))
    if training_args.disable_tqdm:  # stderr is not a terminal (a log file, a pipe), or --disable_tqdm
        hide_progress_bars()

    logger.info(
        "process %d of %d (world size %d), device %s",
        training_args.process_index,
        training_args.world_size,
        training_args.world_size,
        training_args.device,
    )
    # Check the settings, the output folder and all data before anything is built or written.
    settings = run_settings(model_args, data_args, training_args)
    check_output_dir(model_args, data_args, training_args, settings)
    config = model_config(model_args)
    if training_args.distill_weight and not model_args.model_name_or_path:
        raise ArgumentError(
            "--distill_weight keeps a saved model's tasks close to that model's answers: give the model with "
            "--model_name_or_path (a new model has nothing to keep)"
        )
    depth = getattr(config.backbone_config, "num_hidden_layers", None)
    if depth is not None and model_args.freeze_layers > depth:
        raise ArgumentError(f"--freeze_layers {model_args.freeze_layers}, but the encoder has {depth} layers")
    unknown = [task for task in model_args.freeze_heads if task not in config.tasks]
    if unknown:
        raise ArgumentError(
            f"--freeze_heads names unknown task(s) {unknown}; the model's tasks are {list(config.tasks)}"
        )
    tokenizer = load_tokenizer(model_args, config)
    check_sequence_length(model_args, config, tokenizer)
    eval_entries = data_args.eval_sets()
    selection_sets = training_args.selection_set_names(eval_entries)
    check_metric_for_best_model(training_args, config, eval_entries if data_args.eval_file else {})
    tasks = config.tasks
    split_kwargs = {
        "seed": training_args.seed,
        "multi_label": config.multi_label_tasks,
    }
    multi_label = {"multi_label": config.multi_label_tasks}
    train_ds = load_split(data_args.train_file, tasks, data_args.max_train_samples, **split_kwargs)
    eval_splits = {
        name: load_split(entries, tasks, data_args.max_eval_samples, **multi_label)
        for name, entries in eval_entries.items()
    }
    test_ds = (
        load_split(data_args.test_file, tasks, data_args.max_eval_samples, **multi_label)
        if data_args.test_file
        else None
    )
    for name, ds in (("train", train_ds), *eval_splits.items(), ("test", test_ds)):
        if ds is not None:
            logger.info("%s: %d examples, labelled per task %s", name, len(ds), label_counts(ds, tasks))

    set_seed(training_args.seed)
    model = build_model(model_args, config)
    # learning without forgetting: the model as it starts (its new heads unused) answers the saved model's tasks
    teacher = copy.deepcopy(model) if training_args.distill_weight else None
    added = model_args.added_tasks()[0]
    distill_tasks = [task for task in config.tasks if task not in added] if teacher else []  # the saved model's
    frozen = freeze(
        model,
        backbone=model_args.freeze_backbone,
        embeddings=model_args.freeze_embeddings,
        layers=model_args.freeze_layers,
        heads=model_args.freeze_heads,
    )
    if frozen:
        logger.info("frozen: %d parameter tensors (%s ...)", len(frozen), ", ".join(frozen[:3]))
    # WiSE-FT interpolates towards the encoder as it is before training: the pretrained one (or a continued model's)
    initial_encoder = (
        {name: t.detach().to("cpu", copy=True) for name, t in model.encoder_state_dict().items()}
        if training_args.wise_ft_alpha < 1.0
        else None
    )
    model.config.pad_token_id = tokenizer.pad_token_id  # what Trainer would align (with a notice) otherwise

    def tokenize(batch):
        return tokenizer(batch["text"], truncation=True, max_length=model.config.max_seq_length)

    with training_args.main_process_first(desc="tokenization"):
        train_ds, test_ds = (
            ds.map(tokenize, batched=True, remove_columns=["text"]) if ds is not None else None
            for ds in (train_ds, test_ds)
        )
        eval_splits = {
            name: ds.map(tokenize, batched=True, remove_columns=["text"]) for name, ds in eval_splits.items()
        }
    # Named sets (--eval_file) are evaluated as a dict (eval_<name>_*); the validation set alone as always (eval_*).
    named_sets = list(eval_splits) if data_args.eval_file else []
    eval_ds = eval_splits if named_sets else eval_splits.get("validation")

    written = None  # what the output folder held before this run wrote into it (only the main process writes)
    with training_args.main_process_first(desc="output folder"):
        if training_args.should_save:
            written = start_output_dir(training_args, settings)

    training_args.label_names = [f"labels_{task}" for task in tasks]
    if eval_ds is None:
        logger.warning("no --validation_file: no evaluation during training; the model of the last step is kept")
        training_args.eval_strategy = "no"
        training_args.load_best_model_at_end = False
    with removed_if_unfinished(training_args, settings, written):
        trainer = MultiTaskTrainer(
            model=model,
            args=training_args,
            train_dataset=train_ds,
            eval_dataset=eval_ds,
            processing_class=tokenizer,
            data_collator=DataCollatorWithPadding(tokenizer),
            compute_metrics=make_compute_metrics(list(tasks), model.config),  # reads the thresholds tuned below
            head_learning_rate=model_args.head_learning_rate,
            layerwise_lr_decay=model_args.layerwise_lr_decay,
            selection_sets=selection_sets,
            batch_by_task=data_args.batch_by_task,
            teacher=teacher,
            distill_tasks=distill_tasks,
            distill_weight=training_args.distill_weight,
            distill_temperature=training_args.distill_temperature,
        )
        resume = training_args.resume_from_checkpoint
        if resume == "last":
            resume = last_complete_checkpoint(training_args.output_dir, settings)
            logger.info("resuming from %s", resume or "scratch (no complete checkpoint of this run yet)")
        trainer.add_callback(RunRecordCallback(settings))
        try:
            train_result = trainer.train(resume_from_checkpoint=resume)
        except pickle.UnpicklingError:  # torch's weights-only loading refused a file of the checkpoint
            raise ArgumentError(
                f"--resume_from_checkpoint {resume}: the checkpoint cannot be loaded safely (a file in it holds "
                "Python objects besides tensors); resume only from checkpoints this code wrote"
            ) from None
        except KeyboardInterrupt:
            for callback in trainer.callback_handler.callbacks:  # close the progress bar now, not after our message
                if getattr(callback, "training_bar", None) is not None:
                    callback.training_bar.close()
            raise Interrupted(
                f"at step {trainer.state.global_step} of {trainer.state.max_steps}; "
                + how_to_go_on(training_args, settings, "--resume_from_checkpoint last to go on")
            ) from None
        except OSError as e:
            if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            raise OutputError(
                f"{training_args.output_dir}: {e.strerror} while writing a checkpoint; free some space and "
                + how_to_go_on(training_args, settings, "--resume_from_checkpoint last to go on")
            ) from None
        if trainer.state.global_step == 0:
            raise ArgumentError(
                "training ran 0 steps; nothing was saved (check --max_steps, --num_train_epochs, the data)"
            )
        metrics = {f"train_{k}" if not k.startswith("train_") else k: v for k, v in train_result.metrics.items()}
        finish = "--resume_from_checkpoint last to finish it"
        try:
            if initial_encoder is not None:
                alpha = training_args.wise_ft_alpha
                wise_ft(trainer.model, initial_encoder, alpha)
                logger.info("WiSE-FT: the encoder is %g x fine-tuned + %g x initial", alpha, 1 - alpha)
            validation_ds = eval_splits.get("validation")
            if validation_ds is not None and trainer.tune_thresholds(validation_ds):  # multi-label: thresholds
                logger.info("decision thresholds tuned on the validation set: %s", model.config.label_thresholds)
            if eval_ds is not None:
                metrics.update(trainer.evaluate(eval_ds, metric_key_prefix="eval"))
            if test_ds is not None:
                metrics.update(trainer.evaluate(test_ds, metric_key_prefix="test"))
            save_final(trainer, training_args.output_dir)
        except KeyboardInterrupt:
            raise Interrupted(
                f"after training ({trainer.state.global_step} steps), before the model was saved; "
                + how_to_go_on(training_args, settings, finish)
            ) from None
        except OSError as e:
            raise OutputError(
                f"{training_args.output_dir}: {e.strerror or e} while saving the final model (the model is not "
                "saved); free some space and " + how_to_go_on(training_args, settings, finish)
            ) from None

    # The model is saved: what follows (results, model card, removing the checkpoints) never loses it.
    again = "the model is saved; run the same command with --overwrite_output_dir to write everything again"
    try:
        if trainer.is_world_process_zero():
            trainer.save_metrics("all", metrics)
            if trainer.per_label_results:  # multi-label tasks: precision, recall, F1, support, threshold per label
                (Path(training_args.output_dir) / PER_LABEL_RESULTS).write_text(
                    json.dumps(trainer.per_label_results, indent=1) + "\n", encoding="utf-8"
                )
            trainer.save_state()
            card = model_card(
                trainer.model, trainer.processing_class, model_args, data_args, metrics, shown_command(argv)
            )
            card.save(Path(training_args.output_dir) / "README.md")
            if not training_args.keep_checkpoints:
                remove_checkpoints(training_args.output_dir)
            logger.info("results (%s):\n%s", training_args.output_dir, results_table(metrics, tasks, named_sets))
    except KeyboardInterrupt:
        raise Interrupted(
            f"while writing the results and the model card in {training_args.output_dir}; {again}"
        ) from None
    except OSError as e:
        raise OutputError(
            f"{training_args.output_dir}: {e.strerror or e} while writing the results and the model card; free some "
            f"space: {again}"
        ) from None
    trainer.accelerator.wait_for_everyone()
    if training_args.push_to_hub:
        trainer.push_to_hub(commit_message="Multi-task sentence classifier")
    return metrics


def how_to_go_on(training_args, settings, resume):
    """What the user runs after a run stopped short: resume from its newest complete checkpoint, or (when it had
    none, and `removed_if_unfinished` took back what it wrote) the same command again."""
    newest = last_complete_checkpoint(training_args.output_dir, settings)
    if newest:
        return f"run the same command with {resume} (the newest checkpoint is {newest})"
    return "run the same command to start again (no checkpoint was written yet; the run's files are removed)"


def hide_progress_bars():
    """No progress bar from datasets, transformers' weight loading or the Hub either (Trainer's: disable_tqdm). Only
    ever switched off: the libraries' own settings (HF_DATASETS_DISABLE_PROGRESS_BARS, ...) decide otherwise."""
    import huggingface_hub.utils

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    huggingface_hub.utils.disable_progress_bars()


def encoder_limit(config, tokenizer):
    """The most tokens the encoder reads: its position table (max_position_embeddings) or the tokenizer's
    model_max_length, whichever is smaller (RoBERTa-style encoders keep two positions for themselves); None when
    neither says."""
    limits = [getattr(config.backbone_config, "max_position_embeddings", None), tokenizer.model_max_length]
    limits = [n for n in limits if isinstance(n, int) and 0 < n < 1_000_000]  # transformers' "no limit" is 1e30
    return min(limits) if limits else None


def check_sequence_length(model_args, config, tokenizer):
    """Refuse a --max_seq_length above what the encoder reads; the default (128) is lowered to it."""
    limit = encoder_limit(config, tokenizer)
    if limit is None or config.max_seq_length is None or config.max_seq_length <= limit:
        return
    if model_args.max_seq_length is not None:
        raise ArgumentError(f"--max_seq_length {model_args.max_seq_length}: the encoder reads at most {limit} tokens")
    logger.info("max_seq_length %d is above the encoder's limit: %d", config.max_seq_length, limit)
    config.max_seq_length = limit


def check_metric_for_best_model(training_args, config, named_sets):
    """Refuse a --metric_for_best_model that no evaluation reports (it would fail at the first evaluation)."""
    name = training_args.metric_for_best_model
    save_strategy = getattr(training_args.save_strategy, "value", training_args.save_strategy)
    if not name or not (training_args.load_best_model_at_end or save_strategy == "best"):
        return
    per_task = ["accuracy", "f1"]
    known = ["loss", "mean_accuracy", "mean_f1"] + [
        f"{task}_{metric}"
        for task in config.tasks
        for metric in per_task + (["micro_f1", "f1_untuned"] if task in config.multi_label_tasks else [])
    ]
    known += [f"{s}_{metric}" for s in named_sets for metric in known]
    if name.removeprefix("eval_") not in known:
        raise ArgumentError(
            f"--metric_for_best_model {name}: no evaluation reports it; it may be one of {', '.join(known[:8])}, ..."
        )


def cli():
    try:
        main()
    except (DataError, ArgumentError, OutputError) as e:
        sys.exit(f"error: {e}")
    except Interrupted as e:
        print(f"interrupted: {e}", file=sys.stderr)
        sys.exit(130)
    except KeyboardInterrupt:
        print("interrupted before training started; no model was written", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    cli()
