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

Restart: run the same command again. `OUTPUT.resume.json` records what the output belongs to (the input's path and
content hash, the model's path and weights hash, the settings that change a prediction); if it matches, a partial
last line (left by a kill) is cut off and the run resumes after the input line named by the last complete output
line, so nothing is written twice or lost. Otherwise the run is refused, naming what differs. The input may not be
the output itself, and an exclusive lock on the output stops a second writer. Ctrl-C stops with exit status 130 and
says up to which input line the output is complete.

Bad lines (undecodable bytes, malformed JSON, a missing or non-string text field): `--on_error fail` (the default)
stops with `error: FILE:LINE: ...` and a non-zero exit, after writing the texts before that line, so a run re-started
once the line is fixed continues from it; `--on_error skip` logs a warning naming the line and writes nothing for it.
"""

import dataclasses
import fcntl
import hashlib
import heapq
import json
import logging
import os
import shutil
import sys
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import transformers
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm
from transformers import HfArgumentParser

from configuration_multitask import MultiTaskConfig
from modeling_multitask import check_device, load_saved_model, load_saved_tokenizer
from multitask_data import FORMATS as DATA_FORMATS
from multitask_data import DataError, file_format, iter_rows, location

logger = logging.getLogger(__name__)
FORMATS = {suffix: fmt for suffix, fmt in DATA_FORMATS.items() if fmt != "parquet"}  # Parquet cannot be streamed
RESERVED_KEYS = ("line", "id", "embedding")  # output keys that are not task names


# A problem with the input or output file; the message names it and is shown as it is, without a traceback. The same
# class as the shared reader's, so that one `except` catches both.
InputError = DataError


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
        for name in ("batch_size", "window", "max_length"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise InputError(f"--{name} must be >= 1, got {getattr(self, name)}")


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
    """--format, else plain text for stdin, else the format that the file's extension names."""
    if args.format is not None:
        return args.format
    if args.input == "-":
        return "txt"
    return file_format(args.input, tuple(FORMATS.values()), hint=" or --format")


def row_record(line_no, row, error, args):
    """A row of the input (see multitask_data.iter_rows) as a Record with its text and id, or why it has none."""
    if error:
        return Record(line_no, error=error)
    if args.text_field not in row:
        return Record(line_no, error=f"no {args.text_field!r} field (fields: {sorted(row)})")
    text = row[args.text_field]
    if not isinstance(text, str):
        return Record(line_no, error=f"{args.text_field!r} is {text!r}; expected a string")
    return Record(line_no, text=text, id=row.get(args.id_field))


def read_records(stream, args, skip=0):
    """Yield the Records of the input after line `skip`, lazily (text and JSONL lines up to it are not even decoded)."""
    rows = iter_rows(stream, args.format, input_name(args), skip=skip, text_field=args.text_field)
    return (row_record(*row, args) for row in rows)


# ----- output, restart and what an output belongs to ----------------------------------------------------------------


class Interrupted(Exception):
    """Ctrl-C: `line` is the last input line whose prediction was written."""

    def __init__(self, line):
        super().__init__(line)
        self.line = line


def sidecar_path(output):
    """The small JSON beside an output that records what the output belongs to (input, model, settings)."""
    return output.with_name(output.name + ".resume.json")


def sha256_of(path, max_lines=None):
    """sha256 of a file, or of its first `max_lines` lines."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        if max_lines is None:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        else:
            for _, line in zip(range(max_lines), f, strict=False):
                digest.update(line)
    return digest.hexdigest()


def model_identity(name):
    """A saved model directory as its path and the hash of its config and weights; a Hub name as itself."""
    path = Path(name)
    if not path.is_dir():
        return {"name": name}
    files = sorted(p for p in path.iterdir() if p.name == "config.json" or p.suffix in (".safetensors", ".bin"))
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.name.encode() + bytes.fromhex(sha256_of(file)))
    return {"path": str(path.resolve()), "sha256": digest.hexdigest()}


def run_identity(args):
    """What an output's lines depend on: the input, the model and the settings that change a prediction."""
    settings = ("format", "text_field", "id_field", "max_length", "with_embeddings", "backend")
    source = {"path": "<stdin>"}
    if args.input != "-":
        source = {"path": str(Path(args.input).resolve()), "sha256": sha256_of(args.input)}
    return {
        "input": source,
        "model": model_identity(args.model),
        "settings": {name: getattr(args, name, None) for name in settings},
    }


def differences(recorded, current, args):
    """What differs between the identity an output was written with and this run's, in words ([] if nothing)."""
    found = []
    if recorded.get("input", {}).get("path") != current["input"]["path"]:
        found.append(f"input {recorded.get('input', {}).get('path')} (now {current['input']['path']})")
    elif "sha256" in current["input"] and recorded["input"].get("sha256") != current["input"]["sha256"]:
        prefix = recorded["input"].get("prefix_lines")
        if prefix is None or recorded["input"].get("prefix_sha256") != sha256_of(args.input, prefix):
            found.append(f"the content of {args.input} (changed since, before the lines already labelled)")
    if recorded.get("model") != current["model"]:
        found.append(f"model {recorded.get('model')} (now {current['model']})")
    for name, value in current["settings"].items():
        if recorded.get("settings", {}).get(name) != value:
            found.append(f"--{name} {recorded.get('settings', {}).get(name)!r} (now {value!r})")
    return found


def write_sidecar(output, identity):
    tmp = sidecar_path(output).with_suffix(".tmp")
    tmp.write_text(json.dumps(identity, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, sidecar_path(output))


def lock(out, output):
    """Hold an exclusive lock on the open output file: a second predict.py on the same output stops at once."""
    try:
        fcntl.flock(out.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise InputError(f"{output}: another predict.py is writing this output right now; wait for it") from None


def resume_from(output, identity, args):
    """The input line after which this run goes on (0: from the start), once the output is known to be this run's:
    written by predict.py for the same input, model and settings. Raises InputError otherwise."""
    sidecar = sidecar_path(output)
    if output.stat().st_size == 0:
        return 0
    if not sidecar.is_file():
        raise InputError(
            f"{output}: exists and was not written by predict.py (no {sidecar.name} beside it); "
            "choose another --output, or --overwrite to replace it"
        )
    found = differences(json.loads(sidecar.read_text(encoding="utf-8")), identity, args)
    if found:
        raise InputError(
            f"{output}: holds predictions of another run ({'; '.join(found)}); run the same command to resume, "
            "choose another --output, or --overwrite to start over"
        )
    if args.input == "-":
        logger.warning("%s: resuming from stdin; cannot check that stdin is the same input as before", output)
    return resume_point(output)


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
    results = [None] * len(records)
    embeddings = [None] * len(records)
    texts = [record.text for record in records]
    for idx, logits, emb in model.iter_batches(texts, tokenizer, args.batch_size, args.max_length):
        for i, result, vector in zip(idx, model.decode(logits), emb.tolist(), strict=True):
            results[i], embeddings[i] = result, vector
    lines = []
    for record, result, vector in zip(records, results, embeddings, strict=True):
        line = {"line": record.line, **({"id": record.id} if record.id is not None else {}), **result}
        if args.with_embeddings:
            line["embedding"] = vector
        lines.append(json.dumps(line, ensure_ascii=False) + "\n")
    return "".join(lines).encode("utf-8")


def load_model(args):
    """The model and tokenizer of `args.model` on `args.device`, or an InputError of one line saying why not."""
    try:
        config = MultiTaskConfig.from_saved_model(args.model)
    except ValueError as e:
        raise InputError(str(e)) from None
    clashes = sorted(set(config.tasks) & set(RESERVED_KEYS))
    if clashes:
        raise InputError(f"{args.model}: task name(s) {clashes} clash with the output keys {list(RESERVED_KEYS)}")
    try:
        if args.backend != "torch":
            # imported here: the torch backend needs neither onnxruntime nor the exporter's imports
            from onnx_multitask import OnnxMultiTaskModel, has_onnx

            if args.device != "cpu":
                raise InputError(
                    f"--backend {args.backend} runs on the CPU (ONNX Runtime); drop --device {args.device}"
                )
            quantized = args.backend == "onnx-int8"
            if not has_onnx(args.model, quantized):
                raise InputError(
                    f"{args.model}: no {args.backend} export; run python export_onnx.py --model {args.model} first"
                )
            # made from other weights or another config: the ValueError says to re-export
            model = OnnxMultiTaskModel.from_pretrained(args.model, quantized=quantized)
        else:
            try:
                check_device(args.device)
            except ValueError as e:
                raise InputError(f"--device {args.device}: {str(e).split(': ', 1)[1]}") from None
            model = load_saved_model(args.model, device=args.device, config=config)
        return model, load_saved_tokenizer(args.model, model.config)
    except InputError:
        raise
    except ValueError as e:
        raise InputError(str(e)) from None


def check_paths(args):
    """Refuse, before anything is opened for writing, an input that is missing or is the output itself, and an
    output whose folder does not exist or that is a folder."""
    output = Path(args.output)
    if args.input != "-" and not Path(args.input).is_file():
        raise InputError(f"{args.input}: file not found")
    if args.input != "-" and output.exists() and os.path.samefile(args.input, output):
        raise InputError(f"{args.output}: is the input file itself; write the predictions to another --output")
    if output.is_dir():
        raise InputError(f"{args.output}: is a directory; --output names a file")
    if not output.parent.is_dir():
        raise InputError(f"{args.output}: folder {output.parent} does not exist; create it first")
    return output


def process_share():
    """(rank, world size) of this process under a launcher (torchrun, accelerate launch): (0, 1) alone."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def predict(args, model=None, tokenizer=None, progress=None):
    """Label `args.input` into `args.output`, going on after the last line written if the output is this run's.

    Under a launcher with N processes, the input's windows are shared among them (see `predict_shared`); the output
    is the same, line for line, as one process writes. `model`/`tokenizer`, if given, are used instead of loading
    `args.model` (which still names the model in the output's record); `progress(line)` is called after each written
    window with the last input line written. Raises InputError for a bad file, a bad line (on_error=fail) or an
    output of another run, and Interrupted on Ctrl-C."""
    args.format = input_format(args)
    output = check_paths(args)
    rank, world = process_share()
    if world > 1:
        return predict_shared(args, output, rank, world, model, tokenizer, progress)
    label_into(output, args, run_identity(args), model, tokenizer, progress)
    logger.info("wrote %s", output)


def label_into(output, args, identity, model=None, tokenizer=None, progress=None, rank=0, world=1, floor=0):
    """Label the input into `output` (a whole output, or one process's part of it), resuming after its last complete
    line. Windows of `args.window` texts are numbered from the start of the input; window k is this process's when
    k % world == rank. Lines up to `floor` are done already (in the merged output of an earlier shared run)."""
    created = not output.exists()
    last, locked = 0, False
    with open(output, "a+b") as out:
        try:
            lock(out, output)
            locked = True
            if args.overwrite:
                out.truncate(0)
            last = done = max(resume_from(output, identity, args), floor)
            if done:
                logger.info("%s holds predictions up to input line %d; resuming after it", output, done)
            if model is None:
                model, tokenizer = load_model(args)
            write_sidecar(output, identity)
            skip = done if world == 1 else 0  # a shared run numbers the windows from the start of the input
            with nullcontext(sys.stdin.buffer) if args.input == "-" else open(args.input, "rb") as stream:
                for k, window in enumerate(windows(read_records(stream, args, skip=skip), args)):
                    todo = [record for record in window if record.line > done]
                    if k % world != rank or not todo:
                        continue
                    out.write(predict_window(model, tokenizer, todo, args))
                    out.flush()
                    last = todo[-1].line
                    if progress is not None:
                        progress(last)
        except KeyboardInterrupt:
            raise Interrupted(last) from None
        finally:
            if not locked:  # another run's output: not ours to touch
                pass
            elif created and os.fstat(out.fileno()).st_size == 0:  # nothing written: leave nothing behind
                output.unlink(missing_ok=True)
                sidecar_path(output).unlink(missing_ok=True)
            elif last and args.input != "-":  # lines after `last` may be edited (a fixed bad line) before a resume
                identity["input"].update(prefix_lines=last, prefix_sha256=sha256_of(args.input, last))
                write_sidecar(output, identity)


def windows(records, args):
    """The input's good Records, `args.window` at a time, with a progress bar. A bad line ends the last window early
    and stops the run (after that window, so that a re-run goes on from the bad line), or is skipped with a warning."""
    with logging_redirect_tqdm(), tqdm(unit=" lines") as bar:
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


def predict_shared(args, output, rank, world, model=None, tokenizer=None, progress=None):
    """N processes label one input: process r labels windows r, r + N, ... into its own part file
    (`OUTPUT.parts/part-r-of-N.jsonl`, restartable like any output), then process 0 merges the parts in input order
    into OUTPUT and removes them. The result is the output one process writes, line for line (same windows, same
    batches). Run the same launcher command again after a kill: every part goes on where it stopped."""
    import datetime

    import torch.distributed as dist

    if args.input == "-":
        raise InputError("--input -: stdin cannot be shared among processes; give a file")
    dist.init_process_group("gloo", timeout=datetime.timedelta(days=1))  # for barriers only; parts are files
    try:
        parts = output.with_name(output.name + ".parts")
        identity = {**run_identity(args), "processes": world}
        if rank == 0:
            if args.overwrite:
                output.unlink(missing_ok=True)
                sidecar_path(output).unlink(missing_ok=True)
                shutil.rmtree(parts, ignore_errors=True)
            parts.mkdir(exist_ok=True)
        dist.barrier()
        floor = resume_from(output, run_identity(args), args) if output.exists() else 0  # an earlier merged run
        part = parts / f"part-{rank}-of-{world}.jsonl"
        part_args = dataclasses.replace(args, output=str(part), overwrite=False)
        label_into(part, part_args, identity, model, tokenizer, progress, rank, world, floor)
        logger.info("process %d of %d labelled its part (%s)", rank, world, part)
        dist.barrier()
        if rank == 0:
            merge_parts(sorted(parts.glob(f"part-*-of-{world}.jsonl")), output, run_identity(args))
            shutil.rmtree(parts)
            logger.info("wrote %s (%d processes)", output, world)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def merge_parts(parts, output, identity):
    """Append the parts' lines to `output` in input order (by their `line`), atomically: written aside, then
    renamed over the output together with its record."""
    streams = [open(part, "rb") for part in parts]
    tmp = output.with_name(f".{output.name}.merging")
    try:
        with open(tmp, "wb") as merged:
            if output.exists():
                with open(output, "rb") as earlier:
                    shutil.copyfileobj(earlier, merged)
            for line in heapq.merge(*streams, key=lambda raw: json.loads(raw)["line"]):
                merged.write(line)
        write_sidecar(output, identity)
        os.replace(tmp, output)
    finally:
        for stream in streams:
            stream.close()
        tmp.unlink(missing_ok=True)


def main(argv=None):
    parser = HfArgumentParser(PredictArguments)
    argv = sys.argv[1:] if argv is None else argv
    try:
        if len(argv) == 1 and argv[0].endswith(".json"):
            (args,) = parser.parse_json_file(json_file=os.path.abspath(argv[0]))
        else:
            (args,) = parser.parse_args_into_dataclasses(args=argv)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as e:  # an arguments file that is missing, malformed or names no argument
        print(f"error: {argv[0]}: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", level=logging.INFO)
    transformers.utils.logging.set_verbosity_warning()
    try:
        predict(args)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except Interrupted as stop:
        if stop.line:
            print(
                f"interrupted: {args.output} holds predictions up to input line {stop.line}; "
                "run the same command to resume",
                file=sys.stderr,
            )
        else:
            print("interrupted before any prediction was written", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
