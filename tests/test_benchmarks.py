"""Smoke tests: each benchmark script runs end to end on a tiny encoder and a few rows (not a measurement); and the
robustness benchmark's gap arithmetic on figures made up for the test."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from helpers import REPO


def tiny_data_dir(tmp_path):
    """{topic,sentiment}_{train,dev,dev_ood}.jsonl in the layout of the real data, made from the bundled data."""
    rows = [json.loads(line) for line in (REPO / "data" / "train.jsonl").read_text().splitlines()]
    for split, part in (("train", rows[:48]), ("dev", rows[48:72]), ("dev_ood", rows[72:96])):
        for task in ("topic", "sentiment"):
            lines = [json.dumps({"text": r["text"], "label": r[task]}) for r in part]
            (tmp_path / f"{task}_{split}.jsonl").write_text("\n".join(lines) + "\n")
    return tmp_path


def run(args):
    """`python -m benchmarks.NAME ARGS` from the repository root, as the README runs it."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, cwd=REPO, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.mark.slow  # a smoke run: the benchmark as a real command
def test_accuracy_benchmark_runs(backbone_dir, tmp_path):
    (tmp_path / "data").mkdir()
    data = tiny_data_dir(tmp_path / "data")
    out = tmp_path / "out"
    stdout = run(["benchmarks.accuracy", "--data_dir", str(data), "--output_dir", str(out),
                  "--backbone", backbone_dir, "--epochs", "1", "--learning_rates", "1e-3"])  # fmt: skip
    assert "| (a) multi-task (ours) | 1 |" in stdout and "| (b) one model per task | 2 |" in stdout
    assert (out / "results.md").is_file() and (out / "multitask" / "config.json").is_file()
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [r["examples"] for r in rows[:2]] == [96, 96]  # the same training examples for (a) and (b)
    # the multi-task search alone, with a train.py option under consideration
    stdout = run(["benchmarks.accuracy", "--data_dir", str(data), "--output_dir", str(out), "--backbone", backbone_dir,
                  "--epochs", "1", "--learning_rates", "1e-3", "--systems", "multitask",
                  "--multitask_options", '{"wise_ft_alpha": 0.5}'])  # fmt: skip
    assert [r["system"] for r in json.loads((out / "results.json").read_text())["rows"]] == ["(a) multi-task (ours)"]
    assert json.loads((out / "multitask" / "training_args.json").read_text())["wise_ft_alpha"] == 0.5
    assert 'multi-task runs with {"wise_ft_alpha": 0.5}' in stdout


@pytest.mark.slow  # a smoke run: the benchmark as a real command
def test_speed_benchmark_runs(backbone_dir, tmp_path):
    data = tiny_data_dir(tmp_path)
    stdout = run(["benchmarks.speed", "--data_dir", str(data), "--encoder", backbone_dir,
                  "--train_sentences", "16", "--infer_sentences", "32", "--batch_size", "8", "--rounds", "1",
                  "--memory_lines", "200", "--gpu_config_check"])  # fmt: skip
    for marker in ("1. training throughput", "2. inference", "3. encode", "4. padding", "5. predict.py", "6. bf16"):
        assert marker in stdout, stdout


@pytest.mark.slow  # a smoke run: the benchmark as a real command
def test_onnx_speed_benchmark_runs(backbone_dir, tmp_path):
    from helpers import tiny_args

    data = tiny_data_dir(tmp_path)
    for task in ("topic", "sentiment"):  # the other-source dev sets: here a copy of the dev sets
        (data / f"{task}_dev_ood.jsonl").write_text((data / f"{task}_dev.jsonl").read_text())
    model = tmp_path / "model"
    options = tiny_args(backbone_dir, model, "--max_steps", "2", "--eval_strategy", "no", "--save_strategy", "no")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, str(REPO / "train.py"), *options], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    stdout = run(["benchmarks.onnx_speed", "--data_dir", str(data), "--model", str(model), "--sentences", "16",
                  "--latency_sentences", "2", "--e2e_sentences", "20", "--batch_size", "8", "--rounds", "1"])  # fmt: skip
    for marker in ("1. parity", "2. accuracy", "| dev_ood | sentiment |", "3. speed", "| onnx-int8 |", "4. predict"):
        assert marker in stdout, stdout
    assert (model / "onnx" / "model_int8.onnx").is_file()


