"""A Gradio demo of a saved multi-task model: every task's labels for a text, a file labelled to JSONL, and the
cosine similarity of sentence embeddings.

    python app.py --model outputs/multitask-minilm          # http://127.0.0.1:7860
    python app.py --model you/multitask-minilm --share      # a Hub model, behind a public gradio.live link
    python app.py --model outputs/multitask-minilm --write_space space/   # the files of a Hugging Face Space

The tasks and their labels come from the model (`model.config.tasks`), so the app shows whatever tasks a model has.
Files are labelled by `predict.predict`, the code behind `predict.py`. With `--backend auto` (the default) a model
directory that holds an ONNX export (`onnx_multitask.py`) runs on ONNX Runtime, anything else on PyTorch. On a Space,
which runs `python app.py` with no arguments, the model is `$MULTITASK_MODEL` or else the quickstart's directory.
"""

import html
import logging
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import gradio as gr
import pandas as pd
import transformers
from transformers import HfArgumentParser

import predict
from configuration_multitask import looks_local
from modeling_multitask import load_saved_model, load_saved_tokenizer

logger = logging.getLogger(__name__)
DEFAULT_MODEL = "outputs/multitask-minilm"  # where `python train.py` saves the quickstart model
MAX_TOP_K = 5  # labels shown per task panel
# Sentences to click: news and reviews of all kinds, not written for any one task.
EXAMPLES = [
    "Shares of the chipmaker jumped 8% after it beat earnings expectations.",
    "I've been sleeping much better since I started running in the mornings.",
    "The sequel is louder and longer than the original, and not half as fun.",
    "The home side scored twice in stoppage time to win the final.",
    "Our flight was delayed four hours and nobody told us why.",
]
SIMILARITY_EXAMPLE = "\n".join(
    [
        "The central bank raised interest rates again.",
        "Rates went up once more at the Fed.",
        "I slept badly and skipped my morning run.",
        "The striker scored twice in the final.",
    ]
)
# What a Space needs besides the model: this script and the modules it imports.
SPACE_CODE = [
    "app.py",
    "predict.py",
    "modeling_multitask.py",
    "configuration_multitask.py",
    "multitask_data.py",
    "onnx_multitask.py",
]


@dataclass
class AppArguments:
    model: str | None = field(
        default=None,
        metadata={"help": f"Model directory or Hub name (default: $MULTITASK_MODEL, else {DEFAULT_MODEL})."},
    )
    backend: Literal["auto", "torch", "onnx", "onnx-int8"] = field(
        default="auto",
        metadata={"help": "auto: ONNX Runtime when the model directory has an ONNX export, else PyTorch."},
    )
    host: str | None = field(
        default=None, metadata={"help": "Address to listen on (default: 127.0.0.1, or $GRADIO_SERVER_NAME)."}
    )
    port: int | None = field(default=None, metadata={"help": "Port (default: 7860 or the next free one)."})
    share: bool = field(default=False, metadata={"help": "Also serve the app on a public gradio.live link."})
    write_space: str | None = field(
        default=None, metadata={"help": "Write the files of a Hugging Face Space for this model to DIR and exit."}
    )


class ModelError(ValueError):
    """The model cannot be loaded; the message is one line, shown without a traceback."""


# ----- loading ------------------------------------------------------------------------------------------------------


def _onnx_module():
    """`onnx_multitask`, or None when it (or ONNX Runtime) is not installed: imported only when an ONNX backend may
    be used, so the PyTorch demo needs neither."""
    try:
        import onnx_multitask
    except ImportError:
        return None
    return onnx_multitask


def _missing_local_path(name_or_path):
    """True when `name_or_path` is meant as a local directory that is not there (rather than a Hub name): the
    library's rule (`configuration_multitask.looks_local`), plus the quickstart's directory."""
    return not Path(name_or_path).is_dir() and (looks_local(name_or_path) or name_or_path == DEFAULT_MODEL)


