"""The committed notebooks carry their pictures: read the .ipynb files, execute nothing.

A notebook whose drawing cells come out empty (run under a non-inline matplotlib backend, say)
fails its purpose on GitHub, nbviewer and a course page, even though it runs. This test fails when
a code cell draws but holds no image output, and when a notebook holds no picture at all.
"""

import pathlib
import re
import warnings

import nbformat
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]*_*.ipynb"))

# What makes a cell draw: an explicit show, or a new figure that the inline backend shows at the
# end of the cell (the project's `plotting.subplots` and matplotlib's own constructors).
DRAWS = re.compile(r"plt\.show\(\)|plotting\.subplots\(|plt\.subplots\(|plt\.figure\(")
IMAGE_TYPES = ("image/png", "image/jpeg", "image/svg+xml")


def has_image(cell):
    return any(kind in output.get("data", {}) for output in cell.get("outputs", [])
               for kind in IMAGE_TYPES)


def said_skipped(cell):
    """The printed reason when a cell skipped its drawing on purpose (an optional online section,
    say), else None."""
    for output in cell.get("outputs", []):
        if output.get("output_type") == "stream" and "skipped" in output.get("text", ""):
            return output["text"].strip()
    return None


def blank_drawing_cells(notebook):
    """Indices (among all cells) of code cells that draw and show no image, and did not print
    that they skipped on purpose."""
    return [i for i, cell in enumerate(notebook.cells)
            if cell.cell_type == "code" and DRAWS.search(cell.source) and not has_image(cell)
            and said_skipped(cell) is None]


def _notebook(*cells):
    return nbformat.v4.new_notebook(cells=list(cells))


def _png_output():
    return nbformat.v4.new_output("display_data", data={"image/png": "iVBORw0KGgo="})


def test_checker_flags_a_drawing_cell_without_a_picture():
    drawn = nbformat.v4.new_code_cell("plt.plot([1, 2]); plt.show()", outputs=[_png_output()])
    blank = nbformat.v4.new_code_cell("fig, ax = plotting.subplots(2)\nax[0].plot([1])")
    text = nbformat.v4.new_code_cell("print(1)")
    assert blank_drawing_cells(_notebook(drawn, blank, text)) == [1]
    assert blank_drawing_cells(_notebook(drawn, text)) == []


def test_notebooks_exist():
    assert NOTEBOOKS, "no notebooks found in notebooks/"


def test_checker_accepts_only_a_said_skip():
    skipped = nbformat.v4.new_code_cell("if ONLINE:\n    plt.figure()", outputs=[
        nbformat.v4.new_output("stream", name="stdout", text="offline: skipped (set X=1)\n")])
    silent = nbformat.v4.new_code_cell("if ONLINE:\n    plt.figure()", outputs=[
        nbformat.v4.new_output("stream", name="stdout", text="done\n")])
    assert blank_drawing_cells(_notebook(skipped, silent)) == [1]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_drawing_cell_has_its_picture(path):
    notebook = nbformat.read(path, 4)
    for i, cell in enumerate(notebook.cells):  # counted, visible skips: pytest's warning summary
        if cell.cell_type == "code" and DRAWS.search(cell.source) and not has_image(cell):
            reason = said_skipped(cell)
            if reason is not None:
                warnings.warn(f"{path.name} cell {i} drew nothing on purpose: {reason}",
                              stacklevel=1)
    blank = blank_drawing_cells(notebook)
    first_lines = [notebook.cells[i].source.splitlines()[0][:60] for i in blank]
    assert not blank, (
        f"{path.name}: {len(blank)} drawing cell(s) without an image output (cells {blank}, "
        f"starting {first_lines}); re-run it with `python tools/run_notebooks.py {path.stem}`, "
        "which forces inline figures")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_has_pictures(path):
    notebook = nbformat.read(path, 4)
    count = sum(has_image(cell) for cell in notebook.cells if cell.cell_type == "code")
    assert count > 0, f"{path.name} holds no picture at all"
