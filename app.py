"""A Gradio demo of a saved multi-task model: every task's labels for a text, a file labelled to JSONL, and the
cosine similarity of sentence embeddings.

    python app.py --model outputs/multitask-minilm          # http://127.0.0.1:7860
    python app.py --model you/multitask-minilm --share      # a Hub model, behind a public gradio.live link
    python app.py --model outputs/multitask-minilm --write_space space/   # the files of a Hugging Face Space

The tasks and their labels come from the model (`model.config.tasks`), so the app shows whatever tasks a model has.
Files are labelled by `labelling.label_file`, the code behind `predict.py`. With `--backend auto` (the default) a model
directory that holds an ONNX export (`onnx_multitask.py`) runs on ONNX Runtime (its int8 graph when there is one),
anything else on PyTorch. On a Space,
which runs `python app.py` with no arguments, the model is `$MULTITASK_MODEL` or else the quickstart's directory.

One request cannot take the demo down: the sentences compared, the characters of a text and the lines and size of a
file are capped (`--max_*`), with a message that says the cap. `--write_space` writes only into a new or empty
folder, or with `--overwrite` into one it wrote before.
"""

import html
import json
import logging
import os
import re
import secrets
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

import labelling
from configuration_multitask import MultiTaskConfig, looks_local
from labelling import FORMATS, LabelArguments, ModelError, as_flag, check_address, load_for_inference
from modeling_multitask import is_blank
from multitask_data import UserError

logger = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parent  # where the Space's code comes from; never a Space folder itself
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
    "labelling.py",
    "modeling_multitask.py",
    "configuration_multitask.py",
    "multitask_data.py",
    "onnx_multitask.py",
]
# The record that marks a folder as a Space written by --write_space, so that --overwrite may replace it.
SPACE_RECORD = ".written-by-app-py.json"


@dataclass
class Limits:
    """What one request may ask of the demo, so that no paste or upload takes it down (AppArguments' max_*)."""

    similarity_lines: int = 50
    chars: int = 20_000
    file_lines: int = 10_000
    upload_mb: int = 10


@dataclass
class AppArguments:
    model: str | None = field(
        default=None,
        metadata={"help": f"Model directory or Hub name (default: $MULTITASK_MODEL, else {DEFAULT_MODEL})."},
    )
    backend: Literal["auto", "torch", "onnx", "onnx-int8"] = field(
        default="auto",
        metadata={"help": "auto: ONNX int8 when the model directory has it, else ONNX fp32, else PyTorch."},
    )
    host: str | None = field(
        default=None, metadata={"help": "Address to listen on (default: 127.0.0.1, or $GRADIO_SERVER_NAME)."}
    )
    port: int | None = field(default=None, metadata={"help": "Port (default: 7860 or the next free one)."})
    share: bool = field(default=False, metadata={"help": "Also serve the app on a public gradio.live link."})
    write_space: str | None = field(
        default=None,
        metadata={
            "help": "Write the files of a Hugging Face Space for this model to DIR (a new or empty folder) and exit."
        },
    )
    overwrite: bool = field(
        default=False, metadata={"help": "With --write_space: replace a Space folder that --write_space wrote before."}
    )
    max_similarity_lines: int = field(
        default=Limits.similarity_lines,
        metadata={"help": "Sentences the Similarity tab compares at once (its table has N x N cells)."},
    )
    max_chars: int = field(
        default=Limits.chars,
        metadata={"help": "Characters a Classify or Similarity text, or a line of a file to label, may have."},
    )
    max_file_lines: int = field(default=Limits.file_lines, metadata={"help": "Lines a file in the File tab may have."})
    max_upload_mb: int = field(
        default=Limits.upload_mb, metadata={"help": "Size of a file the File tab accepts, in MB."}
    )

    def __post_init__(self):
        if self.port is not None and not 1 <= self.port <= 65535:
            raise UsageError(f"--port must be between 1 and 65535, got {self.port}")
        if self.max_similarity_lines < 2:
            raise UsageError(f"--max_similarity_lines must be >= 2, got {self.max_similarity_lines}")
        for name in ("max_chars", "max_file_lines", "max_upload_mb"):
            if getattr(self, name) < 1:
                raise UsageError(f"--{name} must be >= 1, got {getattr(self, name)}")
        if self.overwrite and not self.write_space:
            raise UsageError("--overwrite goes with --write_space (it replaces a Space folder written before)")


