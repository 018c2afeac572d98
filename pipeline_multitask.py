"""A `transformers` pipeline for the multi-task classifier, saved next to the model so that

    from transformers import pipeline
    classify = pipeline(model="PATH_OR_REPO", trust_remote_code=True)
    classify("Shares of the chipmaker jumped 8% after earnings.")
    # {"topic": {"label": "Finance/Tech", "score": 0.97}, "sentiment": {"label": "Positive", "score": 0.91}}

works with no code from this repository. The file travels as remote code (copied to a `transformers_modules`
package), so it imports nothing from the repository: the task schema comes from `model.config.tasks` and the logits
from the model's output.
"""

import json
import os
from pathlib import Path

from transformers import AutoModel, Pipeline
from transformers.dynamic_module_utils import custom_object_save
from transformers.pipelines import PIPELINE_REGISTRY
from transformers.utils import logging

logger = logging.get_logger(__name__)
TASK = "multitask-classification"


class MultiTaskClassificationPipeline(Pipeline):
    r"""
    The `"multitask-classification"` pipeline: every task of a multi-task model for each text.

    Built by `transformers.pipeline(model=DIR, trust_remote_code=True)` from a model directory that `save_pipeline`
    made loadable (train.py does). Labels are decoded by the model's own `decode`, so the pipeline answers exactly
    what `model.predict` answers.

    Args:
        inputs (`str` or `list[str]`):
            A text, or a list of texts (then a list of results). A blank text is refused, as `model.predict` refuses
            it.
        top_k (`int`, *optional*):
            Give the `top_k` best labels per task, best first, instead of the best one.
        max_length (`int`, *optional*):
            Tokens kept per text; defaults to the length the model was trained with (`config.max_seq_length`).
        batch_size (`int`, *optional*, defaults to 1):
            Texts per forward pass, for a list of texts (the `Pipeline` option).

    Returns:
        `dict`, per text: `{task: {"label", "score"}}`; with `top_k=k`, `{task: [k such dicts, best first]}`; a
        multi-label task gives the list of its labels at or above their thresholds.

    Example:

    ```python
    >>> from transformers import pipeline

    >>> classify = pipeline(model="outputs/multitask-minilm", trust_remote_code=True)  # doctest: +SKIP
    >>> classify("Shares of the chipmaker jumped after earnings.")  # doctest: +SKIP
    {'topic': {'label': 'Finance/Tech', 'score': 0.97...}, 'sentiment': {'label': 'Positive', 'score': 0.91...}}
    >>> classify(["The striker scored twice.", "Rates went up again."], top_k=2, batch_size=2)  # doctest: +SKIP
    [{'topic': [{'label': 'Entertainment/Sports', 'score': ...}, ...], ...}, ...]
    ```
    """

    _load_processor = False
    _load_image_processor = False
    _load_video_processor = False
    _load_feature_extractor = False
    _load_tokenizer = True

    def __call__(self, inputs, *args, **kwargs):
        if isinstance(inputs, (list, tuple)) and not inputs:  # nothing to label: no results, as model.predict([])
            options = {k: v for k, v in kwargs.items() if k not in ("batch_size", "num_workers")}
            self._sanitize_parameters(**options)  # bad options are still refused
            return []
        texts = [inputs] if isinstance(inputs, str) else inputs
        check = getattr(self.model, "check_texts", None)  # absent from models saved before it
        if check is not None and isinstance(texts, (list, tuple)) and all(isinstance(t, str) for t in texts):
            check(texts)  # a blank text is refused, as model.predict refuses it
        return super().__call__(inputs, *args, **kwargs)

    def _sanitize_parameters(self, top_k=None, max_length=None):
        self.model.check_options(top_k=top_k, max_length=max_length)  # before anything runs, as model.predict does
        preprocess_params = {} if max_length is None else {"max_length": max_length}
        postprocess_params = {} if top_k is None else {"top_k": top_k}
        return preprocess_params, {}, postprocess_params

    def preprocess(self, text, max_length=None):
        if not isinstance(text, str):
            raise TypeError(f"input is {type(text).__name__} ({text!r}); expected a str or a list of str")
        return self.model.tokenize([text], self.tokenizer, max_length)  # the model's token limit and warnings

    def _forward(self, model_inputs):
        logits = self.model(**model_inputs).logits
        # Flat keys: the pipeline's un-batching walks a dict of tensors, not a dict of dicts.
        return {f"logits_{task}": logits[task] for task in self.model.config.tasks}  # each (batch, n_labels)

    def postprocess(self, model_outputs, top_k=None):
        logits = {task: model_outputs[f"logits_{task}"] for task in self.model.config.tasks}  # each (1, n_labels)
        return self.model.decode(logits, top_k)[0]  # the model's one decoding rule


# Registering is how transformers learns which pipeline class and model class a custom task uses (its documented way
# to add a pipeline); it must run on import, both here and in the copy `pipeline(..., trust_remote_code=True)` loads.
PIPELINE_REGISTRY.register_pipeline(
    TASK, pipeline_class=MultiTaskClassificationPipeline, pt_model=AutoModel, type="text"
)


def custom_pipelines():
    """The `custom_pipelines` entry of `config.json`, as `Pipeline.save_pretrained` writes it:
    `{"multitask-classification": {"impl": "pipeline_multitask.MultiTaskClassificationPipeline", "pt": ["AutoModel"],
    "type": "text"}}`."""
    cls = MultiTaskClassificationPipeline
    info = dict(cls._registered_impl[TASK])
    info["impl"] = f"{cls.__module__.split('.')[-1]}.{cls.__name__}"
    info["pt"] = [model_class.__name__ for model_class in info["pt"]]
    return {TASK: info}


def save_pipeline(save_directory, model=None):
    """Make a saved model directory loadable with `pipeline(model=save_directory, trust_remote_code=True)`.

    The directory must already hold the model (`save_pretrained`: config.json with its `auto_map`, the remote code,
    the weights) and the tokenizer. This copies this file into it and adds `custom_pipelines` to its config.json,
    leaving every other key as it is; config.json is replaced atomically (written aside, then renamed). Pass `model` to
    also set `model.config.custom_pipelines`, so that later `save_pretrained` calls of that model (e.g. the one
    `Trainer.push_to_hub` makes) keep the entry. Returns the paths written.
    """
    save_directory = Path(save_directory)
    config_file = save_directory / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{config_file} not found; save the model (save_pretrained) before its pipeline")
    config = json.loads(config_file.read_text(encoding="utf-8"))
    if "AutoModel" not in config.get("auto_map", {}):
        raise ValueError(f"{config_file} has no auto_map['AutoModel']; the pipeline loads the model as remote code")

    entry = custom_pipelines()
    if model is not None:
        model.config.custom_pipelines = entry
    written = custom_object_save(MultiTaskClassificationPipeline, save_directory)
    config["custom_pipelines"] = entry
    tmp = config_file.with_name(config_file.name + ".tmp")
    tmp.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, config_file)
    return [*written, config_file]
