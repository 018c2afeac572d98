"""Multi-task sentence classifier: a shared encoder, a pooling step, one classification head per task.

Reads top to bottom: pooling, the head and its loss, the output dataclass, the inference core, the model. One forward
pass answers every task in `config.tasks`, single-label (softmax) or multi-label (a sigmoid per label); labels come as
`labels_<task>` keyword arguments, -100 = no label.
"""

import inspect
import logging
import os
import pickle
import unicodedata
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from torch import nn
from transformers import MODEL_MAPPING, AutoConfig, AutoModel, AutoTokenizer, PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

try:  # imported as remote code (a package made by transformers) ...
    from .configuration_multitask import MultiTaskConfig
except ImportError:  # ... or as a top-level module of this repository
    from configuration_multitask import MultiTaskConfig

logger = logging.getLogger(__name__)
IGNORE_INDEX = -100  # a label id (or a multi-label row of them) meaning "no label for this task": the one home of -100
_ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU, "tanh": nn.Tanh}
_UNSET = object()


def backbone_kwargs(backbone_config):
    """Build encoders without their pooler (BERT, RoBERTa, ...): we pool ourselves, and an unused pooler would
    only cost memory and break DDP with gradient checkpointing (parameters that never get a gradient)."""
    model_class = MODEL_MAPPING.get(type(backbone_config), None)
    if model_class is not None and "add_pooling_layer" in inspect.signature(model_class.__init__).parameters:
        return {"add_pooling_layer": False}
    return {}


@contextmanager
def pooler_weights_expected_unused(backbone_config):
    """While loading an encoder built without its pooler, its checkpoint's `pooler.*` weights are unused on purpose:
    tell transformers so (the class's own ignore list, for the duration of the load) instead of printing a load report
    that flags them. Every other missing or unexpected weight is still reported."""
    model_class = MODEL_MAPPING.get(type(backbone_config), None)
    if not backbone_kwargs(backbone_config):
        yield
        return
    saved = model_class.__dict__.get("_keys_to_ignore_on_load_unexpected", _UNSET)
    model_class._keys_to_ignore_on_load_unexpected = [
        *(model_class._keys_to_ignore_on_load_unexpected or []),
        r"^pooler\.",
    ]
    try:
        yield
    finally:
        if saved is _UNSET:
            del model_class._keys_to_ignore_on_load_unexpected
        else:
            model_class._keys_to_ignore_on_load_unexpected = saved


def find_encoder_blocks(backbone):
    """The dotted name of the encoder's list of transformer blocks (BERT: `encoder.layer`, DistilBERT:
    `transformer.layer`, ...): the `nn.ModuleList` of `num_hidden_layers` modules."""
    n = backbone.config.num_hidden_layers
    for name, module in backbone.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == n:
            return name
    raise ValueError(f"cannot find the {n} encoder layers of {type(backbone).__name__}")


def pool(hidden_states, attention_mask, mode):
    """Turn token states (batch, seq, hidden) into sentence embeddings (batch, hidden).

    `mean` and `max` look at real tokens only (attention_mask == 1), so padding never changes a sentence's
    embedding; `cls` takes the first token.
    """
    if mode == "cls":
        return hidden_states[:, 0]  # (batch, hidden)
    mask = attention_mask.unsqueeze(-1).to(hidden_states.dtype)  # (batch, seq, 1)
    if mode == "mean":
        summed = (hidden_states * mask).sum(dim=1)  # (batch, hidden)
        counts = mask.sum(dim=1).clamp(min=1e-9)  # (batch, 1)
        return summed / counts
    if mode == "max":
        lowest = torch.finfo(hidden_states.dtype).min
        return hidden_states.masked_fill(mask == 0, lowest).max(dim=1).values  # (batch, hidden)
    raise ValueError(f"unknown pooling mode {mode!r}")


class TaskHead(nn.Module):
    """dropout -> [linear -> activation -> dropout] -> linear: sentence embedding to one task's logits."""

    def __init__(self, hidden_size, num_labels, dropout, head_hidden_size=0, activation="gelu"):
        super().__init__()
        layers = [nn.Dropout(dropout)]
        if head_hidden_size:
            layers += [nn.Linear(hidden_size, head_hidden_size), _ACTIVATIONS[activation](), nn.Dropout(dropout)]
            hidden_size = head_hidden_size
        self.layers = nn.Sequential(*layers)
        self.out_proj = nn.Linear(hidden_size, num_labels)

    def forward(self, embeddings):
        return self.out_proj(self.layers(embeddings))  # (batch, num_labels)