def load_model(name_or_path, backend="auto"):
    """`(model, tokenizer, backend used)` for a model directory or Hub name; a ModelError with one line if it fails."""
    if _missing_local_path(name_or_path):
        hint = "; run `python train.py` first to train the quickstart model" if name_or_path == DEFAULT_MODEL else ""
        what = "is a file, not a model directory" if Path(name_or_path).exists() else "no such model directory"
        raise ModelError(f"{name_or_path}: {what}{hint}")
    local = Path(name_or_path).is_dir()
    onnx = _onnx_module() if backend != "torch" else None
    quantized = backend == "onnx-int8"
    if backend == "auto":
        backend = "onnx" if onnx is not None and local and onnx.has_onnx(name_or_path) else "torch"
    elif backend != "torch" and onnx is None:
        raise ModelError(f"--backend {backend} needs onnx_multitask.py and onnxruntime")
    elif backend != "torch" and local and not onnx.has_onnx(name_or_path, quantized=quantized):
        kind = "int8" if quantized else "fp32"
        raise ModelError(
            f"{name_or_path}: no {kind} ONNX export; run python export_onnx.py --model {name_or_path} first"
        )
    try:
        if backend == "torch":
            model = load_saved_model(name_or_path)
        else:
            model = onnx.OnnxMultiTaskModel.from_pretrained(name_or_path, quantized=quantized)
        tokenizer = load_saved_tokenizer(name_or_path, model.config)
    except (OSError, ValueError) as e:
        lines = str(e).strip().splitlines() or [type(e).__name__]
        reason = lines[0].removeprefix(f"{name_or_path}: ")  # the library's errors name the path already
        raise ModelError(f"{name_or_path}: cannot load the model: {reason}") from e
    return model, tokenizer, backend


# ----- what the UI calls --------------------------------------------------------------------------------------------


def top_k(model):
    """Labels shown per task: all of them, up to MAX_TOP_K."""
    return min(MAX_TOP_K, max(len(labels) for labels in model.config.tasks.values()))


def classify(model, tokenizer, text):
    """One `{label: score}` dict per task of the model, in `config.tasks` order, for a gr.Label each."""
    if not text or not text.strip():
        raise gr.Error("Type or paste a text to classify first.")
    (result,) = model.predict([text], tokenizer, top_k=top_k(model))
    panels = []
    for task in model.config.tasks:
        top = result[task] if isinstance(result[task], list) else [result[task]]
        panels.append({item["label"]: item["score"] for item in top})
    return panels


def similarity(model, tokenizer, text):
    """Two or more sentences, one per line -> their cosine similarity matrix, a DataFrame shaded as a heatmap."""
    sentences = [line.strip() for line in (text or "").splitlines() if line.strip()]
    if len(sentences) < 2:
        raise gr.Error("Enter two or more sentences, one per line.")
    emb = model.encode(sentences, tokenizer, normalize=True)  # (n, hidden), unit length
    sim = (emb @ emb.T).clamp(-1.0, 1.0)  # (n, n) cosine similarity
    names = [str(i) for i in range(1, len(sentences) + 1)]
    table = pd.DataFrame(sim.tolist(), columns=names).round(2)
    shown = [s if len(s) <= 40 else s[:39] + "…" for s in sentences]
    table.insert(0, "sentence", [f"{n}. {s}" for n, s in zip(names, shown, strict=True)])
    return table.style.map(_heat, subset=names).format(precision=2, subset=names)


def _heat(value):
    """CSS for a similarity cell: white at 0 or below, deep blue at 1."""
    level = max(0.0, min(1.0, value))
    red_green = round(255 - 180 * level)
    return f"background-color: rgb({red_green}, {red_green}, 255); color: {'white' if level > 0.6 else 'black'}"


