"""Reading, checking and mixing the data of the multi-task model.

`iter_rows` is the one reader of train.py and predict.py: plain text, JSONL, CSV/TSV and Parquet, lazily, line by
line, yielding each bad line's problem so that both tools report it in the same words (`FILE:LINE: message`).

A training entry is either `PATH` (a file with a `text` column and one column per task) or `TASK=PATH` (a
single-task file whose `label` column holds that task's labels; `labels` for a multi-label task): JSONL, CSV/TSV or
Parquet. A multi-label task's value is a list of label names (`[]`: none of them), or in CSV a string of names
separated by `|` (or a JSON list); a missing or empty value means "no label for this task". `load_entry` raises every
problem as a `DataError` whose one-line message names the file, the line or row, the value and what was expected,
before any training.

Unlabelled text (for a student taught by a teacher, `train.py --teacher`): an entry `unlabelled=PATH` (any format;
only its `text` column is read) or a plain-text file (`.txt`, one text a line) gives rows with no label for any task;
so may rows of a multi-column file that name no task. They are read only when `unlabelled=True` is passed.
"""

import csv
import json
import os
from contextlib import nullcontext
from pathlib import Path

from datasets import Dataset, Features, List, Value, concatenate_datasets

from modeling_multitask import IGNORE_INDEX, is_blank

LABEL_SEPARATOR = "|"  # between a multi-label task's label names in a CSV/TSV cell (or any string value)
FORMATS = {
    ".txt": "txt",
    ".text": "txt",
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".csv": "csv",
    ".tsv": "tsv",
    ".parquet": "parquet",
}
TRAINING_FORMATS = ("jsonl", "csv", "tsv", "parquet")  # plain text has no labels
UNLABELLED = "unlabelled"  # the entry name of unlabelled text: `unlabelled=PATH`
CSV_DELIMITERS = {"csv": ",", "tsv": "\t"}
NUL = b"\x00"
UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
UNCLOSED_QUOTE = "unterminated quoted field (a '\"' opened on this line is never closed)"


class UserError(ValueError):
    """A user's mistake (a flag's value, a file, a folder, a model path): every script prints its one-line message as
    `error: ...`, without a traceback. The scripts' own kinds (training_args.ArgumentError, labelling.ModelError, ...)
    are subclasses, so one `except UserError` catches them all."""


class DataError(UserError):
    """Bad input data; the message is meant to be shown to the user as it is, without a traceback."""


def file_format(path, formats, hint=""):
    """The format that `path`'s extension names, if it is one of `formats`; `hint` ends the error message."""
    suffix = Path(path).suffix.lower()
    if FORMATS.get(suffix) not in formats:
        known = sorted(s for s, fmt in FORMATS.items() if fmt in formats)
        raise DataError(f"{path}: unknown file type {suffix!r}; expected one of {known}{hint}")
    return FORMATS[suffix]


def text_problem(value, name):
    """Why `value` (the text `name` of a row) cannot be labelled, or None: it is not a str, or it is blank."""
    if not isinstance(value, str):
        return f"{name} is {value!r}; expected a string"
    if is_blank(value):
        return f"{name} is {value!r}: nothing to read (empty, or only spaces and invisible characters)"
    return None


def location(name, fmt, number):
    """How messages name a row: `FILE:LINE`, or `FILE: row N` for Parquet, which has no lines."""
    return f"{name}: row {number}" if fmt == "parquet" else f"{name}:{number}"


# ----- reading: one reader for train.py and predict.py --------------------------------------------------------------


def iter_rows(source, fmt, name, skip=0, text_field="text"):
    """Yield `(number, row, error)` for each row of `source`, lazily: `row` is a dict, or None and `error` says why.

    `source` is a path or, except for Parquet, a binary stream (`sys.stdin.buffer`); `name` names it in messages.
    `number` is the 1-based line where the row starts (Parquet: the row's number). Formats:

    - `txt`: every line is a text, blank ones included: `{text_field: the line without its end-of-line}` (a text with
      nothing to read is the caller's to refuse, with `text_problem`).
    - `jsonl`: one JSON object per line; blank lines are skipped.
    - `csv`, `tsv`: a header naming the columns, which must include `text_field`, then one record per row; a quoted
      field may span lines, and a record is numbered by its first line. Blank lines are skipped.
    - `parquet`: a file, numbered by row.

    Each line is decoded on its own (UTF-8; a BOM on line 1 is dropped; a line with a NUL byte, which UTF-16 text
    read as UTF-8 is full of, is undecodable), so an undecodable one is reported and the rest still read. Nothing
    numbered up to `skip` is yielded: txt and jsonl lines up to it are not even decoded, CSV is parsed from the start
    (a quoted field can span lines). A bad row's `error` has no `FILE:LINE:` prefix (see
    `location`); a file that cannot be read at all (missing, CSV header, Parquet) raises DataError.
    """
    if fmt not in FORMATS.values():
        raise ValueError(f"unknown format {fmt!r}; expected one of {sorted(set(FORMATS.values()))}")
    if fmt == "parquet":
        rows = enumerate(_parquet_rows(source, name), start=1)
        yield from ((number, row, None) for number, row in rows if number > skip)
        return
    with _open_binary(source, name) as stream:
        if fmt == "txt":
            yield from _txt_rows(decoded_lines(stream, skip), text_field)
        elif fmt == "jsonl":
            yield from _jsonl_rows(decoded_lines(stream, skip))
        else:
            rows = _csv_rows(decoded_lines(stream), name, CSV_DELIMITERS[fmt], text_field)
            yield from (item for item in rows if item[0] > skip)


