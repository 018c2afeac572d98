"""The custom handler of Hugging Face Inference Endpoints: train.py saves this file into every model directory, next to
the model's code, so that a model pushed with `--push_to_hub` deploys there as it is.

Inference Endpoints builds `EndpointHandler(path)` once, with `path` the model repository, then calls it with each
request's JSON body:

    {"inputs": "a text" or ["a text", ...], "parameters": {...}}

Parameters (all optional):
    task: "classify" (the default) or "embed" (alias "embeddings").
    top_k: the top_k best labels per task instead of the best one (classify only).
    normalize: true for unit-length embeddings (embed only; default false).
    batch_size: texts per forward pass (default 32); max_length: tokens kept per text (default: the trained length).

Returns, for one text, `model.predict`'s dict (`{task: {"label": ..., "score": ...}}`) or its embedding (a list of
floats); for a list of texts, the list of those, in input order. A bad request (no "inputs", an empty list, an item
that is not a str, a blank text, an unknown or bad parameter) is a `ValueError` with a one-line message, which
Inference Endpoints returns to the caller as an error.

It imports only what travels with the model: its own copy of modeling_multitask.py (and configuration_multitask.py),
transformers and torch.
"""

import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
TASKS = {"classify": "classify", "embed": "embed", "embeddings": "embed"}
PARAMETERS = ("task", "top_k", "normalize", "batch_size", "max_length")


class EndpointHandler:
    def __init__(self, path=""):
        directory = Path(path) if path else HERE
        code = directory if (directory / "modeling_multitask.py").is_file() else HERE
        if str(code) not in sys.path:
            sys.path.insert(0, str(code))  # the model's own copy of its code
        from modeling_multitask import load_saved_model, load_saved_tokenizer

        device = "cuda" if torch.cuda.is_available() else None
        self.model = load_saved_model(directory, device=device).eval()
        self.tokenizer = load_saved_tokenizer(directory, self.model.config)

    def __call__(self, data):
        if not isinstance(data, dict) or "inputs" not in data:
            raise ValueError('the request must be a JSON object with "inputs": a text or a list of texts')
        inputs, parameters = data["inputs"], data.get("parameters") or {}
        if not isinstance(parameters, dict):
            raise ValueError(f'"parameters" must be a JSON object, got {type(parameters).__name__}')
        unknown = sorted(set(parameters) - set(PARAMETERS))
        if unknown:
            raise ValueError(f"unknown parameter {unknown[0]!r}; expected one of {', '.join(PARAMETERS)}")
        task = TASKS.get(parameters.get("task", "classify"))
        if task is None:
            raise ValueError(f"task must be one of {', '.join(TASKS)}, got {parameters['task']!r}")
        if not isinstance(inputs, (str, list)):
            raise ValueError(f"inputs is {type(inputs).__name__} ({inputs!r:.80}); expected a text or a list of texts")
        if not inputs and isinstance(inputs, list):
            raise ValueError("inputs is an empty list; send at least one text")
        wrong = "normalize" if task == "classify" else "top_k"
        if wrong in parameters:
            raise ValueError(f"{wrong} does not apply to task {parameters.get('task', 'classify')!r}")
        options = {"batch_size": parameters.get("batch_size", 32), "max_length": parameters.get("max_length")}
        try:
            self.model.check_options(**options)
            with torch.inference_mode():
                if task == "embed":
                    normalize = parameters.get("normalize", False)
                    if not isinstance(normalize, bool):
                        raise ValueError(f"normalize must be true or false, got {normalize!r}")
                    out = self.model.encode(inputs, self.tokenizer, normalize=normalize, **options).tolist()
                else:
                    out = self.model.predict(inputs, self.tokenizer, top_k=parameters.get("top_k"), **options)
        except (TypeError, ValueError) as err:  # the model names `texts`; the request calls them `inputs`
            message = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise ValueError("inputs" + message[5:] if message.startswith("texts") else message) from None
        return out[0] if isinstance(inputs, str) else out
