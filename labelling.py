"""Label texts and files with a saved multi-task model: the library behind `predict.py`, the demo (`app.py`) and any
server. A script only wires these functions to its command line.

    from labelling import LabelArguments, label_file, label_texts, load_for_inference

    model, tokenizer, backend = load_for_inference("outputs/multitask-minilm")  # torch, or ONNX Runtime
    for row in label_texts(model, tokenizer, ["The striker scored twice.", "Rates went up again."]):
        print(row)  # {"line": 1, "topic": {"label": "Entertainment/Sports", "score": 0.97}, ...}
    label_file(LabelArguments(model="outputs/multitask-minilm", input="in.jsonl", output="out.jsonl"))

`load_for_inference` loads a saved model and its tokenizer (PyTorch or ONNX Runtime); `label_texts` labels texts
in length-sorted windows, yielding rows in input order; `label_file` streams a file of any size (plain text, JSONL,
CSV/TSV) into a JSONL output, in input order and restartable, with the options of `LabelArguments` (the fields behind
predict.py's flags). The input and output formats, resuming a run, the output lock, bad lines and what is refused are
described once, in predict.py's docstring and docs/usage.md; here options are parameters (`window`), not flags.

Every mistake of the user's (a bad file or line, an output of another run, a model that cannot be loaded, an option
out of range) is a `multitask_data.UserError` of one line; an option's names the parameter (`batch_size`), which
`as_flag` turns into the flag (`--batch_size`).
"""

import collections
import dataclasses
import errno
import hashlib
import json
import logging
import os
import socket
import sys
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from filelock import FileLock, Timeout
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from configuration_multitask import MultiTaskConfig, check_model_source
from modeling_multitask import (
    MultiTaskInference,
    check_texts,
    load_saved_model,
    load_saved_tokenizer,
    positive_int,
)
from multitask_data import FORMATS as DATA_FORMATS
from multitask_data import DataError, UserError, file_format, iter_rows, location, text_problem
from onnx_multitask import model_fingerprint, sha256_file

logger = logging.getLogger(__name__)
FORMATS = {suffix: fmt for suffix, fmt in DATA_FORMATS.items() if fmt != "parquet"}  # Parquet cannot be streamed
BACKENDS = ("torch", "onnx", "onnx-int8")  # and "auto" for `load_for_inference`: ONNX where the model has an export


# A problem with the input or output file; the message names it and is shown as it is, without a traceback. The same
# class as the shared reader's, so that one `except` catches both.
InputError = DataError


class ModelError(UserError):
    """The model cannot be loaded (no such directory, another kind of model, damaged weights, no ONNX export)."""


@dataclass
class LabelArguments:
    """What `label_file` labels, into what, and how: `predict.py`'s command line (its flags are these fields)."""

    model: str = field(metadata={"help": "Directory (or Hub name) of a model saved by train.py."})
    input: str = field(metadata={"help": "File to label (.txt, .jsonl, .csv, .tsv), or - for stdin."})
    output: str = field(metadata={"help": "JSONL file to write; if it exists, the run resumes where it stopped."})
    format: Literal["txt", "jsonl", "csv", "tsv"] | None = field(
        default=None, metadata={"help": "Input format; default: from the extension (stdin: txt)."}
    )
    text_field: str = field(default="text", metadata={"help": "JSONL field / CSV column holding the text."})
    id_field: str = field(default="id", metadata={"help": "JSONL field / CSV column copied to the output as `id`."})
    batch_size: int = field(default=32, metadata={"help": "Texts per forward pass."})
    window: int = field(default=1024, metadata={"help": "Texts read, sorted by length and written per step."})
    max_length: int | None = field(default=None, metadata={"help": "Truncate texts to this many tokens."})
    device: str = field(default="cpu", metadata={"help": "cpu, cuda, cuda:1, mps ..."})
    backend: Literal["torch", "onnx", "onnx-int8"] = field(
        default="torch",
        metadata={"help": "torch, or ONNX Runtime on the CPU with the fp32 / int8 graph of export_onnx.py."},
    )
    with_embeddings: bool = field(default=False, metadata={"help": "Add each text's sentence embedding."})
    on_error: Literal["fail", "skip"] = field(
        default="fail", metadata={"help": "A bad input line: stop there (fail) or warn and go on (skip)."}
    )
    overwrite: bool = field(default=False, metadata={"help": "Start a new output instead of resuming."})

    def __post_init__(self):
        check_options(batch_size=self.batch_size, window=self.window, max_length=self.max_length)


