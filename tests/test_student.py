"""A shallower student of a trained model (`distillation.make_student`, `train.py --teacher DIR --student_layers N`):
built from the teacher's layers, trained on a labelled and an unlabelled file, saved, reloaded through AutoModel with
remote code, exported to ONNX; and every refusal in one line, before anything is written."""

import json

import pytest
import torch
from helpers import REPO, TASKS, run_child, write_jsonl

import train
import training_args
from configuration_multitask import MultiTaskConfig
from distillation import check_same_schema, make_student, student_layer_indices
from modeling_multitask import IGNORE_INDEX, MultiTaskModel, find_encoder_blocks
from multitask_data import DataError, load_split

TEXTS = ["the stock market was great", "a bad game", "the movie was fun", "sleep and diet"]


def deep_teacher(make_backbone_config, name, layers=4):
    """A tiny random model of `layers` encoder layers (BERT or DistilBERT) with the default tasks."""
    config = make_backbone_config(name)
    config.num_hidden_layers = layers
    torch.manual_seed(0)
    return MultiTaskModel(MultiTaskConfig(backbone_config=config, tasks=TASKS)).eval()


@pytest.mark.parametrize("name", ["bert", "distilbert"])
@pytest.mark.parametrize(("choice", "kept"), [("spread", [0, 3]), ("lowest", [0, 1]), ([1, 2], [1, 2])])
def test_the_student_is_made_of_the_chosen_teacher_layers(make_backbone_config, name, choice, kept):
    teacher = deep_teacher(make_backbone_config, name)
    student = make_student(teacher, 2, choice, teacher_name="my-teacher")
    assert student.config.backbone_config.num_hidden_layers == 2 and student.config.student_layers == kept
    assert student.config.distilled_from == "my-teacher" and student.config.tasks == teacher.config.tasks
    blocks = find_encoder_blocks(teacher.backbone)
    teacher_layers = teacher.backbone.get_submodule(blocks)
    student_layers = student.backbone.get_submodule(blocks)
    assert len(teacher_layers) == 4 and len(student_layers) == 2
    for i, j in enumerate(kept):  # layer i of the student is layer j of the teacher, every tensor equal
        own, theirs = student_layers[i].state_dict(), teacher_layers[j].state_dict()
        assert own.keys() == theirs.keys() and all(torch.equal(own[k], theirs[k]) for k in own)
    teacher_state = teacher.state_dict()
    others = {k: v for k, v in student.state_dict().items() if f".{blocks}." not in f".{k}"}
    assert others and all(torch.equal(v, teacher_state[k]) for k, v in others.items())  # embeddings, heads
    assert any(k.startswith("heads.") for k in others) and any("embeddings" in k for k in others)


