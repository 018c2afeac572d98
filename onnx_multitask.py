"""The whole multi-task model (encoder, pooling, every head) as one ONNX graph, and an ONNX Runtime model to serve it.

`export(model_dir)` writes, inside the saved model's directory (so the graphs travel with it):

    onnx/model.onnx        fp32 graph: inputs input_ids, attention_mask (+ token_type_ids for encoders that take them),
                           outputs logits_<task> (batch, n_labels) per task and embeddings (batch, hidden)
    onnx/model_int8.onnx   the same graph in int8 (one activation scale per token: batch-invariant)
    onnx/export.json       what the graphs were made from (sha256 of config.json and the weight files), the sha256 of
                           each graph, opset, versions
    onnx/onnx_multitask.py, onnx/modeling_multitask.py, onnx/configuration_multitask.py
                           the code that serves the graphs (this module and what it imports), so that the folder
                           alone serves them: `sys.path.insert(0, "DIR/onnx"); from onnx_multitask import ...`

`OnnxMultiTaskModel.from_pretrained(model_dir)` loads a graph into ONNX Runtime after checking that the graph is the one
the export wrote (its sha256) and that the model's weights and config are still those it was exported from. It is a
`MultiTaskInference`: `predict`, `encode`, `iter_batches` and `decode` are the same code as `MultiTaskModel`'s; only
running a batch differs.
"""

import hashlib
import json
import logging
import os
import shutil
import signal
import sys
import threading
import warnings
from contextlib import contextmanager, suppress
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import transformers
from filelock import FileLock, Timeout
from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors
from onnxruntime.quantization import QuantType, quantize_dynamic
from torch import nn

from configuration_multitask import MultiTaskConfig, check_model_source
from modeling_multitask import MultiTaskInference, load_saved_model

logger = logging.getLogger(__name__)

ONNX_DIR = "onnx"
GRAPH_FILES = {False: "model.onnx", True: "model_int8.onnx"}  # quantized -> file name
MANIFEST = "export.json"
MANIFEST_VERSION = 1
LOCK_FILE = ".export-onnx.lock"  # in the model directory while an export runs
STAGING_PREFIX = ".export-"  # onnx/.export-<pid>/: an export in progress (or one killed before it could clean up)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
# What ONNX Runtime raises for a file it cannot load (plain Exception subclasses, not OSError or ValueError).
ORT_LOAD_ERRORS = (ort_errors.Fail, ort_errors.InvalidProtobuf, ort_errors.InvalidGraph, ort_errors.NotImplemented,
                   ort_errors.InvalidArgument, ort_errors.NoSuchFile)  # fmt: skip
PARITY_TOLERANCE = 1e-4  # an export whose fp32 graph differs more than this from PyTorch on its example is refused
# Opset 23 is the first with an Attention operator: the exporter maps the encoder's scaled_dot_product_attention to
# one fused node per layer, which runs faster than opset 20's MatMul/Softmax pieces (docs/results.md). onnxruntime
# older than 1.23 cannot load it: export with opset 20 for those.
DEFAULT_OPSET = 23


SOURCE_PATTERNS = ("config.json", "model*.safetensors", "model.safetensors.index.json", "pytorch_model*.bin",
                   "pytorch_model.bin.index.json")  # fmt: skip


def sha256_file(path):
    """The sha256 of a file's bytes, in hex: the one file hash of the run records (train.py's run.json, predict.py's
    OUTPUT.resume.json) and of the ONNX export's export.json."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def model_files(model_dir):
    """`{file name: path}` of a saved model's config.json and weight file(s) (`SOURCE_PATTERNS`), sorted by name."""
    files = {p.name: p for pattern in SOURCE_PATTERNS for p in Path(model_dir).glob(pattern) if p.is_file()}
    return dict(sorted(files.items()))


def model_fingerprint(model_dir):
    """`{file name: sha256}` of `model_files`: what a record of work done with a saved model (an ONNX export, a
    file's predictions) names the model by, so that it can tell when the model has changed since."""
    return {name: sha256_file(path) for name, path in model_files(model_dir).items()}


class GraphModel(nn.Module):
    """The graph's forward: `MultiTaskModel` -> a flat tuple `(logits_<task> for each task in config order,
    embeddings)`, since an ONNX graph returns named tensors, not a `ModelOutput` of dicts."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        output = self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        return (*(output.logits[task] for task in self.model.config.tasks), output.embeddings)


def input_names(model):
    """The graph's inputs: token_type_ids only where the encoder takes them (BERT does, DistilBERT does not)."""
    return ["input_ids", "attention_mask"] + (["token_type_ids"] if model._backbone_takes_token_type_ids else [])


