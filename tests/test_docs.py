"""The runnable examples that the docs quote."""

import ast
import os
import re
import subprocess
import sys

import pytest
from helpers import REPO


@pytest.mark.slow  # the bundled encoder, in a real command
def test_similarity_example_ranks_the_paraphrase_first_with_mean_pooling():
    result = subprocess.run(
        [sys.executable, "-m", "docs.similarity"],  # as docs/design.md runs it, from the repository root
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    matrices = {line.split(" ", 1)[0]: ast.literal_eval(line.split(" ", 1)[1]) for line in result.stdout.splitlines()}
    assert set(matrices) == {"mean", "cls", "max"}
    for sim in matrices.values():
        assert all(abs(sim[i][i] - 1.0) < 1e-2 for i in range(4))
    mean = matrices["mean"]
    # sentences 0 and 1 are paraphrases; every other pair is about a different topic
    assert mean[0][1] > max(mean[0][2], mean[0][3], mean[1][2], mean[1][3], mean[2][3]) + 0.3


# --- links: every relative link of README.md and docs/*.md points at a file, and every #anchor at a heading ---

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^\s*(```|~~~)")
README_LIMIT = 15_000  # bytes: the front page stays a front page (issue 28)


def doc_files():
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def prose_lines(path):
    """The lines of a Markdown file outside fenced code blocks."""
    inside = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line):
            inside = not inside
            continue
        if not inside:
            yield line


def slug(heading):
    """GitHub's anchor for a heading: lower-case, punctuation dropped (but '-' and '_'), spaces to '-'."""
    text = re.sub(r"`([^`]*)`", r"\1", heading.strip())
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link in a heading counts by its text
    text = re.sub(r"[^\w\- ]", "", text.lower())
    return text.replace(" ", "-")


def anchors(path):
    """Every heading anchor of a Markdown file, with GitHub's -1, -2 ... for repeated headings."""
    seen, result = {}, set()
    for line in prose_lines(path):
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if match:
            base = slug(match.group(1))
            n = seen.get(base, 0)
            seen[base] = n + 1
            result.add(base if n == 0 else f"{base}-{n}")
    return result


def broken_links(path):
    """'FILE: target (why)' for each relative link of a Markdown file whose file or anchor does not exist."""
    problems = []
    for line in prose_lines(path):
        line = re.sub(r"``[^`]*``|`[^`]*`", "", line)  # a link written inside inline code is not a link
        for target in LINK.findall(line):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):  # https:, mailto: ...
                continue
            file_part, _, anchor = target.partition("#")
            dest = (path.parent / file_part).resolve() if file_part else path
            if not dest.exists():
                problems.append(f"{path.name}: {target} (no file {file_part})")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                problems.append(f"{path.name}: {target} (no heading #{anchor} in {dest.name})")
    return problems


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: p.name)
def test_every_relative_link_and_anchor_exists(path):
    assert broken_links(path) == []


def test_link_check_reports_a_missing_file_and_a_missing_anchor(tmp_path):
    (tmp_path / "other.md").write_text(
        "# Some Title: `code`, (parens) & more\n\n## Same\n\n## Same\n", encoding="utf-8"
    )
    page = tmp_path / "page.md"
    page.write_text(
        "# Here\n\n[ok](other.md#some-title-code-parens--more) [ok](other.md#same-1) [ok](#here) "
        "[ok](https://example.com/x#y)\n\n```\n[not a link](nowhere.md)\n```\n\n"
        "[bad](missing.md) [bad](other.md#no-such-heading) [bad](#nowhere)\n",
        encoding="utf-8",
    )
    assert broken_links(page) == [
        "page.md: missing.md (no file missing.md)",
        "page.md: other.md#no-such-heading (no heading #no-such-heading in other.md)",
        "page.md: #nowhere (no heading #nowhere in page.md)",
    ]


def test_readme_is_a_front_page_not_a_report():
    assert (REPO / "README.md").stat().st_size <= README_LIMIT


def test_every_robustness_method_has_a_row_in_the_results_methods_table():
    """docs/results.md's methods table explains each method the robustness benchmark can run. A method added without
    its row fails here, and so does an unmarked row for a method that is gone (a removed method's row stays, marked
    † with the commit that last had it)."""
    from benchmarks.robustness import OPTIONS

    text = (REPO / "docs" / "results.md").read_text(encoding="utf-8")
    section = text.split("### Methods compared", 1)[1]
    table = [line for line in section.split("\n\n") if line.startswith("| method |")][0].splitlines()
    names = [name.strip() for row in table[2:] for name in row.split("|")[1].split(",")]
    kept = {name for name in names if not name.endswith("†")}
    removed = {name.rstrip("† ") for name in names if name.endswith("†")}
    assert set(OPTIONS) <= kept | removed, sorted(set(OPTIONS) - kept - removed)
    assert kept <= set(OPTIONS), sorted(kept - set(OPTIONS))
    assert "removed; last in commit" in text