def test_a_student_of_the_lowest_layers_answers_as_the_teacher_cut_short(make_backbone_config):
    """Kept layers are used in order: with the teacher's top layers made the identity (zero output projections and
    residuals), the teacher computes what its two lowest layers compute, i.e. what the 'lowest' student computes."""
    teacher = deep_teacher(make_backbone_config, "bert")
    student = make_student(teacher, 2, "lowest").eval()
    ids = torch.tensor([[2, 5, 6, 7, 3], [2, 9, 10, 3, 0]])
    mask = (ids != 0).long()
    hidden_teacher = teacher.backbone(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[2]
    hidden_student = student.backbone(input_ids=ids, attention_mask=mask).last_hidden_state
    assert torch.allclose(hidden_teacher, hidden_student, atol=1e-6)


def test_student_layer_indices_and_their_refusals():
    spread = lambda depth, n: student_layer_indices(depth, n, "spread")  # noqa: E731
    assert spread(6, 3) == [0, 3, 5] and spread(6, 2) == [0, 5] and spread(12, 6) == [0, 2, 4, 7, 9, 11]
    assert spread(6, 1) == [5] and student_layer_indices(6, 1) == [0]  # the default: the lowest
    assert student_layer_indices(6, 3) == [0, 1, 2] and student_layer_indices(6, 3, [0, 2, 4]) == [0, 2, 4]
    for num_layers in (0, 6, 7, True):
        with pytest.raises(ValueError, match=r"^num_layers must be an int in \[1, 5\] \(the teacher has 6 layers\)"):
            student_layer_indices(6, num_layers)
    for choice, message in (("top", "choice 'top' is not one of"), ([0, 6, 2], "expected 3 increasing layer indices")):
        with pytest.raises(ValueError, match=message):
            student_layer_indices(6, 3, choice)


def test_a_teacher_of_other_tasks_is_refused_in_one_line():
    teacher = MultiTaskConfig(tasks=TASKS)
    check_same_schema(teacher, MultiTaskConfig(tasks=TASKS))
    for other in (
        MultiTaskConfig(tasks={"topic": TASKS["topic"]}),
        MultiTaskConfig(tasks={**TASKS, "sentiment": ["Positive", "Negative"]}),  # the labels' order matters
        MultiTaskConfig(tasks=TASKS, multi_label_tasks=["topic"]),
    ):
        with pytest.raises(ValueError) as info:
            check_same_schema(teacher, other)
        assert "the teacher's tasks" in str(info.value) and "\n" not in str(info.value)


def test_unlabelled_rows_are_read_only_when_allowed(tmp_path):
    labelled = write_jsonl(tmp_path / "l.jsonl", [{"text": "a", "topic": "Finance/Tech", "sentiment": "Positive"}])
    unlabelled = write_jsonl(tmp_path / "u.jsonl", [{"text": "b", "emotion": ["joy"]}, {"text": "c"}])
    (tmp_path / "u.txt").write_text("d\ne\n")
    entries = [labelled, f"unlabelled={unlabelled}", str(tmp_path / "u.txt")]
    split = load_split(entries, TASKS, unlabelled=True)
    assert split["text"] == ["a", "b", "c", "d", "e"]
    assert split["labels_topic"] == [0] + [IGNORE_INDEX] * 4 and split["labels_sentiment"] == [1] + [IGNORE_INDEX] * 4
    multi = load_split([f"unlabelled={unlabelled}"], {"emotion": ["joy", "anger"]}, unlabelled=True,
                       multi_label=["emotion"])  # fmt: skip
    assert multi["labels_emotion"] == [[IGNORE_INDEX, IGNORE_INDEX]] * 2
    no_task = write_jsonl(tmp_path / "n.jsonl", [{"text": "f"}])  # a multi-column file's row naming no task
    assert load_split([no_task], TASKS, unlabelled=True)["labels_topic"] == [IGNORE_INDEX]
    for entry, message in ((f"unlabelled={unlabelled}", "unlabelled text .* is read only with unlabelled=True"),
                           (str(tmp_path / "u.txt"), r"unknown file type '.txt'.*plain text is unlabelled text"),
                           (no_task, "no label for any task")):  # fmt: skip
        with pytest.raises(DataError, match=message):
            load_split([entry], TASKS)


@pytest.fixture
def teacher_dir(saved_tiny_model):
    """A saved tiny BERT model of 2 layers (with its tokenizer), as train.py saves one."""
    return str(saved_tiny_model[2])


def data_files(tmp_path):
    rows = [json.loads(line) for line in (REPO / "data" / "train.jsonl").read_text().splitlines()]
    labelled = write_jsonl(tmp_path / "train.jsonl", rows[:24])
    unlabelled = tmp_path / "comments.txt"
    unlabelled.write_text("".join(r["text"] + "\n" for r in rows[24:40]))
    validation = write_jsonl(tmp_path / "dev.jsonl", rows[40:56])
    return labelled, str(unlabelled), validation


def student_args(teacher, tmp_path, *extra, train_files=None):
    labelled, unlabelled, validation = data_files(tmp_path)
    return ["--teacher", teacher, "--train_file", *(train_files or [labelled, f"unlabelled={unlabelled}"]),
            "--validation_file", validation, "--per_device_train_batch_size", "8", "--learning_rate", "1e-3",
            "--output_dir", str(tmp_path / "out"), "--use_cpu", "--logging_steps", "1", *extra]  # fmt: skip


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--student_layers", "2"], "--student_layers 2: the teacher (.*) has 2 encoder layers; a student has 1 to 1"),
        (["--student_layers", "0"], "--student_layers must be >= 1, got 0"),
        ([], "--teacher: give the student's depth with --student_layers N"),
        (["--student_layers", "1", "--tasks", '{"topic": ["A", "B"]}'], "--teacher .*: the teacher's tasks .* differ"),
        (["--student_layers", "1", "--student_layer_choice", "middle"], "--student_layer_choice 'middle': expected"),
        (
            ["--student_layers", "1", "--student_layer_choice", "2"],
            "--student_layer_choice 2: choice \\[2\\]: expected",
        ),
        (["--student_layers", "1", "--pooling", "cls"], "--pooling 'cls' differs from the saved model's 'mean'"),
        (["--student_layers", "1", "--distill_weight", "0"], "unlabelled text .* with --distill_weight 0 they teach"),
        (["--student_layers", "1", "--model_name_or_path", "x"], "--teacher and --model_name_or_path both given"),
    ],
)
def test_student_options_are_checked_before_anything_is_written(teacher_dir, tmp_path, extra, message):
    with pytest.raises(training_args.ArgumentError, match=message) as info:
        train.main(student_args(teacher_dir, tmp_path, *extra))
    assert "\n" not in str(info.value) and not (tmp_path / "out").exists()