def _is_path(source):
    return isinstance(source, (str, os.PathLike))


def _check_file(path, name):
    if not Path(path).is_file():
        raise DataError(f"{name}: file not found")


def _open_binary(source, name):
    """A path opened for reading bytes; a stream as it is (it is not ours to close)."""
    if not _is_path(source):
        return nullcontext(source)
    _check_file(source, name)
    return open(source, "rb")


def decoded_lines(stream, skip=0):
    """Yield (line number, line with its end-of-line, error) from a binary stream, each line decoded on its own so an
    undecodable one is reported (line None) without losing the rest. Lines up to `skip` are not decoded."""
    for line_no, raw in enumerate(stream, start=1):
        if line_no <= skip:
            continue
        if line_no == 1 and raw.startswith(UTF16_BOMS):
            yield line_no, None, "not valid UTF-8 (the file starts with a UTF-16 byte-order mark); save it as UTF-8"
        elif NUL in raw:  # valid UTF-8, but no text holds NUL characters: UTF-16 text read as bytes, or a binary file
            yield line_no, None, f"a NUL byte at byte {raw.index(NUL)} (a UTF-16 or binary file?); save it as UTF-8"
        else:
            try:
                yield line_no, raw.decode("utf-8-sig" if line_no == 1 else "utf-8"), None
            except UnicodeDecodeError as e:
                yield line_no, None, f"not valid UTF-8 ({e.reason} at byte {e.start})"


def _txt_rows(lines, text_field):
    for line_no, line, error in lines:
        yield line_no, None if error else {text_field: line.rstrip("\r\n")}, error


def _jsonl_rows(lines):
    for line_no, line, error in lines:
        if error:
            yield line_no, None, error
        elif line.strip():
            yield line_no, *_json_object(line)


def _json_object(line):
    """(the JSON object on `line`, None), or (None, why there is none)."""
    try:
        row = json.loads(line.rstrip("\r\n"))  # without the end of line: an error's column stays on this line
    except json.JSONDecodeError as e:
        return None, f"malformed JSON ({e.msg}, column {e.colno})"
    if not isinstance(row, dict):
        return None, f"expected a JSON object, got {type(row).__name__}"
    return row, None


def _csv_rows(lines, name, delimiter, text_field):
    """The records after the header as dicts keyed by its columns, or the reason a record cannot be one."""
    records = _csv_records(lines, delimiter)
    first = next(records, None)
    if first is None:  # an empty file
        return
    header = _csv_header(*first, name, delimiter, text_field)
    for line_no, fields, error in records:
        if error:
            yield line_no, None, error
        elif not fields:  # a blank line
            continue
        elif len(fields) != len(header):
            yield line_no, None, f"{len(fields)} fields, but the header has {len(header)}"
        else:
            yield line_no, dict(zip(header, fields, strict=True)), None


def _csv_header(line_no, header, error, name, delimiter, text_field):
    """The header's column names; a header that cannot be one raises DataError."""
    if error:
        raise DataError(f"{name}:{line_no}: {error}")
    if len(header) == 1 and any(d in header[0] for d in ";|\t,"):
        raise DataError(
            f"{name}:1: header {header[0]!r} is one column; the file seems to use another delimiter "
            f"than {delimiter!r} (expected {'tab' if delimiter == chr(9) else 'comma'}-separated columns)"
        )
    if text_field not in header:
        raise DataError(f"{name}:1: no {text_field!r} column in the header {header}")
    return header