def task_loss(logits, labels, multi_label=False, label_smoothing=0.0):
    """One task's loss over its labelled examples; -100 marks "no label".

    Single-label: `labels` (batch,) label ids, mean cross-entropy over the rows that have one. Multi-label: `labels`
    (batch, n_labels) of 0/1 (a row of -100 where the example has no label for the task): binary cross-entropy summed
    over the example's labelled labels, averaged over the labelled examples. Summed, not averaged over the labels:
    then a labelled example weighs about as much as one of a single-label task (whose cross-entropy also sums over its
    labels' probabilities), whatever the number of labels; averaged over many labels, a task's gradient is too small
    beside the single-label tasks' for the shared encoder to learn it (docs/design.md, "Multi-label heads"). With no
    labelled example the loss is exactly 0 (abs turns -0.0 into 0.0) but still connected to the head, so DDP sees
    every parameter used (its gradient is 0). `label_smoothing` (single-label only; the trainer passes its
    `TrainingArguments.label_smoothing_factor` while training): the cross-entropy against a target with that much of
    its mass spread evenly over the labels, as `F.cross_entropy(label_smoothing=)` defines it.
    """
    if multi_label:
        labels = labels.to(logits.device).view(logits.shape)  # (batch, n_labels)
        keep = labels != IGNORE_INDEX  # (batch, n_labels)
        if keep.any():
            pairs = F.binary_cross_entropy_with_logits(logits[keep].float(), labels[keep].float(), reduction="sum")
            return pairs / keep.any(dim=1).sum()  # per labelled example
    else:
        labels = labels.to(logits.device).view(-1)  # (batch,)
        if (labels != IGNORE_INDEX).any():
            return F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, label_smoothing=label_smoothing)
    return (logits.sum() * 0.0).abs()


@dataclass
class MultiTaskModelOutput(ModelOutput):
    """
    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*, returned when any `labels_<task>` is given):
            Sum over tasks of `loss_weights[task] * task_losses[task]`.
        logits (`dict[str, torch.FloatTensor]`):
            Task name -> tensor of shape `(batch, len(config.tasks[task]))`, columns in label order.
        embeddings (`torch.FloatTensor` of shape `(batch, hidden)`):
            Pooled sentence embeddings (not normalised) that every head reads.
        task_losses (`dict[str, torch.FloatTensor]`, *optional*):
            Task name -> mean cross-entropy over that task's labelled examples in the batch (multi-label tasks: mean
            binary cross-entropy over their labelled (example, label) pairs; 0.0 when the batch holds none), for the
            tasks whose labels were given.
    """

    loss: torch.FloatTensor | None = None
    logits: dict[str, torch.FloatTensor] | None = None
    embeddings: torch.FloatTensor | None = None
    task_losses: dict[str, torch.FloatTensor] | None = None


def positive_int(name, value, allow_none=False):
    """`value` if it is a positive int (or None where allowed); otherwise a ValueError/TypeError naming `name`."""
    if value is None and allow_none:
        return value
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be a positive int, got {type(value).__name__} ({value!r})")
    if value < 1:
        raise ValueError(f"{name} must be a positive int, got {value}")
    return value


def is_blank(text):
    """True when `text` has nothing to read: empty, or only spaces, line breaks, control characters and invisible
    format characters (a zero-width space, a byte-order mark, a soft hyphen...). The one test of an empty text that
    every entry point (train.py, predict.py, the demo, `model.predict`) applies."""
    return all(c.isspace() or unicodedata.category(c) in ("Cc", "Cf", "Zs", "Zl", "Zp") for c in text)


def check_texts(texts, allow_blank=False):
    """A str or a sequence of str -> a list of str; anything else is a TypeError naming the bad item, and a blank text
    (`is_blank`) a ValueError naming it, unless `allow_blank` (a caller with its own rule for blank lines)."""
    if isinstance(texts, str):
        texts = [texts]
    if isinstance(texts, (bytes, bytearray)):
        raise TypeError("texts is bytes; decode it to str first (e.g. texts.decode('utf-8'))")
    if not hasattr(texts, "__iter__"):
        raise TypeError(f"texts is {type(texts).__name__} ({texts!r}); expected a str or a list of str")
    texts = list(texts)
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{i}] is {type(text).__name__} ({text!r}); every text must be a str")
        if not allow_blank and is_blank(text):
            raise ValueError(f"texts[{i}] is blank: there is nothing to read")
    return texts