def check_options(batch_size=None, window=None, max_length=None):
    """The labelling options, checked once for every entry point: the model's own check (`check_options`) and the
    window's; a UserError naming the parameter (`batch_size must be a positive int, got 0`)."""
    try:
        MultiTaskInference.check_options(batch_size=batch_size, max_length=max_length)
        positive_int("window", window, allow_none=True)
    except (TypeError, ValueError) as e:
        raise UserError(str(e)) from None


def as_flag(error, names):
    """A library error that names a parameter (`batch_size must be ...`, `device 'gpu': ...`) as the message of the
    flag of the same name (`--batch_size must be ...`, `--device gpu: ...`); any other message as it is."""
    message = str(error)
    name, _, rest = message.partition(" ")
    if name not in names:
        return message
    if rest.startswith("'") and "':" in rest:  # a value quoted by the library: the flag shows it as typed
        value, _, why = rest[1:].partition("':")
        rest = f"{value}:{why}"
    return f"--{name} {rest}"


@dataclass
class Record:
    """One input text, or (with `error`) one bad input line."""

    line: int
    text: str | None = None
    id: Any = None
    error: str | None = None


# ----- reading ----------------------------------------------------------------------------------------------------


def input_name(args):
    return "<stdin>" if args.input == "-" else args.input


def streamed_input(args):
    """True when the input can be read only once: stdin, or a path that is not a regular file (/dev/stdin, a pipe)."""
    return args.input == "-" or (os.path.exists(args.input) and not os.path.isfile(args.input))


def input_format(args):
    """--format, else plain text for stdin (or a pipe without a known extension), else the format that the file's
    extension names."""
    if args.format is not None:
        return args.format
    if streamed_input(args) and Path(args.input).suffix.lower() not in FORMATS:
        return "txt"
    return file_format(args.input, tuple(FORMATS.values()), hint=" or --format")


def row_record(line_no, row, error, args):
    """A row of the input (see multitask_data.iter_rows) as a Record with its text and id, or why it has none."""
    if error:
        return Record(line_no, error=error)
    if args.text_field not in row:
        return Record(line_no, error=f"no {args.text_field!r} field (fields: {sorted(row)})")
    text = row[args.text_field]
    problem = text_problem(text, "the line" if args.format == "txt" else repr(args.text_field))
    if problem:  # not a string, or nothing to read (blank): a bad line like any other
        return Record(line_no, error=problem)
    return Record(line_no, text=text, id=row.get(args.id_field))


def read_records(stream, args, skip=0):
    """Yield the Records of the input after line `skip`, lazily (text and JSONL lines up to it are not even decoded)."""
    rows = iter_rows(stream, args.format, input_name(args), skip=skip, text_field=args.text_field)
    return (row_record(*row, args) for row in rows)


# ----- output, restart and what an output belongs to ----------------------------------------------------------------


class Interrupted(Exception):
    """Ctrl-C: `line` is the last input line whose prediction was written; `resumable`: to a file a re-run goes on."""

    def __init__(self, line, resumable=True):
        super().__init__(line)
        self.line, self.resumable = line, resumable


def sidecar_path(output):
    """The small JSON beside an output that records what the output belongs to (input, model, settings)."""
    return output.with_name(output.name + ".resume.json")