class UsageError(UserError):
    """A command-line mistake (a flag's value, a --write_space folder, a port in use); the message is one line."""


# ----- loading ------------------------------------------------------------------------------------------------------


def _missing_local_path(name_or_path):
    """True when `name_or_path` is meant as a local directory that is not there (rather than a Hub name): the
    library's rule (`configuration_multitask.looks_local`), plus the quickstart's directory."""
    return not Path(name_or_path).is_dir() and (looks_local(name_or_path) or name_or_path == DEFAULT_MODEL)


def load_model(name_or_path, backend="auto"):
    """`(model, tokenizer, backend used)` on the CPU, by the scripts' one loader (`labelling.load_for_inference`);
    a ModelError of one line if it fails, which for the quickstart's directory says how to make it."""
    if name_or_path == DEFAULT_MODEL and not Path(name_or_path).exists():
        raise ModelError(
            f"{name_or_path}: no such model directory; run `python train.py` first to train the quickstart model"
        )
    return load_for_inference(name_or_path, backend, device="cpu")


# ----- what the UI calls --------------------------------------------------------------------------------------------


def top_k(model):
    """Labels shown per task: all of them, up to MAX_TOP_K."""
    return min(MAX_TOP_K, max(len(labels) for labels in model.config.tasks.values()))


def readable(tokenizer, text):
    """True when the tokenizer finds something to read in `text`: not blank, and not only characters it drops
    (zero-width spaces, control characters)."""
    return bool(text) and not is_blank(text) and bool(tokenizer(text, add_special_tokens=False)["input_ids"])


def _check_length(text, limits):
    if text and len(text) > limits.chars:
        raise gr.Error(f"The text has {len(text):,} characters; this demo reads at most {limits.chars:,} at a time.")


def classify(model, tokenizer, text, limits=None):
    """One `{label: score}` dict per task of the model, in `config.tasks` order, for a gr.Label each."""
    if not text or not text.strip():
        raise gr.Error("Type or paste a text to classify first.")
    _check_length(text, limits or Limits())
    if not readable(tokenizer, text):
        raise gr.Error("The text has nothing to read (only invisible or control characters); type a sentence.")
    (result,) = model.predict([text], tokenizer, top_k=top_k(model))
    panels = []
    for task in model.config.tasks:
        top = result[task] if isinstance(result[task], list) else [result[task]]
        panels.append({item["label"]: item["score"] for item in top})
    return panels


def similarity(model, tokenizer, text, limits=None):
    """Two or more sentences, one per line -> their cosine similarity matrix, a DataFrame shaded as a heatmap.
    Lines with nothing to read (blank ones) are left out."""
    limits = limits or Limits()
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    if len(lines) > limits.similarity_lines:
        raise gr.Error(
            f"{len(lines):,} sentences; this demo compares at most {limits.similarity_lines} at a time "
            "(the table has one row and one column per sentence)."
        )
    _check_length(text, limits)
    sentences = [line for line in lines if readable(tokenizer, line)]
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


