"""ONNX export (onnx_multitask.py, export_onnx.py) and the ONNX Runtime backend: one graph with dynamic axes, parity
with PyTorch, the int8 graph, the fingerprint refusal, predict.py --backend, CLI errors."""

import json
import os
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from helpers import TASKS, write_jsonl
from safetensors.torch import load_file, save_file

import export_onnx
import onnx_multitask
import predict
from onnx_multitask import OnnxMultiTaskModel, export, has_onnx, sha256_file

# Edge cases included: characters outside the vocabulary, a text longer than the 64 tokens kept.
TEXTS = ["the movie was good", "😀 i love it!", "stock market price " * 30, "bad food", "the team lost", "a b c",
         "we love the game today", "the bank lost money", "sleep and food"]  # fmt: skip


def saved_model(make_backbone_config, make_tiny_model, tokenizer, directory, name):
    """A tiny random model (512 positions, so 300-token inputs fit) saved with its tokenizer, as train.py saves one."""
    config = make_backbone_config(name)
    config.max_position_embeddings = 512
    model = make_tiny_model(config)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return model, directory


@pytest.fixture(scope="module")
def bert(make_backbone_config, make_tiny_model, tiny_tokenizer, tmp_path_factory):
    """(model, directory) of a tiny BERT model exported with the library function."""
    model, directory = saved_model(make_backbone_config, make_tiny_model, tiny_tokenizer,
                                   tmp_path_factory.mktemp("bert"), "bert")  # fmt: skip
    export(directory)
    return model, directory


@pytest.fixture(scope="module")
def distilbert(make_backbone_config, make_tiny_model, tiny_tokenizer, tmp_path_factory):
    """(model, directory) of a tiny DistilBERT model exported with the command line."""
    model, directory = saved_model(make_backbone_config, make_tiny_model, tiny_tokenizer,
                                   tmp_path_factory.mktemp("distilbert"), "distilbert")  # fmt: skip
    assert export_onnx.main(["--model", str(directory)]) == 0
    return model, directory


@pytest.fixture(params=["bert", "distilbert"])
def exported(request):
    return request.getfixturevalue(request.param)


def test_export_writes_both_graphs_and_what_they_were_made_from(exported):
    model, directory = exported
    assert has_onnx(directory) and has_onnx(directory, quantized=True)
    manifest = json.loads((directory / "onnx" / "export.json").read_text())
    assert sorted(manifest["source"]) == ["config.json", "model.safetensors"]
    assert manifest["source"]["model.safetensors"] == sha256_file(directory / "model.safetensors")
    assert {g["precision"] for g in manifest["graphs"].values()} == {"fp32", "int8"}
    assert manifest["opset"] >= 17 and set(manifest["versions"]) == {"torch", "transformers", "onnx", "onnxruntime"}
    assert not list((directory / "onnx").glob(".export-*"))  # no temporary file left
    assert manifest["runner"] == ["configuration_multitask.py", "modeling_multitask.py", "onnx_multitask.py"]

    takes_segments = model.config.backbone_config.model_type == "bert"
    inputs = ["input_ids", "attention_mask"] + (["token_type_ids"] if takes_segments else [])
    outputs = ["logits_topic", "logits_sentiment", "embeddings"]
    for quantized in (False, True):
        graph = onnx.load(str(onnx_multitask.graph_path(directory, quantized))).graph
        assert [i.name for i in graph.input] == inputs
        assert [o.name for o in graph.output] == outputs
        for value in graph.input:
            dims = value.type.tensor_type.shape.dim
            assert [d.dim_param for d in dims] == ["batch", "sequence"], value.name
        widths = [d.dim_value for o in graph.output for d in o.type.tensor_type.shape.dim[1:]]
        assert widths == [3, 2, 32]