class MultiTaskInference:
    """The one inference core: every way of running the model (`predict`, `encode`, the pipeline, `predict.py`, the
    ONNX Runtime model) goes through these methods, so the token limit, the batching and the decoding of logits into
    labels are each written once.

    A subclass has a `config` ([`MultiTaskConfig`]) and implements `_run_batch(encoding)` -> `(logits, embeddings)`:
    task -> `(batch, n_labels)` float tensors and a `(batch, hidden)` float tensor, on the CPU.
    """

    @staticmethod
    def check_texts(texts):
        """`check_texts` for callers that hold only the model (the pipeline): a list of str, no blank text."""
        return check_texts(texts)

    @staticmethod
    def check_options(batch_size=None, top_k=None, max_length=None):
        """The inference options every entry point takes, checked the same way: positive ints (None: not given)."""
        for name, value in (("batch_size", batch_size), ("top_k", top_k), ("max_length", max_length)):
            positive_int(name, value, allow_none=True)

    def input_limit(self, tokenizer, max_length=None):
        """Tokens kept per text: `max_length` if given, else the length the model was trained with
        (`config.max_seq_length`), never more than the tokenizer's or the position embeddings' limit."""
        self.check_options(max_length=max_length)
        wanted = max_length or self.config.max_seq_length
        positions = getattr(self.config.backbone_config, "max_position_embeddings", None)
        return min(n for n in (wanted, tokenizer.model_max_length, positions) if n)

    def tokenize(self, texts, tokenizer, max_length=None):
        """Tokenise a batch of str (padded, truncated to `input_limit`) as torch tensors; warn for each text cut."""
        limit = self.input_limit(tokenizer, max_length)
        batch = tokenizer(texts, padding=True, truncation=True, max_length=limit, return_tensors="pt")
        lengths = batch["attention_mask"].sum(dim=1)
        for i in (lengths == limit).nonzero().flatten().tolist():
            full = len(tokenizer(texts[i], add_special_tokens=True, verbose=False)["input_ids"])
            if full > limit:
                logger.warning("text of %d characters has %d tokens; truncated to %d", len(texts[i]), full, limit)
        return batch

    def iter_batches(self, texts, tokenizer, batch_size=32, max_length=None):
        r"""
        Run the model over `texts` in length-sorted batches (each batch pads little), without decoding.

        Blank texts are not refused here ([`~MultiTaskInference.predict`] refuses them; `predict.py` has its own rule).

        Args:
            texts (`str` or `list[str]`):
                The texts.
            tokenizer ([`PreTrainedTokenizerBase`]):
                The model's tokenizer.
            batch_size (`int`, *optional*, defaults to 32):
                Texts per forward pass.
            max_length (`int`, *optional*):
                Tokens kept per text; defaults to `config.max_seq_length`, capped by the tokenizer's and the encoder's
                limits (see `input_limit`). A text cut short is logged.

        Returns:
            An iterator of `(indices, logits, embeddings)`, one per batch: `indices` (`list[int]`) are the positions
            of the batch's texts in `texts` (so callers put results back in input order), `logits` a dict task ->
            `torch.FloatTensor` of shape `(batch, n_labels)` and `embeddings` a `torch.FloatTensor` of shape
            `(batch, hidden)`, on the CPU.

        Example:

        ```python
        >>> # model, tokenizer: the tiny model of the MultiTaskModel example
        >>> for indices, logits, embeddings in model.iter_batches(["the game", "rates went up"], tokenizer):
        ...     print(indices, logits["topic"].shape, embeddings.shape)
        [1, 0] torch.Size([2, 3]) torch.Size([2, 32])
        ```
        """
        texts = check_texts(texts, allow_blank=True)  # predict/encode refuse blank texts; predict.py has its own rule
        positive_int("batch_size", batch_size)
        self.check_options(max_length=max_length)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]), reverse=True)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            logits, embeddings = self._run_batch(self.tokenize([texts[i] for i in idx], tokenizer, max_length))
            yield idx, logits, embeddings

    def decode(self, logits, top_k=None):
        r"""
        Turn logits into labels: the one place where that happens.

        Args:
            logits (`dict[str, torch.Tensor]`):
                Task -> logits of shape `(batch, n_labels)`, columns in `config.tasks[task]` order; tasks may be left
                out.
            top_k (`int`, *optional*):
                Single-label tasks: return the `top_k` best labels (a list, when `top_k > 1`) instead of the best.
                Multi-label tasks: the `top_k` best labels whatever their thresholds.

        Returns:
            `list[dict]`: one dict per row, `{task: result}`. A single-label task's result is `{"label", "score"}`,
            the label with the highest softmax probability (with `top_k > 1`, a list of the `top_k` best, best
            first). A multi-label task's (`config.multi_label_tasks`) is a list of `{"label", "score"}` (the label's
            sigmoid probability), best first, of the labels whose score is >= their threshold
            (`config.thresholds(task)`), possibly empty.

        Example:

        ```python
        >>> import torch
        >>> # model: the tiny model of the MultiTaskModel example
        >>> model.decode({"sentiment": torch.tensor([[0.0, 2.0]])})
        [{'sentiment': {'label': 'Positive', 'score': 0.88...}}]
        >>> model.decode({"sentiment": torch.tensor([[0.0, 2.0]])}, top_k=2)
        [{'sentiment': [{'label': 'Positive', 'score': 0.88...}, {'label': 'Negative', 'score': 0.11...}]}]
        ```
        """
        positive_int("top_k", top_k, allow_none=True)
        per_task = {}
        for task, task_logits in logits.items():
            multi_label = task in self.config.multi_label_tasks
            n_labels = task_logits.shape[-1]
            k = min(top_k or (n_labels if multi_label else 1), n_labels)
            probs = task_logits.float().sigmoid() if multi_label else task_logits.float().softmax(dim=-1)
            scores, ids = probs.topk(k, dim=-1)  # (batch, k) each, best first
            thresholds = self.config.thresholds(task) if multi_label and not top_k else None
            per_task[task] = (scores.tolist(), ids.tolist(), multi_label, thresholds)
        rows = []
        for row in range(len(next(iter(per_task.values()))[0])):
            result = {}
            for task, (scores, ids, multi_label, thresholds) in per_task.items():
                labels = self.config.tasks[task]
                top = [{"label": labels[j], "score": s} for s, j in zip(scores[row], ids[row], strict=True)]
                if not multi_label:
                    result[task] = top if top_k and top_k > 1 else top[0]
                elif thresholds is None:  # top_k given: the k best whatever the thresholds
                    result[task] = top
                else:
                    result[task] = [t for t, j in zip(top, ids[row], strict=True) if t["score"] >= thresholds[j]]
            rows.append(result)
        return rows

    def encode(self, texts, tokenizer, batch_size=32, normalize=False, max_length=None):
        r"""
        Fixed-length sentence embeddings: the pooled encoder output that every head reads.

        Args:
            texts (`str` or `list[str]`):
                The texts to embed; a blank one (`is_blank`) is a `ValueError`, an item that is not a str a `TypeError`.
            tokenizer ([`PreTrainedTokenizerBase`]):
                The model's tokenizer.
            batch_size (`int`, *optional*, defaults to 32):
                Texts per forward pass.
            normalize (`bool`, *optional*, defaults to `False`):
                Scale each embedding to unit L2 norm (then a dot product is the cosine similarity).
            max_length (`int`, *optional*):
                Tokens kept per text; defaults to `config.max_seq_length` (see `iter_batches`).

        Returns:
            `torch.FloatTensor` of shape `(len(texts), hidden)`, on the CPU, in input order.

        Example:

        ```python
        >>> # model, tokenizer: the tiny model of the MultiTaskModel example
        >>> embeddings = model.encode(["the game was great", "rates went up"], tokenizer, normalize=True)
        >>> embeddings.shape
        torch.Size([2, 32])
        >>> print(f"{embeddings[0].norm():.3f}")
        1.000
        ```
        """
        texts = check_texts(texts)
        out = torch.zeros(len(texts), self.config.hidden_size)
        for idx, _, emb in self.iter_batches(texts, tokenizer, batch_size, max_length):
            out[idx] = F.normalize(emb, p=2, dim=-1) if normalize else emb  # (batch, hidden)
        return out

    def predict(self, texts, tokenizer, batch_size=32, top_k=None, max_length=None):
        r"""
        Label texts with every task of the model.

        Args:
            texts (`str` or `list[str]`):
                The texts to label; a blank one (`is_blank`) is a `ValueError`, an item that is not a str a `TypeError`.
            tokenizer ([`PreTrainedTokenizerBase`]):
                The model's tokenizer.
            batch_size (`int`, *optional*, defaults to 32):
                Texts per forward pass (texts are sorted by length first, so each batch pads little).
            top_k (`int`, *optional*):
                Return the `top_k` best labels per task instead of the best one (see `decode`).
            max_length (`int`, *optional*):
                Tokens kept per text; defaults to `config.max_seq_length` (see `iter_batches`).

        Returns:
            `list[dict]`: one dict per text, in input order, `{task: {"label": name, "score": probability}}`; with
            `top_k > 1`, a list of the `top_k` best such dicts per task; a multi-label task gives the list of its
            labels at or above their thresholds (see `decode`).

        Example:

        ```python
        >>> # model, tokenizer: the tiny model of the MultiTaskModel example
        >>> results = model.predict(["the game was great", "rates went up"], tokenizer)
        >>> results[0]["sentiment"]
        {'label': ..., 'score': ...}

        >>> # a trained model, saved by train.py
        >>> from modeling_multitask import load_saved_model, load_saved_tokenizer
        >>> model = load_saved_model("outputs/multitask-minilm")  # doctest: +SKIP
        >>> tokenizer = load_saved_tokenizer("outputs/multitask-minilm", model.config)  # doctest: +SKIP
        >>> model.predict(["Shares of the chipmaker jumped after earnings."], tokenizer)  # doctest: +SKIP
        [{'topic': {'label': 'Finance/Tech', 'score': 0.97...}, 'sentiment': {'label': 'Positive', 'score': 0.91...}}]
        ```
        """
        texts = check_texts(texts)
        positive_int("top_k", top_k, allow_none=True)
        results = [None] * len(texts)
        for idx, logits, _ in self.iter_batches(texts, tokenizer, batch_size, max_length):
            for i, result in zip(idx, self.decode(logits, top_k), strict=True):
                results[i] = result
        return results