def label_file(model, tokenizer, path, text_field="text", progress=None, out_dir=None, limits=None):
    """Label an uploaded .txt/.jsonl/.csv/.tsv file with `labelling.label_file` and return the path of the JSONL it wrote
    (in a new folder under `out_dir`, default: the system's temporary folder).

    `progress((lines_done, total_lines), ...)` (a gr.Progress) is called after each window. A bad file or line is a
    gr.Error with predict.py's one-line message, naming the file by its name rather than its temporary path; so is a
    file over `limits` (its size in MB, its lines, the characters of its longest line).
    """
    if not path:
        raise gr.Error("Upload a .txt, .jsonl, .csv or .tsv file first.")
    limits = limits or Limits()
    path = str(path)
    name = Path(path).name
    size = Path(path).stat().st_size
    if size > limits.upload_mb * 1024 * 1024:
        raise gr.Error(
            f"{name}: {size / 1024 / 1024:.1f} MB; this demo labels files of at most {limits.upload_mb} MB "
            "(predict.py labels any size)",
            title="File too large",
        )
    total, longest, chars = _lines(path)
    if total > limits.file_lines:
        raise gr.Error(
            f"{name}: {total:,} lines; this demo labels files of at most {limits.file_lines:,} lines "
            "(predict.py labels any number)",
            title="File too large",
        )
    if chars > limits.chars:  # one 10 MB line takes a minute to tokenise, of which the model reads 512 tokens
        raise gr.Error(
            f"{name}:{longest}: a line of {chars:,} characters; this demo reads lines of at most {limits.chars:,} "
            "(predict.py reads any)",
            title="Line too long",
        )
    output = Path(tempfile.mkdtemp(dir=out_dir)) / f"{Path(path).stem}.predictions.jsonl"
    args = LabelArguments(
        model=str(model.config._name_or_path or "model"),
        input=path,
        output=str(output),
        text_field=(text_field or "").strip() or "text",
        window=256,
        overwrite=True,
    )

    def report(lines_done):
        if progress is not None:
            progress((min(lines_done, total), total), desc=f"Labelling {name}", unit="lines")

    try:
        labelling.label_file(args, model=model, tokenizer=tokenizer, progress=report)
        if not output.exists():  # no empty output is left behind
            raise labelling.InputError(f"{path}: no texts to label")
    except UserError as e:
        shutil.rmtree(output.parent)  # the lines before a bad one are not offered for download
        raise gr.Error(html.escape(str(e).replace(path, name), quote=False), title="Bad file") from None
    return str(output)


def _lines(path):
    """(lines in a file (the last one may lack its newline), the longest line's number and its characters)."""
    count, longest, chars = 0, 0, 0
    with open(path, "rb") as f:
        for count, raw in enumerate(f, 1):
            n = len(raw.decode("utf-8", errors="replace").rstrip("\r\n"))
            if n > chars:
                longest, chars = count, n
    return count, longest, chars


# ----- the app ------------------------------------------------------------------------------------------------------


def build_app(model, tokenizer, backend=None, limits=None):
    """The Blocks of the demo: a Classify tab (one gr.Label per task), a File tab and a Similarity tab; `limits`
    (default: `Limits()`) caps what one request may ask. Launch it with `max_file_size=f"{limits.upload_mb}mb"` so
    that gradio refuses a larger upload before it is stored."""
    limits = limits or Limits()
    tasks = model.config.tasks
    name = model.config._name_or_path or "model"
    schema = ", ".join(f"**{task}** ({len(labels)} labels)" for task, labels in tasks.items())
    runs_on = f" on {backend}" if backend else ""
    # the JSONL files made for downloads; removed with the app (gradio serves copies from its own cache)
    outputs = tempfile.TemporaryDirectory(prefix="multitask-app-")

    def on_classify(text):
        return classify(model, tokenizer, text, limits)

    def on_file(path, text_field, progress=gr.Progress()):  # noqa: B008 (gradio finds its tracker by this default)
        return label_file(model, tokenizer, path, text_field, progress, outputs.name, limits)

    def on_similarity(text):
        return similarity(model, tokenizer, text, limits)

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
                f"score, as `predict.py` writes it. Up to {limits.file_lines:,} lines and {limits.upload_mb} MB."
            )
            with gr.Row():
                upload = gr.File(label="File to label", file_types=list(FORMATS), elem_id="upload")
                with gr.Column():
                    text_field = gr.Textbox(label="Text field (JSONL, CSV)", value="text")
                    run_file = gr.Button("Label file", variant="primary")
            result = gr.File(label="Predictions (JSONL)", interactive=False, elem_id="predictions")
            run_file.click(on_file, inputs=[upload, text_field], outputs=result, api_name="label_file")
        with gr.Tab("Similarity"):
            gr.Markdown(
                "Cosine similarity of the model's sentence embeddings (mean-pooled, normalised); "
                f"up to {limits.similarity_lines} sentences."
            )
            sentences = gr.Textbox(label="Sentences, one per line", lines=5, value=SIMILARITY_EXAMPLE)
            run_similarity = gr.Button("Compare", variant="primary")
            matrix = gr.Dataframe(label="Cosine similarity", interactive=False, elem_id="similarity")
            run_similarity.click(on_similarity, inputs=sentences, outputs=matrix, api_name="similarity")
    demo.outputs_dir = outputs  # lives as long as the app
    return demo


