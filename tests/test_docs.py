"""The runnable examples that the docs quote."""

import ast
import os
import subprocess
import sys

from helpers import REPO


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
