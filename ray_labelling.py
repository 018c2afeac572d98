"""Label a corpus on Ray Data: a file, a folder or a glob of text/JSONL/CSV/TSV/Parquet files (local paths, or URIs
that pyarrow's file systems read: `s3://`, `gs://`, `file://` ...) into a folder of shards, with a pool of model
replicas on a local Ray or a cluster. `predict.py --engine ray` is its command line.

    from ray_labelling import RayArguments, label_corpus

    label_corpus(RayArguments(model="outputs/multitask-minilm", input="corpus/*.jsonl", output="labels", num_workers=2))

How it shares the work: the driver reads each input file once (its sha256, and where each block of
`rows_per_shard` input lines starts) and plans one shard per block, `shard-<file>-<block>.jsonl` (or `.parquet`),
named by the file's place in the sorted list and the block's place in the file. The blocks whose shard is missing
become a Ray dataset; `map_batches` hands them to `num_workers` replicas (`Labeller`, an actor that loads the model
once), each of which reads its block and labels it with `labelling.label_texts`, the inference core of every entry
point. The driver writes each shard whole (a temporary name, then a rename), so a run killed at any point leaves
whole shards only, and the same command writes the missing ones. `OUTPUT/_run.json` records the input files (paths
and hashes), the model and the settings: another input, model or setting is refused, naming what differs.
`OUTPUT/_shards.jsonl` logs each shard written: its rows and the replica (host:pid) that labelled it.

Rows are predict.py's (`line`, `id`, each task, `embedding` with `with_embeddings`), with `file` (the input file)
when there are several. A bad line stops the run (`on_error="fail"`) with `FILE:LINE: why` once the shards before it
are written, or is skipped with a warning (`"skip"`).
"""

import dataclasses
import fnmatch
import hashlib
import io
import json
import logging
import os
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from configuration_multitask import check_model_source
from labelling import (
    SETTINGS,
    InputError,
    LabelArguments,
    ModelError,
    jsonl_bytes,
    label_texts,
    load_model,
    model_differences,
    model_identity,
    output_lock,
    row_record,
)
from modeling_multitask import positive_int
from multitask_data import FORMATS, UserError, file_format, iter_rows, location

logger = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parent  # on the replicas' PYTHONPATH: they import this module
RECORD = "_run.json"  # what the output folder belongs to (input files, model, settings)
LOG = "_shards.jsonl"  # one line per shard written: its rows and the replica that labelled it
CHUNK = 1 << 20
START_TIMEOUT = 600  # seconds for the replicas to start (a cluster may have to scale up)
INSTALL = "--engine ray needs Ray Data: pip install -r requirements-ray.txt"


@dataclass
class RayArguments(LabelArguments):
    """`LabelArguments` and what a run on Ray adds: the replicas, the cluster, the shards."""

    input: str = field(
        metadata={
            "help": "File to label (.txt, .jsonl, .csv, .tsv), or - for stdin; --engine ray: a file, folder or "
            "glob (.parquet too), local or a URI (s3://...)."
        }  # fmt: skip
    )
    output: str = field(
        metadata={
            "help": "JSONL file to write (if it exists, the run resumes where it stopped); --engine ray: a "
            "folder of shards."
        }  # fmt: skip
    )
    num_workers: int | None = field(
        default=None,
        metadata={"help": "--engine ray: model replicas; default: one per GPU of the cluster, else one per CPU."},
    )
    ray_address: str | None = field(
        default=None,
        metadata={"help": "--engine ray: the cluster to run on (auto: the one running here); default: a local Ray."},
    )
    output_format: Literal["jsonl", "parquet"] = field(
        default="jsonl", metadata={"help": "--engine ray: the shards' format."}
    )
    rows_per_shard: int = field(default=10_000, metadata={"help": "--engine ray: input lines (rows) per shard."})

    def __post_init__(self):
        super().__post_init__()
        try:
            positive_int("num_workers", self.num_workers, allow_none=True)
            positive_int("rows_per_shard", self.rows_per_shard)
        except (TypeError, ValueError) as e:
            raise UserError(str(e)) from None


# ----- the input: files, blocks, identity ---------------------------------------------------------------------------


@dataclass
class InputFile:
    name: str  # as messages and the `file` field say it
    path: str  # in `fs`
    format: str
    sha256: str = ""
    blocks: list = dataclasses.field(default_factory=list)  # (first line - 1, start byte, end byte) per block