def _csv_records(lines, delimiter):
    """Yield (line, fields, error) for each CSV record of decoded `lines`, numbered by its first physical line (a
    quoted field may span lines); a blank line is `[]`. A record holding an undecodable line is reported on that line;
    a quote never closed swallows the rest of the file into one record, reported on the line where the quote opens."""
    undecodable = {}  # line number -> why; such a line reaches the parser as a blank one
    at_end = False  # set when the parser asks for a line after the last one: only an open quote makes it do so

    def text_lines():
        nonlocal at_end
        for line_no, line, error in lines:
            if error:
                undecodable[line_no] = error
            yield "\n" if error else line
        at_end = True

    reader = csv.reader(text_lines(), delimiter=delimiter)
    while True:
        start = reader.line_num + 1
        try:
            fields, error = next(reader), None
        except StopIteration:
            return
        except csv.Error as e:
            fields, error = None, _csv_error(e, start, reader.line_num)
        bad = [(n, undecodable.pop(n)) for n in range(start, reader.line_num + 1) if n in undecodable]
        if bad:
            yield bad[0][0], None, bad[0][1]
        elif error:
            yield start, None, error
        elif at_end:
            yield _quote_line(fields, reader.line_num), None, UNCLOSED_QUOTE
        else:
            yield start, fields, None


def _csv_error(error, start, end):
    """The message for a record the CSV parser rejects: over several lines, most likely a quote is never closed."""
    message = f"unreadable CSV ({error})"
    if end > start:
        message += f" in a record from this line to line {end}; is a '\"' never closed?"
    return message


def _quote_line(fields, last_line):
    """Where the unclosed quote of a record cut off by the end of the file opens: its last field holds every end of
    line from there on."""
    field = fields[-1]
    return last_line - field.count("\n") + (1 if field.endswith("\n") else 0)


def _parquet_rows(source, name):
    import pyarrow.parquet as pq

    if _is_path(source):
        _check_file(source, name)
    try:
        table = pq.read_table(source)
    except Exception as e:  # pyarrow raises several types for a corrupt file
        raise DataError(f"{name}: not a readable Parquet file ({e})") from None
    return table.to_pylist()


# ----- training data ------------------------------------------------------------------------------------------------


def parse_entry(entry, tasks):
    """`"topic=path.jsonl"` -> ("topic", Path); `"path.jsonl"` -> (None, Path); `"unlabelled=path"` and a plain-text
    `"path.txt"` -> (UNLABELLED, Path)."""
    task, sep, path = entry.partition("=")
    if not sep:
        return (UNLABELLED if FORMATS.get(Path(entry).suffix.lower()) == "txt" else None), Path(entry)
    if task == UNLABELLED:
        if UNLABELLED in tasks:
            raise DataError(f"{entry}: {UNLABELLED}=PATH names unlabelled text, but a task is called {UNLABELLED!r}")
        return UNLABELLED, Path(path)
    if task not in tasks:
        raise DataError(f"{entry}: unknown task {task!r} in TASK=PATH; the model's tasks are {list(tasks)}")
    return task, Path(path)


def is_unlabelled_entry(entry):
    """Whether a training entry holds unlabelled text: `unlabelled=PATH`, or a plain-text file."""
    task, sep, path = entry.partition("=")
    return task == UNLABELLED if sep else FORMATS.get(Path(entry).suffix.lower()) == "txt"


def load_entry(entry, tasks, multi_label=(), unlabelled=False):
    """Read one entry into columns `text` and `labels_<task>` (label ids, -100 where the file has none; for the tasks
    in `multi_label`, a 0/1 float per label, all -100 where the file has none); the first bad row raises DataError.
    With `unlabelled`, an `unlabelled=PATH` entry, a plain-text file and rows that name no task are read as rows with
    no label (see the module's docstring); without it they are refused."""
    only_task, path = parse_entry(entry, tasks)
    if only_task == UNLABELLED and not unlabelled:
        if "=" not in entry:  # a plain-text file: no labels in it
            file_format(path, TRAINING_FORMATS, hint=" (plain text is unlabelled text, read only for a teacher)")
        raise DataError(
            f"{entry}: unlabelled text (no label for any task) is read only with unlabelled=True (a teacher's answers "
            "are its only targets)"
        )
    fmt = file_format(path, TRAINING_FORMATS + (("txt",) if only_task == UNLABELLED else ()))
    label2id = {task: {label: i for i, label in enumerate(labels)} for task, labels in tasks.items()}
    columns = {"text": [], **{f"labels_{task}": [] for task in tasks}}
    none = {task: [float(IGNORE_INDEX)] * len(tasks[task]) if task in multi_label else IGNORE_INDEX for task in tasks}
    for number, row, error in iter_rows(path, fmt, str(path)):
        where = location(path, fmt, number)
        if error:
            raise DataError(f"{where}: {error}")
        columns["text"].append(row_text(row, where))
        if only_task == UNLABELLED or (unlabelled and only_task is None and not set(row) & set(tasks)):
            labels = none
        else:
            labels = row_labels(row, where, only_task, tasks, label2id, multi_label)
        for task, label_id in labels.items():
            columns[f"labels_{task}"].append(label_id)
    if not columns["text"]:
        raise DataError(f"{path}: no examples (the file is empty)")
    label_types = {f"labels_{t}": List(Value("float32")) if t in multi_label else Value("int64") for t in tasks}
    return Dataset.from_dict(columns, features=Features({"text": Value("string"), **label_types}))