@pytest.mark.parametrize("batch,length", [(1, 3), (37, 300)])
def test_axes_are_dynamic(exported, batch, length):
    """Shapes far from the export's example (2 x 8): one text of 3 tokens, 37 texts of 300 (the last one padded)."""
    model, directory = exported
    session = ort.InferenceSession(str(onnx_multitask.graph_path(directory)), providers=["CPUExecutionProvider"])
    torch.manual_seed(batch)
    ids = torch.randint(5, 94, (batch, length))
    mask = torch.ones_like(ids)
    mask[-1, length // 2 :] = 0 if batch > 1 else 1
    feed = {"input_ids": ids.numpy(), "attention_mask": mask.numpy(), "token_type_ids": np.zeros_like(ids.numpy())}
    got = session.run(None, {i.name: feed[i.name] for i in session.get_inputs()})
    with torch.inference_mode():
        expected = model(input_ids=ids, attention_mask=mask)
    assert [g.shape for g in got] == [(batch, 3), (batch, 2), (batch, 32)]
    for g, e in zip(got, [*expected.logits.values(), expected.embeddings], strict=True):
        assert np.abs(g - e.numpy()).max() <= 1e-4


def test_fp32_matches_pytorch(exported, tiny_tokenizer):
    model, directory = exported
    onnx_model = OnnxMultiTaskModel.from_pretrained(directory)
    assert onnx_model.config.tasks == model.config.tasks
    got, expected = onnx_model.predict(TEXTS, tiny_tokenizer), model.predict(TEXTS, tiny_tokenizer)
    for g, e in zip(got, expected, strict=True):
        for task in TASKS:
            assert g[task]["label"] == e[task]["label"]
            assert abs(g[task]["score"] - e[task]["score"]) <= 1e-4
    labels = {task: {row[task]["label"] for row in expected} for task in TASKS}
    assert any(len(seen) > 1 for seen in labels.values()), "the tiny heads should not give every text one label"
    embeddings = onnx_model.encode(TEXTS, tiny_tokenizer)
    assert (embeddings - model.encode(TEXTS, tiny_tokenizer)).abs().max() <= 1e-4
    # batch composition: each text alone (no padding), in a batch of 3, and all together give the same outputs
    for batch_size in (1, 3):
        assert (onnx_model.encode(TEXTS, tiny_tokenizer, batch_size=batch_size) - embeddings).abs().max() <= 1e-5


def test_top_k(bert, tiny_tokenizer):
    model, directory = bert
    got = OnnxMultiTaskModel.from_pretrained(directory).predict(TEXTS[:3], tiny_tokenizer, top_k=2)
    expected = model.predict(TEXTS[:3], tiny_tokenizer, top_k=2)
    for g, e in zip(got, expected, strict=True):
        for task in TASKS:
            assert [x["label"] for x in g[task]] == [x["label"] for x in e[task]]
            assert g[task][0]["score"] >= g[task][1]["score"]


def test_int8_graph_gives_valid_labels(exported, tiny_tokenizer):
    _, directory = exported
    int8 = OnnxMultiTaskModel.from_pretrained(directory, quantized=True, threads=1)
    assert (
        onnx_multitask.graph_path(directory, True).stat().st_size < onnx_multitask.graph_path(directory).stat().st_size
    )
    for row in int8.predict(TEXTS, tiny_tokenizer):
        for task, labels in TASKS.items():
            assert row[task]["label"] in labels and 0.0 <= row[task]["score"] <= 1.0
    assert int8.encode(TEXTS, tiny_tokenizer).shape == (len(TEXTS), 32)


def test_loading_refuses_a_graph_of_other_weights_or_config(bert, tmp_path):
    _, source = bert
    directory = shutil.copytree(source, tmp_path / "model")
    OnnxMultiTaskModel.from_pretrained(directory)  # the copy is still current
    weights = load_file(directory / "model.safetensors")
    weights["heads.topic.out_proj.bias"] += 1.0
    save_file(weights, directory / "model.safetensors", metadata={"format": "pt"})  # new weights, same config
    assert has_onnx(directory)  # has_onnx does not hash; loading does
    message = f"{directory / 'model.safetensors'} has changed since the ONNX export in {directory / 'onnx'}; "
    message += f"re-run python export_onnx.py --model {directory}"
    for quantized in (False, True):
        with pytest.raises(ValueError) as error:
            OnnxMultiTaskModel.from_pretrained(directory, quantized=quantized)
        assert str(error.value) == message

    shutil.copyfile(source / "model.safetensors", directory / "model.safetensors")  # the weights back; now the config
    config = json.loads((directory / "config.json").read_text())
    config["max_seq_length"] = 16
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"config\.json has changed since the ONNX export"):
        OnnxMultiTaskModel.from_pretrained(directory)


