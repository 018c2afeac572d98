"""What a train.py run does besides training: the rules of the output folder, of continuing a saved model and
adding tasks to it, the run's settings, saving and the model card. train.py wires these to its command line.

- The model: `model_config` (a new model's config from the encoder, or a saved model's with the training settings
  given and `--add_tasks` appended; architecture flags that differ are refused), `check_model_options`,
  `build_model`, `load_tokenizer`, `distillation_teacher` (learning without forgetting; a student's teacher: with
  `--teacher`, `build_model` makes the student with `distillation.make_student`).
- The output folder: `run_settings` (what the result depends on, recorded in run.json), `check_output_dir` (every
  refusal, before anything is read or written), `start_output_dir`, `removed_if_unfinished` (a run that stops
  before its first complete checkpoint takes back what it wrote), `how_to_go_on`; `RUN_OUTPUTS` are the only names
  `--overwrite_output_dir` removes.
- The end: `save_final` (a kill never leaves a loadable half-written model), `write_results` (metrics, the model
  card, removing the checkpoints).

A user's mistake is an `ArgumentError` or `OutputError` (both `multitask_data.UserError`) of one line; Ctrl-C during
training is an `Interrupted` that says how to go on.
"""

import copy
import fnmatch
import json
import logging
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import datasets
import transformers
from huggingface_hub import EvalResult, ModelCard, ModelCardData
from transformers import AutoConfig
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from configuration_multitask import MultiTaskConfig, check_model_source
from distillation import check_same_schema, make_student, student_layer_indices, teacher_depth
from modeling_multitask import MultiTaskModel, load_saved_model, load_saved_tokenizer
from multitask_data import label_counts, load_split
from onnx_multitask import sha256_file
from pipeline_multitask import save_pipeline
from trainer_multitask import (
    BUNDLED,
    BUNDLED_NAME,
    PER_LABEL_RESULTS,
    RUN_RECORD,
    last_complete_checkpoint,
    read_run_record,
    resolve_backbone,
    results_table,
    setting_differences,
    write_run_record,
)
from training_args import NAMED_ENTRY, REPO_DIR, ArgumentError, OutputError, entry_path

logger = logging.getLogger(__name__)

# Config fields that shape the network: a saved model keeps them (continuing it with other values is refused).
ARCHITECTURE_FIELDS = ("tasks", "multi_label_tasks", "pooling", "head_hidden_size", "head_activation")
# Config fields that only change training (or the default input length): a continued model may take new values.
TRAINING_FIELDS = ("classifier_dropout", "loss_weights", "max_seq_length")