def row_text(row, where):
    """The row's non-empty `text`."""
    if "text" not in row:
        raise DataError(f"{where}: no 'text' column (columns: {sorted(row)})")
    text = row["text"]
    if not isinstance(text, str) or is_blank(text):
        raise DataError(f"{where}: text is {text!r}; expected a non-empty string")
    return text


def row_labels(row, where, only_task, tasks, label2id, multi_label=()):
    """`{task: label id}` for every task, IGNORE_INDEX where the row has no label for it; for a task in `multi_label`,
    its `multi_hot` list. A single-task entry's labels are in its `label` column (a multi-label task's in `labels`, or
    `label`); otherwise each task has a column of its name."""
    if only_task is not None:
        names = ("labels", "label") if only_task in multi_label else ("label",)
        column = next((name for name in names if name in row), None)
        if column is None:
            raise DataError(f"{where}: no {names[0]!r} column for task {only_task!r} (columns: {sorted(row)})")
        wanted = {only_task: column}
    else:
        extra = sorted(set(row) - {"text", "id"} - set(tasks))
        if extra:
            raise DataError(f"{where}: column(s) {extra} are not tasks of the model; tasks are {list(tasks)}")
        wanted = {task: task for task in tasks if task in row}
        if not wanted:
            raise DataError(f"{where}: no label for any task; expected a column for one of {list(tasks)}")
    ids = {}
    for task in tasks:
        value = row.get(wanted[task]) if task in wanted else None
        if task in multi_label:
            ids[task] = multi_hot(value, where, task, tasks[task], label2id[task])
        elif value is None or value == "":
            ids[task] = IGNORE_INDEX
        elif not isinstance(value, str) or value not in label2id[task]:  # a list is not even hashable
            raise DataError(f"{where}: unknown {task} label {value!r}; allowed: {tasks[task]}")
        else:
            ids[task] = label2id[task][value]
    return ids


def multi_hot(value, where, task, labels, label2id):
    """A multi-label task's value -> 1.0 for each label named, 0.0 for the others; a row of IGNORE_INDEX when there is
    none (None or ""). The value is a list of label names (`[]`: none of the labels applies), or a string: a JSON list,
    or names separated by LABEL_SEPARATOR (how a CSV cell holds them)."""
    if value is None or value == "":
        return [float(IGNORE_INDEX)] * len(labels)
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                value = json.loads(text)
            except json.JSONDecodeError as e:
                raise DataError(f"{where}: {task} labels {value!r} are not a JSON list ({e.msg})") from None
        else:
            value = [name.strip() for name in text.split(LABEL_SEPARATOR)]
    if not isinstance(value, (list, tuple)):
        raise DataError(
            f"{where}: {task} labels are {value!r}; expected a list of label names "
            f"(or names separated by {LABEL_SEPARATOR!r})"
        )
    hot = [0.0] * len(labels)
    for name in value:
        if not isinstance(name, str) or name not in label2id:
            raise DataError(f"{where}: unknown {task} label {name!r}; allowed: {labels}")
        hot[label2id[name]] = 1.0
    return hot


def load_split(entries, tasks, max_samples=None, seed=42, multi_label=(), unlabelled=False):
    """Read every entry of one split, concatenate them (each source is seen in proportion to its size) and cap the
    result at `max_samples` rows (shuffled first, with `seed`). The tasks in `multi_label` are read as multi-label
    (see `multi_hot`); `unlabelled` allows rows with no label for any task (see `load_entry`)."""
    dataset = concatenate_datasets([load_entry(e, tasks, multi_label, unlabelled) for e in entries])
    if max_samples is not None and max_samples < len(dataset):
        dataset = dataset.shuffle(seed=seed).select(range(max_samples))
    return dataset


def label_counts(dataset, tasks):
    """`{task: number of labelled examples}` of a loaded split."""

    def labelled(value):  # a label id, or a multi-label task's row (all IGNORE_INDEX when it has none)
        return (value[0] if isinstance(value, list) else value) != IGNORE_INDEX

    return {task: sum(1 for v in dataset[f"labels_{task}"] if labelled(v)) for task in tasks}