def filesystem(spec):
    """(pyarrow file system, path in it, prefix that makes a path a name) of an input or output spec."""
    import pyarrow.fs as pafs

    if "://" not in spec:
        return pafs.LocalFileSystem(), os.path.abspath(spec), ""
    try:
        fs, path = pafs.FileSystem.from_uri(spec)
    except Exception as e:  # pyarrow raises several types for an unknown scheme or a bucket it cannot reach
        raise InputError(f"{spec}: cannot open it ({' '.join(str(e).split())})") from None
    return fs, path, spec[: spec.index("://") + 3]


def input_files(args):
    """The input files of `args.input` (a file, a folder searched recursively, or a glob), sorted by path."""
    import pyarrow.fs as pafs

    if args.input == "-":
        raise InputError("--input -: the ray engine reads files; give a file, a folder or a glob")
    fs, path, prefix = filesystem(args.input)
    pattern = None
    if any(c in path for c in "*?["):
        pattern, path = path, path[: min(path.index(c) for c in "*?[" if c in path)].rpartition("/")[0] or "/"
    try:
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            raise InputError(f"{args.input}: no such file or folder")
        if info.type == pafs.FileType.File and pattern is None:
            fmt = args.format or file_format(path, tuple(set(FORMATS.values())), hint=" or --format")
            return fs, [InputFile(args.input, path, fmt)]
        listed = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    except OSError as e:
        raise InputError(f"{args.input}: cannot read it ({' '.join(str(e).split())})") from None
    files = []
    for item in sorted(listed, key=lambda i: i.path):
        hidden = any(part.startswith((".", "_")) for part in item.path[len(path) :].split("/"))
        suffix = Path(item.path).suffix.lower()
        if item.type != pafs.FileType.File or hidden or (pattern and not fnmatch.fnmatch(item.path, pattern)):
            continue
        if args.format or suffix in FORMATS:
            files.append(InputFile(prefix + item.path, item.path, args.format or FORMATS[suffix]))
    if not files:
        raise InputError(f"{args.input}: no input files there (expected {', '.join(sorted(FORMATS))})")
    return fs, files


def lines_of(stream):
    """The lines of a pyarrow input stream, as bytes with their end-of-line (what `iter_rows` reads)."""
    rest = b""
    while chunk := stream.read(CHUNK):
        lines = (rest + chunk).split(b"\n")
        rest = lines.pop()
        yield from (line + b"\n" for line in lines)
    if rest:
        yield rest