def label_file(model, tokenizer, path, text_field="text", progress=None, out_dir=None):
    """Label an uploaded .txt/.jsonl/.csv/.tsv file with `predict.predict` and return the path of the JSONL it wrote
    (in a new folder under `out_dir`, default: the system's temporary folder).

    `progress((lines_done, total_lines), ...)` (a gr.Progress) is called after each window. A bad file or line is a
    gr.Error with predict.py's one-line message, naming the file by its name rather than its temporary path.
    """
    if not path:
        raise gr.Error("Upload a .txt, .jsonl, .csv or .tsv file first.")
    path = str(path)
    name = Path(path).name
    output = Path(tempfile.mkdtemp(dir=out_dir)) / f"{Path(path).stem}.predictions.jsonl"
    args = predict.PredictArguments(
        model=str(model.config._name_or_path or "model"),
        input=path,
        output=str(output),
        text_field=(text_field or "").strip() or "text",
        window=256,
        overwrite=True,
    )
    total = _count_lines(path)

    def report(lines_done):
        if progress is not None:
            progress((min(lines_done, total), total), desc=f"Labelling {name}", unit="lines")

    try:
        predict.predict(args, model=model, tokenizer=tokenizer, progress=report)
        if not output.exists():  # predict.py leaves no empty output behind
            raise predict.InputError(f"{path}: no texts to label")
    except predict.InputError as e:
        shutil.rmtree(output.parent)  # the lines before a bad one are not offered for download
        raise gr.Error(html.escape(str(e).replace(path, name), quote=False), title="Bad file") from None
    return str(output)


def _count_lines(path):
    """Lines in a file (the last one may lack its newline), for the progress bar's total."""
    count, last = 0, b"\n"
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            count += chunk.count(b"\n")
            last = chunk[-1:]
    return count + (last != b"\n")


# ----- the app ------------------------------------------------------------------------------------------------------


def build_app(model, tokenizer, backend=None):
    """The Blocks of the demo: a Classify tab (one gr.Label per task), a File tab and a Similarity tab."""
    tasks = model.config.tasks
    name = model.config._name_or_path or "model"
    schema = ", ".join(f"**{task}** ({len(labels)} labels)" for task, labels in tasks.items())
    runs_on = f" on {backend}" if backend else ""
    # the JSONL files made for downloads; removed with the app (gradio serves copies from its own cache)
    outputs = tempfile.TemporaryDirectory(prefix="multitask-app-")

    def on_classify(text):
        return classify(model, tokenizer, text)

    def on_file(path, text_field, progress=gr.Progress()):  # noqa: B008 (gradio finds its tracker by this default)
        return label_file(model, tokenizer, path, text_field, progress, outputs.name)

    def on_similarity(text):
        return similarity(model, tokenizer, text)

    with gr.Blocks(title="Multi-task sentence classifier", analytics_enabled=False, delete_cache=(3600, 3600)) as demo:
        gr.Markdown(
            f"# Multi-task sentence classifier\n`{name}`{runs_on}: one shared encoder, one head per task: {schema}."
        )
        with gr.Tab("Classify"):
            with gr.Row():
                with gr.Column():
                    text = gr.Textbox(label="Text", lines=3, placeholder="Type a sentence, or click an example below")
                    with gr.Row():
                        clear = gr.ClearButton()
                        submit = gr.Button("Classify", variant="primary")
                with gr.Column():
                    panels = [
                        gr.Label(label=task, num_top_classes=top_k(model), elem_id=f"task-{i}")
                        for i, task in enumerate(tasks)
                    ]
            clear.add([text, *panels])
            gr.Examples(EXAMPLES, inputs=text, outputs=panels, fn=on_classify, run_on_click=True, cache_examples=False)
            submit.click(on_classify, inputs=text, outputs=panels, api_name="classify")
            text.submit(on_classify, inputs=text, outputs=panels, api_visibility="private")
        with gr.Tab("File"):
            gr.Markdown(
                "One text per line (`.txt`), or a `.jsonl` / `.csv` / `.tsv` file with a text field. The result has "
                "one JSON line per input text: its `line`, its `id` if the input has one, and each task's label and "
                "score, as `predict.py` writes it."
            )
            with gr.Row():
                upload = gr.File(label="File to label", file_types=list(predict.FORMATS), elem_id="upload")
                with gr.Column():
                    text_field = gr.Textbox(label="Text field (JSONL, CSV)", value="text")
                    run_file = gr.Button("Label file", variant="primary")
            result = gr.File(label="Predictions (JSONL)", interactive=False, elem_id="predictions")
            run_file.click(on_file, inputs=[upload, text_field], outputs=result, api_name="label_file")
        with gr.Tab("Similarity"):
            gr.Markdown("Cosine similarity of the model's sentence embeddings (mean-pooled, normalised).")
            sentences = gr.Textbox(label="Sentences, one per line", lines=5, value=SIMILARITY_EXAMPLE)
            run_similarity = gr.Button("Compare", variant="primary")
            matrix = gr.Dataframe(label="Cosine similarity", interactive=False, elem_id="similarity")
            run_similarity.click(on_similarity, inputs=sentences, outputs=matrix, api_name="similarity")
    demo.outputs_dir = outputs  # lives as long as the app
    return demo


