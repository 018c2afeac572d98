"""Text normalisation carried by the tokenizer, so that training text and what users send reach the encoder alike.

The shared training data is Penn Treebank tokenised (SST-2's sentences, the HuffPost headlines): the negation of a
verb is its own word ("does n't", "ca n't", "can not"). People write "doesn't", "can't", "cannot", and a subword
tokenizer reads the two forms as different pieces: the bundled encoder's WordPiece reads "does n't" as
`does n ' t`, one negation piece after any verb, and "doesn't" as `doesn ' t`, a piece of its own for each verb. So
the negation a sentiment head learns from the training data is not the one in a user's sentence. `ptb` writes every
text the way the training data writes it: "doesn't" (or "doesn’t") becomes "does n't", "can't" "ca n't", "cannot"
"can not". It sits in the tokenizer's own normaliser (a `tokenizers` normaliser, saved in `tokenizer.json`), so
every text the tokenizer reads (training, evaluation, `predict`, the pipeline, the demo, the ONNX runner) gets it.
Text already in that form passes unchanged: on PTB-tokenised training data the model trains on the same ids as
without it. Other differences (casing, brackets, quotes, possessives) are left alone: the bundled encoder
lower-cases, and splits punctuation off words, so they reach it as the same pieces.
"""

import copy

from tokenizers import Regex, normalizers
from transformers import TokenizersBackend

TEXT_NORMALIZATIONS = ("ptb", "none")

# (regex, replacement), in order, case-insensitive. A negation joined to a letter ("doesn't", with a straight or a
# typographic apostrophe) is split off; "don'ts" (a noun) and a "n't" already apart stay as they are.
PTB_REPLACEMENTS = (
    (r"(?i)(?<=[a-z])n['’]t(?![a-z])", " n't"),
    (r"(?i)(?<=\bcan)not\b", " not"),
)


def ptb_normalizer():
    """The `ptb` normaliser on its own: `ptb_normalizer().normalize_str(text)` shows what the encoder will read."""
    return normalizers.Sequence([normalizers.Replace(Regex(pattern), to) for pattern, to in PTB_REPLACEMENTS])


def has_text_normalization(tokenizer, kind="ptb"):
    """Whether `tokenizer` already reads text the `kind` way (a model saved by train.py with it does): by what its
    normaliser does, not by how it is spelled."""
    if kind == "none":
        return True
    normalizer = getattr(getattr(tokenizer, "backend_tokenizer", None), "normalizer", None)
    return normalizer is not None and normalizer.normalize_str("doesn't cannot") == normalizer.normalize_str(
        "does n't can not"
    )


def add_text_normalization(tokenizer, kind):
    """`tokenizer` with `kind` (`ptb` or `none`) in front of its own normaliser: a `TokenizersBackend` over a copy of
    its `tokenizers` backend, which `save_pretrained` writes and `AutoTokenizer` reads back as it is (a class such as
    `BertTokenizer` rebuilds its normaliser from its settings when loaded). The ids of text that the normalisation
    leaves alone are unchanged. `none`, or a tokenizer that already has it (continuing a saved model), comes back as
    it is; `tokenizer` itself is never changed."""
    if kind not in TEXT_NORMALIZATIONS:
        raise ValueError(f"text normalisation must be one of {', '.join(TEXT_NORMALIZATIONS)}, got {kind!r}")
    if kind == "none" or has_text_normalization(tokenizer, kind):
        return tokenizer
    if getattr(tokenizer, "backend_tokenizer", None) is None:
        raise ValueError(
            f"text normalisation {kind!r} goes into a fast tokenizer's normaliser, and {type(tokenizer).__name__} is "
            "not a fast tokenizer; use --text_normalization none"
        )
    backend = copy.deepcopy(tokenizer.backend_tokenizer)
    own = backend.normalizer
    backend.normalizer = ptb_normalizer() if own is None else normalizers.Sequence([ptb_normalizer(), own])
    return TokenizersBackend(
        tokenizer_object=backend,
        name_or_path=tokenizer.name_or_path,
        model_input_names=list(tokenizer.model_input_names),
        model_max_length=tokenizer.model_max_length,
        padding_side=tokenizer.padding_side,
        truncation_side=tokenizer.truncation_side,
        **tokenizer.special_tokens_map,
    )
