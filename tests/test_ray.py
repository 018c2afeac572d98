"""predict.py --engine ray: a corpus labelled by Ray Data replicas into a folder of shards.

The slow tier runs on one local Ray instance with 2 CPUs (started once for the module) and compares the shards with
single-process predict.py's output: the same labels, scores within 1e-5, every line exactly once, and both replicas
did work (`_shards.jsonl` names the replica of each shard). The fast tier covers the planning and the refusals, which
come before Ray is started."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import REPO

import predict
import ray_labelling
from ray_labelling import RayArguments

WORDS = "the a movie film good bad great stock market bank money health doctor food team match win lost".split()
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0"}


def texts(n, seed=0):
    return [" ".join(WORDS[(i * 7 + j + seed) % len(WORDS)] for j in range(1 + i % 13)) for i in range(n)]


def write_txt(path, lines):
    path.write_text("".join(t + "\n" for t in lines), encoding="utf-8")
    return path


def write_jsonl(path, lines):
    path.write_text("".join(json.dumps({"text": t, "id": f"{path.stem}-{i}"}) + "\n" for i, t in enumerate(lines)))
    return path


def shard_rows(folder):
    """Every row of the shards in `folder` (JSONL or Parquet), in shard order."""
    import pyarrow.parquet as pq

    rows = []
    for shard in sorted(Path(folder).glob("shard-*")):
        if shard.suffix == ".parquet":
            rows.extend(pq.read_table(shard).to_pylist())
        else:
            rows.extend(json.loads(line) for line in shard.read_text(encoding="utf-8").splitlines())
    return rows


def local_rows(model_dir, source, output):
    """Single-process predict.py's rows for `source`."""
    assert predict.main(["--model", str(model_dir), "--input", str(source), "--output", str(output)]) == 0
    return [json.loads(line) for line in output.read_text(encoding="utf-8").splitlines()]


def assert_same_predictions(ray_rows, one_rows, tolerance=1e-5):
    """The same rows (line, id, labels; scores within `tolerance`), each line exactly once."""
    assert len(ray_rows) == len(one_rows)
    assert len({row["line"] for row in ray_rows}) == len(ray_rows)  # no line twice
    by_line = {row["line"]: row for row in ray_rows}
    for expected in one_rows:
        got = by_line[expected["line"]]
        assert got.get("id") == expected.get("id")
        for task in ("topic", "sentiment"):
            assert got[task]["label"] == expected[task]["label"], (expected["line"], task)
            assert abs(got[task]["score"] - expected[task]["score"]) <= tolerance


def ray_run(model_dir, source, output, *options):
    return predict.main(["--engine", "ray", "--model", str(model_dir), "--input", str(source),
                         "--output", str(output), *map(str, options)])  # fmt: skip


def last_error(capsys):
    return capsys.readouterr().err.strip().splitlines()[-1]


# ----- fast: planning and refusals, before any Ray ------------------------------------------------------------------


def test_blocks_are_byte_ranges_of_whole_lines(tmp_path):
    lines = texts(23)
    source = write_txt(tmp_path / "in.txt", lines)
    args = RayArguments(model="m", input=str(source), output=str(tmp_path / "out"), rows_per_shard=5)
    fs, files = ray_labelling.input_files(args)
    ray_labelling.plan(fs, files[0], 5)
    blocks = files[0].blocks
    assert [b[0] for b in blocks] == [0, 5, 10, 15, 20]
    data = source.read_bytes()
    read = [data[start:end].decode().splitlines() for _, start, end in blocks]
    assert read == [lines[i : i + 5] for i in range(0, 23, 5)]
    rows = [r for block in blocks for r in ray_labelling.block_rows(fs, files[0], block, args)]
    assert [number for number, _, _ in rows] == list(range(1, 24)) and rows[7][1]["text"] == lines[7]


