"""The `ptb` text normalisation: what it splits, what it leaves alone, and that the saved tokenizer keeps it."""

import json
from types import SimpleNamespace

import pytest
from helpers import run_child, tiny_args
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
from transformers import AutoTokenizer, TokenizersBackend

import train
from text_normalization import add_text_normalization, has_text_normalization, ptb_normalizer

NATURAL_AND_PTB = [
    ("it doesn't work", "it does n't work"),
    ("Colbert can't hide it", "Colbert ca n't hide it"),
    ("I won't go, you don't, she isn’t", "I wo n't go, you do n't, she is n't"),  # typographic apostrophe too
    ("IT DOESN'T", "IT DOES n't"),
    ("Cannot stop, cannot.", "Can not stop, can not."),
]
# Text already in the training data's form, and words that only look like a negation: left exactly as they are.
UNCHANGED = [
    "it does n't work , ca n't hide , can not stop",
    "how consumers can avoid hurting their credit score : dos and don'ts",
    "Google Officially Buys Music Curation Company Songza for $39 Million",
    "The acting is fantastic (really); she said 'so what' and left: \"meh\"",
    "canNOTation, uncannot, n't at the start, Cannotes",
]


@pytest.mark.parametrize("natural, ptb", NATURAL_AND_PTB)
def test_negations_are_split_as_the_training_data_splits_them(natural, ptb):
    assert ptb_normalizer().normalize_str(natural) == ptb


@pytest.mark.parametrize("text", UNCHANGED)
def test_text_already_in_that_form_and_lookalikes_are_left_alone(text):
    assert ptb_normalizer().normalize_str(text) == text


def test_bundled_tokenizer_gives_natural_text_the_ids_of_ptb_text(bundled_encoder_path, tmp_path):
    original = AutoTokenizer.from_pretrained(bundled_encoder_path)
    tokenizer = add_text_normalization(original, "ptb")
    assert isinstance(tokenizer, TokenizersBackend) and has_text_normalization(tokenizer)
    assert not has_text_normalization(original)  # the tokenizer passed in is not changed
    natural = [n for n, _ in NATURAL_AND_PTB]
    ptb = [p for _, p in NATURAL_AND_PTB]
    assert original(natural)["input_ids"] != original(ptb)["input_ids"]  # the problem: other pieces
    assert tokenizer(natural)["input_ids"] == original(ptb)["input_ids"]
    # everything else is the encoder's own tokenizer: ids, token types, mask, padding, truncation, special tokens
    texts = UNCHANGED + ["", "x " * 300]
    for kwargs in ({}, {"padding": True, "truncation": True, "max_length": 16}):
        assert dict(tokenizer(texts, **kwargs)) == dict(original(texts, **kwargs))
    assert tokenizer.model_input_names == original.model_input_names
    assert tokenizer.all_special_tokens == original.all_special_tokens

    tokenizer.save_pretrained(tmp_path)
    for remote in (False, True):
        reloaded = AutoTokenizer.from_pretrained(tmp_path, trust_remote_code=remote)
        assert has_text_normalization(reloaded)
        assert reloaded(natural)["input_ids"] == original(ptb)["input_ids"]
        assert dict(reloaded(UNCHANGED, padding=True)) == dict(original(UNCHANGED, padding=True))


def test_normalisation_is_added_once_and_none_changes_nothing(bundled_encoder_path, tmp_path):
    original = AutoTokenizer.from_pretrained(bundled_encoder_path)
    assert add_text_normalization(original, "none") is original
    once = add_text_normalization(original, "ptb")
    assert add_text_normalization(once, "ptb") is once  # continuing a saved model: it already has it
    once.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "tokenizer.json").read_text())["normalizer"]
    assert json.dumps(saved).count("can)not") == 1
    with pytest.raises(ValueError, match="one of ptb, none, got 'nfkc'"):
        add_text_normalization(original, "nfkc")


def test_tokenizer_without_a_normaliser_and_one_that_is_not_fast():
    backend = Tokenizer(models.WordLevel({"[UNK]": 0, "does": 1, "doesn't": 2, "n't": 3}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    assert backend.normalizer is None
    tokenizer = add_text_normalization(TokenizersBackend(tokenizer_object=backend, unk_token="[UNK]"), "ptb")
    assert tokenizer("doesn't")["input_ids"] == [1, 3]
    assert isinstance(tokenizer.backend_tokenizer.normalizer, normalizers.Sequence)
    with pytest.raises(ValueError, match="SimpleNamespace is not a fast tokenizer; use --text_normalization none"):
        add_text_normalization(SimpleNamespace(backend_tokenizer=None), "ptb")


def test_train_saves_the_normalising_tokenizer_with_ptb_and_the_encoders_by_default(trained, backbone_dir, tmp_path):
    out, _ = trained  # train.py's defaults: none
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert not has_text_normalization(tokenizer)
    assert tokenizer("the movie isn't fun")["input_ids"] != tokenizer("the movie is n't fun")["input_ids"]
    assert "does n't" not in (out / "README.md").read_text()
    ptb = tmp_path / "ptb"
    train.main(tiny_args(backbone_dir, ptb, "--max_steps", "1", "--text_normalization", "ptb"))
    assert json.loads((ptb / "run.json").read_text())["text_normalization"] == "ptb"
    assert "does n't" in (ptb / "README.md").read_text()
    stdout = run_child(
        f"""
        from transformers import AutoModel, AutoTokenizer
        tokenizer = AutoTokenizer.from_pretrained({str(ptb)!r}, trust_remote_code=True)
        model = AutoModel.from_pretrained({str(ptb)!r}, trust_remote_code=True)
        print(tokenizer("the movie isn't fun")["input_ids"] == tokenizer("the movie is n't fun")["input_ids"])
        print(model.predict(["the movie isn't fun"], tokenizer) == model.predict(["the movie is n't fun"], tokenizer))
        """,
        cwd=tmp_path,
    )
    assert stdout.split() == ["True", "True"]


def test_train_refuses_an_unknown_normalisation(backbone_dir, tmp_path):
    with pytest.raises(train.ArgumentError, match="--text_normalization must be one of ptb, none, got 'lower'"):
        train.main(tiny_args(backbone_dir, tmp_path / "out", "--text_normalization", "lower"))
    assert not (tmp_path / "out").exists()