# ----- a Hugging Face Space -----------------------------------------------------------------------------------------


def write_space(directory, model_name_or_path, overwrite=False):
    """Write a Space's files to `directory`: README.md (front matter), requirements.txt, the code, and the model (a
    local model directory is copied to where the app looks by default; a Hub name goes into the README).

    `directory` must be a new or empty folder, or (with `overwrite`) a folder this function wrote before; never the
    model folder, the repository, the current folder or a folder around any of them. The files are written into a
    new folder beside it, which then takes its place, so a failure leaves the old folder as it was. A UsageError in
    one line says why a folder is refused."""
    given, out = directory, Path(directory).expanduser().resolve()
    model = Path(model_name_or_path).expanduser()
    local = model.is_dir()
    if not local and _missing_local_path(model_name_or_path):
        raise UsageError(f"--model {model_name_or_path}: no such model directory")
    if local:
        try:
            MultiTaskConfig.from_saved_model(str(model))
        except ValueError as e:
            raise UsageError(f"--model {e}") from None
    _check_space_folder(given, out, model.resolve() if local else None, overwrite)
    work = out.parent / f".{out.name}.writing-{secrets.token_hex(4)}"
    work.mkdir()
    try:
        _write_space_files(work, model_name_or_path, local)
        if out.exists():
            old = out.parent / f".{out.name}.old-{secrets.token_hex(4)}"
            out.rename(old)
            try:
                work.rename(out)
            except BaseException:
                old.rename(out)
                raise
            shutil.rmtree(old)
        else:
            work.rename(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return Path(given)


def _inside(path, folder):
    return path == folder or folder in path.parents


def _check_space_folder(given, out, model, overwrite):
    """Refuse a --write_space folder that is not new, empty, or (with --overwrite) a Space written before."""
    repo = REPO
    flag = f"--write_space {given}"
    if out.exists() and not out.is_dir():
        raise UsageError(f"{flag}: is a file; name a new folder for the Space")
    if model is not None and (_inside(out, model) or _inside(model, out)):
        where = "is" if out == model else "is inside" if _inside(out, model) else "holds"
        raise UsageError(f"{flag}: {where} the model folder; name a new folder for the Space")
    # a new folder inside the repository (the README's `space/`) is fine; the repository or a folder around it is not
    if _inside(repo, out):
        raise UsageError(f"{flag}: {'is' if out == repo else 'holds'} this repository; name a new folder for the Space")
    for name, folder in (("the current folder", Path.cwd().resolve()), ("your home folder", Path.home().resolve())):
        if _inside(folder, out):
            raise UsageError(f"{flag}: {'is' if out == folder else 'holds'} {name}; name a new folder for the Space")
    if not out.parent.is_dir():
        raise UsageError(f"{flag}: folder {out.parent} does not exist; create it first")
    if not out.exists() or not any(out.iterdir()):
        return
    if not _written_by_us(out):
        raise UsageError(
            f"{flag}: folder is not empty and was not written by --write_space; name a new or empty folder"
        )
    if not overwrite:
        raise UsageError(f"{flag}: holds a Space written before; add --overwrite to replace it")


def _written_by_us(folder):
    try:
        record = json.loads((folder / SPACE_RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and record.get("written_by") == "app.py --write_space"


def _write_space_files(out, model_name_or_path, local):
    repo = REPO
    for name in SPACE_CODE:
        if (repo / name).exists():
            shutil.copy2(repo / name, out / name)
    # The Space installs gradio itself (sdk_version); the code needs torch (CPU wheels), transformers and datasets.
    pins = (repo / "requirements.txt").read_text(encoding="utf-8").splitlines()
    lines = ["--extra-index-url https://download.pytorch.org/whl/cpu"]
    lines += [line for line in pins if re.split(r"[<>=!~ ]", line)[0] in ("torch", "transformers", "datasets")]
    (out / "requirements.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    if local:
        shutil.copytree(model_name_or_path, out / DEFAULT_MODEL, ignore=_not_for_space)
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
    (out / SPACE_RECORD).write_text(json.dumps({"written_by": "app.py --write_space"}) + "\n", encoding="utf-8")


def _not_for_space(directory, names):
    """Training leftovers that a served model does not need."""
    return [n for n in names if n.startswith("checkpoint-") or n in ("runs", "training_args.bin")]


def main(argv=None):
    parser = HfArgumentParser(AppArguments)
    argv = sys.argv[1:] if argv is None else argv
    try:
        (args,) = parser.parse_args_into_dataclasses(args=argv)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    args.model = args.model or os.environ.get("MULTITASK_MODEL") or DEFAULT_MODEL
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", level=logging.INFO)
    transformers.utils.logging.set_verbosity_warning()
    bars = transformers.utils.logging.is_progress_bar_enabled()
    if not sys.stderr.isatty():  # a log file or a Space's log: a progress bar there is a line of escape codes
        transformers.utils.logging.disable_progress_bar()
    try:
        return serve(args)
    except UserError as e:  # the loader names `backend`: said as the flag
        print(f"error: {as_flag(e, ('backend',))}", file=sys.stderr)
        return 2
    finally:
        if bars:
            transformers.utils.logging.enable_progress_bar()


def serve(args):
    """What main does once the arguments are read: write the Space, or load the model and serve the app."""
    if args.write_space:
        try:
            out = write_space(args.write_space, args.model, overwrite=args.overwrite)
        except OSError as e:  # a full disk, no permission: the folder that was there is as it was
            raise UsageError(f"--write_space {args.write_space}: cannot write the Space ({e})") from None
        logger.info("wrote the Space to %s", out)
        return 0
    flag = "--host" if args.host else "$GRADIO_SERVER_NAME"  # gradio's own default, then 127.0.0.1
    host = args.host or os.environ.get("GRADIO_SERVER_NAME") or "127.0.0.1"
    try:
        check_address(host, args.port or 0, flag)  # before the model is loaded: a taken port is said at once
    except UserError as e:
        raise UsageError(str(e)) from None
    model, tokenizer, backend = load_model(args.model, args.backend)
    logger.info("%s runs on %s; tasks: %s", args.model, backend, dict(model.config.tasks))
    limits = Limits(args.max_similarity_lines, args.max_chars, args.max_file_lines, args.max_upload_mb)
    demo = build_app(model, tokenizer, backend, limits)
    try:
        demo.launch(
            server_name=args.host, server_port=args.port, share=args.share, max_file_size=f"{limits.upload_mb}mb"
        )
    except OSError as e:
        if "Cannot find empty port" not in str(e):
            raise
        first, last = re.findall(r"\d+", str(e))[:2]
        raise UsageError(f"no free port in {first}-{last}; choose one with --port") from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
