"""notebooks/walkthrough.ipynb: it is what notebooks/make_walkthrough.py builds, it is stored without outputs, and it
executes top to bottom (about 1-2 minutes on 2 CPU cores: it loads the bundled encoder and trains for 30 steps;
the slow tier, `pytest -m slow`)."""

import importlib.util
import re
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="nbformat is not installed (pip install -r requirements-dev.txt)")

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOK = NOTEBOOK_DIR / "walkthrough.ipynb"


def read_notebook():
    return nbformat.read(NOTEBOOK, as_version=4)


def cells(notebook):
    return [(cell.cell_type, cell.get("id"), cell.source) for cell in notebook.cells]


def test_notebook_matches_its_generator():
    spec = importlib.util.spec_from_file_location("make_walkthrough", NOTEBOOK_DIR / "make_walkthrough.py")
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    assert cells(read_notebook()) == cells(generator.build()), (
        "notebooks/walkthrough.ipynb differs from notebooks/make_walkthrough.py; edit the generator and run "
        "`python notebooks/make_walkthrough.py`"
    )


def test_notebook_is_stored_without_outputs():
    for cell in read_notebook().cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"cell {cell.get('id')!r} has outputs"


@pytest.mark.slow  # 1-2 minutes: a Jupyter kernel, the bundled encoder, 30 training steps
def test_notebook_executes(tmp_path):
    nbclient = pytest.importorskip("nbclient", reason="nbclient is not installed (pip install -r requirements-dev.txt)")
    notebook = read_notebook()
    client = nbclient.NotebookClient(
        notebook,
        timeout=300,  # per cell; the longest (train.main: 30 steps + evaluation) took 60-120 s on 2 shared CPU cores
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK_DIR)}},  # the kernel's cwd, as when opened in Jupyter
    )
    try:
        client.execute()  # raises CellExecutionError, with the cell's traceback, at the first failing cell
    finally:
        nbformat.write(notebook, tmp_path / "walkthrough.executed.ipynb")  # outputs kept here, to read after a failure

    # The first cell prints the kernel's interpreter: it must be this one (this virtual environment), not some other
    # Python that a globally registered "python3" kernel spec points to.
    first = next(cell for cell in notebook.cells if cell.cell_type == "code")
    text = "".join(output.get("text", "") for output in first.outputs if output.output_type == "stream")
    printed = dict(line.split(": ", 1) for line in text.splitlines() if ": " in line)
    assert printed.get("Python") == sys.executable, text
    assert printed.get("Prefix") == sys.prefix, text
    # execute() raised at any failing cell; what is left to check is that no check of the notebook was skipped: the
    # parity with sentence-transformers (a requirements-dev package) ran, and so did the training run and its results
    printed = "".join(
        output.get("text", "")
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
        if output.output_type == "stream"
    )
    assert "parity check skipped" not in printed
    assert re.search(r"max \|MultiTaskModel.encode - SentenceTransformer.encode\| = \d", printed), printed[-3000:]
    assert re.search(r"mean macro-F1: validation \d\.\d{3}, test \d\.\d{3}", printed), printed[-3000:]