@pytest.mark.slow  # a smoke run: the benchmark as a real command
def test_int8_invariance_benchmark_runs(saved_tiny_model, tmp_path):
    import shutil

    from onnx_multitask import export

    data = tiny_data_dir(tmp_path)
    model = shutil.copytree(saved_tiny_model[2], tmp_path / "model")
    export(model)
    stdout = run(["benchmarks.int8_invariance", "--data_dir", str(data), "--model", str(model), "--sentences", "8",
                  "--speed_sentences", "40", "--rounds", "1"])  # fmt: skip
    invariance, speed = stdout.split("\nspeed")
    rows = [line for line in invariance.splitlines() if line.startswith(("| fp32", "| int8"))]
    assert len(rows) == 3 and rows[2].startswith("| int8, the export (per-token) |"), stdout
    assert float(rows[2].split("|")[2]) < 1e-5 and rows[2].endswith("| 0 of 16 |")  # the export: batch-invariant
    assert len([line for line in speed.splitlines() if line.startswith(("| fp32", "| int8"))]) == 3, stdout


@pytest.mark.slow  # a smoke run: the benchmark as a real command (it starts servers)
def test_serve_load_benchmark_runs(saved_tiny_model, tmp_path):
    import shutil

    from onnx_multitask import export

    data = tiny_data_dir(tmp_path)
    for task in ("topic", "sentiment"):
        (data / f"{task}_dev_ood.jsonl").write_text((data / f"{task}_dev.jsonl").read_text())
    model = shutil.copytree(saved_tiny_model[2], tmp_path / "model")
    export(model)
    out = tmp_path / "out"
    stdout = run(["benchmarks.serve_load", "--model", str(model), "--data_dir", str(data), "--output_dir", str(out),
                  "--clients", "1", "4", "--requests", "30", "--seconds", "5", "--overload_seconds", "1",
                  "--rss_requests", "50", "100"])  # fmt: skip
    results = json.loads((out / "results.json").read_text())
    levels = {(x["backend"], x["max_batch_size"], x["clients"]): x for x in results["levels"]}
    assert set(levels) == {(b, m, c) for b in ("torch", "onnx-int8") for m in (32, 1) for c in (1, 4)}
    assert all(x["ok"] == x["requests"] == 30 for x in levels.values())  # every request answered with 200
    for backend in ("torch", "onnx-int8"):
        over = results["overload"][backend]
        assert "connection error" not in over["statuses"] and over["after"] == {"200": 200}
        assert 0 < results["offline"][backend] < 1e6
    assert [m["requests"] for m in results["rss_mb"].values()] == [50, 100]
    assert "| onnx-int8 | 32 | 4 | 30 |" in stdout and "RSS of the onnx-int8 server" in stdout


@pytest.mark.slow  # a smoke run: the benchmark as a real command, starting a local Ray per Ray run
def test_ray_predict_benchmark_runs(saved_tiny_model, tmp_path):
    pytest.importorskip("ray")
    data = tiny_data_dir(tmp_path)
    stdout = run(["benchmarks.ray_predict", "--data_dir", str(data), "--model", str(saved_tiny_model[2]),
                  "--sentences", "60", "--rows_per_shard", "20", "--replicas", "1"])  # fmt: skip
    assert "| predict.py |" in stdout and "| ray, 1 replica |" in stdout, stdout
    assert "target: ray with 1 replica >= 0.8x predict.py once started:" in stdout, stdout


