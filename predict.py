"""Label a file of any size with a saved multi-task model: streaming, in input order, restartable.

    python predict.py --model outputs/model --input texts.txt --output predictions.jsonl
    cat texts.txt | python predict.py --model outputs/model --input - --output predictions.jsonl

Input: plain text (one text per line; every line is a text, blank ones included), JSONL (one object per line with a
`--text_field`; blank lines are skipped) or CSV/TSV with a `--text_field` column; the format comes from the extension
(stdin is plain text unless `--format` says otherwise). The input is read lazily, `--window` texts at a time; each
window runs in length-sorted batches and is written in input order, then flushed, so memory does not grow with the
input.

Output: one JSON object per input text, `{"line": N, "id": ..., "<task>": {"label": ..., "score": ...}, ...}`, where
`line` is the 1-based line of the input where the text starts, `id` is copied from the input's `--id_field` when it has
one, and `"embedding": [...]` is added with `--with_embeddings`.

Restart: run the same command again. If the output exists, a partial last line (left by a kill) is cut off, and the
run resumes after the input line named by the last complete output line; nothing is written twice or lost.

Bad lines (undecodable bytes, malformed JSON, a missing or non-string text field): `--on_error fail` (the default)
stops with `error: FILE:LINE: ...` and a non-zero exit, after writing the texts before that line, so a run re-started
once the line is fixed continues from it; `--on_error skip` logs a warning naming the line and writes nothing for it.
"""

import csv
import json
import logging
import os
import sys
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import transformers
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm
from transformers import AutoTokenizer, HfArgumentParser

from modeling_multitask import MultiTaskModel

logger = logging.getLogger(__name__)
FORMATS = {".txt": "txt", ".text": "txt", ".jsonl": "jsonl", ".csv": "csv", ".tsv": "tsv"}
RESERVED_KEYS = ("line", "id", "embedding")  # output keys that are not task names


class InputError(ValueError):
    """A problem with the input or output file; the message names it and is shown as it is, without a traceback."""