class MultiTaskPreTrainedModel(PreTrainedModel):
    config_class = MultiTaskConfig
    base_model_prefix = "backbone"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    # forward takes **labels for the task labels, not Trainer's loss kwargs (num_items_in_batch)
    accepts_loss_kwargs = False

    def _init_weights(self, module):
        # Only the heads are ours; the backbone is a PreTrainedModel and initialises itself. The `init` functions
        # skip tensors already loaded from a checkpoint, so pretrained weights are never overwritten.
        if isinstance(module, nn.Linear):
            init.normal_(module.weight, mean=0.0, std=getattr(self.config.backbone_config, "initializer_range", 0.02))
            if module.bias is not None:
                init.zeros_(module.bias)


class MultiTaskModel(MultiTaskInference, MultiTaskPreTrainedModel):
    r"""
    A shared sentence encoder, a pooling step and one classification head per task of `config.tasks`.

    One forward pass answers every task. To put heads on pretrained encoder weights, use
    [`~MultiTaskModel.from_backbone`]; to load a trained model, `from_pretrained` (or [`load_saved_model`], which
    checks more). `predict` and `encode` label and embed raw texts.

    Args:
        config ([`MultiTaskConfig`]):
            The encoder's config, the task schema and the head options. The model is built from it alone, with random
            weights.
        backbone (`PreTrainedModel`, *optional*):
            An already built encoder for `config.backbone_config` (how `from_backbone` puts heads on pretrained
            weights); by default the encoder is built from the config with random weights.

    Example:

    ```python
    >>> from transformers import BertConfig
    >>> from configuration_multitask import MultiTaskConfig
    >>> from modeling_multitask import MultiTaskModel

    >>> backbone = BertConfig(
    ...     vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37
    ... )
    >>> tasks = {"topic": ["Finance/Tech", "Health/Lifestyle", "Sports"], "sentiment": ["Negative", "Positive"]}
    >>> model = MultiTaskModel(MultiTaskConfig(backbone_config=backbone, tasks=tasks))  # random weights
    >>> model.heads["sentiment"].out_proj
    Linear(in_features=32, out_features=2, bias=True)

    >>> # a tokenizer over a few words (the method examples below start from this model and tokenizer)
    >>> from transformers import BertTokenizerFast

    >>> words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "game", "was", "great", "rates", "went", "up"]
    >>> tokenizer = BertTokenizerFast(vocab={word: i for i, word in enumerate(words)})
    >>> tokenizer("the game was great")["input_ids"]
    [2, 5, 6, 7, 8, 3]
    ```
    """

    def __init__(self, config, backbone=None):
        super().__init__(config)
        if backbone is None:
            backbone = AutoModel.from_config(config.backbone_config, **backbone_kwargs(config.backbone_config))
        elif backbone.config.to_dict() != config.backbone_config.to_dict():
            raise ValueError("backbone's config differs from config.backbone_config; build the config from it")
        else:
            config.backbone_config = backbone.config  # one config object, with the attention the encoder resolved
        self.backbone = backbone
        self.heads = nn.ModuleDict(
            {
                task: TaskHead(
                    config.hidden_size,
                    len(labels),
                    config.classifier_dropout,
                    config.head_hidden_size,
                    config.head_activation,
                )
                for task, labels in config.tasks.items()
            }
        )
        self._backbone_takes_token_type_ids = "token_type_ids" in inspect.signature(self.backbone.forward).parameters
        self.post_init()

    def encoder_depths(self):
        """The encoder's transformer blocks by depth, bottom up, one list per depth (what freezing the lower layers
        and layer-wise learning-rate decay count in)."""
        return [[block] for block in self.backbone.get_submodule(find_encoder_blocks(self.backbone))]

    def encoder_modules(self):
        """The encoder, by attribute name: everything but the heads; what freezing the encoder freezes."""
        return {"backbone": self.backbone}

    def encoder_state_dict(self):
        """Every tensor of `encoder_modules()`, named as in the model's state dict: what WiSE-FT interpolates."""
        return {
            f"{prefix}.{name}": t
            for prefix, module in self.encoder_modules().items()
            for name, t in module.state_dict().items()
        }

    @classmethod
    def from_backbone(cls, name_or_path, tasks=None, backbone_name=None, **config_kwargs):
        r"""
        Pretrained encoder weights (one `AutoModel.from_pretrained` call) plus freshly initialised heads.

        Args:
            name_or_path (`str` or `os.PathLike`):
                The encoder: a Hub name or a local directory that `AutoModel.from_pretrained` reads.
            tasks (`dict[str, list[str]]`, *optional*):
                Task name -> label names (see [`MultiTaskConfig`]); defaults to topic and sentiment.
            backbone_name (`str`, *optional*):
                What `config.json` records as the encoder's `_name_or_path`; defaults to `name_or_path`. Pass the public
                name when loading a local copy, so that nothing machine-specific is shared.
            config_kwargs (*optional*):
                Passed to [`MultiTaskConfig`] (`pooling`, `loss_weights`, `multi_label_tasks`, ...).

        Returns:
            [`MultiTaskModel`]. A checkpoint that cannot be read is a one-line `ValueError` naming `name_or_path`.

        Example:

        ```python
        >>> from modeling_multitask import MultiTaskModel

        >>> model = MultiTaskModel.from_backbone(
        ...     "sentence-transformers/all-MiniLM-L6-v2", tasks={"sentiment": ["Negative", "Positive"]}
        ... )  # doctest: +SKIP
        >>> model.config.backbone_config.hidden_size  # doctest: +SKIP
        384
        ```
        """
        with checkpoint_errors(name_or_path):
            backbone_config = AutoConfig.from_pretrained(name_or_path)
            with pooler_weights_expected_unused(backbone_config):
                backbone = AutoModel.from_pretrained(
                    name_or_path, config=backbone_config, **backbone_kwargs(backbone_config)
                )
        backbone.config._name_or_path = backbone_name or str(name_or_path)
        config = MultiTaskConfig(backbone_config=backbone.config, tasks=tasks, **config_kwargs)
        return cls(config, backbone=backbone)

    def add_task(self, name, labels, multi_label=False):
        r"""
        Add a task with a freshly initialised head, and record it in the config so that `save_pretrained` saves it.

        The encoder and the other heads are untouched: with them frozen (`trainer_multitask.freeze`), the other tasks'
        outputs stay bit-identical while the new head trains.

        Args:
            name (`str`):
                The new task's name, a Python identifier not yet in `config.tasks`.
            labels (`list[str]`):
                Its label names, in column order.
            multi_label (`bool`, *optional*, defaults to `False`):
                Whether the task is multi-label (a sigmoid per label) rather than single-label (softmax).

        Returns:
            [`TaskHead`]: the new head, on the model's device and dtype.

        Example:

        ```python
        >>> # model: the tiny model of the MultiTaskModel example
        >>> head = model.add_task("emotion", ["joy", "anger", "fear"], multi_label=True)
        >>> list(model.config.tasks), head.out_proj.out_features
        (['topic', 'sentiment', 'emotion'], 3)
        ```
        """
        self.config.add_task(name, labels, multi_label)
        head = TaskHead(
            self.config.hidden_size,
            len(self.config.tasks[name]),
            self.config.classifier_dropout,
            self.config.head_hidden_size,
            self.config.head_activation,
        )
        head.apply(self._init_weights)
        self.heads[name] = head.to(device=self.device, dtype=self.dtype)
        return self.heads[name]

    def get_input_embeddings(self):
        return self.backbone.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.backbone.set_input_embeddings(value)

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, inputs_embeds=None, **labels):
        r"""
        Args:
            input_ids (`torch.LongTensor` of shape `(batch, seq)`, *optional*):
                Token ids from the model's tokenizer; give these or `inputs_embeds`.
            attention_mask (`torch.LongTensor` of shape `(batch, seq)`, *optional*):
                1 for real tokens, 0 for padding; pooling reads real tokens only. Defaults to all ones.
            token_type_ids (`torch.LongTensor` of shape `(batch, seq)`, *optional*):
                Segment ids, passed on to encoders that take them (BERT does, DistilBERT does not).
            inputs_embeds (`torch.FloatTensor` of shape `(batch, seq, hidden)`, *optional*):
                Token embeddings instead of `input_ids`.
            labels_<task> (`torch.LongTensor` of shape `(batch,)`, *optional*):
                Label ids of `<task>` (indices into `config.tasks[task]`); -100 marks an example with no label for it.
                For a multi-label task, a `torch.FloatTensor` of shape `(batch, len(config.tasks[task]))`: 1.0 for each
                label the example has, 0.0 for the others, a row of -100 for an example with no label for the task.

        Returns:
            [`MultiTaskModelOutput`]: `logits` (task -> `(batch, n_labels)`) and `embeddings` (`(batch, hidden)`);
            `loss` and `task_losses` when any `labels_<task>` is given.

        Example:

        ```python
        >>> import torch
        >>> # model: the tiny model of the MultiTaskModel example
        >>> output = model(input_ids=torch.tensor([[2, 5, 6, 3]]), labels_sentiment=torch.tensor([1]))
        >>> output.logits["topic"].shape, output.embeddings.shape
        (torch.Size([1, 3]), torch.Size([1, 32]))
        >>> list(output.task_losses), output.loss.shape
        (['sentiment'], torch.Size([]))
        ```
        """
        expected = [f"labels_{task}" for task in self.config.tasks]
        unknown = sorted(k for k in labels if k not in expected)
        if unknown:
            raise TypeError(f"forward() got unexpected keyword argument(s) {unknown}; task labels are {expected}")
        labels = {k: v for k, v in labels.items() if v is not None}  # labels_<task>=None: no labels for that task
        if attention_mask is None:
            shape = input_ids.shape if input_ids is not None else inputs_embeds.shape[:2]
            device = input_ids.device if input_ids is not None else inputs_embeds.device
            attention_mask = torch.ones(shape, dtype=torch.long, device=device)
        backbone_inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "inputs_embeds": inputs_embeds}
        if token_type_ids is not None and self._backbone_takes_token_type_ids:
            backbone_inputs["token_type_ids"] = token_type_ids

        hidden_states = self.backbone(**backbone_inputs).last_hidden_state  # (batch, seq, hidden)
        embeddings = pool(hidden_states, attention_mask, self.config.pooling)  # (batch, hidden)
        logits = {task: head(embeddings) for task, head in self.heads.items()}  # task -> (batch, n_labels)

        loss, task_losses = self.compute_losses(logits, labels) if labels else (None, None)
        return MultiTaskModelOutput(loss=loss, logits=logits, embeddings=embeddings, task_losses=task_losses)

    def compute_losses(self, logits, labels, label_smoothing=0.0):
        """`(loss, {task: loss})` of `logits` (`{task: (batch, n_labels)}`) against `labels` (`{"labels_<task>":
        tensor}`, a task left out has no labels): each task's `task_loss`, single-label tasks smoothed by
        `label_smoothing` (the trainer's `args.label_smoothing_factor`), summed with `config.loss_weights`."""
        task_losses = {}
        for task in self.config.tasks:
            task_labels = labels.get(f"labels_{task}")
            if task_labels is not None:
                multi_label = task in self.config.multi_label_tasks
                smoothing = 0.0 if multi_label else label_smoothing
                task_losses[task] = task_loss(logits[task], task_labels, multi_label, smoothing)
        loss = sum(self.config.loss_weights[task] * value for task, value in task_losses.items())
        return loss, task_losses

    @torch.inference_mode()
    def _run_batch(self, encoding):
        was_training = self.training
        self.eval()
        try:
            output = self(**encoding.to(self.device))
        finally:
            self.train(was_training)
        logits = {task: value.float().cpu() for task, value in output.logits.items()}
        return logits, output.embeddings.float().cpu()