def sha256_lines(path, max_lines):
    """sha256 of the first `max_lines` lines of a file (the part of an input already labelled)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for _, line in zip(range(max_lines), f, strict=False):
            digest.update(line)
    return digest.hexdigest()


class PrefixHash:
    """A binary stream whose lines are hashed as they are read (as `sha256_lines` hashes a file's first lines), so that
    a stream read once (stdin) can be recorded, and checked on a resume, by the hash of its first lines.

    `expect=(n, sha256)`: the first n lines must have that hash; InputError as soon as they are read otherwise."""

    def __init__(self, stream, name, expect=None):
        self.stream, self.name, self.expect = stream, name, expect
        self.digest, self.hashed, self.pending = hashlib.sha256(), 0, collections.deque()

    def __iter__(self):
        lines, wanted = 0, self.expect[0] if self.expect else 0
        for raw in self.stream:
            lines += 1
            self.pending.append(raw)
            if lines == wanted and self.upto(wanted) != self.expect[1]:
                raise self.differs(f"its first {wanted} lines are not the ones already labelled")
            yield raw
        if lines < wanted:
            raise self.differs(f"it has {lines} lines, fewer than the {wanted} already labelled")

    def upto(self, lines):
        """The sha256 of the first `lines` lines (read already)."""
        while self.hashed < lines:
            self.digest.update(self.pending.popleft())
            self.hashed += 1
        return self.digest.hexdigest()

    def differs(self, why):
        return InputError(
            f"{self.name}: is not the input the output was written from ({why}); give the same input to resume, "
            "or use another --output or --overwrite"
        )


def model_identity(name):
    """A saved model directory as its path and one hash of its config and weights (`model_fingerprint`, the files an
    ONNX export records too); a Hub name as itself."""
    path = Path(name)
    if not path.is_dir():
        return {"name": name}
    digest = hashlib.sha256()
    for file, sha256 in model_fingerprint(path).items():
        digest.update(file.encode() + bytes.fromhex(sha256))
    return {"path": str(path.resolve()), "sha256": digest.hexdigest()}


SETTINGS = ("format", "text_field", "id_field", "max_length", "with_embeddings", "backend")  # change a prediction


def run_identity(args):
    """What an output's lines depend on: the input, the model and the settings that change a prediction."""
    source = {"path": input_name(args)}  # read once: checked by the hash of its first lines as it is read
    if not streamed_input(args):
        try:
            source = {"path": str(Path(args.input).resolve()), "sha256": sha256_file(args.input)}
        except OSError as e:
            raise InputError(f"{args.input}: cannot read it ({e.strerror})") from None
    return {
        "input": source,
        "model": model_identity(args.model),
        "settings": {name: getattr(args, name, None) for name in SETTINGS},
    }


def differences(recorded, current, args):
    """What differs between the identity an output was written with and this run's, in words ([] if nothing)."""
    found = []
    if recorded.get("input", {}).get("path") != current["input"]["path"]:
        found.append(f"input {recorded.get('input', {}).get('path')} (now {current['input']['path']})")
    elif "sha256" in current["input"] and recorded["input"].get("sha256") != current["input"]["sha256"]:
        prefix = recorded["input"].get("prefix_lines")
        if prefix is None or recorded["input"].get("prefix_sha256") != sha256_lines(args.input, prefix):
            found.append(f"the content of {args.input} (changed since, before the lines already labelled)")
    return found + model_differences(recorded, current)


def model_differences(recorded, current):
    """What differs in the model and the settings between two run identities (see `run_identity`), in words."""
    found = []
    if recorded.get("model") != current["model"]:
        found.append(f"model {recorded.get('model')} (now {current['model']})")
    for name, value in current["settings"].items():
        if recorded.get("settings", {}).get(name) != value:
            found.append(f"--{name} {recorded.get('settings', {}).get(name)!r} (now {value!r})")
    return found


def write_sidecar(output, identity):
    """Write the record beside `output` atomically; a failed write (a full disk) leaves the old record and no temp."""
    tmp = sidecar_path(output).with_suffix(".tmp")
    try:
        with open(tmp, "wb", buffering=0) as f:
            write_all(f, (json.dumps(identity, indent=1) + "\n").encode("utf-8"))
        os.replace(tmp, sidecar_path(output))
    finally:
        tmp.unlink(missing_ok=True)


def write_all(out, data):
    """Write all of `data` to the unbuffered file `out` (a write may take only part of it), or raise OSError."""
    view = memoryview(data)
    while view:
        view = view[out.write(view) :]


def write_failed(output, error, last, resumable=True):
    """The InputError for an output that could not be written (a full disk, a quota, a closed pipe)."""
    reason = error.strerror or str(error)
    if not resumable:
        return InputError(f"{output}: cannot write ({reason}); it is not a regular file, so nothing can be resumed")
    held = f"it holds predictions up to input line {last}" if last else "nothing was written to it"
    fix = "free some space and " if error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) else ""
    return InputError(f"{output}: cannot write ({reason}); {held}; {fix}run the same command to resume")