def test_a_file_of_exactly_whole_blocks_and_csv_and_parquet_blocks(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    lines = texts(10)
    exact = write_txt(tmp_path / "exact.txt", lines)
    (tmp_path / "t.csv").write_text("id,text\n" + "".join(f'{i},"{t}"\n' for i, t in enumerate(lines)))
    pq.write_table(pa.table({"text": lines, "id": list(range(10))}), tmp_path / "t.parquet", row_group_size=3)
    args = RayArguments(model="m", input=str(tmp_path), output=str(tmp_path / "out"), rows_per_shard=5)
    fs, files = ray_labelling.input_files(args)
    assert [f.name.rsplit("/", 1)[-1] for f in files] == ["exact.txt", "t.csv", "t.parquet"]
    got = {}
    for file in files:
        ray_labelling.plan(fs, file, 5)
        rows = [r for block in file.blocks for r in ray_labelling.block_rows(fs, file, block, args)]
        got[Path(file.name).name] = [(number, row["text"]) for number, row, _ in rows]
    assert len(files[0].blocks) == 2 and exact.read_bytes().count(b"\n") == 10  # no empty third block
    assert got["exact.txt"] == list(enumerate(lines, start=1))
    assert got["t.csv"] == list(enumerate(lines, start=2))  # CSV rows are numbered by their line (the header is 1)
    assert got["t.parquet"] == list(enumerate(lines, start=1))


def test_input_is_a_glob_and_hidden_files_are_left_out(tmp_path):
    for name in ("b.jsonl", "a.jsonl", "c.txt", "_meta.jsonl", ".x.jsonl", "notes.md"):
        (tmp_path / name).write_text('{"text": "x"}\n')
    names = lambda spec: [Path(f.name).name for f in ray_labelling.input_files(RayArguments("m", spec, "o"))[1]]  # noqa: E731
    assert names(str(tmp_path / "*.jsonl")) == ["a.jsonl", "b.jsonl"]
    assert names(str(tmp_path)) == ["a.jsonl", "b.jsonl", "c.txt"]
    assert names(f"file://{tmp_path}/*.txt") == ["c.txt"]


def test_a_replica_labels_a_block_as_predict_py_does_with_each_backend(saved_tiny_model, tmp_path):
    """`Labeller` without Ray (as a replica runs it): the rows of one block, with `file` when there are several, the
    same as predict.py's lines for those input lines (labels; scores within 1e-5: other batches); the ONNX graph's
    too (scores within 1e-4); a model that cannot be loaded is returned as an error."""
    import shutil

    from onnx_multitask import export

    model = tmp_path / "model"
    shutil.copytree(saved_tiny_model[2], model)
    export(model)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    write_txt(corpus / "a.txt", texts(7))
    source = write_jsonl(corpus / "b.jsonl", texts(30, seed=4))
    one = local_rows(model, source, tmp_path / "one.jsonl")[10:20]  # input lines 11-20: block 1 of 10 rows
    for backend in ("torch", "onnx"):
        args = RayArguments(model=str(model), input=str(corpus), output="o", rows_per_shard=10, backend=backend)
        fs, files = ray_labelling.input_files(args)
        for file in files:
            ray_labelling.plan(fs, file, 10)
        replica = ray_labelling.Labeller(args, args.input, files, threads=1)
        out = replica({"file": [1], "block": [1], "shard": ["shard-00001-000001.jsonl"]})
        assert out["error"] == [""] and out["rows"] == [10] and out["worker"][0].endswith(f":{os.getpid()}")
        rows = [json.loads(line) for line in out["data"][0].decode().splitlines()]
        assert all(row["file"] == str(source) for row in rows) and list(rows[0])[:3] == ["line", "file", "id"]
        for row in rows:
            row.pop("file")
        assert_same_predictions(rows, one, tolerance=1e-5 if backend == "torch" else 1e-4)  # other batches, graphs
    broken = ray_labelling.Labeller(dataclasses.replace(args, backend="onnx-int8", model=str(tmp_path)), args.input,
                                    files, threads=1)  # fmt: skip
    out = broken({"file": [0], "block": [0], "shard": ["shard-00000-000000.jsonl"]})
    assert out["data"] == [b""] and out["error"][0].startswith(f"{tmp_path}: ")  # said by the driver in one line


def test_replicas_default_to_the_cluster_s_gpus_or_cpus_and_fit_on_a_node():
    class Cluster:  # two nodes of 16 CPUs (and 2 GPUs each, when `gpus`), as ray reports them
        def __init__(self, gpus):
            self.gpus = gpus

        def cluster_resources(self):
            return {"CPU": 32.0, **({"GPU": 4.0} if self.gpus else {})}

        def nodes(self):
            return [{"Alive": True, "Resources": {"CPU": 16.0}}] * 2 + [{"Alive": False, "Resources": {"CPU": 64.0}}]

    args = RayArguments(model="m", input="i", output="o")
    assert ray_labelling.replicas(Cluster(gpus=False), args) == (32, 1.0, 0)
    assert ray_labelling.replicas(Cluster(gpus=False), dataclasses.replace(args, num_workers=1)) == (1, 16.0, 0)
    assert ray_labelling.replicas(Cluster(gpus=True), args) == (4, 8.0, 1)  # one GPU each
    assert ray_labelling.replicas(Cluster(gpus=True), dataclasses.replace(args, backend="onnx")) == (32, 1.0, 0)


@pytest.fixture
def recorded_run(saved_tiny_model, tmp_path):
    """An output folder whose record says it is the run of (model, in.txt, default settings), without Ray."""
    source = write_txt(tmp_path / "in.txt", texts(12))
    output = tmp_path / "out"
    args = RayArguments(model=str(saved_tiny_model[2]), input=str(source), output=str(output), rows_per_shard=5)
    fs, files = ray_labelling.input_files(args)
    for file in files:
        ray_labelling.plan(fs, file, args.rows_per_shard)
    output.mkdir()
    ray_labelling.prepare(output, ray_labelling.identity(args, files), args)
    (output / "shard-00000-000000.jsonl").write_text('{"line": 1}\n')
    return source, output, saved_tiny_model[2]


def test_another_input_model_or_setting_is_refused_before_ray(recorded_run, backbone_dir, tmp_path, capsys,
                                                               monkeypatch):  # fmt: skip
    source, output, model = recorded_run
    monkeypatch.setattr(ray_labelling, "start_ray", lambda *a: pytest.fail("refused before Ray starts"))
    record = (output / "_run.json").read_bytes()
    source.write_text(source.read_text() + "one more line\n")
    assert ray_run(model, source, output, "--rows_per_shard", 5) == 1
    assert last_error(capsys) == (
        f"error: {output}: holds predictions of another run (the content of {source} (changed since)); run the same "
        "command to resume, choose another --output, or --overwrite to start over"
    )
    source.write_text("".join(t + "\n" for t in texts(12)))
    assert ray_run(backbone_dir, source, output, "--rows_per_shard", 5) == 1
    assert f"holds predictions of another run (model {{'path': '{model}'" in last_error(capsys)
    assert ray_run(model, source, output, "--rows_per_shard", 6) == 1
    assert "(--rows_per_shard 5 (now 6))" in last_error(capsys)
    other = write_txt(tmp_path / "other.txt", texts(12))
    assert ray_run(model, other, output, "--rows_per_shard", 5) == 1
    assert f"(input files {source} (now {other}))" in last_error(capsys)
    assert (output / "_run.json").read_bytes() == record and (output / "shard-00000-000000.jsonl").exists()
    # the same run finds every shard... but one: only a run with Ray writes them; here it would start Ray
    with pytest.raises(pytest.fail.Exception, match="refused before Ray starts"):
        ray_run(model, source, output, "--rows_per_shard", 5)


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("stdin", "error: --input -: the ray engine reads files; give a file, a folder or a glob"),
        ("output is a file", "error: {out_file}: is a file; with --engine ray, --output names a folder of shards"),
        ("output holds the input", "error: {tmp}: holds the input file {source}; write the shards to another --output"),
        ("foreign files", "error: {foreign}: holds files that predict.py did not write (notes.txt); choose another --output"),
        ("no inputs", "error: {empty}: no input files there (expected .csv, .json, .jsonl, .parquet, .text, .tsv, .txt)"),
        ("missing", "error: {tmp}/nothing.txt: no such file or folder"),
        ("local flag", "error: --num_workers is an option of --engine ray"),
        ("bad rows_per_shard", "error: --rows_per_shard must be a positive int, got 0"),
    ],
)  # fmt: skip
def test_refusals(case, message, saved_tiny_model, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(ray_labelling, "start_ray", lambda *a: pytest.fail("refused before Ray starts"))
    source = write_txt(tmp_path / "in.txt", texts(3))
    (tmp_path / "out.jsonl").write_text("")
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    (tmp_path / "empty").mkdir()
    inp, out, extra = str(source), str(tmp_path / "out"), []
    if case == "stdin":
        inp = "-"
    elif case == "output is a file":
        out = str(tmp_path / "out.jsonl")
    elif case == "output holds the input":
        out = str(tmp_path)
    elif case == "foreign files":
        out = str(tmp_path / "foreign")
    elif case == "no inputs":
        inp = str(tmp_path / "empty")
    elif case == "missing":
        inp = str(tmp_path / "nothing.txt")
    elif case == "bad rows_per_shard":
        extra = ["--rows_per_shard", "0"]
    argv = ["--model", str(saved_tiny_model[2]), "--input", inp, "--output", out, *extra]
    if case == "local flag":
        argv += ["--num_workers", "2"]
    else:
        argv = ["--engine", "ray", *argv]
    assert predict.main(argv) in (1, 2)
    expected = message.format(tmp=tmp_path, source=source, out_file=tmp_path / "out.jsonl",
                              foreign=tmp_path / "foreign", empty=tmp_path / "empty")  # fmt: skip
    assert last_error(capsys) == expected
    assert (tmp_path / "foreign" / "notes.txt").read_text() == "mine" and not (tmp_path / "out").exists()


def test_without_ray_installed_one_line_says_what_to_install(recorded_run, capsys, monkeypatch):
    source, output, model = recorded_run
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray: ImportError
    assert ray_run(model, source, output, "--rows_per_shard", 5) == 1
    assert last_error(capsys) == "error: --engine ray needs Ray Data: pip install -r requirements-ray.txt"


# ----- slow: on a local Ray with 2 CPUs -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray (2 CPUs, no dashboard) for the module's runs, which use it as it is, then stopped."""
    ray = pytest.importorskip("ray")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def replicas_of(output):
    return {json.loads(line)["worker"] for line in (output / "_shards.jsonl").read_text().splitlines()}


@pytest.mark.slow  # a local Ray (seconds to start) and 2 model replicas
def test_one_file_on_two_replicas_equals_one_process(local_ray, saved_tiny_model, tmp_path):
    model = saved_tiny_model[2]
    source = write_jsonl(tmp_path / "in.jsonl", texts(3000))
    one = local_rows(model, source, tmp_path / "one.jsonl")
    output = tmp_path / "shards"
    assert ray_run(model, source, output, "--num_workers", 2, "--rows_per_shard", 250) == 0
    assert sorted(p.name for p in output.glob("shard-*")) == [f"shard-00000-{k:06d}.jsonl" for k in range(12)]
    rows = shard_rows(output)
    assert_same_predictions(rows, one)
    assert "file" not in rows[0] and rows[0]["id"] == "in-0"
    assert len(replicas_of(output)) == 2  # both replicas labelled shards
    record = json.loads((output / "_run.json").read_text())
    assert record["input"]["files"][0]["path"] == str(source) and record["settings"]["rows_per_shard"] == 250
    before = {p.name: p.stat().st_mtime_ns for p in output.iterdir()}
    assert ray_run(model, source, output, "--num_workers", 2, "--rows_per_shard", 250) == 0  # nothing left to do
    assert {p.name: p.stat().st_mtime_ns for p in output.glob("shard-*")} == {
        k: v for k, v in before.items() if k.startswith("shard-")
    }


@pytest.mark.slow  # a local Ray and 2 model replicas
def test_a_folder_of_files_by_uri_names_each_row_s_file_and_parquet_output(local_ray, saved_tiny_model, tmp_path):
    model = saved_tiny_model[2]
    corpus = tmp_path / "corpus"
    (corpus / "more").mkdir(parents=True)
    sources = [
        write_jsonl(corpus / "a.jsonl", texts(700, seed=1)),
        write_txt(corpus / "b.txt", texts(900, seed=2)),
        write_jsonl(corpus / "more" / "c.jsonl", texts(400, seed=3)),
    ]
    output = tmp_path / "shards"
    uri = f"file://{corpus}/*"  # a URI, read through pyarrow's file systems as s3:// is; * also matches more/c.jsonl
    options = ["--num_workers", 2, "--rows_per_shard", 300, "--output_format", "parquet"]
    assert ray_run(model, uri, output, *options) == 0
    rows = shard_rows(output)
    assert len(list(output.glob("shard-*.parquet"))) == 3 + 3 + 2
    for i, source in enumerate(sources):
        mine = [row for row in rows if row["file"] == f"file://{source}"]
        for row in mine:  # Parquet keeps every column: the rows of a file without ids have id None
            if row.get("id") is None:
                row.pop("id", None)
        assert_same_predictions(mine, local_rows(model, source, tmp_path / f"one-{i}.jsonl"))
    assert len(rows) == 2000 and len(replicas_of(output)) == 2


@pytest.mark.slow  # a local Ray and 2 model replicas
def test_a_bad_line_names_its_file_and_line_after_writing_the_shards_before(local_ray, saved_tiny_model, tmp_path,
                                                                               capsys, caplog):  # fmt: skip
    model = saved_tiny_model[2]
    lines = texts(600)
    lines[450] = "   "
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    write_txt(corpus / "a.txt", texts(100))
    source = write_txt(corpus / "b.txt", lines)
    output = tmp_path / "shards"
    assert ray_run(model, corpus, output, "--num_workers", 2, "--rows_per_shard", 100) == 1
    assert last_error(capsys) == (
        f"error: {source}:451: the line is '   ': nothing to read (empty, or only spaces and invisible characters)"
    )
    assert not (output / "shard-00001-000004.jsonl").exists()
    # as with predict.py, the same command with --on_error skip goes on: it writes the rest, without line 451
    assert ray_run(model, corpus, output, "--num_workers", 2, "--rows_per_shard", 100, "--on_error", "skip") == 0
    assert "b.txt:451: the line is '   ': nothing to read" in caplog.text and "skipped" in caplog.text
    lines_of_b = sorted(row["line"] for row in shard_rows(output) if row["file"] == str(source))
    assert lines_of_b == [n for n in range(1, 601) if n != 451]
    lines[450] = "fixed"
    write_txt(source, lines)  # the file changed: another input, unless started over
    assert ray_run(model, corpus, output, "--num_workers", 2, "--rows_per_shard", 100) == 1
    assert f"(the content of {source} (changed since))" in last_error(capsys)
    assert ray_run(model, corpus, output, "--num_workers", 2, "--rows_per_shard", 100, "--overwrite") == 0
    assert sorted(row["line"] for row in shard_rows(output) if row["file"] == str(source)) == list(range(1, 601))


@pytest.mark.slow  # its own local Ray in a process killed mid-run, then this module's
def test_killed_mid_run_and_rerun_every_row_exactly_once(local_ray, saved_tiny_model, tmp_path):
    model = saved_tiny_model[2]
    source = write_txt(tmp_path / "in.txt", texts(3000))
    output = tmp_path / "shards"
    options = ["--model", str(model), "--input", str(source), "--output", str(output), "--num_workers", "2",
               "--rows_per_shard", "20"]  # fmt: skip
    child = subprocess.Popen([sys.executable, str(REPO / "predict.py"), "--engine", "ray", *options], env=ENV,
                             cwd=tmp_path, start_new_session=True, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 180
    try:
        while len(list(output.glob("shard-*"))) < 3:
            assert child.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "no shard within 180 s"
            time.sleep(0.01)
    finally:
        os.killpg(child.pid, signal.SIGKILL)  # the driver and the Ray it started (its session)
        child.wait()
    written = sorted(p.name for p in output.glob("shard-*"))
    assert 3 <= len(written) < 150, len(written)
    assert ray_run(model, source, tmp_path / "shards", "--num_workers", 2, "--rows_per_shard", 20) == 0
    assert not list(output.glob(".shard-*"))
    log = [json.loads(line) for line in (output / "_shards.jsonl").read_text().splitlines()]
    assert not {entry["shard"] for entry in log[-(150 - len(written)) :]} & set(written)  # the re-run skipped them
    one = local_rows(model, source, tmp_path / "one.jsonl")
    assert_same_predictions(shard_rows(output), one)