def check_device(device):
    """`device` as a `torch.device` this machine has; a one-line ValueError naming `device` otherwise (a CPU-only
    torch asked for `cuda`, a GPU index it does not have, a misspelt device)."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device {device!r}: not a torch device (cpu, cuda, cuda:1, mps, ...)") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            why = "was built without CUDA" if torch.version.cuda is None else "finds no CUDA GPU"
            raise ValueError(f"device {device!r}: this torch {torch.__version__} {why}; use cpu")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {device!r}: MPS (Apple GPU) is not available here; use cpu")
    return parsed


@contextmanager
def checkpoint_errors(name_or_path):
    """Turn what transformers, safetensors and torch raise for a checkpoint that cannot be read into a one-line
    ValueError naming `name_or_path`: missing or truncated weights, a pickle that torch will not load safely."""
    try:
        yield
    except pickle.UnpicklingError as e:
        if "Weights only load failed" not in str(e):
            raise ValueError(f"{name_or_path}: its weights file is damaged ({_first_line(e)})") from None
        raise ValueError(
            f"{name_or_path}: the checkpoint cannot be loaded safely: its pickle file holds Python objects besides "
            "tensors; load only a model saved as model.safetensors (save_pretrained) by someone you trust"
        ) from None
    except SafetensorError as e:
        raise ValueError(f"{name_or_path}: model.safetensors is truncated or damaged ({_first_line(e)})") from None
    except RuntimeError as e:
        if "ignore_mismatched_sizes" not in str(e):
            raise ValueError(f"{name_or_path}: cannot load the model ({_first_line(e)})") from None
        raise ValueError(f"{name_or_path}: its weights do not fit its config.json (sizes differ)") from None
    except (OSError, EOFError) as e:
        raise ValueError(f"{name_or_path}: cannot load the model ({_first_line(e)})") from None


def _first_line(error):
    lines = str(error).strip().splitlines()
    return lines[0].strip() if lines else type(error).__name__


def load_saved_model(name_or_path, device=None, **kwargs):
    r"""
    A multi-task model saved by `save_pretrained` (train.py), every weight in place: the one loader of the scripts.

    Every reason it cannot be loaded is a one-line `ValueError`, raised before any weight is read where it can be: it
    names `name_or_path` (no such directory, another kind of model, missing or damaged weights, weights that do not fit
    its config, a checkpoint that cannot be unpickled safely) or `device` (one this machine lacks).

    Args:
        name_or_path (`str` or `os.PathLike`):
            A directory saved by train.py (or `save_pretrained`), or a Hub name.
        device (`str` or `torch.device`, *optional*):
            Where to put the model (`"cpu"`, `"cuda"`, `"cuda:1"`, `"mps"`); by default where `from_pretrained` puts it.
        kwargs (*optional*):
            Config settings to override (`classifier_dropout=0.2`), a `config` to use instead of the saved one, or
            options of `from_pretrained`.

    Returns:
        [`MultiTaskModel`].

    Example:

    ```python
    >>> from modeling_multitask import load_saved_model

    >>> model = load_saved_model("outputs/multitask-minilm", device="cpu")  # doctest: +SKIP
    >>> list(model.config.tasks)  # doctest: +SKIP
    ['topic', 'sentiment']
    ```
    """
    if device is not None:
        device = check_device(device)
    config = kwargs.pop("config", None) or MultiTaskConfig.from_saved_model(name_or_path)
    for name in [name for name in kwargs if hasattr(config, name)]:  # config settings, as from_pretrained takes them
        setattr(config, name, kwargs.pop(name))
    with checkpoint_errors(name_or_path):
        model, info = MultiTaskModel.from_pretrained(name_or_path, config=config, output_loading_info=True, **kwargs)
    gaps = {what: info.get(f"{what}_keys") for what in ("missing", "unexpected")}
    gaps = {what: sorted(keys) for what, keys in gaps.items() if keys}
    if gaps:
        shown = "; ".join(
            f"{what}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}" for what, keys in gaps.items()
        )
        raise ValueError(f"{name_or_path}: its weights do not fit its config.json ({shown})")
    return model.to(device) if device is not None else model


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def load_saved_tokenizer(name_or_path, config):
    r"""
    The tokenizer saved with a model (or an encoder).

    Args:
        name_or_path (`str` or `os.PathLike`):
            The model's directory or Hub name.
        config ([`MultiTaskConfig`] or `PretrainedConfig`):
            The model's config. Without it, `AutoTokenizer` would read config.json, see its `auto_map` and ask to run
            remote code.

    Returns:
        A [`PreTrainedTokenizerBase`]. A one-line `ValueError` naming `name_or_path` when there is none, it cannot be
        read, or it has more tokens than the encoder's vocabulary.

    Example:

    ```python
    >>> from modeling_multitask import load_saved_model, load_saved_tokenizer

    >>> model = load_saved_model("outputs/multitask-minilm")  # doctest: +SKIP
    >>> tokenizer = load_saved_tokenizer("outputs/multitask-minilm", model.config)  # doctest: +SKIP
    ```
    """
    saved_model = hasattr(config, "backbone_config")  # saved by save_pretrained with tokenizer.json, not an encoder
    if (
        saved_model
        and os.path.isdir(name_or_path)
        and not any(os.path.isfile(os.path.join(name_or_path, name)) for name in TOKENIZER_FILES)
    ):
        raise ValueError(
            f"{name_or_path}: no tokenizer ({' or '.join(TOKENIZER_FILES)}); save it with the model: "
            "tokenizer.save_pretrained(DIR)"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, config=config)
    except Exception as e:  # noqa: BLE001 (tokenizers and sentencepiece raise bare Exceptions)
        reason = _first_line(e)
        if "backend tokenizer" in reason or "sentencepiece" in reason:  # not a missing package: a missing file
            reason = "tokenizer.json is missing or damaged"
        raise ValueError(f"{name_or_path}: cannot load its tokenizer ({reason})") from e
    # Without its vocabulary file a tokenizer still loads, from tokenizer_config.json alone, and reads every word as
    # [UNK]; one larger than the encoder's vocabulary gives ids the embeddings do not have.
    if len(tokenizer) <= len(set(tokenizer.all_special_tokens)):
        raise ValueError(
            f"{name_or_path}: cannot load its tokenizer (tokenizer.json is missing or damaged: no vocabulary)"
        )
    vocab_size = getattr(config.backbone_config, "vocab_size", None) if saved_model else None
    if vocab_size and len(tokenizer) > vocab_size:
        raise ValueError(
            f"{name_or_path}: its tokenizer has {len(tokenizer)} tokens but the encoder only {vocab_size}: "
            "not the tokenizer this model was trained with"
        )
    return tokenizer


# The files a saved model is made from: its config and its weights (one file or shards with their index).
MultiTaskConfig.register_for_auto_class()
MultiTaskModel.register_for_auto_class("AutoModel")
AutoModel.register(MultiTaskConfig, MultiTaskModel, exist_ok=True)  # AutoModel on a saved config: this class

__all__ = [
    "MultiTaskInference",
    "MultiTaskModel",
    "MultiTaskModelOutput",
    "MultiTaskPreTrainedModel",
    "TaskHead",
    "check_device",
    "check_texts",
    "is_blank",
    "load_saved_model",
    "load_saved_tokenizer",
    "pool",
    "positive_int",
]