def lock_path(output):
    return output.with_name(output.name + ".lock")


@contextmanager
def output_lock(output):
    """Hold `OUTPUT.lock` (a `filelock.FileLock`, on every OS) while writing `output`: a second predict.py on the
    same output stops at once. The lock file is removed when the run ends (filelock's peers notice a lock file
    removed under them and take a new one)."""
    lock = FileLock(lock_path(output), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise InputError(f"{output}: another predict.py is writing this output right now; wait for it") from None
    except OSError as e:
        raise InputError(f"{output}: cannot write ({e.strerror or e})") from None
    try:
        yield
    finally:
        with suppress(OSError):  # removed while held; Windows removes it itself on release
            lock_path(output).unlink(missing_ok=True)
        lock.release()


def resume_from(output, identity, args):
    """(the input line after which this run goes on (0: from the start), the output's record or None), once the output
    is known to be this run's: written by predict.py for the same input, model and settings. Raises InputError
    otherwise."""
    sidecar = sidecar_path(output)
    if output.stat().st_size == 0:
        return 0, None
    if not sidecar.is_file():
        raise InputError(
            f"{output}: exists and was not written by predict.py (no {sidecar.name} beside it); "
            "choose another --output, or --overwrite to replace it"
        )
    recorded = json.loads(sidecar.read_text(encoding="utf-8"))
    found = differences(recorded, identity, args)
    if found:
        raise InputError(
            f"{output}: holds predictions of another run ({'; '.join(found)}); run the same command to resume, "
            "choose another --output, or --overwrite to start over"
        )
    line = resume_point(output)
    if line and streamed_input(args) and "prefix_lines" not in recorded["input"]:  # written by an older predict.py
        logger.warning("%s: resuming from %s; cannot check that it is the same input as before", output, args.input)
    return line, recorded


def resume_point(path):
    """Cut a partial last line (a killed run's) off the output at `path` and return the input line number recorded in
    its last complete line: the run goes on after it. 0 when there is no output yet."""
    if not path.exists():
        return 0
    with open(path, "r+b") as f:
        size = pos = f.seek(0, os.SEEK_END)
        tail = b""
        while pos > 0 and tail.count(b"\n") < 2:  # read backwards: only the last two lines matter
            step = min(1 << 16, pos)
            pos -= step
            f.seek(pos)
            tail = f.read(step) + tail
        complete = tail.rfind(b"\n") + 1  # bytes of `tail` that belong to complete lines
        if pos + complete < size:
            logger.warning("%s: cutting off a partial last line of %d bytes", path, size - pos - complete)
            f.truncate(pos + complete)
    if complete == 0:
        return 0
    last = tail[: complete - 1].rsplit(b"\n", 1)[-1]
    try:
        line = json.loads(last)["line"]
    except (ValueError, KeyError, TypeError):
        line = None
    if not isinstance(line, int) or isinstance(line, bool):
        raise InputError(
            f"{path}: the last line is not a predict.py output ({last[:80]!r}); use another --output or --overwrite"
        )
    return line


def label_rows(model, tokenizer, records, batch_size=32, max_length=None, with_embeddings=False):
    """The output rows of a window of Records (length-sorted batches through the model), in the records' order:
    `{"line": N, "id": ... (when the record has one), "<task>": result, ..., "embedding": [...] (if asked)}`."""
    results = [None] * len(records)
    embeddings = [None] * len(records)
    texts = [record.text for record in records]
    for idx, logits, emb in model.iter_batches(texts, tokenizer, batch_size, max_length):
        for i, result, vector in zip(idx, model.decode(logits), emb.tolist(), strict=True):
            results[i], embeddings[i] = result, vector
    rows = []
    for record, result, vector in zip(records, results, embeddings, strict=True):
        row = {"line": record.line, **({"id": record.id} if record.id is not None else {}), **result}
        if with_embeddings:
            row["embedding"] = vector
        rows.append(row)
    return rows


def predict_window(model, tokenizer, records, args):
    """A window of Records as the output's JSON lines, in input order."""
    return jsonl_bytes(label_rows(model, tokenizer, records, args.batch_size, args.max_length, args.with_embeddings))


def jsonl_bytes(rows):
    """Output rows as JSON lines (UTF-8 bytes), as every JSONL output of predictions is written."""
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode("utf-8")


def label_texts(model, tokenizer, texts, batch_size=32, max_length=None, with_embeddings=False, window=1024):
    r"""
    Label texts as `label_file` writes them: one output row per text, in input order.

    Texts are read and labelled `window` at a time, so an iterator of any length takes bounded memory.

    Args:
        model ([`MultiTaskInference`]):
            The model, from `load_for_inference` (PyTorch or ONNX Runtime).
        tokenizer ([`PreTrainedTokenizerBase`]):
            The model's tokenizer.
        texts (iterable of `str` or `Record`):
            The texts; a str's `line` is its 1-based position, a `Record` brings its own `line` and `id`.
        batch_size (`int`, *optional*, defaults to 32):
            Texts per forward pass.
        max_length (`int`, *optional*):
            Tokens kept per text; defaults to the length the model was trained with.
        with_embeddings (`bool`, *optional*, defaults to `False`):
            Add each text's sentence embedding to its row (`"embedding"`).
        window (`int`, *optional*, defaults to 1024):
            Texts read, sorted by length and labelled per step.

    Returns:
        An iterator of rows, `{"line": N, "id": ... (when the record has one), "<task>": result, ...}` (see
        [`~MultiTaskInference.decode`] for a task's result). A text that is not a str, or has nothing to read
        (`is_blank`), is a `UserError` naming it (`texts[3] is blank`) when its window is reached, after the rows of
        the windows before it; an option out of range is one naming the parameter (`batch_size`).

    Example:

    ```python
    >>> # model, tokenizer: the tiny model of the MultiTaskModel example (modeling_multitask)
    >>> from labelling import label_texts

    >>> rows = list(label_texts(model, tokenizer, ["the game was great", "rates went up"]))
    >>> [row["line"] for row in rows], sorted(rows[0])
    ([1, 2], ['line', 'sentiment', 'topic'])

    >>> # a trained model
    >>> model, tokenizer, backend = load_for_inference("outputs/multitask-minilm")  # doctest: +SKIP
    >>> next(label_texts(model, tokenizer, ["The striker scored twice."]))  # doctest: +SKIP
    {'line': 1, 'topic': {'label': 'Entertainment/Sports', 'score': 0.9...}, 'sentiment': {...}}
    ```
    """
    check_options(batch_size=batch_size, window=window, max_length=max_length)
    batch = []
    for n, item in enumerate(texts):
        record = item if isinstance(item, Record) else Record(n + 1, text=item)
        try:
            check_texts([record.text])
        except (TypeError, ValueError) as e:
            raise UserError(str(e).replace("texts[0]", f"texts[{n}]", 1)) from None
        batch.append(record)
        if len(batch) == window:
            yield from label_rows(model, tokenizer, batch, batch_size, max_length, with_embeddings)
            batch = []
    if batch:
        yield from label_rows(model, tokenizer, batch, batch_size, max_length, with_embeddings)


# ----- loading ------------------------------------------------------------------------------------------------------


def _onnx_module():
    """`onnx_multitask`, or None when it (or ONNX Runtime) is not installed: imported only when an ONNX backend may
    be used, so the PyTorch backend needs neither."""
    try:
        import onnx_multitask
    except ImportError:
        return None
    return onnx_multitask


def load_for_inference(name_or_path, backend="torch", device="cpu", threads=None):
    r"""
    Load a saved multi-task model and its tokenizer for labelling: the one loader of the scripts.

    Args:
        name_or_path (`str` or `os.PathLike`):
            A model directory saved by train.py, or a Hub name.
        backend (`str`, *optional*, defaults to `"torch"`):
            `"torch"`, `"onnx"` or `"onnx-int8"` (ONNX Runtime on the CPU, with the fp32 / int8 graph of
            export_onnx.py), or `"auto"`: `"onnx-int8"` when the directory holds an int8 ONNX export (and ONNX
            Runtime is installed), `"onnx"` when it holds only the fp32 graph, else `"torch"`.
        device (`str`, *optional*, defaults to `"cpu"`):
            Where the PyTorch model runs (`"cpu"`, `"cuda"`, `"cuda:1"`, `"mps"`); an ONNX backend runs on the CPU.
        threads (`int`, *optional*):
            ONNX Runtime's intra-op threads (default: one per core), for processes that share the cores.

    Returns:
        `tuple`: the model (a [`MultiTaskInference`]: [`MultiTaskModel`] or [`OnnxMultiTaskModel`]), its tokenizer
        (read with the model's config, see `load_saved_tokenizer`) and the backend used (`str`). Every reason it
        cannot load is a `ModelError` of one line, raised before any weight is read where it can be: it names the path
        (no such directory, another kind of model, missing or damaged weights or tokenizer, no ONNX export) or the
        parameter (`backend`, `device`; `as_flag` turns it into the flag).

    Example:

    ```python
    >>> from labelling import load_for_inference

    >>> model, tokenizer, backend = load_for_inference("outputs/multitask-minilm", backend="auto")  # doctest: +SKIP
    >>> backend  # doctest: +SKIP
    'onnx-int8'
    ```
    """
    if backend not in ("auto", *BACKENDS):
        raise ModelError(f"backend {backend!r}: not one of auto, {', '.join(BACKENDS)}")
    try:
        check_model_source(name_or_path)  # a mistyped folder is said at once, never sent to the Hub
    except ValueError as e:
        raise ModelError(str(e)) from None
    onnx = _onnx_module() if backend != "torch" else None
    if backend == "auto":  # the int8 graph is batch-invariant and within half a point of PyTorch (docs/results.md)
        local = onnx is not None and Path(name_or_path).is_dir()
        backend = next((b for b, q in (("onnx-int8", True), ("onnx", False)) if local and onnx.has_onnx(name_or_path, q)),
                       "torch")  # fmt: skip
    elif backend != "torch" and onnx is None:
        raise ModelError(f"backend {backend} needs onnx_multitask.py and onnxruntime")
    try:
        config = MultiTaskConfig.from_saved_model(name_or_path)
        if backend == "torch":
            model = load_saved_model(name_or_path, device=device, config=config)
        else:
            if device != "cpu":
                raise ModelError(f"device {device!r}: the {backend} backend runs on the CPU (ONNX Runtime); use cpu")
            quantized = backend == "onnx-int8"
            if not onnx.has_onnx(name_or_path, quantized):
                raise ModelError(
                    f"{name_or_path}: no {backend} export; run python export_onnx.py --model {name_or_path} first"
                )
            # made from other weights or another config: the ValueError says to re-export
            model = onnx.OnnxMultiTaskModel.from_pretrained(name_or_path, quantized=quantized, threads=threads)
        tokenizer = load_saved_tokenizer(name_or_path, model.config)
    except ModelError:
        raise
    except (OSError, ValueError) as e:  # the library's errors are one line already; an OSError may not be
        lines = str(e).strip().splitlines() or [type(e).__name__]
        raise ModelError(lines[0]) from None
    return model, tokenizer, backend


def load_model(args, threads=None):
    """The model and tokenizer of `args.model` on `args.device` with `args.backend`, or a ModelError."""
    model, tokenizer, _ = load_for_inference(args.model, args.backend, args.device, threads)
    return model, tokenizer


def check_paths(args):
    """Refuse, before anything is opened for writing, an input that is missing or is the output itself, and an
    output whose folder does not exist or that is a folder. Returns the output's path; for a symlink to a file, the
    file's, so that its record lies beside the predictions (not in /dev for a /dev/stdout redirected to a file)."""
    output = Path(args.output)
    if args.input != "-" and Path(args.input).is_dir():
        raise InputError(f"{args.input}: is a directory; --input names a file")
    if args.input != "-" and not Path(args.input).exists():
        raise InputError(f"{args.input}: file not found")
    if not streamed_input(args) and output.exists() and os.path.samefile(args.input, output):
        raise InputError(f"{args.output}: is the input file itself; write the predictions to another --output")
    if output.is_dir():
        raise InputError(f"{args.output}: is a directory; --output names a file")
    if not output.parent.is_dir():
        raise InputError(f"{args.output}: folder {output.parent} does not exist; create it first")
    if output.is_symlink() and not streamed_output(output):
        output = Path(os.path.realpath(output))
    return output


def streamed_output(output):
    """True for an output that exists and is not a regular file (/dev/stdout, a pipe, a device): written as it goes,
    with no record beside it and nothing to resume."""
    return output.exists() and not output.is_file()


def check_one_process():
    """Refuse a launch of several processes (torchrun, accelerate launch: WORLD_SIZE > 1), which would each write the
    whole output: one process labels a file; more processes or machines share an input with `--engine ray`."""
    world = os.environ.get("WORLD_SIZE", "1")
    if world.strip() not in ("", "0", "1"):
        raise UserError(
            f"predict.py runs as one process, not {world} (WORLD_SIZE={world}); to share an input among processes "
            "or machines, run it once with --engine ray --num_workers N"
        )


def label_file(args, model=None, tokenizer=None, progress=None):
    r"""
    Label `args.input` into `args.output` (JSONL), going on after the last line written if the output is this run's.

    One process labels the file (a launch of several is refused: `ray_labelling` shares an input among processes or
    machines). An input without a text to label writes no output file (a
    warning says so). The module's docstring describes the formats, the restart and the handling of bad lines.

    Args:
        args ([`LabelArguments`]):
            The model, input, output and options (`predict.py`'s `PredictArguments` too: its flags are these fields).
        model ([`MultiTaskInference`], *optional*):
            A model to use instead of loading `args.model` (which still names the model in the output's record).
        tokenizer ([`PreTrainedTokenizerBase`], *optional*):
            Its tokenizer; given with `model`.
        progress (`Callable[[int], None]`, *optional*):
            Called after each written window with the last input line written.

    Returns:
        `None`. Raises `InputError` for a bad file, a bad line (`on_error="fail"`), an output of another run or one
        that cannot be written, `ModelError` for a model that cannot be loaded (both `UserError`, of one line), and
        `Interrupted` on Ctrl-C (its `line`: up to which input line the output is complete).

    Example:

    ```python
    >>> from labelling import LabelArguments, label_file

    >>> args = LabelArguments(model="outputs/multitask-minilm", input="in.jsonl", output="out.jsonl")
    >>> label_file(args)  # doctest: +SKIP
    ```
    """
    check_one_process()
    args = dataclasses.replace(args, format=input_format(args))  # the caller's arguments are left as they were
    output = check_paths(args)
    if streamed_output(output):
        last = label_stream(output, args, model, tokenizer, progress)
    else:
        label_into(output, args, run_identity(args), model, tokenizer, progress)
        last = output.exists()
    if last:
        logger.info("wrote %s", args.output)
    else:
        logger.warning("%s: no texts to label; %s not written", input_name(args), args.output)


@contextmanager
def open_input(args, expect=None):
    """The input as a binary stream; one read only once (stdin, a pipe) as a PrefixHash checking `expect`."""
    if args.input == "-":
        stream = sys.stdin.buffer
    else:
        try:
            stream = open(args.input, "rb")
        except OSError as e:
            raise InputError(f"{args.input}: cannot read it ({e.strerror})") from None
    try:
        yield PrefixHash(stream, input_name(args), expect) if streamed_input(args) else stream
    finally:
        if stream is not sys.stdin.buffer:
            stream.close()


def label_stream(output, args, model=None, tokenizer=None, progress=None):
    """Label the input into an output that is not a regular file, as it goes: no lock, no record beside it, nothing
    to resume. Returns the last input line written (0: none)."""
    last = 0
    try:
        if model is None:
            model, tokenizer = load_model(args)
        with open_input(args) as stream:
            try:
                out = open(output, "wb", buffering=0)
            except OSError as e:
                raise write_failed(output, e, last, resumable=False) from None
            with out:
                for todo in windows(read_records(stream, args), args):
                    data = predict_window(model, tokenizer, todo, args)
                    try:
                        write_all(out, data)
                    except OSError as e:  # /dev/full, a pipe closed by its reader
                        raise write_failed(output, e, last, resumable=False) from None
                    last = todo[-1].line
                    if progress is not None:
                        progress(last)
    except KeyboardInterrupt:
        raise Interrupted(last, resumable=False) from None
    return last


def label_into(output, args, identity, model=None, tokenizer=None, progress=None):
    """Label the input into `output`, resuming after its last complete line. A write that fails (a full disk) or is
    interrupted is cut back to the last whole line. Returns the last input line written."""
    with output_lock(output):
        return _label_into_locked(output, args, identity, model, tokenizer, progress)


def _label_into_locked(output, args, identity, model, tokenizer, progress):
    created = not output.exists()
    last, done = 0, 0
    try:
        out = open(output, "a+b", buffering=0)  # unbuffered: nothing is left to flush (and fail) after an error
    except OSError as e:
        raise InputError(f"{output}: cannot write ({e.strerror})") from None
    with out:
        try:
            prefix = identity["input"]  # the input's record: its hash, and that of the lines labelled
            if args.overwrite:
                out.truncate(0)
            done, recorded = resume_from(output, identity, args)
            last = done
            if done:
                logger.info("%s holds predictions up to input line %d; resuming after it", output, done)
                if recorded and "prefix_lines" in recorded["input"]:  # still true of the lines written: keep it
                    identity["input"].update({k: recorded["input"][k] for k in ("prefix_lines", "prefix_sha256")})
            if model is None:
                model, tokenizer = load_model(args)
            try:
                write_sidecar(output, identity)
            except OSError as e:
                raise write_failed(output, e, done) from None
            expect = (prefix["prefix_lines"], prefix["prefix_sha256"]) if "prefix_lines" in prefix else None
            with open_input(args, expect) as stream:
                for todo in windows(read_records(stream, args, skip=done), args):
                    data = predict_window(model, tokenizer, todo, args)
                    size = os.fstat(out.fileno()).st_size
                    try:
                        write_all(out, data)
                    except BaseException as e:
                        out.truncate(size)  # no partial line left behind (a full disk, Ctrl-C mid-write)
                        if isinstance(e, OSError):
                            raise write_failed(output, e, last) from None
                        raise
                    last = todo[-1].line
                    if isinstance(stream, PrefixHash):  # read once: record now what a resume must find again
                        prefix.update(prefix_lines=last, prefix_sha256=stream.upto(last))
                        try:
                            write_sidecar(output, identity)
                        except OSError as e:
                            raise write_failed(output, e, last) from None
                    if progress is not None:
                        progress(last)
        except KeyboardInterrupt:
            raise Interrupted(last) from None
        finally:
            if created and os.fstat(out.fileno()).st_size == 0:  # nothing written: leave nothing behind
                output.unlink(missing_ok=True)
                sidecar_path(output).unlink(missing_ok=True)
            elif last > done and not streamed_input(args):  # lines after `last` may change (a fixed bad line)
                try:
                    prefix.update(prefix_lines=last, prefix_sha256=sha256_lines(args.input, last))
                    write_sidecar(output, identity)
                except OSError:  # a full disk: the record written before still holds
                    pass
    return last


def windows(records, args):
    """The input's good Records, `args.window` at a time, with a progress bar on a terminal. A bad line ends the last
    window early and stops the run (after that window, so that a re-run goes on from the bad line), or is skipped
    with a warning."""
    with logging_redirect_tqdm(), tqdm(unit=" lines", disable=None) as bar:  # disable=None: no bar in a log file
        window = []
        for record in records:
            if record.error is not None:
                where = location(input_name(args), args.format, record.line)
                if args.on_error == "fail":
                    if window:
                        yield window
                    raise InputError(f"{where}: {record.error}")
                logger.warning("%s: %s; skipped", where, record.error)
                continue
            window.append(record)
            if len(window) == args.window:
                yield window
                bar.update(len(window))
                window = []
        if window:
            yield window
            bar.update(len(window))


def check_address(host, port, host_flag="--host"):
    """A `UserError` of one line when a server could not listen at `host` and `port` (0: any): an unknown host or one
    not of this machine (named as `host_flag`), a port in use. Checked before a model is loaded, so that a taken port
    is said at once; the servers (gradio, uvicorn) would say it with a traceback, after loading."""
    host = host.strip("[]")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except (OSError, UnicodeError) as e:
        raise UserError(f"{host_flag} {host}: unknown address ({getattr(e, 'strerror', None) or e})") from None
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers bind: a closed port's wait is fine
        try:
            s.bind(address)
        except OSError as e:
            if e.errno == errno.EADDRNOTAVAIL:
                raise UserError(f"{host_flag} {host}: not an address of this machine ({e.strerror})") from None
            raise UserError(
                f"--port {port}: cannot listen on {host}:{port} ({e.strerror}); choose another --port"
            ) from None
