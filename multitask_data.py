"""Reading, checking and mixing the training data of the multi-task model.

An entry is either `PATH` (a file with a `text` column and one column per task) or `TASK=PATH` (a single-task file
whose `label` column holds that task's labels). JSONL, CSV and Parquet. Every problem is raised as a `DataError`
whose one-line message names the file, the line or row, the value and what was expected, before any training.
"""

import csv
import json
import random
from pathlib import Path

from datasets import Dataset, concatenate_datasets

IGNORE_INDEX = -100
FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv", ".tsv": "csv", ".parquet": "parquet"}


class DataError(ValueError):
    """Bad input data; the message is meant to be shown to the user as it is, without a traceback."""


def parse_entry(entry, tasks):
    """`"topic=path.jsonl"` -> ("topic", Path); `"path.jsonl"` -> (None, Path)."""
    task, sep, path = entry.partition("=")
    if not sep:
        return None, Path(entry)
    if task not in tasks:
        raise DataError(f"{entry}: unknown task {task!r} in TASK=PATH; the model's tasks are {list(tasks)}")
    return task, Path(path)


def _read_jsonl(path):
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8-sig" if line_no == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{path}:{line_no}: not valid UTF-8 ({e.reason} at byte {e.start})") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{line_no}: malformed JSON ({e.msg}, column {e.colno})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{line_no}: expected a JSON object per line, got {type(row).__name__}")
            yield line_no, row


def _read_csv(path):
    delimiter = "\t" if path.suffix == ".tsv" else ","
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.DictReader(f, delimiter=delimiter)
            header = reader.fieldnames or []
            if len(header) == 1 and any(d in header[0] for d in ";|\t,"):
                raise DataError(
                    f"{path}:1: header {header[0]!r} is one column; the file seems to use another delimiter "
                    f"than {delimiter!r} (expected {'tab' if delimiter == chr(9) else 'comma'}-separated columns)"
                )
            # line 1 is the header; reader.line_num is the last physical line read (quoted newlines count)
            for row in reader:
                if None in row:
                    raise DataError(f"{path}:{reader.line_num}: more fields than the header's {len(header)}")
                yield reader.line_num, row
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not valid UTF-8 ({e.reason} at byte {e.start})") from None


def _read_parquet(path):
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several types for a corrupt file
        raise DataError(f"{path}: not a readable Parquet file ({e})") from None
    yield from enumerate(table.to_pylist(), start=1)


def read_rows(path):
    """Yield (line or row number, dict) from a JSONL, CSV or Parquet file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise DataError(f"{path}: unknown file type {path.suffix!r}; expected one of {sorted(FORMATS)}")
    return {"jsonl": _read_jsonl, "csv": _read_csv, "parquet": _read_parquet}[fmt](path)


def load_entry(entry, tasks):
    """Read one entry into columns `text` and `labels_<task>` (label ids, -100 where the file has none)."""
    only_task, path = parse_entry(entry, tasks)
    label2id = {task: {label: i for i, label in enumerate(labels)} for task, labels in tasks.items()}
    columns = {"text": [], **{f"labels_{task}": [] for task in tasks}}
    unit = "row" if path.suffix.lower() == ".parquet" else "line"
    for line_no, row in read_rows(path):
        where = f"{path}:{line_no}" if unit == "line" else f"{path}: row {line_no}"
        if "text" not in row:
            raise DataError(f"{where}: no 'text' column (columns: {sorted(row)})")
        text = row["text"]
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{where}: text is {text!r}; expected a non-empty string")
        columns["text"].append(text)
        if only_task is not None:
            wanted = {only_task: "label"}
            if "label" not in row:
                raise DataError(f"{where}: no 'label' column for task {only_task!r} (columns: {sorted(row)})")
        else:
            extra = sorted(set(row) - {"text", "id"} - set(tasks))
            if extra:
                raise DataError(f"{where}: column(s) {extra} are not tasks of the model; tasks are {list(tasks)}")
            wanted = {task: task for task in tasks if task in row}
            if not wanted:
                raise DataError(f"{where}: no label for any task; expected a column for one of {list(tasks)}")
        for task in tasks:
            value = row.get(wanted[task]) if task in wanted else None
            if value is None or value == "":
                columns[f"labels_{task}"].append(IGNORE_INDEX)
            elif value not in label2id[task]:
                raise DataError(f"{where}: unknown {task} label {value!r}; allowed: {tasks[task]}")
            else:
                columns[f"labels_{task}"].append(label2id[task][value])
    if not columns["text"]:
        raise DataError(f"{path}: no examples (the file is empty)")
    return Dataset.from_dict(columns)


def mix_sources(sources, strategy="proportional", temperature=2.0, seed=42):
    """Concatenate datasets from several files.

    `proportional` keeps every source as it is (each is seen in proportion to its size). `temperature` resamples
    source i to `N * p_i` rows with `p_i ∝ n_i ** (1 / temperature)` (N = total rows), so small sources are
    up-sampled and large ones down-sampled; temperature 1 is proportional, large temperatures tend to uniform.
    """
    if strategy not in ("proportional", "temperature"):
        raise ValueError(f"unknown task sampling {strategy!r}; expected 'proportional' or 'temperature'")
    if strategy == "proportional" or len(sources) == 1:
        return concatenate_datasets(sources)
    sizes = [len(s) for s in sources]
    weights = [n ** (1.0 / temperature) for n in sizes]
    total = sum(sizes)
    rng = random.Random(seed)
    resampled = []
    for source, n, w in zip(sources, sizes, weights, strict=True):
        target = max(1, round(total * w / sum(weights)))
        idx = [i for _ in range(target // n) for i in range(n)] + rng.sample(range(n), target % n)
        resampled.append(source.select(idx))
    return concatenate_datasets(resampled)


def load_split(entries, tasks, max_samples=None, strategy="proportional", temperature=2.0, seed=42):
    """Read every entry of one split, mix them and cap the result at `max_samples` rows (shuffled first)."""
    dataset = mix_sources([load_entry(e, tasks) for e in entries], strategy, temperature, seed)
    if max_samples is not None and max_samples < len(dataset):
        dataset = dataset.shuffle(seed=seed).select(range(max_samples))
    return dataset


def label_counts(dataset, tasks):
    """`{task: number of labelled examples}` of a loaded split."""
    return {task: sum(1 for v in dataset[f"labels_{task}"] if v != IGNORE_INDEX) for task in tasks}