def output_names(config):
    return [f"logits_{task}" for task in config.tasks] + ["embeddings"]


def graph_path(model_dir, quantized=False):
    return Path(model_dir) / ONNX_DIR / GRAPH_FILES[quantized]


def first_line(error):
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def read_manifest(model_dir):
    """The export's record (onnx/export.json), or None when there is none (or it is unreadable)."""
    try:
        manifest = json.loads((Path(model_dir) / ONNX_DIR / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and manifest.get("version") == MANIFEST_VERSION else None


def has_onnx(model_dir, quantized=False):
    """Whether `model_dir` holds a complete export with the fp32 (or, quantized=True, the int8) graph. It does not hash
    the weights: `OnnxMultiTaskModel.from_pretrained` checks that the export is still current."""
    manifest = read_manifest(model_dir)
    name = GRAPH_FILES[quantized]
    return manifest is not None and name in manifest.get("graphs", {}) and graph_path(model_dir, quantized).is_file()


def redo(model_dir):
    """The end of every message about an export that cannot be used: the command that makes it again."""
    return f"re-run python export_onnx.py --model {model_dir}"


def check_fingerprint(model_dir, manifest):
    """Raise a ValueError naming the first config or weight file that differs from the one the graphs were made from
    (or saying that the export is another model's, when none of the files it was made from is here as it was)."""
    recorded, current = manifest.get("source") or {}, model_fingerprint(model_dir)
    if recorded and all(current.get(name) != digest for name, digest in recorded.items()):
        raise ValueError(
            f"{Path(model_dir) / ONNX_DIR} holds the ONNX export of another model (none of {sorted(recorded)} is the "
            f"file it was made from); {redo(model_dir)}"
        )
    for name in sorted(set(recorded) | set(current)):
        if recorded.get(name) != current.get(name):
            what = "is gone" if name not in current else "is new" if name not in recorded else "has changed"
            raise ValueError(
                f"{Path(model_dir) / name} {what} since the ONNX export in {Path(model_dir) / ONNX_DIR}; "
                f"{redo(model_dir)}"
            )


def read_graph(model_dir, manifest, quantized=False):
    """The bytes of the fp32 (or int8) graph, after checking them against the sha256 that export.json records: a graph
    altered in place, cut short, or copied from another export is refused with a one-line ValueError. The bytes are
    what ONNX Runtime then loads, so the file checked is the file served."""
    path = graph_path(model_dir, quantized)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ValueError(f"{path}: cannot be read ({e.strerror or first_line(e)})") from None
    recorded = manifest.get("graphs", {}).get(path.name, {}).get("sha256")
    if hashlib.sha256(data).hexdigest() != recorded:
        raise ValueError(
            f"{path} is not the graph that {MANIFEST} records (sha256 differs: altered, cut short or copied from "
            f"another export); {redo(model_dir)}"
        )
    return data


# ----- export -----------------------------------------------------------------------------------------------------


def check_model_dir(model_dir):
    """The config of the saved multi-task model in the local directory `model_dir`, or a one-line ValueError
    (PermissionError when the directory cannot be written) saying why it cannot be exported there."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():  # a file, a folder that is not there: said as every entry point says it
        check_model_source(str(model_dir))
        raise ValueError(f"{model_dir}: no such model directory")  # a Hub name: an export needs a local folder
    config = MultiTaskConfig.from_saved_model(str(model_dir))  # no config.json, another kind of model: one line
    if len(model_files(model_dir)) < 2:
        raise ValueError(f"{model_dir}: no weights (model.safetensors) next to config.json; not a saved model")
    if not any((model_dir / name).is_file() for name in TOKENIZER_FILES):
        raise ValueError(
            f"{model_dir}: no tokenizer ({' or '.join(TOKENIZER_FILES)}) saved with the model, and the graphs take "
            "token ids; save it there first (tokenizer.save_pretrained)"
        )
    target = model_dir / ONNX_DIR
    if target.exists() and not target.is_dir():
        raise ValueError(f"{target}: is a file; the export writes a folder there; move the file away first")
    folder = target if target.is_dir() else model_dir  # where the staging folder goes, and the files after it
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(f"{folder}: no write permission")
    return config


@contextmanager
def exclusive(model_dir):
    """Hold an exclusive lock on `model_dir` (`LOCK_FILE` in it, through `filelock`, on every OS; removed when the
    export ends) while exporting into it, so that a second export of the same model stops with a one-line error
    instead of mixing its files with the first's."""
    path = Path(model_dir) / LOCK_FILE
    lock = FileLock(path, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise ValueError(
            f"{model_dir}: another export_onnx.py is exporting this model right now; wait for it"
        ) from None
    except OSError as e:
        raise PermissionError(f"{model_dir}: cannot lock it for the export ({e.strerror or e})") from None
    try:
        yield
    finally:
        with suppress(OSError):  # removed while held (filelock's peers notice); Windows removes it on release
            path.unlink(missing_ok=True)
        lock.release()


@contextmanager
def interrupts_deferred():
    """Hold back Ctrl-C (SIGINT) for the few renames that put a finished export in place, so that an interrupt cannot
    leave half of them done; it is raised when they are. Outside the main thread (no signal handlers) a no-op."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if caught and callable(previous):
            previous(signal.SIGINT, None)  # the default handler raises KeyboardInterrupt
        elif caught and previous == signal.SIG_DFL:
            raise KeyboardInterrupt


def remove_leftovers(out_dir):
    """Remove the staging folders of exports killed before they could clean up (SIGKILL, a power cut); called with
    the model's lock held, so none of them is in use."""
    for path in out_dir.glob(STAGING_PREFIX + "*"):
        logger.info("removing %s, left by an export that did not finish", path)
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:  # a temporary file of an earlier version of this export
            path.unlink()


def runner_sources():
    """{file name: path} of the modules that serve the graphs: this module and the two it imports its classes from."""
    return {
        "onnx_multitask.py": Path(__file__),
        "modeling_multitask.py": Path(sys.modules[MultiTaskInference.__module__].__file__),
        "configuration_multitask.py": Path(sys.modules[MultiTaskConfig.__module__].__file__),
    }


def example_inputs(model, names):
    """Two rows of 8 tokens (fewer if the encoder allows fewer), the second padded: a real mask, and no axis of size 1
    (torch.export would specialise it to a constant)."""
    seq = min(8, getattr(model.config.backbone_config, "max_position_embeddings", 8) or 8)
    ids = torch.arange(2 * seq).reshape(2, seq) % model.config.backbone_config.vocab_size  # (2, seq)
    mask = torch.ones_like(ids)
    mask[1, seq // 2 :] = 0
    values = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
    return tuple(values[name] for name in names)


def export_fp32(model, path, opset=None):
    """Write `model` as one fp32 ONNX graph to `path`.

    Exporter: the torch.export-based one (`dynamo=True`, the default of torch >= 2.9). Both exporters produce a
    correct graph from this model with torch 2.13 and transformers 5 here (tests/test_onnx.py checks the dynamo one).
    The legacy TorchScript exporter is deprecated ("will be removed"), and it *traces*: every Python branch on a
    tensor value is frozen to the path the example took (it warns about three of them in transformers' masking and
    SDPA code), so a graph can silently be right for the example and wrong for other shapes. torch.export records
    shapes symbolically and raises when the code specialises on a dynamic axis, so a graph that exports is dynamic
    or the export fails. Batch and sequence axes are declared with `dynamic_shapes` (torch.export.Dim; the sequence
    axis is capped at the encoder's position limit). The price is the onnxscript dependency and a slower export
    (docs/results.md). `opset` defaults to DEFAULT_OPSET.
    """
    opset = opset or DEFAULT_OPSET
    names = input_names(model)
    graph = GraphModel(model).eval()
    batch = torch.export.Dim("batch")
    positions = getattr(model.config.backbone_config, "max_position_embeddings", None)
    sequence = torch.export.Dim("sequence", max=positions) if positions else torch.export.Dim("sequence")
    with warnings.catch_warnings():
        # notices torch gives on every export, about its own internals (the axis names are kept: tests check them)
        warnings.filterwarnings("ignore", message=r"# The axis name: .* will not be used")
        warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
        program = torch.onnx.export(
            graph,
            example_inputs(model, names),
            dynamo=True,
            input_names=names,
            output_names=output_names(model.config),
            dynamic_shapes=tuple({0: batch, 1: sequence} for _ in names),
            opset_version=opset,
            verbose=False,
        )
    # One self-contained file (weights inside): files over 2 GB would need ONNX external data, which this does not do.
    program.save(str(path), external_data=False)


def check_parity(model, path):
    """Run the fp32 graph in ONNX Runtime on the export's example and compare with PyTorch: a broken export fails here,
    not at serving time."""
    names = input_names(model)
    inputs = example_inputs(model, names)
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except ORT_LOAD_ERRORS as e:  # e.g. an --opset this runtime does not know
        raise ValueError(
            f"onnxruntime {ort.__version__} cannot load the exported graph: {first_line(e)}; not saved"
        ) from None
    got = session.run(output_names(model.config), {n: x.numpy() for n, x in zip(names, inputs, strict=True)})
    with torch.inference_mode():
        expected = GraphModel(model).eval()(*inputs)
    worst = max(float(np.abs(g - e.numpy()).max()) for g, e in zip(got, expected, strict=True))
    if worst > PARITY_TOLERANCE:
        raise RuntimeError(f"the exported graph differs from PyTorch by {worst:.2e} (> {PARITY_TOLERANCE}); not saved")
    return worst


# The int8 graph's method, recorded in export.json. Graphs of earlier exports say "quantize_dynamic: ...": their scores
# depend on the batch (see quantize_int8); loading one warns and says to re-export.
QUANTIZATION = (
    "per-token: int8 activations with one scale per token (symmetric), int8 weights per output channel, for every "
    "MatMul with a constant weight; embedding tables int8 (quantize_dynamic, Gather)"
)


def quantize_matmuls_per_token(model):
    """Rewrite, in place, every MatMul of `model` (an `onnx.ModelProto`) whose second input is a constant 2-D fp32
    weight into an int8 matrix product with one activation scale per token. Returns how many were rewritten.

    y = x @ W becomes y = (q(x) @ Wq) * s * w: Wq = round(W / w) with one scale per output column (w = max|W| / 127),
    and per token (one row of the last axis) s = max|x| / 127, q(x) = round(x / s) + 128 as uint8 with zero point 128
    (symmetric; uint8 because onnxruntime's uint8 x int8 product is the fast one on CPUs without VNNI). A token's
    quantisation reads only its own values, so its scores do not depend on the other texts of its batch nor on the
    padding. Opset 21 quantises in one QuantizeLinear node (blocked along the last axis); older opsets with
    Div/Round/Add/Cast, the same numbers.
    """
    graph = model.graph
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    weights = {i.name: i for i in graph.initializer}
    constants = {
        "pt_127": np.float32(127.0),
        "pt_128": np.float32(128.0),
        "pt_tiny": np.float32(1e-12),  # an all-zero token: scale 1e-12, q = 128, y = 0; never a division by zero
        "pt_zero": np.float32(0.0),
        "pt_zero_point": np.uint8(128),
        "pt_last_axis": np.array([-1], np.int64),
    }
    nodes, added, count = [], [], 0
    for node in graph.node:
        weight = weights.get(node.input[1]) if node.op_type == "MatMul" and len(node.input) == 2 else None
        if weight is None or len(weight.dims) != 2 or weight.data_type != onnx.TensorProto.FLOAT:
            nodes.append(node)
            continue
        w = onnx.numpy_helper.to_array(weight)
        w_scale = np.abs(w).max(axis=0) / 127.0
        w_scale[w_scale == 0] = 1.0
        p = f"pt{count}_"  # the names of this product's nodes and tensors
        count += 1
        added += [
            onnx.numpy_helper.from_array(np.clip(np.round(w / w_scale), -127, 127).astype(np.int8), p + "w_int8"),
            onnx.numpy_helper.from_array(w_scale.astype(np.float32), p + "w_scale"),
        ]
        x, make = node.input[0], onnx.helper.make_node
        if opset >= 18:
            amax = make("ReduceMax", [p + "abs", "pt_last_axis"], [p + "amax"], keepdims=1)
        else:
            amax = make("ReduceMax", [p + "abs"], [p + "amax"], axes=[-1], keepdims=1)
        nodes += [make("Abs", [x], [p + "abs"]), amax, make("Div", [p + "amax", "pt_127"], [p + "s0"]),
                  make("Max", [p + "s0", "pt_tiny"], [p + "s"])]  # fmt: skip
        if opset >= 21:
            nodes += [
                make("Mul", [p + "s", "pt_zero"], [p + "z0"]),  # the zero point, shaped as the scale
                make("Add", [p + "z0", "pt_128"], [p + "z1"]),
                make("Cast", [p + "z1"], [p + "zero_point"], to=onnx.TensorProto.UINT8),
                make("QuantizeLinear", [x, p + "s", p + "zero_point"], [p + "q"], axis=-1, block_size=w.shape[0]),
            ]
        else:
            nodes += [
                make("Div", [x, p + "s"], [p + "xs"]),
                make("Round", [p + "xs"], [p + "r"]),
                make("Add", [p + "r", "pt_128"], [p + "r128"]),
                make("Cast", [p + "r128"], [p + "q"], to=onnx.TensorProto.UINT8),
            ]
        nodes += [
            make("MatMulInteger", [p + "q", p + "w_int8", "pt_zero_point"], [p + "acc"]),
            make("Cast", [p + "acc"], [p + "acc_float"], to=onnx.TensorProto.FLOAT),
            make("Mul", [p + "acc_float", p + "s"], [p + "y0"]),
            make("Mul", [p + "y0", p + "w_scale"], [node.output[0]]),
        ]
    if count:
        used = {name for n in nodes for name in n.input}
        kept = [i for i in graph.initializer if i.name in used]
        added += [onnx.numpy_helper.from_array(np.asarray(v), k) for k, v in constants.items()]
        del graph.initializer[:]
        graph.initializer.extend(kept + added)
        del graph.node[:]
        graph.node.extend(nodes)
    return count


def quantize_int8(fp32_path, int8_path):
    """The int8 graph of the fp32 graph at `fp32_path`, written to `int8_path`: every MatMul with a constant weight
    (the encoder's linear layers; the heads' last layer is a Gemm and stays fp32) as `quantize_matmuls_per_token`
    rewrites it, and the embedding tables int8 (onnxruntime's `quantize_dynamic` on Gather only: weights only, read per
    token). No calibration data.

    Why per token: onnxruntime's dynamic quantisation, used before, takes one activation scale over the whole padded
    batch, so a sentence's scores moved with its neighbours (up to 0.22 in probability, 2 of 128 labels flipped, on 64
    real sentences alone against batched); the same line could get another answer from predict.py, the server or a
    resumed run. One scale per token runs at 71% of the dynamic graph's speed at batch 32 and 87% at batch 1, and keeps
    dev accuracy within 0.23 points of PyTorch (docs/results.md).
    """

    # The quantiser advises (on the root logger) running its pre-processing first: its symbolic shape inference fails on
    # this graph, and with it skipped the result had the same accuracy; so the advice is dropped, not followed.
    def not_the_advice(record):
        return not record.getMessage().startswith("Please consider to run pre-processing")

    model = onnx.load(str(fp32_path))
    quantize_matmuls_per_token(model)
    logging.getLogger().addFilter(not_the_advice)
    try:
        # Only Gather: given its defaults, the quantiser takes opset 23's Attention for onnxruntime's own com.microsoft
        # Attention and writes a QAttention node that cannot load.
        quantize_dynamic(model, str(int8_path), weight_type=QuantType.QInt8, per_channel=True,
                         op_types_to_quantize=["Gather"])  # fmt: skip
    finally:
        logging.getLogger().removeFilter(not_the_advice)


def export(model_dir, opset=None, quantize=True):
    r"""
    Export the saved multi-task model in `model_dir` into `model_dir/onnx/`, atomically.

    Writes the fp32 graph, the int8 graph, export.json and the code that serves them. Everything is written into a
    staging folder first (onnx/.export-<pid>/), removed whatever happens; once it is complete the old export.json is
    removed, the new files moved in and the new export.json moved in last, with Ctrl-C held back for those renames. So
    an interrupted or failed export (Ctrl-C, a full disk) leaves the previous export as it was, or no onnx/ folder when
    there was none.

    Args:
        model_dir (`str` or `os.PathLike`):
            A local directory saved by train.py: config.json, the weights and the tokenizer.
        opset (`int`, *optional*, defaults to `DEFAULT_OPSET` (23)):
            The ONNX opset; 20 for onnxruntime older than 1.23.
        quantize (`bool`, *optional*, defaults to `True`):
            Also write the int8 graph (`quantize_int8`).

    Returns:
        `list[Path]`: the paths written. A one-line `ValueError` for a directory that is not a saved multi-task model
        with its tokenizer and when another export of the same model is running; a `PermissionError` when the
        directory cannot be written.

    Example:

    ```python
    >>> from onnx_multitask import export

    >>> paths = export("outputs/multitask-minilm")  # doctest: +SKIP
    >>> [path.name for path in paths[:2]]  # doctest: +SKIP
    ['model.onnx', 'model_int8.onnx']
    ```
    """
    model_dir = Path(model_dir)
    config = check_model_dir(model_dir)
    with exclusive(model_dir):
        return _export_locked(model_dir, config, opset, quantize)


def _export_locked(model_dir, config, opset, quantize):
    out_dir = model_dir / ONNX_DIR
    created, committed = not out_dir.exists(), False
    staging = out_dir / f"{STAGING_PREFIX}{os.getpid()}"
    try:
        out_dir.mkdir(exist_ok=True)
        remove_leftovers(out_dir)
        staging.mkdir()
        source = model_fingerprint(model_dir)  # before loading: the record describes exactly the files that were read
        model = load_saved_model(str(model_dir), config=config).float().eval()  # damaged weights: a one-line ValueError
        written = {False: staging / GRAPH_FILES[False]}
        logger.info("exporting %s to ONNX", model_dir)
        export_fp32(model, written[False], opset)
        worst = check_parity(model, written[False])
        logger.info("fp32 graph matches PyTorch on the example to %.1e", worst)
        if quantize:
            written[True] = staging / GRAPH_FILES[True]
            quantize_int8(written[False], written[True])
        graph_opset = next(o.version for o in onnx.load(str(written[False]), load_external_data=False).opset_import
                           if o.domain in ("", "ai.onnx"))  # fmt: skip
        for name, path in runner_sources().items():
            shutil.copyfile(path, staging / name)
        manifest = {
            "version": MANIFEST_VERSION,
            "source": source,
            "graphs": {
                GRAPH_FILES[q]: {"precision": "int8" if q else "fp32", "sha256": sha256_file(p)}
                for q, p in written.items()
            },
            "inputs": input_names(model),
            "outputs": output_names(config),
            "dynamic_axes": {"0": "batch", "1": "sequence"},
            "opset": graph_opset,
            "exporter": "torch.onnx.export(dynamo=True)",
            "quantization": QUANTIZATION if quantize else None,
            "runner": sorted(runner_sources()),
            "versions": {
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "onnx": onnx.__version__,
                "onnxruntime": ort.__version__,
            },
        }
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")

        names = [GRAPH_FILES[q] for q in written] + sorted(runner_sources())
        with interrupts_deferred():
            (out_dir / MANIFEST).unlink(missing_ok=True)  # from here until the last rename: no export, never a mix
            if not quantize:
                graph_path(model_dir, True).unlink(missing_ok=True)  # no stale int8 graph next to a new fp32 one
            for name in names:
                os.replace(staging / name, out_dir / name)
            os.replace(staging / MANIFEST, out_dir / MANIFEST)
            committed = True  # a Ctrl-C held back until here is raised with the new export complete
    except BaseException:
        if created and not committed:
            shutil.rmtree(out_dir, ignore_errors=True)  # the folder this export made: nothing of it is complete
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return [out_dir / name for name in names] + [out_dir / MANIFEST]


# ----- serving ----------------------------------------------------------------------------------------------------


class OnnxMultiTaskModel(MultiTaskInference):
    r"""
    A saved multi-task model's ONNX graph in ONNX Runtime (CPU), with [`MultiTaskModel`]'s inference surface.

    `predict`, `encode`, `iter_batches` and `decode` are inherited from [`MultiTaskInference`], so texts are batched and
    labels decoded by the same code as in PyTorch. Build it with [`~OnnxMultiTaskModel.from_pretrained`].

    Args:
        config ([`MultiTaskConfig`]):
            The model's config: the task schema and the thresholds that decoding reads.
        session (`onnxruntime.InferenceSession`):
            The graph, with an output `logits_<task>` per task and `embeddings`.

    Example:

    ```python
    >>> from modeling_multitask import load_saved_tokenizer
    >>> from onnx_multitask import OnnxMultiTaskModel

    >>> model = OnnxMultiTaskModel.from_pretrained("outputs/multitask-minilm", quantized=True)  # doctest: +SKIP
    >>> tokenizer = load_saved_tokenizer("outputs/multitask-minilm", model.config)  # doctest: +SKIP
    >>> model.predict(["The striker scored twice."], tokenizer)  # doctest: +SKIP
    [{'topic': {'label': 'Entertainment/Sports', 'score': 0.9...}, 'sentiment': {'label': 'Positive', 'score': 0.8...}}]
    ```
    """

    def __init__(self, config, session):
        self.config = config
        self.session = session
        self.input_names = [i.name for i in session.get_inputs()]
        self.output_names = output_names(config)
        missing = sorted(set(self.output_names) - {o.name for o in session.get_outputs()})
        if missing:
            raise ValueError(f"the ONNX graph has no output(s) {missing} for the config's tasks {list(config.tasks)}")

    @classmethod
    def from_pretrained(cls, model_dir, quantized=False, threads=None, spinning=False):
        r"""
        Load the fp32 (or int8) graph that `export` wrote into `model_dir`, after checking that it is still current.

        Args:
            model_dir (`str` or `os.PathLike`):
                The saved model's directory (the one holding `onnx/`).
            quantized (`bool`, *optional*, defaults to `False`):
                Load the int8 graph (`onnx/model_int8.onnx`) instead of the fp32 one.
            threads (`int`, *optional*):
                ONNX Runtime's intra-op threads; by default ONNX Runtime's choice, one per core.
            spinning (`bool`, *optional*, defaults to `False`):
                Whether idle worker threads busy-wait for the next operator (ONNX Runtime's own default). Off: where
                cores are shared with other processes, a spinning thread takes the core that the thread it waits for
                needs (docs/design.md, "Serving on CPU").

        Returns:
            [`OnnxMultiTaskModel`]. A one-line `ValueError` when there is no export, when config.json or the weights
            changed since it was made, when the graph is not the one export.json records (its sha256: altered, cut
            short, another export's) and when ONNX Runtime cannot load it.

        Example:

        ```python
        >>> from onnx_multitask import OnnxMultiTaskModel

        >>> model = OnnxMultiTaskModel.from_pretrained("outputs/multitask-minilm", threads=2)  # doctest: +SKIP
        ```
        """
        manifest = read_manifest(model_dir)
        if manifest is None and (Path(model_dir) / MANIFEST).is_file():  # the onnx/ folder itself
            parent = Path(model_dir).parent
            raise ValueError(f"{model_dir}: is the {ONNX_DIR}/ folder of an export; give the model's folder ({parent})")
        if manifest is None or not has_onnx(model_dir, quantized):
            kind = "int8" if quantized else "fp32"
            raise ValueError(f"{model_dir}: no {kind} ONNX export; run python export_onnx.py --model {model_dir} first")
        check_fingerprint(model_dir, manifest)
        graph = read_graph(model_dir, manifest, quantized)
        if quantized and manifest.get("quantization") != QUANTIZATION:
            logger.warning(
                "%s: this int8 graph's scores depend on the other texts of a batch (%s); %s to make it batch-invariant",
                graph_path(model_dir, True), manifest.get("quantization"), redo(model_dir),
            )  # fmt: skip
        config = MultiTaskConfig.from_pretrained(model_dir)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads is not None:
            options.intra_op_num_threads = threads
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        try:  # from the bytes checked, not the file again: what is served is what was checked
            session = ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
        except ORT_LOAD_ERRORS as e:  # e.g. a graph of a newer opset than this runtime knows
            raise ValueError(
                f"{graph_path(model_dir, quantized)}: onnxruntime {ort.__version__} cannot load it "
                f"({first_line(e)}); {redo(model_dir)} (--opset 20 for onnxruntime older than 1.23)"
            ) from None
        return cls(config, session)

    def _run_batch(self, encoding):
        feed = {}
        for name in self.input_names:
            value = encoding.get(name)
            if value is None and name == "token_type_ids":  # a tokenizer that gives none: one segment, as in PyTorch
                value = torch.zeros_like(encoding["input_ids"])
            feed[name] = value.numpy().astype(np.int64, copy=False)
        *logits, embeddings = self.session.run(self.output_names, feed)
        logits = {task: torch.from_numpy(value) for task, value in zip(self.config.tasks, logits, strict=True)}
        return logits, torch.from_numpy(embeddings)  # task -> (batch, n_labels); (batch, hidden)


__all__ = ["OnnxMultiTaskModel", "export", "graph_path", "has_onnx", "read_manifest"]
