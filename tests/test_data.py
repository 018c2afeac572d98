"""Sanity checks for the bundled training data in ``data/``.

Uses only the standard library (plus pytest) so it can run before any model
dependencies are installed.
"""

import json
import re
from collections import Counter
from itertools import combinations
from pathlib import Path

import pytest

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
SPLITS = ("train", "validation", "test")
TOPICS = ["Finance/Tech", "Health/Lifestyle", "Entertainment/Sports"]
SENTIMENTS = ["Negative", "Positive"]
EXPECTED_KEYS = {"text", "topic", "sentiment"}
MIN_TOTAL = 600


def normalise(text):
    """Lower-case and collapse every run of non-alphanumerics to one space."""
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).strip()


def load_split(split):
    path = DATA_DIR / f"{split}.jsonl"
    assert path.is_file(), f"missing data file: {path}"
    rows = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            where = f"{path.name}:{lineno}"
            assert line.strip(), f"{where}: blank line"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                error = f"{where}: invalid JSON ({exc})"
            else:
                error = None
            if error:
                pytest.fail(error)
            assert isinstance(obj, dict), f"{where}: expected a JSON object, got {type(obj).__name__}"
            rows.append((where, obj))
    assert rows, f"{path.name}: file is empty"
    return rows


@pytest.fixture(scope="module")
def splits():
    return {split: load_split(split) for split in SPLITS}


@pytest.mark.parametrize("split", SPLITS)
def test_rows_are_well_formed(splits, split):
    for where, obj in splits[split]:
        assert set(obj) == EXPECTED_KEYS, f"{where}: keys {sorted(obj)} != {sorted(EXPECTED_KEYS)}"
        text = obj["text"]
        assert isinstance(text, str), f"{where}: text is not a string"
        assert text.strip(), f"{where}: text is empty"
        assert text == text.strip(), f"{where}: text has leading/trailing whitespace"
        assert obj["topic"] in TOPICS, f"{where}: invalid topic {obj['topic']!r}"
        assert obj["sentiment"] in SENTIMENTS, f"{where}: invalid sentiment {obj['sentiment']!r}"


@pytest.mark.parametrize("split", SPLITS)
def test_no_duplicates_within_split(splits, split):
    seen = {}
    for where, obj in splits[split]:
        key = normalise(obj["text"])
        assert key not in seen, f"{where}: duplicate of {seen[key]}"
        seen[key] = where


def test_splits_are_disjoint(splits):
    keys = {split: {normalise(obj["text"]): where for where, obj in rows} for split, rows in splits.items()}
    for a, b in combinations(SPLITS, 2):
        overlap = keys[a].keys() & keys[b].keys()
        examples = [f"{keys[a][k]} == {keys[b][k]}" for k in sorted(overlap)[:5]]
        assert not overlap, f"{a} and {b} share {len(overlap)} texts, e.g. {examples}"


@pytest.mark.parametrize("split", SPLITS)
def test_split_is_balanced(splits, split):
    counts = Counter((obj["topic"], obj["sentiment"]) for _, obj in splits[split])
    cells = [(t, s) for t in TOPICS for s in SENTIMENTS]
    per_cell = {cell: counts.get(cell, 0) for cell in cells}
    assert len(set(per_cell.values())) == 1, f"{split}: unbalanced cells {per_cell}"
    assert all(n > 0 for n in per_cell.values()), f"{split}: empty cell in {per_cell}"


def test_total_size(splits):
    total = sum(len(rows) for rows in splits.values())
    assert total >= MIN_TOTAL, f"only {total} examples, expected at least {MIN_TOTAL}"
