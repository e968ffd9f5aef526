"""Every notebook runs top to bottom in its fast setting, and its .ipynb matches its .py twin."""

import pathlib
import sys

import jupytext
import nbformat
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
from run_notebooks import execute  # noqa: E402

NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]*_*.ipynb"))


def _code_cells(notebook):
    return [c.source.strip() for c in notebook.cells if c.cell_type == "code"]


def test_notebooks_exist():
    assert NOTEBOOKS, "no notebooks found in notebooks/"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_twin_in_sync(path):
    twin = path.with_suffix(".py")
    assert twin.exists(), f"{path.name} has no jupytext twin {twin.name}"
    assert _code_cells(jupytext.read(twin)) == _code_cells(nbformat.read(path, 4)), (
        f"{path.name} and {twin.name} differ: rebuild with python tools/run_notebooks.py "
        f"{path.stem}"
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_fast(path):
    notebook = nbformat.read(path, 4)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            cell.outputs = []
    execute(notebook, fast=True)
