"""Crash and resume, determinism, interrupted saves, safe remote code, awkward inference input."""

import ast
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import REPO, tiny_args
from safetensors.torch import load_file
from transformers import AutoModel

import train
import trainer_multitask
import training_run
from configuration_multitask import MultiTaskConfig
from modeling_multitask import MultiTaskModel

LONG = ["--max_steps", "300", "--save_steps", "30", "--save_strategy", "steps", "--eval_strategy", "no",
        "--load_best_model_at_end", "false", "--save_total_limit", "3", "--logging_steps", "50",
        "--per_device_train_batch_size", "4"]  # fmt: skip


def weights(path):
    return load_file(Path(path) / "model.safetensors")


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


@pytest.mark.slow  # a real SIGKILL to a real run of 300 steps, then two more runs
def test_sigkill_mid_epoch_then_resume_equals_uninterrupted_run(backbone_dir, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    killed = tmp_path / "killed"
    cmd = [sys.executable, str(REPO / "train.py"), *tiny_args(backbone_dir, killed, *LONG)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (killed / "checkpoint-30" / "trainer_state.json").is_file():
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.time() < deadline, "no checkpoint within 120 s"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "model.safetensors").exists()  # it really died before the end (300 steps, 16 per epoch)

    resumed = subprocess.run(cmd + ["--resume_from_checkpoint", "last"], env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert re.search(r"resuming from .*checkpoint-\d+", resumed.stderr)

    train.main(tiny_args(backbone_dir, tmp_path / "uninterrupted", *LONG))
    assert_same_weights(weights(tmp_path / "uninterrupted"), weights(killed))


def test_resume_last_skips_a_checkpoint_cut_short(backbone_dir, tmp_path):
    out = tmp_path / "run"
    (out / "checkpoint-5").mkdir(parents=True)
    (out / "checkpoint-5" / "trainer_state.json").write_text("{}")
    (out / "checkpoint-9").mkdir()  # a kill while writing: no trainer_state.json
    assert trainer_multitask.last_complete_checkpoint(out) == str(out / "checkpoint-5")
    assert trainer_multitask.last_complete_checkpoint(tmp_path) is None


@pytest.mark.slow  # two runs of 12 steps (the fast tier's check of determinism: test_train's resume test)
def test_same_seed_same_weights_and_metrics(backbone_dir, tmp_path):
    runs = []
    for name in ("a", "b"):
        metrics = train.main(tiny_args(backbone_dir, tmp_path / name, "--max_steps", "12", "--save_strategy", "no",
                                       "--load_best_model_at_end", "false", "--eval_strategy", "no"))  # fmt: skip
        runs.append({k: v for k, v in metrics.items() if "runtime" not in k and "per_second" not in k})
    assert runs[0] == runs[1]
    assert_same_weights(weights(tmp_path / "a"), weights(tmp_path / "b"))


def test_kill_during_final_save_never_leaves_a_loadable_half_model(backbone_dir, tmp_path, monkeypatch):
    out = tmp_path / "run"
    args = tiny_args(backbone_dir, out, "--max_steps", "2", "--save_strategy", "steps", "--save_steps", "2",
                     "--eval_strategy", "no", "--load_best_model_at_end", "false", "--keep_checkpoints")  # fmt: skip
    train.main(args)
    assert (out / "config.json").is_file()  # a complete earlier model is in place

    real_replace, moved = os.replace, []

    def dying_replace(src, dst):
        if Path(dst).parent != out:  # writes inside the temporary directory (e.g. config.json's pipeline entry)
            return real_replace(src, dst)
        if len(moved) == 3:
            raise KeyboardInterrupt("killed during the save")
        moved.append(Path(dst).name)
        real_replace(src, dst)

    monkeypatch.setattr(training_run.os, "replace", dying_replace)
    with pytest.raises(training_run.Interrupted):  # the run saved again over its model, from its last checkpoint
        train.main([*args, "--resume_from_checkpoint", str(out / "checkpoint-2")])
    assert "config.json" not in moved and not (out / "config.json").exists()
    with pytest.raises((OSError, ValueError)):  # what users call: no config.json, nothing to load
        AutoModel.from_pretrained(out, trust_remote_code=True)


# What the files that travel with a model (and run under trust_remote_code) may reach beyond their arguments: the
# model's own computation (torch, transformers' model classes and loaders, safetensors' error), plain helpers, and
# two looks at the outside, both explicit here: whether the path they were given is a folder or a file (os.path on
# that path, to fail in one line instead of asking the Hub), and the Hub's offline flag (HF_HUB_OFFLINE, the user's
# word that nothing may come from the network). Nothing else: no open(), no environment, no process, no socket, no
# download, no exec. A new import or a new attribute of these modules fails the test until it is allowed here.
REMOTE_CODE_IMPORTS = {
    "copy": {"deepcopy"},
    "inspect": {"signature"},
    "logging": {"getLogger"},
    "re": {"compile"},
    "unicodedata": {"category"},
    "pickle": {"UnpicklingError"},  # caught (torch's weights-only loading), never called
    "os": {"fspath", "sep", "altsep", "path.isdir", "path.isfile", "path.exists", "path.join"},
    "huggingface_hub.constants": {"HF_HUB_OFFLINE"},
    "huggingface_hub.utils": {"HFValidationError", "validate_repo_id"},
    "contextlib": {"contextmanager"},
    "dataclasses": {"dataclass"},
    "safetensors": {"SafetensorError"},
    "torch": None,  # any attribute but those in REMOTE_CODE_TORCH_NEVER
    "torch.nn": None,
    "torch.nn.functional": None,
    "transformers": {
        "AutoConfig",
        "AutoModel",
        "AutoTokenizer",
        "DistilBertConfig",
        "MODEL_MAPPING",
        "PretrainedConfig",
        "PreTrainedModel",
        "initialization",
    },  # fmt: skip
    "transformers.initialization": None,
    "transformers.utils": {"ModelOutput"},
    "configuration_multitask": {"MultiTaskConfig"},
}
REMOTE_CODE_TORCH_NEVER = {"load", "save", "hub", "ops", "classes", "utils", "jit", "package", "distributed"}
REMOTE_CODE_BUILTINS_NEVER = {"open", "exec", "eval", "compile", "__import__", "input", "breakpoint", "globals", "vars"}


def remote_code_reaches(code):
    """What `code` reaches beyond REMOTE_CODE_IMPORTS: one line per import, attribute or builtin it may not use."""
    tree = ast.parse(code)
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    aliases, found = {}, []  # a local name -> the module it is, or (module, name) for `from module import name`
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                module = alias.name if alias.asname else alias.name.split(".")[0]  # `import os.path` binds os
                aliases[alias.asname or module] = module
                if module not in REMOTE_CODE_IMPORTS:
                    found.append(f"import {alias.name}")
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            for alias in node.names:
                allowed = REMOTE_CODE_IMPORTS.get(module, set())
                if f"{module}.{alias.name}" in REMOTE_CODE_IMPORTS:
                    aliases[alias.asname or alias.name] = f"{module}.{alias.name}"
                elif allowed is None or (allowed and alias.name in allowed):
                    aliases[alias.asname or alias.name] = (module, alias.name)
                else:
                    found.append(f"from {module} import {alias.name}")
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id in REMOTE_CODE_BUILTINS_NEVER and node.id not in aliases:
            found.append(f"{node.id}()")
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("getattr", "setattr"):
            if node.args and isinstance(node.args[0], ast.Name) and node.args[0].id in aliases:
                found.append(ast.unparse(node))  # a module's attribute by a name the checks here cannot see
        if not isinstance(node, ast.Attribute) or isinstance(parents.get(node), ast.Attribute):
            continue
        chain, root = [], node  # the longest dotted name: os.path.isdir in os.path.isdir(x)
        while isinstance(root, ast.Attribute):
            chain.insert(0, root.attr)
            root = root.value
        if not isinstance(root, ast.Name) or not isinstance(aliases.get(root.id), str):
            continue
        module = aliases[root.id]
        allowed = REMOTE_CODE_IMPORTS[module]
        dotted = ".".join(chain)
        if allowed is None:
            if module == "torch" and chain[0] in REMOTE_CODE_TORCH_NEVER:
                found.append(f"{module}.{dotted}")
        elif not any(dotted == a or dotted.startswith(f"{a}.") for a in allowed):
            found.append(f"{module}.{dotted}")
    return found


def test_remote_code_reaches_only_what_it_is_allowed():
    """The files that travel with a model and run under trust_remote_code touch nothing beyond their arguments, but
    for the looks at the outside that REMOTE_CODE_IMPORTS allows."""
    for name in ("configuration_multitask.py", "modeling_multitask.py"):
        assert remote_code_reaches((REPO / name).read_text()) == [], name


@pytest.mark.parametrize(
    "code, reached",
    [
        ("import os\nos.environ.get('HOME')", ["os.environ.get"]),
        ("import os\nos.getenv('HOME')", ["os.getenv"]),
        ("import os\nos.listdir('.')", ["os.listdir"]),
        ("import os.path\nos.path.expanduser('~')", ["os.path.expanduser"]),
        ("import os as o\no.system('ls')", ["os.system"]),
        ("from os import environ", ["from os import environ"]),
        ("import subprocess", ["import subprocess"]),
        ("import socket", ["import socket"]),
        ("from pathlib import Path", ["from pathlib import Path"]),
        ("from huggingface_hub import hf_hub_download", ["from huggingface_hub import hf_hub_download"]),
        ("from huggingface_hub import constants\nconstants.HF_HOME", ["huggingface_hub.constants.HF_HOME"]),
        ("from transformers.utils import cached_file", ["from transformers.utils import cached_file"]),
        ("import torch\ntorch.load('x')", ["torch.load"]),
        ("x = open('f').read()", ["open()"]),
        ("eval('1')", ["eval()"]),
        ("import os\ngetattr(os, 'environ')", ["getattr(os, 'environ')"]),
        ("import os\nos.path.isdir(p) and os.path.join(p, 'config.json')", []),
        ("from huggingface_hub import constants\nconstants.HF_HUB_OFFLINE", []),
        ("import torch\ntorch.nn.functional.normalize(x)", []),
    ],
)
def test_the_remote_code_check_sees_what_it_forbids(code, reached):
    assert remote_code_reaches(code) == reached


@pytest.fixture(scope="module")
def tiny_model(make_backbone_config):
    torch.manual_seed(0)
    return MultiTaskModel(MultiTaskConfig(backbone_config=make_backbone_config("bert"))).eval()


def test_awkward_inputs(tiny_model, tiny_tokenizer, caplog):
    texts = [
        "🙂🔥👍",
        "Всё было отлично",
        "これは素晴らしい映画です",
        "the film was great " * 5_000,
        "the film was great",
    ]
    with caplog.at_level(logging.WARNING):
        predictions = tiny_model.predict(texts, tiny_tokenizer)
    assert len(predictions) == len(texts)
    assert any("truncated to 64" in r.getMessage() for r in caplog.records)
    with pytest.raises(TypeError, match=r"texts\[2\] is int \(7\); every text must be a str"):
        tiny_model.predict(["a", "b", 7], tiny_tokenizer)
    with pytest.raises(TypeError, match=r"texts\[0\] is NoneType"):
        tiny_model.encode([None], tiny_tokenizer)


@pytest.mark.slow  # 10,000 texts (the few-text version: test_modeling's test_prediction_does_not_depend_on_batch)
def test_ten_thousand_texts_in_one_call_match_one_by_one(tiny_model, tiny_tokenizer):
    words = ["the", "film", "was", "great", "bank", "stock", "sleep", "game", "bad", "good"]
    texts = [" ".join(words[(i * 7 + j) % 10] for j in range(1 + i % 9)) for i in range(10_000)]
    many = tiny_model.predict(texts, tiny_tokenizer, batch_size=256)
    assert len(many) == 10_000
    for i in (0, 1, 4_999, 9_999):
        alone = tiny_model.predict([texts[i]], tiny_tokenizer)[0]
        for task in alone:
            assert alone[task]["label"] == many[i][task]["label"]
            assert abs(alone[task]["score"] - many[i][task]["score"]) < 1e-5


def test_json_results_are_plain(backbone_dir, tmp_path):
    """all_results.json holds only numbers (no tensors or NaN), so other tools can read it."""
    out = tmp_path / "run"
    train.main(
        tiny_args(backbone_dir, out, "--max_steps", "2", "--save_strategy", "no", "--load_best_model_at_end", "false")
    )
    results = json.loads((out / "all_results.json").read_text())
    assert results and all(isinstance(v, int | float) and v == v for v in results.values())