@pytest.mark.slow  # a smoke run: the benchmark as a real command
def test_robustness_benchmark_runs_and_continues(backbone_dir, tmp_path):
    (tmp_path / "data").mkdir()
    data = tiny_data_dir(tmp_path / "data")
    out = tmp_path / "out"
    args = ["benchmarks.robustness", "--data_dir", str(data), "--output_dir", str(out), "--backbone", backbone_dir,
            "--epochs", "1", "--seeds", "1", "--methods", "baseline", "wise_ft_0.5", "single_A",
            "--max_train_samples", "16", "--wise_ft_sweep_methods", "baseline", "single_A",
            "--wise_ft_sweep", "0.5"]  # fmt: skip
    stdout = run(args)
    assert "| wise_ft_0.5 | `--wise_ft_alpha 0.5` |" in stdout and "| single_A |" in stdout, stdout
    assert "| baseline+wise_ft_0.5 | `--wise_ft_alpha 0.5` |" in stdout, stdout  # the sweep's row
    assert "| single_A+wise_ft_0.5 | `--wise_ft_alpha 0.5 --learning_rate 0.0001" in stdout, stdout  # both its models
    assert "topic other-source dev" in stdout
    results = json.loads((out / "results.json").read_text())
    rows = {row["method"]: row["columns"] for row in results["rows"]}
    # no sweep of a WiSE-FT run
    assert list(rows) == ["baseline", "baseline+wise_ft_0.5", "wise_ft_0.5", "single_A", "single_A+wise_ft_0.5"]
    assert [sorted(r["wise_ft_sweep"]) for r in results["runs"]["single_A"]] == [["0.5", "1"]] * 2
    assert all(r["sweep_check"] <= 1 / 24 + 1e-9 for r in results["runs"]["single_A"])
    assert set(rows["wise_ft_0.5"]) == {"topic/validation", "topic/ood", "sentiment/validation", "sentiment/ood"}
    # evaluated after training = trained with --wise_ft_alpha (same seed, same selected model), up to batching noise
    # of one of the 24 dev rows; alpha 1 is train.py's own evaluation of the saved model
    one_row = 1 / 24 + 1e-9
    for column, figures in rows["wise_ft_0.5"].items():
        assert abs(rows["baseline+wise_ft_0.5"][column]["accuracy"][0] - figures["accuracy"][0]) <= one_row, column
    baseline = results["runs"]["baseline"][0]
    assert baseline["sweep_check"] <= one_row and set(baseline["wise_ft_sweep"]) == {"0.5", "1"}
    assert "wise_ft_sweep" not in results["runs"]["wise_ft_0.5"][0]
    assert results["runs"]["wise_ft_0.5"][0]["train_examples"] == 32  # 16 per task, both tasks in one model
    assert [r["train_examples"] for r in results["runs"]["single_A"]] == [16, 16]  # one model per task
    assert (out / "results.md").is_file() and not list((out / "models").glob("*"))  # models deleted after evaluation
    # run again: every run is read back, none trained again
    result = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, cwd=REPO,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})  # fmt: skip
    assert result.returncode == 0 and result.stderr.count("(stored result)") == 4, result.stderr[-3000:]
    # train.py's one-line error for bad input (here a data folder with no files) is the benchmark's, not a traceback
    result = subprocess.run([sys.executable, "-m", *args[:2], str(tmp_path / "no-data"), *args[3:], "--first_seed", "7"],
                            capture_output=True, text=True, cwd=REPO, env={**os.environ, "HF_HUB_OFFLINE": "1"})  # fmt: skip
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: {tmp_path / 'no-data'}"), result.stderr[-3000:]
    # a sweep alpha not evaluated yet needs the model, which is gone: one line saying so, nothing trained
    result = subprocess.run([sys.executable, "-m", *args[:-1], "0.8"], capture_output=True, text=True, cwd=REPO,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})  # fmt: skip
    assert result.returncode == 1 and "the model of this run is gone" in result.stderr, result.stderr[-3000:]