def plan(fs, file, n):
    """Read `file` once: its sha256 and its blocks of `n` input lines (Parquet: rows). A text or JSONL block is a byte
    range, which a replica reads alone; a CSV block is read from the start (a quoted field may span lines)."""
    digest, starts, lines, size, last = hashlib.sha256(), [0], 0, 0, b"\n"
    try:
        with fs.open_input_stream(file.path) as stream:
            while chunk := stream.read(CHUNK):
                digest.update(chunk)
                start = 0
                while file.format != "parquet":  # where each block's first line starts
                    need = n * len(starts) - lines
                    count = chunk.count(b"\n", start)
                    if count < need:
                        lines += count
                        break
                    for _ in range(need):
                        start = chunk.index(b"\n", start) + 1
                    lines += need
                    starts.append(size + start)
                size += len(chunk)
                last = chunk[-1:]
        if file.format == "parquet":
            import pyarrow.parquet as pq

            with fs.open_input_file(file.path) as f:
                lines = pq.ParquetFile(f).metadata.num_rows
    except OSError as e:
        raise InputError(f"{file.name}: cannot read it ({' '.join(str(e).split())})") from None
    except Exception as e:  # pyarrow raises several types for a corrupt Parquet file
        raise InputError(f"{file.name}: not a readable Parquet file ({' '.join(str(e).split())})") from None
    lines += last != b"\n"
    file.sha256 = digest.hexdigest()
    count = -(-lines // n)
    ends = [*starts[1:], size]
    file.blocks = [
        (k * n, starts[k] if k < len(starts) else -1, ends[k] if k < len(ends) else -1) for k in range(count)
    ]
    return file


def identity(args, files):
    """What the output folder's shards depend on: the input files, the model and the settings."""
    names = (*SETTINGS, "rows_per_shard", "output_format")
    return {
        "input": {"spec": args.input, "files": [{"path": f.name, "sha256": f.sha256} for f in files]},
        "model": model_identity(args.model),
        "settings": {name: getattr(args, name) for name in names},
    }


def differences(recorded, current):
    """What differs between the identity an output folder was written with and this run's, in words."""
    old = {f["path"]: f["sha256"] for f in recorded.get("input", {}).get("files", [])}
    new = {f["path"]: f["sha256"] for f in current["input"]["files"]}
    found = []
    if list(old) != list(new):
        found.append(f"input files {described(old)} (now {described(new)})")
    else:
        changed = [path for path in new if old[path] != new[path]]
        if changed:
            found.append(f"the content of {described(changed)} (changed since)")
    return found + model_differences(recorded, current)


def described(paths):
    paths = list(paths)
    return ", ".join(paths) if len(paths) <= 3 else f"{len(paths)} files ({', '.join(paths[:2])}, ...)"


def shard_name(file_index, block_index, output_format):
    return f"shard-{file_index:05d}-{block_index:06d}.{output_format}"


# ----- the output folder --------------------------------------------------------------------------------------------


def check_output(args, files):
    """The output folder's path, once it is known not to be an input, nor inside one's place, nor a file."""
    if "://" in args.output:
        raise InputError(f"--output {args.output}: the shards are written to a local (or mounted) folder")
    output = Path(args.output).resolve()
    if output.is_file():
        raise InputError(f"{args.output}: is a file; with --engine ray, --output names a folder of shards")
    if not output.parent.is_dir():
        raise InputError(f"{args.output}: folder {output.parent} does not exist; create it first")
    for file in files:
        if "://" not in file.name and Path(file.path).resolve().is_relative_to(output):
            raise InputError(f"{args.output}: holds the input file {file.name}; write the shards to another --output")
    return output


def ours(path):
    """A file that a run writes in its output folder: a shard, its temporary, the record, the log, the lock."""
    name = path.name
    return name in (RECORD, LOG, RECORD + ".lock", RECORD + ".tmp") or name.startswith(("shard-", ".shard-"))


def prepare(output, current, args):
    """Make `output` this run's: refuse another run's (or a folder of other files) unless `overwrite`, which removes
    the earlier run's files; remove the temporaries of a killed run; write the record."""
    output.mkdir(exist_ok=True)
    others = sorted(p.name for p in output.iterdir() if not ours(p))
    if others:
        raise InputError(
            f"{args.output}: holds files that predict.py did not write ({described(others)}); choose another --output"
        )
    record = output / RECORD
    shards = [p for p in output.iterdir() if p.name != RECORD + ".lock"]
    if args.overwrite:
        for path in shards:
            path.unlink()
    elif record.is_file():
        found = differences(json.loads(record.read_text(encoding="utf-8")), current)
        if found:
            raise InputError(
                f"{args.output}: holds predictions of another run ({'; '.join(found)}); run the same command to "
                "resume, choose another --output, or --overwrite to start over"
            )
    elif shards:
        raise InputError(f"{args.output}: holds shards without {RECORD}; --overwrite to start over")
    for tmp in output.glob(".shard-*"):
        tmp.unlink()
    write_whole(record, (json.dumps(current, indent=1) + "\n").encode("utf-8"))


def write_whole(path, data):
    """Write `data` to `path` whole: to a temporary name beside it, then renamed (a kill leaves the old file or none)."""
    tmp = path.with_name(f".{path.name}.tmp" if path.name.startswith("shard-") else path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError as e:
        raise InputError(f"{path}: cannot write ({e.strerror or e}); run the same command to resume") from None
    finally:
        tmp.unlink(missing_ok=True)


# ----- the replicas -------------------------------------------------------------------------------------------------


def block_rows(fs, file, block, args):
    """(line, row, error) of the input rows of one block of `file` (see `plan`), numbered in the file."""
    first, start, end = block
    n, fmt = args.rows_per_shard, file.format
    if fmt in ("txt", "jsonl"):
        with fs.open_input_file(file.path) as f:
            data = f.read_at(end - start, start)
        rows = iter_rows(io.BytesIO(data), fmt, file.name, text_field=args.text_field)
        return [(first + number, row, error) for number, row, error in rows]
    if fmt == "parquet":
        import pyarrow.parquet as pq

        with fs.open_input_file(file.path) as f:
            parquet = pq.ParquetFile(f)
            groups, offset, wanted = [], 0, None
            for g in range(parquet.num_row_groups):
                rows = parquet.metadata.row_group(g).num_rows
                if offset < first + n and offset + rows > first:
                    groups.append(g)
                    wanted = offset if wanted is None else wanted
                offset += rows
            table = parquet.read_row_groups(groups) if groups else parquet.schema_arrow.empty_table()
        rows = table.slice(first - (wanted or 0), n).to_pylist()
        return [(first + i + 1, row, None) for i, row in enumerate(rows)]
    with fs.open_input_stream(file.path) as stream:  # CSV/TSV: parsed from the start
        found = []
        for item in iter_rows(lines_of(stream), fmt, file.name, skip=first, text_field=args.text_field):
            if item[0] > first + n:
                break
            found.append(item)
        return found


class Labeller:
    """A model replica: loads the model once, then labels blocks (one batch of `map_batches` is one block) into shard
    bytes. A mistake (a model that cannot be loaded, a bad line) is returned as `error`, said by the driver."""

    def __init__(self, args, fs_spec, files, threads):
        import torch

        torch.set_num_threads(threads)
        self.args, self.files, self.error = args, files, None
        self.fs = filesystem(fs_spec)[0]
        self.worker = f"{socket.gethostname()}:{os.getpid()}"
        try:
            self.model, self.tokenizer = load_model(args, threads)  # its share of the cores
        except UserError as e:
            self.error = str(e)

    def __call__(self, batch):
        out = {"shard": [], "data": [], "rows": [], "worker": [], "error": [], "skipped": []}
        for file_index, block_index, shard in zip(batch["file"], batch["block"], batch["shard"], strict=True):
            data, rows, error, skipped = b"", 0, self.error, []
            if error is None:
                try:
                    data, rows, skipped = self.label(self.files[int(file_index)], int(block_index))
                except UserError as e:
                    error = str(e)
            for name, value in zip(
                out, (str(shard), data, rows, self.worker, error or "", json.dumps(skipped)), strict=True
            ):
                out[name].append(value)
        return out

    def label(self, file, block_index):
        """(shard bytes, rows, skipped lines) of one block; a UserError for a bad line (`on_error="fail"`)."""
        args = dataclasses.replace(self.args, format=file.format)
        records = [row_record(*row, args) for row in block_rows(self.fs, file, file.blocks[block_index], args)]
        bad = [f"{location(file.name, file.format, r.line)}: {r.error}" for r in records if r.error is not None]
        if bad and args.on_error == "fail":
            raise InputError(bad[0])
        good = [r for r in records if r.error is None]
        rows = list(label_texts(self.model, self.tokenizer, good, args.batch_size, args.max_length,
                                args.with_embeddings, args.window))  # fmt: skip
        if len(self.files) > 1:
            rows = [{"line": row.pop("line"), "file": file.name, **row} for row in rows]
        return encoded(rows, args.output_format), len(rows), bad


def encoded(rows, output_format):
    """Output rows as the bytes of a shard: JSON lines, or a Parquet file (tasks as structs)."""
    if output_format == "jsonl":
        return jsonl_bytes(rows)
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist(rows), sink)
    return sink.getvalue().to_pybytes()


# ----- the run ------------------------------------------------------------------------------------------------------


def start_ray(address):
    """(ray, whether this run started or joined it and so disconnects after): a Ray already started in this process
    is used as it is."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise UserError(INSTALL) from None
    if ray.is_initialized():
        return ray, False
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    options = {"include_dashboard": False, "logging_level": logging.WARNING, "configure_logging": False}
    try:
        if address:
            ray.init(address=address, **options)
        else:
            ray.init(num_cpus=os.cpu_count(), **options)
    except (ConnectionError, ValueError, RuntimeError) as e:
        raise UserError(
            f"--ray_address {address}: cannot join a Ray cluster there ({str(e).splitlines()[0]})"
        ) from None
    return ray, True


def replicas(ray, args):
    """(replicas, CPUs and GPUs per replica): one per GPU of the cluster (PyTorch backend), else one per CPU; the
    cluster's CPUs shared among the replicas, at most a node's, so that each fits on one."""
    resources = ray.cluster_resources()
    cpus, gpus = resources.get("CPU", 1), int(resources.get("GPU", 0))
    gpus = gpus if args.backend == "torch" else 0  # ONNX Runtime runs on the CPU
    count = args.num_workers or gpus or max(1, int(cpus))
    node = max((n["Resources"].get("CPU", 0) for n in ray.nodes() if n.get("Alive")), default=cpus)
    return count, max(min(cpus / count, node), 0.01), 1 if gpus else 0


def label_corpus(args):
    r"""
    Label the files of `args.input` into the folder `args.output` on Ray Data, going on where an earlier run of the
    same command stopped.

    Args:
        args ([`RayArguments`]):
            The model, the input (a file, a folder or a glob; local or a URI), the output folder and the options.

    Returns:
        `dict`: `shards` (planned), `written` (by this run), `rows` (written by this run) and `workers` (the replicas
        that labelled them, `host:pid`). Every mistake is a `UserError` of one line (an input or output of another
        run, a bad line with its file and line, a model that cannot be loaded, Ray not installed).

    Example:

    ```python
    >>> from ray_labelling import RayArguments, label_corpus

    >>> args = RayArguments(model="outputs/multitask-minilm", input="corpus/", output="labels", num_workers=2)
    >>> label_corpus(args)["written"]  # doctest: +SKIP
    12
    ```
    """
    args = RayArguments(**{f.name: getattr(args, f.name) for f in dataclasses.fields(RayArguments)})  # a subclass's
    fs, files = input_files(args)
    output = check_output(args, files)
    try:
        check_model_source(args.model)
    except ValueError as e:
        raise ModelError(str(e)) from None
    for file in files:
        plan(fs, file, args.rows_per_shard)
    current = identity(args, files)
    todo, total = [], 0
    output.mkdir(exist_ok=True)
    with output_lock(output / RECORD):
        prepare(output, current, args)
        for i, file in enumerate(files):
            for k in range(len(file.blocks)):
                total += 1
                if not (output / shard_name(i, k, args.output_format)).exists():
                    todo.append({"file": i, "block": k, "shard": shard_name(i, k, args.output_format)})
        result = {"shards": total, "written": 0, "rows": 0, "workers": []}
        if not total:
            logger.warning("%s: no texts to label", args.input)
        elif not todo:
            logger.info("%s holds all %d shards already", args.output, total)
        else:
            logger.info("%s: %d of %d shards to write", args.output, len(todo), total)
            run_on_ray(args, files, todo, output, result)
    return result


def shards_of(ray, dataset, count, cpus, gpus):
    """The result rows of `dataset` as they come; replicas that cannot be placed are one line."""
    try:
        yield from dataset.iter_rows()
    except ray.exceptions.GetTimeoutError:
        raise UserError(
            f"--num_workers {count}: the cluster did not start {count} replicas ({cpus:.2g} CPUs"
            f"{', 1 GPU' if gpus else ''} each) within {START_TIMEOUT} s; ask for fewer"
        ) from None


def run_on_ray(args, files, todo, output, result):
    """Label the blocks of `todo` on Ray and write their shards into `output` as they come."""
    ray, started = start_ray(args.ray_address)
    try:
        count, cpus, gpus = replicas(ray, args)
        count = min(count, len(todo))
        labeller_args = dataclasses.replace(args, device="cuda" if gpus else args.device)
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = sys.stderr.isatty()
        context.wait_for_min_actors_s = START_TIMEOUT  # every replica loads its model before the first block
        python_path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
        dataset = ray.data.from_items(todo, override_num_blocks=len(todo)).map_batches(
            Labeller,
            fn_constructor_kwargs={
                "args": labeller_args,
                "fs_spec": args.input,
                "files": files,
                "threads": max(1, int(cpus)),
            },
            batch_size=1,
            compute=ray.data.ActorPoolStrategy(size=count, max_tasks_in_flight_per_actor=2),
            num_cpus=cpus,
            num_gpus=gpus,
            runtime_env={"env_vars": {"PYTHONPATH": python_path}},
        )
        logger.info("labelling %d shards with %d replicas (%.2g CPUs%s each)", len(todo), count, cpus,
                    ", 1 GPU" if gpus else "")  # fmt: skip
        workers = set()
        with open(output / LOG, "a", encoding="utf-8") as log:
            for row in shards_of(ray, dataset, count, cpus, gpus):
                for line in json.loads(row["skipped"]):
                    logger.warning("%s; skipped", line)
                if row["error"]:  # a bad line, a model that cannot be loaded: the shards before it are written
                    raise UserError(row["error"])
                write_whole(output / row["shard"], bytes(row["data"]))
                log.write(json.dumps({"shard": row["shard"], "rows": int(row["rows"]), "worker": row["worker"]}) + "\n")
                log.flush()
                workers.add(row["worker"])
                result["written"] += 1
                result["rows"] += int(row["rows"])
        result["workers"] = sorted(workers)
        logger.info("wrote %d shards (%d rows) into %s", result["written"], result["rows"], args.output)
    finally:
        if started:
            ray.shutdown()