@dataclass
class PredictArguments:
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
    with_embeddings: bool = field(default=False, metadata={"help": "Add each text's sentence embedding."})
    on_error: Literal["fail", "skip"] = field(
        default="fail", metadata={"help": "A bad input line: stop there (fail) or warn and go on (skip)."}
    )
    overwrite: bool = field(default=False, metadata={"help": "Start a new output instead of resuming."})

    def __post_init__(self):
        for name in ("batch_size", "window"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1, got {getattr(self, name)}")


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


def input_format(args):
    if args.format is not None:
        return args.format
    if args.input == "-":
        return "txt"
    suffix = Path(args.input).suffix.lower()
    if suffix not in FORMATS:
        raise InputError(f"{args.input}: unknown file type {suffix!r}; expected one of {sorted(FORMATS)} or --format")
    return FORMATS[suffix]


def decoded_lines(stream, skip=0):
    """Yield (line number, line with its end-of-line, error) from a binary stream, each line decoded on its own so an
    undecodable one is reported (text None) without losing the rest. Lines up to `skip` are not decoded."""
    for line_no, raw in enumerate(stream, start=1):
        if line_no <= skip:
            continue
        try:
            yield line_no, raw.decode("utf-8-sig" if line_no == 1 else "utf-8"), None
        except UnicodeDecodeError as e:
            yield line_no, None, f"not valid UTF-8 ({e.reason} at byte {e.start})"


def read_txt(lines, args):
    for line_no, line, error in lines:
        yield Record(line_no, error=error) if error else Record(line_no, text=line.rstrip("\r\n"))


def read_jsonl(lines, args):
    for line_no, line, error in lines:
        if error:
            yield Record(line_no, error=error)
            continue
        if not line.strip():
            continue
        try:
            row = json.loads(line.rstrip("\r\n"))  # without the end of line: error columns stay on this line
        except json.JSONDecodeError as e:
            yield Record(line_no, error=f"malformed JSON ({e.msg}, column {e.colno})")
            continue
        yield row_record(line_no, row, args)


def read_csv(lines, args):
    bad = {}  # line number -> why it could not be decoded; such a line reaches the CSV parser as an empty row

    def text_lines():
        for line_no, line, error in lines:
            if error:
                bad[line_no] = error
            yield "\n" if error else line

    reader = csv.reader(text_lines(), delimiter="\t" if args.format == "tsv" else ",")
    header = next(reader, None)
    if header is None:
        return
    if args.text_field not in header:
        raise InputError(f"{input_name(args)}:1: no {args.text_field!r} column in the header {header}")
    while True:
        start = reader.line_num + 1  # a quoted field may span lines: a record's number is that of its first line
        try:
            row = next(reader, None)
        except csv.Error as e:
            yield Record(start, error=f"unreadable CSV ({e})")
            continue
        if row is None:
            return
        errors = [bad.pop(n) for n in range(start, reader.line_num + 1) if n in bad]
        if errors:
            yield Record(start, error=errors[0])
        elif len(row) != len(header):
            yield Record(start, error=f"{len(row)} fields, but the header has {len(header)}")
        elif row:  # [] is a blank line
            yield row_record(start, dict(zip(header, row, strict=True)), args)


def row_record(line_no, row, args):
    """A JSONL object or CSV row as a Record, or the reason it cannot be one."""
    if not isinstance(row, dict):
        return Record(line_no, error=f"expected a JSON object, got {type(row).__name__}")
    if args.text_field not in row:
        return Record(line_no, error=f"no {args.text_field!r} field (fields: {sorted(row)})")
    text = row[args.text_field]
    if not isinstance(text, str):
        return Record(line_no, error=f"{args.text_field!r} is {text!r}; expected a string")
    return Record(line_no, text=text, id=row.get(args.id_field))


def read_records(stream, args, skip=0):
    """Yield the Records of the input, lazily. Text and JSONL lines up to `skip` are not even decoded; CSV must be
    parsed from the start (a quoted field can span lines), so the caller drops what it has already written."""
    fmt = args.format
    if fmt in ("csv", "tsv"):
        return read_csv(decoded_lines(stream), args)
    return {"txt": read_txt, "jsonl": read_jsonl}[fmt](decoded_lines(stream, skip), args)


# ----- output and restart -----------------------------------------------------------------------------------------


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


def predict_window(model, tokenizer, records, args):
    """Run a window of texts through the model (length-sorted batches) and return its output lines, in input order."""
    texts = [record.text for record in records]
    n = len(texts)
    tasks = model.config.tasks
    label_ids = {task: torch.empty(n, dtype=torch.long) for task in tasks}
    scores = {task: torch.empty(n) for task in tasks}
    embeddings = torch.empty(n, model.config.hidden_size) if args.with_embeddings else None
    for idx, output in model._run_sorted(texts, tokenizer, args.batch_size, args.max_length):
        idx = torch.tensor(idx)
        for task, logits in output.logits.items():
            best = logits.float().softmax(dim=-1).max(dim=-1)  # (batch,) each
            scores[task][idx], label_ids[task][idx] = best.values.cpu(), best.indices.cpu()
        if embeddings is not None:
            embeddings[idx] = output.embeddings.float().cpu()  # (batch, hidden)

    label_ids = {task: ids.tolist() for task, ids in label_ids.items()}
    scores = {task: s.tolist() for task, s in scores.items()}
    embeddings = embeddings.tolist() if embeddings is not None else None
    lines = []
    for row, record in enumerate(records):
        result = {"line": record.line}
        if record.id is not None:
            result["id"] = record.id
        for task, labels in tasks.items():
            result[task] = {"label": labels[label_ids[task][row]], "score": scores[task][row]}
        if embeddings is not None:
            result["embedding"] = embeddings[row]
        lines.append(json.dumps(result, ensure_ascii=False) + "\n")
    return "".join(lines).encode("utf-8")


def load_model(args):
    model = MultiTaskModel.from_pretrained(args.model).to(args.device)
    clashes = sorted(set(model.config.tasks) & set(RESERVED_KEYS))
    if clashes:
        raise InputError(f"{args.model}: task name(s) {clashes} clash with the output keys {list(RESERVED_KEYS)}")
    # config=: AutoTokenizer would otherwise read config.json, see its auto_map and ask to run the remote code
    return model, AutoTokenizer.from_pretrained(args.model, config=model.config)


def predict(args):
    """Label `args.input` into `args.output`; raise InputError for a bad file or (with on_error=fail) line."""
    args.format = input_format(args)
    if args.input != "-" and not Path(args.input).is_file():
        raise InputError(f"{args.input}: file not found")
    output = Path(args.output)
    if args.overwrite:
        output.unlink(missing_ok=True)
    done = resume_point(output)
    if done:
        logger.info("%s holds predictions up to input line %d; resuming after it", output, done)
    model, tokenizer = load_model(args)

    # stdin is not ours to close
    source = nullcontext(sys.stdin.buffer) if args.input == "-" else open(args.input, "rb")
    with source as stream, open(output, "ab") as out, logging_redirect_tqdm(), tqdm(initial=done, unit=" lines") as bar:

        def write(window):
            out.write(predict_window(model, tokenizer, window, args))
            out.flush()
            bar.update(window[-1].line - bar.n)

        window = []
        for record in read_records(stream, args, skip=done):
            if record.line <= done:
                continue
            if record.error is not None:
                where = f"{input_name(args)}:{record.line}"
                if args.on_error == "fail":
                    if window:
                        write(window)  # keep what precedes the bad line: a re-run goes on from it
                    raise InputError(f"{where}: {record.error}")
                logger.warning("%s: %s; skipped", where, record.error)
                continue
            window.append(record)
            if len(window) == args.window:
                write(window)
                window = []
        if window:
            write(window)
    logger.info("wrote %s", output)


def main(argv=None):
    parser = HfArgumentParser(PredictArguments)
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 1 and argv[0].endswith(".json"):
        (args,) = parser.parse_json_file(json_file=os.path.abspath(argv[0]))
    else:
        (args,) = parser.parse_args_into_dataclasses(args=argv)
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", level=logging.INFO)
    transformers.utils.logging.set_verbosity_warning()
    try:
        predict(args)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