@pytest.mark.slow  # a smoke run: the benchmark as a real command
def test_emotion_benchmark_runs(backbone_dir, tmp_path):
    """benchmarks.emotion end to end on 24 rows per task and file: emotion_*.jsonl hold GoEmotions label lists."""
    (tmp_path / "data").mkdir()
    data = tiny_data_dir(tmp_path / "data")
    rows = [json.loads(line) for line in (REPO / "data" / "train.jsonl").read_text().splitlines()]
    for split, part in (("train", rows[:48]), ("dev", rows[48:72])):
        labels = [["joy"] if r["sentiment"] == "Positive" else ["anger", "sadness"] for r in part]
        lines = [json.dumps({"text": r["text"], "labels": [*tags, *(["neutral"] * (i % 3 == 0))]})
                 for i, (r, tags) in enumerate(zip(part, labels, strict=True))]  # fmt: skip
        (data / f"emotion_{split}.jsonl").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    args = ["benchmarks.emotion", "--data_dir", str(data), "--output_dir", str(out), "--backbone", backbone_dir,
            "--epochs", "1", "--max_train_samples", "24", "--max_eval_samples", "24", "--parallel", "2"]  # fmt: skip
    stdout = run(args)
    for marker in ("| (c) topic + sentiment + emotion |", "| (d) add emotion to (a), encoder frozen |", "Anchor"):
        assert marker in stdout, stdout
    results = json.loads((out / "results.json").read_text())
    a, c, d, f, g = (results["rows"][i] for i in (0, 2, 3, 5, 6))
    for task in ("topic", "sentiment"):  # frozen encoder and old heads: the old tasks' figures do not move
        assert d["metrics"][f"eval_{task}_accuracy"] == a["metrics"][f"eval_{task}_accuracy"]
    assert d["trainable_parameters"] == 32 * 28 + 28  # the emotion head alone: hidden 32 x 28 labels + biases
    # (f) continues (a) on all three tasks' data with nothing frozen: (c)'s schema and size, and it trained every task
    assert f["system"].startswith("(f)") and f["trainable_parameters"] == c["trainable_parameters"]
    assert (
        f["train_options"]["model_name_or_path"] == str(out / "a-two-task") and not f["train_options"]["freeze_heads"]
    )
    assert [t.split("=")[0] for t in f["train_options"]["train_file"]] == ["topic", "sentiment", "emotion"]
    assert f["train_options"]["batch_by_task"] and f["train_options"]["distill_weight"] == 1.0
    assert "three-task (f) vs emotion alone (b)" in stdout and "sentiment accuracy, three-task (f)" in stdout
    # (g) continues (a) on the emotion data alone, nothing frozen, the old tasks distilled from (a)
    assert g["train_options"]["distill_weight"] == 1.0 and g["trainable_parameters"] == c["trainable_parameters"]
    assert [t.split("=")[0] for t in g["train_options"]["train_file"]] == ["emotion"]
    assert (out / "results.md").read_text().count("SMOKE RUN") == 1
    assert (out / "c-three-task" / "per_label_results.json").is_file()
    # run again: every system is read back (none trained again) and gives the same table; a changed (a) (another
    # learning rate) is trained again, and so are (d) to (g), which continue from it
    result = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, cwd=REPO,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})  # fmt: skip
    assert result.returncode == 0 and result.stderr.count("stored result") == 7, result.stderr[-3000:]
    assert json.loads((out / "results.json").read_text())["rows"] == results["rows"]
    (out / "systems" / "a.json").write_text((out / "systems" / "a.json").read_text().replace('"learning_rate"', '"x"'))
    result = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, cwd=REPO,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})  # fmt: skip
    assert result.returncode == 0 and result.stderr.count("stored result") == 2, result.stderr[-3000:]
    # (c) alone with another recipe: only (c) runs, trained again (its options changed), and the options are recorded
    result = subprocess.run([sys.executable, "-m", *args, "--systems", "c", "--three_task_options",
                             '{"batch_by_task": true}'], capture_output=True, text=True, cwd=REPO,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})  # fmt: skip
    assert result.returncode == 0 and "stored result" not in result.stderr, result.stderr[-3000:]
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [r["system"] for r in rows] == ["(c) topic + sentiment + emotion"] and rows[0]["train_options"][
        "batch_by_task"
    ]
    assert json.loads((out / "c-three-task" / "run.json").read_text())  # a finished train.py run
    result = subprocess.run([sys.executable, "-m", *args, "--three_task_options", "batch_by_task"],
                            capture_output=True, text=True, cwd=REPO)  # fmt: skip
    assert result.returncode == 2 and "--three_task_options is not JSON" in result.stderr, result.stderr[-3000:]