def test_failed_export_leaves_the_previous_one(bert, tmp_path, monkeypatch):
    _, source = bert
    directory = shutil.copytree(source, tmp_path / "model")
    before = {p.name: p.read_bytes() for p in (directory / "onnx").iterdir()}

    def broken(model, path, opset=None):
        path.write_bytes(b"half a graph")
        raise RuntimeError("killed")

    monkeypatch.setattr(onnx_multitask, "export_fp32", broken)
    with pytest.raises(RuntimeError, match="killed"):
        export(directory)
    assert {p.name: p.read_bytes() for p in (directory / "onnx").iterdir()} == before


def test_fp32_only_export_removes_the_stale_int8_graph(bert, tmp_path):
    _, source = bert
    directory = shutil.copytree(source, tmp_path / "model")
    written = [p.name for p in export(directory, quantize=False)]
    assert written == ["model.onnx", "configuration_multitask.py", "modeling_multitask.py", "onnx_multitask.py",
                       "export.json"]  # fmt: skip
    assert has_onnx(directory) and not has_onnx(directory, quantized=True)
    assert not onnx_multitask.graph_path(directory, quantized=True).exists()
    with pytest.raises(ValueError, match=r"no int8 ONNX export; run python export_onnx.py --model .* first"):
        OnnxMultiTaskModel.from_pretrained(directory, quantized=True)


def run_predict(directory, source, output, *options):
    return predict.main(["--model", str(directory), "--input", str(source), "--output", str(output), *options])


def test_predict_backends(bert, tmp_path, capsys):
    _, directory = bert
    rows = [{"text": t, "id": i} for i, t in enumerate(TEXTS) if t]  # a blank text is a bad line of predict.py
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    outputs = {}
    for backend in ("torch", "onnx", "onnx-int8"):
        output = tmp_path / f"{backend}.jsonl"
        assert run_predict(directory, source, output, "--backend", backend, "--batch_size", "4") == 0
        outputs[backend] = [json.loads(line) for line in output.read_text().splitlines()]
    assert [r["id"] for r in outputs["onnx-int8"]] == [row["id"] for row in rows]
    for torch_row, onnx_row, int8_row in zip(*outputs.values(), strict=True):
        for task, labels in TASKS.items():
            assert onnx_row[task]["label"] == torch_row[task]["label"]
            assert onnx_row[task]["score"] == pytest.approx(torch_row[task]["score"], abs=1e-4)
            assert int8_row[task]["label"] in labels


def test_predict_without_an_export(saved_tiny_model, tmp_path, capsys):
    _, _, directory = saved_tiny_model
    source = tmp_path / "in.txt"
    source.write_text("the movie was good\n")
    assert run_predict(directory, source, tmp_path / "out.jsonl", "--backend", "onnx-int8") == 1
    expected = f"error: {directory}: no onnx-int8 export; run python export_onnx.py --model {directory} first"
    assert capsys.readouterr().err.strip().splitlines()[-1] == expected


def test_cli_errors(backbone_dir, saved_tiny_model, tmp_path, capsys, monkeypatch):
    def error(*argv):
        assert export_onnx.main(list(argv)) == 1
        return capsys.readouterr().err.strip().splitlines()[-1]

    assert error("--model", str(tmp_path / "nowhere")) == f"error: {tmp_path / 'nowhere'}: no such model directory"
    message = error("--model", backbone_dir)
    assert message.startswith(f"error: {backbone_dir}: not a multi-task model saved by train.py (its config.json has "
                              "model_type 'bert'")  # fmt: skip

    directory = shutil.copytree(saved_tiny_model[2], tmp_path / "read-only")
    os.chmod(directory, 0o555)
    if os.geteuid() == 0:  # root may write anywhere: make the permission check see what another user would
        monkeypatch.setattr(onnx_multitask.os, "access", lambda path, mode: False)
    try:
        assert error("--model", str(directory)) == f"error: {directory}: no write permission"
    finally:
        os.chmod(directory, 0o755)
    assert not (directory / "onnx").exists()