def test_student_layers_and_unlabelled_text_need_a_teacher(backbone_dir, tmp_path):
    labelled, unlabelled, validation = data_files(tmp_path)
    out = tmp_path / "out"
    common = ["--backbone", backbone_dir, "--validation_file", validation, "--output_dir", str(out), "--use_cpu"]
    cases = [
        (["--train_file", labelled, "--student_layers", "1"], "--student_layers makes a student .* give that model"),
        (["--train_file", labelled, f"unlabelled={unlabelled}"], "--train_file unlabelled=.*: unlabelled text .* "
                                                                  "give --teacher DIR --student_layers N"),
        (["--train_file", labelled, unlabelled], "--train_file .*comments.txt: unlabelled text"),
        (["--train_file", labelled, "--test_file", f"unlabelled={unlabelled}"], "--test_file unlabelled=.*: "
                                                                                "unlabelled text cannot be evaluated"),
    ]  # fmt: skip
    for extra, message in cases:
        with pytest.raises(training_args.ArgumentError, match=message) as info:
            train.main([*common, *extra])
        assert "\n" not in str(info.value) and not out.exists()


@pytest.mark.slow  # two trainings, a fresh interpreter and an ONNX export: ~30 s
def test_a_student_trains_on_labelled_and_unlabelled_text_saves_reloads_and_exports(teacher_dir, tmp_path):
    from onnx_multitask import OnnxMultiTaskModel, export

    out = tmp_path / "out"
    metrics = train.main(student_args(teacher_dir, tmp_path, "--student_layers", "1", "--max_steps", "4"))
    # 24 labelled + 16 unlabelled rows at batch 8: 5 steps an epoch (24 labelled rows alone: 3)
    assert metrics["epoch"] == pytest.approx(4 / 5)
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    assert all(entry["loss_distill"] > 0 for entry in history if "loss_distill" in entry)
    assert sum("loss_distill" in entry for entry in history) == 4
    config = json.loads((out / "config.json").read_text())
    assert config["backbone_config"]["num_hidden_layers"] == 1 and config["student_layers"] == [0]
    assert config["distilled_from"].startswith("tiny-model")  # the teacher's folder name, not a path of this machine
    card = (out / "README.md").read_text()
    assert f"A student of `{config['distilled_from']}`: 1 encoder layers, copies of the\nteacher's layers 0" in card
    assert "weight 1, temperature 2" in card and "- distillation" in card
    student = MultiTaskModel.from_pretrained(out).eval()
    from modeling_multitask import load_saved_tokenizer

    tokenizer = load_saved_tokenizer(out, student.config)
    expected = student.predict(TEXTS, tokenizer)
    stdout = run_child(
        f"""
        import json
        from transformers import AutoModel, AutoTokenizer
        model = AutoModel.from_pretrained({str(out)!r}, trust_remote_code=True)
        tokenizer = AutoTokenizer.from_pretrained({str(out)!r}, trust_remote_code=True)
        layers = model.config.backbone_config.num_hidden_layers, len(model.backbone.encoder.layer)
        print(json.dumps([type(model).__name__, layers, model.predict({TEXTS!r}, tokenizer)]))
        """,
        cwd=tmp_path,
    )
    name, layers, predictions = json.loads(stdout.strip().splitlines()[-1])
    assert name == "MultiTaskModel" and layers == [1, 1]
    for got, want in zip(predictions, expected, strict=True):
        for task in TASKS:
            assert got[task]["label"] == want[task]["label"] and abs(got[task]["score"] - want[task]["score"]) < 1e-5
    export(out)  # checks the fp32 graph's parity itself; and again here through the ONNX Runtime model
    onnx = OnnxMultiTaskModel.from_pretrained(out).predict(TEXTS, tokenizer)
    for got, want in zip(onnx, expected, strict=True):
        for task in TASKS:
            assert got[task]["label"] == want[task]["label"] and abs(got[task]["score"] - want[task]["score"]) <= 1e-4
    # what predict.py, the demo and the server load: the student, as any model, in ONNX int8 too
    from labelling import load_for_inference

    for backend in ("torch", "onnx-int8"):
        model, _, _ = load_for_inference(str(out), backend=backend)
        assert [row["topic"]["label"] in TASKS["topic"] for row in model.predict(TEXTS, tokenizer)] == [True] * 4
    # the control: the same student on the gold labels alone (no teacher in the loss), labelled rows only
    labelled, _, _ = data_files(tmp_path)
    gold = train.main(student_args(teacher_dir, tmp_path, "--student_layers", "1", "--max_steps", "3",
                                   "--distill_weight", "0", "--output_dir", str(tmp_path / "gold"),
                                   train_files=[labelled]))  # fmt: skip
    assert gold["epoch"] == pytest.approx(1.0)
    history = json.loads((tmp_path / "gold" / "trainer_state.json").read_text())["log_history"]
    assert not any("loss_distill" in entry for entry in history)
    assert "trained on the gold labels alone" in (tmp_path / "gold" / "README.md").read_text()


def test_the_provenance_is_saved_for_a_student_only(make_backbone_config, tmp_path, caplog):
    teacher = deep_teacher(make_backbone_config, "bert", layers=2)
    teacher.config.save_pretrained(tmp_path / "teacher")
    make_student(teacher, 1, teacher_name="hub-user/teacher").config.save_pretrained(tmp_path / "student")
    saved = {name: json.loads((tmp_path / name / "config.json").read_text()) for name in ("teacher", "student")}
    assert "distilled_from" not in saved["teacher"] and "student_layers" not in saved["teacher"]  # as before
    assert saved["student"]["distilled_from"] == "hub-user/teacher" and saved["student"]["student_layers"] == [0]
    with caplog.at_level("WARNING"):
        config = MultiTaskConfig.from_saved_model(tmp_path / "student")
        assert MultiTaskConfig.from_saved_model(tmp_path / "teacher").distilled_from is None
    assert (config.distilled_from, config.student_layers, config.backbone_config.num_hidden_layers) == (
        "hub-user/teacher",
        [0],
        1,
    )
    assert "does not know" not in caplog.text  # no "saved by a newer version" warning