def test_robustness_worst_gap_and_its_standard_error():
    """The worst column against the better single-task recipe there, with the standard error of that difference."""
    from benchmarks.robustness import COLUMNS, summarise, worst_gap

    def records(accuracies_by_seed, tasks=("topic", "sentiment")):
        return [
            {
                "settings": {"seed": seed},
                "wall": 1.0,
                "train_examples": 1,
                "dev": {t: {n: [acc[f"{t}/{n}"], 0.0] for tt, n in COLUMNS if tt == t} for t in tasks},
            }
            for seed, acc in enumerate(accuracies_by_seed)
        ]

    def seeds(*per_column):  # per column, the accuracy of each seed
        return [
            dict(zip([f"{t}/{n}" for t, n in COLUMNS], figures, strict=True))
            for figures in zip(*per_column, strict=True)
        ]

    multitask = summarise("baseline", records(seeds([0.90, 0.92], [0.80, 0.84], [0.885, 0.885], [0.91, 0.91])))
    single_a = summarise("single_A", records(seeds([0.90, 0.90], [0.82, 0.82], [0.90, 0.90], [0.90, 0.90])))
    single_b = summarise("single_B", records(seeds([0.88, 0.88], [0.85, 0.83], [0.87, 0.87], [0.90, 0.90])))
    column, gap, se = worst_gap(multitask, [single_a, single_b])
    # topic dev +1 (0.91 vs A's 0.90), topic ood -2 (0.82 vs B's 0.84), sentiment dev -1.5 (vs A), sentiment ood +1
    assert column == "topic/ood" and round(gap, 6) == -2.0
    # sd of [0.80, 0.84] and of [0.85, 0.83] (ddof 1), two seeds each
    expected = 100 * np.sqrt(np.std([0.80, 0.84], ddof=1) ** 2 / 2 + np.std([0.85, 0.83], ddof=1) ** 2 / 2)
    assert se is not None and abs(se - expected) < 1e-9 and se > 0
    one_seed = summarise("baseline", records(seeds([0.90], [0.80], [0.88], [0.91])))
    assert worst_gap(one_seed, [single_a, single_b])[2] is None  # no spread to estimate from one seed


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--wise_ft_sweep", "1"], "every alpha must be in [0, 1), got 1"),
        (["--methods", "baseline", "--wise_ft_sweep_methods", "baseline"], "--wise_ft_sweep_methods needs --wise_ft_sweep"),
        (["--methods", "baseline", "--wise_ft_sweep_methods", "baseline", "single_A", "--wise_ft_sweep", "0.8"],
         "--wise_ft_sweep_methods single_A: not in --methods"),
    ],
)  # fmt: skip
def test_robustness_sweep_mistakes_are_one_line_errors(extra, message, tmp_path, capsys):
    """A sweep that would silently do nothing, or an alpha out of range, stops before anything is written."""
    from benchmarks.robustness import parse_args

    with pytest.raises(SystemExit) as stop:
        parse_args(["--data_dir", str(tmp_path), "--output_dir", str(tmp_path / "out"), *extra])
    assert stop.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_robustness_default_sweep_methods_need_not_be_run(tmp_path):
    """The default sweep methods need not be among --methods (they are swept when they are)."""
    from benchmarks.robustness import parse_args

    args = parse_args(["--data_dir", str(tmp_path), "--output_dir", str(tmp_path), "--methods", "single_A",
                       "--wise_ft_sweep", "0.8"])  # fmt: skip
    assert args.wise_ft_sweep_methods == ["baseline", "gentle"]


@pytest.mark.slow  # a smoke run: the benchmark as a real command
def test_student_benchmark_runs_and_continues(backbone_dir, tmp_path):
    """benchmarks.student end to end: a tiny teacher trained by the benchmark (2 layers), students of 1 layer in the
    three variants, speed; a second run reads every run back."""
    (tmp_path / "data").mkdir()
    data = tiny_data_dir(tmp_path / "data")
    rows = [json.loads(line) for line in (REPO / "data" / "train.jsonl").read_text().splitlines()]
    (data / "emotion_train.jsonl").write_text("".join(json.dumps({"text": r["text"], "labels": ["joy"]}) + "\n"
                                                      for r in rows[100:130]))  # fmt: skip
    out = tmp_path / "out"
    args = ["benchmarks.student", "--data_dir", str(data), "--output_dir", str(out), "--backbone", backbone_dir,
            "--layers", "1", "--seeds", "42", "--epochs", "1", "--unlabelled_rows", "12",
            "--speed_sentences", "16", "--latency_sentences", "2", "--batch_size", "8", "--rounds", "1"]  # fmt: skip
    stdout = run(args)
    for marker in ("| teacher | all | - | - |", "| distilled | 1 | lowest | 42 |", "| unlabelled | 1 | lowest | 42 |",
                   "| gold | 1 | lowest | 42 |", "| student L1, onnx int8 |", "| teacher, torch fp32 |"):  # fmt: skip
        assert marker in stdout, stdout
    results = json.loads((out / "results.json").read_text())
    runs = {name: records[0] for name, records in results["runs"].items()}
    assert runs["unlabelled-L1-lowest"]["train_examples"] == runs["distilled-L1-lowest"]["train_examples"] + 12
    assert runs["gold-L1-lowest"]["settings"]["distill_weight"] == 0.0
    assert (out / "teacher" / "config.json").is_file() and (out / "models" / "distilled-L1-lowest-seed42").is_dir()
    assert not (out / "models" / "gold-L1-lowest-seed42").exists()  # only the speed runs' students are kept
    result = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, cwd=REPO,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})  # fmt: skip
    assert result.returncode == 0 and result.stderr.count("(stored result)") == 3, result.stderr[-3000:]