def model_config(model_args):
    """The `MultiTaskConfig` of the model to train, checked before any data or weights are read.

    A new model: the encoder's config plus the settings given. A continued model (`--model_name_or_path`): the
    checkpoint's config; architecture flags must agree with it, training settings may change, and `--add_tasks`
    appends tasks (their heads are added by `build_model`). A student (`--teacher`, `--student_layers`): the teacher's
    config, checked the same way (its task schema too), with the student's depth (`student_config`)."""
    settings = model_args.config_settings()
    try:
        if not (model_args.model_name_or_path or model_args.teacher):
            settings.setdefault("max_seq_length", 128)
            source = resolve_backbone(model_args.backbone)
            check_model_source(source)
            try:
                backbone_config = AutoConfig.from_pretrained(source)
            except OSError as e:
                raise ArgumentError(f"--backbone {model_args.backbone}: {str(e).splitlines()[0]}") from None
            return MultiTaskConfig(backbone_config=backbone_config, **settings)
        source = model_args.model_name_or_path or model_args.teacher
        saved = MultiTaskConfig.from_saved_model(source)
        if model_args.teacher and settings.get("tasks") is not None:
            try:
                given = settings["tasks"], settings.get("multi_label_tasks") or []
                given = SimpleNamespace(tasks=given[0], multi_label_tasks=[t for t in given[0] if t in given[1]])
                check_same_schema(saved, given, "--tasks'")
            except ValueError as e:
                raise ArgumentError(f"--teacher {model_args.teacher}: {e}") from None
        for name in ARCHITECTURE_FIELDS:
            if name in settings and settings[name] != getattr(saved, name):
                given, kept = f"--{name} {settings[name]!r}", getattr(saved, name)
                if name == "multi_label_tasks":  # task kinds are given in --tasks
                    name, given = "tasks", f"--tasks's multi-label tasks {settings[name]!r}"
                raise ArgumentError(
                    f"{given} differs from the saved model's {kept!r} "
                    f"({source}); a saved model keeps its architecture: drop --{name}"
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
            logger.info("continuing %s with %s", source, changes)
        config = MultiTaskConfig(**{**saved.to_dict(), **changes})  # validated like a new config
        return student_config(model_args, config) if model_args.teacher else config
    except ArgumentError:
        raise
    except ValueError as e:  # MultiTaskConfig's checks name the field and the value: name the flag instead
        raise ArgumentError(flag_message(str(e), "add_tasks" if model_args.add_tasks else "tasks")) from None


def student_config(model_args, teacher_config):
    """The student's config: the teacher's, with --student_layers encoder layers (checked against the teacher's depth,
    as --student_layer_choice is) and where it came from (`distilled_from`, `student_layers`)."""
    try:
        depth = teacher_depth(teacher_config)
    except ValueError as e:
        raise ArgumentError(f"--teacher {model_args.teacher}: {e}") from None
    n = model_args.student_layers
    if n >= depth:
        raise ArgumentError(
            f"--student_layers {n}: the teacher ({model_args.teacher}) has {depth} encoder layers; a student has 1 to "
            f"{depth - 1}"
        )
    try:
        layers = student_layer_indices(depth, n, model_args.layer_choice())
    except ValueError as e:
        raise ArgumentError(f"--student_layer_choice {model_args.student_layer_choice}: {e}") from None
    config = copy.deepcopy(teacher_config)
    config.backbone_config.num_hidden_layers = n
    config.distilled_from, config.student_layers = shown_path(model_args.teacher), layers
    return config


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
    if model_args.teacher:  # the teacher with the training settings given, cut down to the student (make_student)
        try:
            teacher = load_saved_model(model_args.teacher, **{name: getattr(config, name) for name in TRAINING_FIELDS})
            return make_student(
                teacher, model_args.student_layers, config.student_layers, teacher_name=config.distilled_from
            )
        except ValueError as e:  # missing or damaged weights, an encoder whose layers cannot be found: one line
            raise ArgumentError(f"--teacher {model_args.teacher}: {e}") from None
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
    if model_args.model_name_or_path or model_args.teacher:
        source, read_with = model_args.model_name_or_path or model_args.teacher, config
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


def model_card(model, model_args, data_args, metrics, command, training_args=None):
    """The Hub model card: metadata (base model, licence, model-index with every task's results) and a body with the
    task schema, the data, the command and the results table. Named evaluation sets (--eval_file) give one group
    of results each, under their name as the split. A student (`config.distilled_from`) has a section naming its
    teacher, the layers it kept and (from `training_args`) how it was taught."""
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
        tags=[
            "multi-task",
            "sentence-classification",
            "custom_code",
            *(["distillation"] * bool(config.distilled_from)),
        ],
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
{distillation_section(config, training_args)}
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


def distillation_section(config, training_args=None):
    """The model card's section on a student: its teacher, the layers it kept, how it was taught; "" for a model that
    is no student."""
    if not config.distilled_from:
        return ""
    layers = ", ".join(map(str, config.student_layers or []))
    how = ""
    if training_args is not None:
        weight, temperature = training_args.distill_weight, training_args.distill_temperature
        how = (
            f" It was trained on the teacher's answers for every task on every training row (distillation loss, "
            f"weight {weight:g}, temperature {temperature:g}) plus the gold labels where a row has them."
            if weight
            else " It was trained on the gold labels alone (--distill_weight 0)."
        )
    return f"""
## Distillation
A student of `{config.distilled_from}`: {config.backbone_config.num_hidden_layers} encoder layers, copies of the
teacher's layers {layers} (0 = the lowest), with its embeddings and heads.{how}
"""


# handler.py, copied into every final model (with the code files save_pretrained and save_pipeline copy), so that a
# model pushed with --push_to_hub deploys on Hugging Face Inference Endpoints as it is.
HANDLER = Path(__file__).resolve().with_name("handler.py")


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
            shutil.copyfile(HANDLER, tmp / HANDLER.name)  # Inference Endpoints' custom handler: deploys as it is
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
        if name in ("backbone", "model_name_or_path", "teacher") and value:
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
    "handler.py",
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
    for flag in ("model_name_or_path", "teacher", "backbone"):
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


def check_model_options(model_args, training_args, config):
    """Refuse, before any data or weights are read, the options the model to train cannot take."""
    if training_args.distill_weight and not (model_args.model_name_or_path or model_args.teacher):
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


def distillation_teacher(model, model_args, training_args, config):
    """`(teacher, tasks)` whose answers the model learns (`--distill_weight`), or (None, []) when off. A student
    (`--teacher`): the teacher, every task. Learning without forgetting: a copy of the model as it starts (its new
    heads unused), which answers the saved model's tasks."""
    if not training_args.distill_weight:
        return None, []
    if model_args.teacher:
        try:
            return load_saved_model(model_args.teacher), list(config.tasks)
        except ValueError as e:
            raise ArgumentError(f"--teacher {model_args.teacher}: {e}") from None
    added = model_args.added_tasks()[0]
    return copy.deepcopy(model), [task for task in config.tasks if task not in added]


def read_splits(data_args, training_args, config, eval_entries):
    """`(train, {name: evaluation set}, test or None)`, every row checked against the model's tasks."""
    tasks, multi_label = config.tasks, {"multi_label": config.multi_label_tasks}
    train_ds = load_split(
        data_args.train_file,
        tasks,
        data_args.max_train_samples,
        seed=training_args.seed,
        unlabelled=bool(config.distilled_from and training_args.distill_weight),  # they learn a teacher's answers
        **multi_label,
    )
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
    return train_ds, eval_splits, test_ds


def write_results(trainer, model_args, data_args, metrics, argv, named_sets):
    """After the model is saved: the metrics, the per-label results, the trainer state, the model card, and the
    checkpoints removed (unless --keep_checkpoints). None of it loses the saved model; a failure says so in one line."""
    output_dir = trainer.args.output_dir
    again = "the model is saved; run the same command with --overwrite_output_dir to write everything again"
    try:
        if trainer.is_world_process_zero():
            trainer.save_metrics("all", metrics)
            if trainer.per_label_results:  # multi-label tasks: precision, recall, F1, support, threshold per label
                (Path(output_dir) / PER_LABEL_RESULTS).write_text(
                    json.dumps(trainer.per_label_results, indent=1) + "\n", encoding="utf-8"
                )
            trainer.save_state()
            card = model_card(trainer.model, model_args, data_args, metrics, shown_command(argv), trainer.args)
            card.save(Path(output_dir) / "README.md")
            if not trainer.args.keep_checkpoints:
                remove_checkpoints(output_dir)
            logger.info("results (%s):\n%s", output_dir, results_table(metrics, trainer.model.config.tasks, named_sets))
    except KeyboardInterrupt:
        raise Interrupted(f"while writing the results and the model card in {output_dir}; {again}") from None
    except OSError as e:
        raise OutputError(
            f"{output_dir}: {e.strerror or e} while writing the results and the model card; free some space: {again}"
        ) from None