# ----- a Hugging Face Space -----------------------------------------------------------------------------------------


def write_space(directory, model_name_or_path):
    """Write a Space's files to `directory`: README.md (front matter), requirements.txt, the code, and the model (a
    local model directory is copied to where the app looks by default; a Hub name goes into the README)."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    repo = Path(__file__).resolve().parent
    for name in SPACE_CODE:
        if (repo / name).exists():
            shutil.copy2(repo / name, out / name)
    # The Space installs gradio itself (sdk_version); the code needs torch (CPU wheels), transformers and datasets.
    pins = (repo / "requirements.txt").read_text(encoding="utf-8").splitlines()
    lines = ["--extra-index-url https://download.pytorch.org/whl/cpu"]
    lines += [line for line in pins if re.split(r"[<>=!~ ]", line)[0] in ("torch", "transformers", "datasets")]
    (out / "requirements.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    if Path(model_name_or_path).is_dir():
        shutil.copytree(model_name_or_path, out / DEFAULT_MODEL, dirs_exist_ok=True, ignore=_not_for_space)
        models = ""
    else:
        models = f"models:\n- {model_name_or_path}\n"
    (out / "README.md").write_text(
        "---\n"
        "title: Multi-task sentence classifier\n"
        "sdk: gradio\n"
        f"sdk_version: {gr.__version__}\n"
        'python_version: "3.11"\n'
        "app_file: app.py\n"
        f"{models}"
        "---\n\n"
        "Every task of a multi-task sentence classifier for a text, a file labelled to JSONL, and sentence similarity.\n"
        + ("" if not models else f"\nSet the Space variable `MULTITASK_MODEL` to `{model_name_or_path}`.\n"),
        encoding="utf-8",
    )
    return out


def _not_for_space(directory, names):
    """Training leftovers that a served model does not need."""
    return [n for n in names if n.startswith("checkpoint-") or n in ("runs", "training_args.bin")]


def main(argv=None):
    parser = HfArgumentParser(AppArguments)
    argv = sys.argv[1:] if argv is None else argv
    (args,) = parser.parse_args_into_dataclasses(args=argv)
    args.model = args.model or os.environ.get("MULTITASK_MODEL") or DEFAULT_MODEL
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", level=logging.INFO)
    transformers.utils.logging.set_verbosity_warning()
    if args.write_space:
        logger.info("wrote the Space to %s", write_space(args.write_space, args.model))
        return 0
    try:
        model, tokenizer, backend = load_model(args.model, args.backend)
    except ModelError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    logger.info("%s runs on %s; tasks: %s", args.model, backend, dict(model.config.tasks))
    build_app(model, tokenizer, backend).launch(server_name=args.host, server_port=args.port, share=args.share)
    return 0


if __name__ == "__main__":
    sys.exit(main())
