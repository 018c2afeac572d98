"""train.py's arguments: the model, the data and the training options, each checked once, when parsed.

    from training_args import parse_args
    model_args, data_args, training_args, argv = parse_args(["--max_steps", "10", "--output_dir", "outputs/x"])

`ModelArguments` (the encoder or the saved model to continue, the task schema, the heads, freezing),
`DataArguments` (the data entries and evaluation sets) and `MultiTaskTrainingArguments` (`TrainingArguments` with
this model's defaults and the robustness options) check their values in `__post_init__`: a mistake is an
`ArgumentError` (a `multitask_data.UserError`) whose one-line message names the flag. `parse_args` reads them from a
command line, one ARGS.json file or a dict. What a run does with them lives in `training_run.py`.
"""

import json
import logging
import math
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import HfArgumentParser, TrainingArguments
from transformers.trainer_utils import HubStrategy, IntervalStrategy, SaveStrategy

from configuration_multitask import RESERVED_TASK_NAMES
from distillation import DEFAULT_LAYER_CHOICE, LAYER_CHOICES
from multitask_data import UserError, is_unlabelled_entry
from trainer_multitask import BUNDLED

logger = logging.getLogger(__name__)
REPO_DIR = Path(__file__).resolve().parent  # the bundled data/ is here


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
    teacher: str | None = field(
        default=None,
        metadata={
            "help": "Distil a saved multi-task model (a folder or Hub id) into a shallower student (--student_layers): "
            "the teacher's architecture, embeddings, heads and chosen layers, trained on the teacher's answers for "
            "every task on every training row plus the gold labels where a row has them."
        },
    )
    student_layers: int | None = field(
        default=None, metadata={"help": "With --teacher: the student's encoder layers, 1 to the teacher's - 1."}
    )
    student_layer_choice: str = field(
        default=DEFAULT_LAYER_CHOICE,
        metadata={
            "help": "With --teacher: which teacher layers the student keeps: lowest (the first N, the default), spread "
            "(the lowest, the top and the others evenly between; 6 -> 3 keeps 0,3,5), or indices such as 0,2,4."
        },
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
        self.check_student_options()
        if self.add_tasks and not self.model_name_or_path:
            raise ArgumentError(
                "--add_tasks adds tasks to a saved model (--model_name_or_path); for a new model, put them in --tasks"
            )

    def check_student_options(self):
        """--teacher, --student_layers and --student_layer_choice, as far as they can be checked without the teacher
        (its depth is `training_run.model_config`'s to check)."""
        if self.student_layers is not None and not self.teacher:
            raise ArgumentError(
                "--student_layers makes a student of a trained model: give that model with --teacher DIR"
            )
        if not self.teacher:
            if self.student_layer_choice != DEFAULT_LAYER_CHOICE:
                raise ArgumentError(
                    "--student_layer_choice picks a student's layers: give --teacher and --student_layers"
                )
            return
        if self.student_layers is None:
            raise ArgumentError(
                "--teacher: give the student's depth with --student_layers N (fewer layers than the teacher's)"
            )
        if self.student_layers < 1:
            raise ArgumentError(f"--student_layers must be >= 1, got {self.student_layers}")
        for flag in ("model_name_or_path", "add_tasks"):
            if getattr(self, flag):
                raise ArgumentError(
                    f"--teacher and --{flag} both given: a student is the teacher's architecture and tasks; drop --{flag}"
                )
        if self.backbone != BUNDLED:
            raise ArgumentError(
                "--teacher and --backbone both given: a student is made of the teacher's encoder; drop one"
            )
        self.layer_choice()

    def layer_choice(self):
        """--student_layer_choice as `distillation.make_student` takes it: a name, or a list of layer indices."""
        choice = self.student_layer_choice.strip()
        if choice in LAYER_CHOICES:
            return choice
        try:
            layers = [int(item) for item in choice.split(",")]
        except ValueError:
            layers = None
        if not layers or len(layers) != self.student_layers or layers != sorted(set(layers)) or layers[0] < 0:
            raise ArgumentError(
                f"--student_layer_choice {self.student_layer_choice!r}: expected {' or '.join(LAYER_CHOICES)}, or "
                f"{self.student_layers} increasing teacher layer indices such as "
                f"{','.join(map(str, range(0, 2 * (self.student_layers or 1), 2)))}"
            )
        return layers

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
    # Fine-tuning without forgetting: 0.8 is the best of the methods tried for text unlike the training data
    # (figures in docs/results.md)
    wise_ft_alpha: float = field(
        default=0.8,
        metadata={
            "help": "WiSE-FT: the final encoder is (1 - alpha) * pretrained + alpha * fine-tuned (the encoder as it "
            "was before training: the pretrained one, or a continued model's); 1.0 = off (plain fine-tuning)."
        },
    )
    # Learning without forgetting (Li & Hoiem, 2016): what keeps a saved model's tasks when it trains on (mostly)
    # other data, e.g. a task added unfrozen (README, "Adding a task to a trained model")
    distill_weight: float | None = field(
        default=None,
        metadata={
            "help": "Continuing a saved model (--model_name_or_path): add W x a distillation loss that keeps its own "
            "tasks' outputs on every training row close to what the saved model answers; 0 = off (the default). "
            "With --teacher: the weight of the teacher's answers beside the gold labels (default 1.0; 0: gold only)."
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
        if self.distill_weight is not None and not 0.0 <= self.distill_weight < float("inf"):
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


# A student's default weight of its teacher's answers beside the gold labels (`--distill_weight` with --teacher): the
# two losses alike, at the trainer's temperature 2.0.
STUDENT_DISTILL_WEIGHT = 1.0


def check_together(model_args, data_args, training_args):
    """What involves two of the argument groups: unlabelled training text needs a teacher (it has no other target)
    and is no evaluation data; `--distill_weight`'s default is resolved (STUDENT_DISTILL_WEIGHT with --teacher, else
    0: off)."""
    if training_args.distill_weight is None:
        training_args.distill_weight = STUDENT_DISTILL_WEIGHT if model_args.teacher else 0.0
    for name in ("validation_file", "test_file", "eval_file"):
        for entry in getattr(data_args, name):
            if is_unlabelled_entry(entry_path(entry) if name == "eval_file" else entry):
                raise ArgumentError(
                    f"--{name} {entry}: unlabelled text cannot be evaluated; evaluation files need labels"
                )
    unlabelled = [entry for entry in data_args.train_file if is_unlabelled_entry(entry)]
    if unlabelled and not (model_args.teacher and training_args.distill_weight > 0):
        why = (
            "with --distill_weight 0 they teach nothing"
            if model_args.teacher
            else "give --teacher DIR --student_layers N"
        )
        raise ArgumentError(
            f"--train_file {unlabelled[0]}: unlabelled text (no label for any task) learns only from a teacher's "
            f"answers; {why}"
        )


def parse_args(argv):
    parser = HfArgumentParser((ModelArguments, DataArguments, MultiTaskTrainingArguments))
    if isinstance(argv, dict):  # programmatic use: {"backbone": ..., "test_file": [], ...}
        shown = [[f"--{key}", *map(str, value if isinstance(value, list) else [value])] for key, value in argv.items()]
        parsed = (*parser.parse_dict(argv), [token for pair in shown for token in pair])
    else:
        try:
            if len(argv) == 1 and argv[0].endswith(".json"):
                parsed = (*parser.parse_json_file(json_file=os.path.abspath(argv[0])), argv)
            else:
                parsed = (*parser.parse_args_into_dataclasses(args=argv), argv)
        except ArgumentError:
            raise
        except (OSError, ValueError) as e:  # a missing or malformed arguments file, arguments that are no option
            where = f"{argv[0]}: " if len(argv) == 1 and argv[0].endswith(".json") else ""
            raise ArgumentError(f"{where}{' '.join(str(e).split())}") from None
    check_together(*parsed[:3])
    return parsed