def test_int8_scores_do_not_depend_on_the_other_texts_of_the_batch(exported, tiny_tokenizer):
    # Dynamic quantisation took one activation scale over the padded batch: a text's logits moved with its neighbours.
    _, directory = exported
    int8 = OnnxMultiTaskModel.from_pretrained(directory, quantized=True, threads=1)

    def run(texts):
        encoding = tiny_tokenizer(texts, padding=True, truncation=True, max_length=64, return_tensors="pt")
        logits, embeddings = int8._run_batch(encoding)
        return torch.cat([*logits.values(), embeddings], dim=1)

    alone = torch.cat([run([text]) for text in TEXTS])
    assert torch.allclose(run(TEXTS), alone, atol=1e-5, rtol=0)
    assert torch.allclose(run(TEXTS[::-1]).flip(0), alone, atol=1e-5, rtol=0)


def test_int8_graph_quantises_every_weight_matrix_product_per_token(bert):
    _, directory = bert
    fp32 = onnx.load(str(onnx_multitask.graph_path(directory))).graph
    weights = {i.name for i in fp32.initializer}
    products = [n for n in fp32.node if n.op_type == "MatMul" and n.input[1] in weights]  # the encoder's linear layers
    ops = [node.op_type for node in onnx.load(str(onnx_multitask.graph_path(directory, quantized=True))).graph.node]
    assert not any(o.startswith("DynamicQuantize") for o in ops)  # no scale taken over a batch
    assert ops.count("MatMulInteger") == ops.count("QuantizeLinear") == len(products) > 0
    manifest = json.loads((directory / "onnx" / "export.json").read_text())
    assert manifest["quantization"] == onnx_multitask.QUANTIZATION


@pytest.mark.parametrize("opset", [17, 20, 21])
def test_per_token_quantisation_is_the_formula_at_every_opset(opset):
    rng = np.random.default_rng(0)
    w = rng.normal(size=(16, 5)).astype(np.float32)
    x = rng.normal(size=(2, 3, 16)).astype(np.float32)
    x[1, 2] = 0.0  # an all-zero token: no division by zero
    make = onnx.helper.make_tensor_value_info
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
        [make("x", onnx.TensorProto.FLOAT, ["b", "t", 16])], [make("y", onnx.TensorProto.FLOAT, ["b", "t", 5])],
        [onnx.numpy_helper.from_array(w, "w")],
    )  # fmt: skip
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset)])
    assert onnx_multitask.quantize_matmuls_per_token(model) == 1
    onnx.checker.check_model(model)
    got = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    w_scale = np.abs(w).max(axis=0) / 127
    s = np.maximum(np.abs(x).max(axis=-1, keepdims=True) / 127, 1e-12)
    expected = (np.round(x / s) @ np.round(w / w_scale)) * s * w_scale
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert np.abs(got - x @ w).max() < 0.1 and not np.abs(got[1, 2]).any()


def test_an_int8_graph_of_the_batch_dependent_method_warns_to_re_export(bert, tmp_path, caplog):
    _, source = bert
    directory = shutil.copytree(source, tmp_path / "model")
    manifest_path = directory / "onnx" / "export.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["quantization"] = "quantize_dynamic: QInt8 weights per channel, MatMul and Gather"  # an older export's
    manifest_path.write_text(json.dumps(manifest))
    OnnxMultiTaskModel.from_pretrained(directory)  # fp32: nothing to say
    assert "batch-invariant" not in caplog.text
    OnnxMultiTaskModel.from_pretrained(directory, quantized=True)
    assert f"re-run python export_onnx.py --model {directory} to make it batch-invariant" in caplog.text
