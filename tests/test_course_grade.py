"""Student editions and the grading command, on small fixture notebooks made here.

One teacher source with two exercises (solutions between the markers) gives: the teacher
notebook (graded all correct), its student edition (all not attempted, no solution line in it),
and a copy with one planted mistake (exactly that exercise wrong).
"""

import json
import os
import pathlib

import jupytext
import nbformat
import pytest

from mrcnn_jax.course import grade, student_edition

TEACHER = '''# %% [markdown]
# # Fixture notebook
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/mrcnn-jax/mrcnn_jax/blob/v0.2.0/notebooks/fixture.ipynb)

# %%
import jax.numpy as jnp
import numpy as np

from mrcnn_jax.course import check_average_precision, check_smooth_l1


# %% [markdown]
# **Exercise 1: smooth L1.**

# %%
def my_smooth_l1(x, beta):
    # BEGIN SOLUTION
    if beta == 0:
        return jnp.abs(x)
    return jnp.where(jnp.abs(x) < beta, 0.5 * x ** 2 / beta, jnp.abs(x) - 0.5 * beta)
    # END SOLUTION


check_smooth_l1(my_smooth_l1)


# %% [markdown]
# **Exercise 2: COCO's 101-point AP.**

# %%
def my_average_precision(recall, precision):
    # BEGIN SOLUTION
    interpolated = np.maximum.accumulate(np.asarray(precision)[::-1])[::-1]
    levels = np.linspace(0, 1, 101)
    index = np.searchsorted(recall, levels, side="left")
    reached = index < len(recall)
    return float(np.sum(interpolated[index[reached]]) / 101)
    # END SOLUTION


check_average_precision(my_average_precision)
'''

PLANTED = TEACHER.replace("0.5 * x ** 2 / beta", "0.5 * x ** 2")


def _write_notebook(text, path):
    notebook = jupytext.reads(text, fmt="py:percent")
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                       "language": "python"}
    nbformat.write(notebook, str(path))
    return path


def test_strip_solutions_replaces_blocks_and_keeps_the_rest():
    student = student_edition.strip_solutions(TEACHER)
    assert student.count(student_edition.STUB) == 2
    assert "    raise NotImplementedError  # your code here\n" in student
    assert "check_smooth_l1(my_smooth_l1)" in student
    assert "BEGIN SOLUTION" not in student and "END SOLUTION" not in student


@pytest.mark.parametrize("text,words", [
    ("# BEGIN SOLUTION\nx = 1\n", "never closed"),
    ("x = 1\n# END SOLUTION\n", "without a"),
    ("# BEGIN SOLUTION\n# BEGIN SOLUTION\n# END SOLUTION\n", "inside the block"),
])
def test_unbalanced_markers_are_errors(text, words):
    with pytest.raises(student_edition.MarkerError, match=words):
        student_edition.strip_solutions(text)


def test_student_edition_files_leak_no_solution_line(tmp_path):
    source = tmp_path / "teacher" / "fixture.py"
    source.parent.mkdir()
    source.write_text(TEACHER)
    out = tmp_path / "student"
    assert student_edition.main([str(source), "--out", str(out), "--badge-dir", "student"]) == 0
    secret = [line.strip() for line in student_edition.solution_lines(TEACHER) if line.strip()]
    assert len(secret) == 8
    py_text = (out / "fixture.py").read_text()
    notebook = nbformat.read(str(out / "fixture.ipynb"), as_version=4)
    ipynb_lines = [line.strip() for cell in notebook.cells for line in cell.source.splitlines()]
    for line in secret:
        assert line not in [x.strip() for x in py_text.splitlines()], line
        assert line not in ipynb_lines, line
    assert "blob/v0.2.0/student/fixture.ipynb" in py_text
    assert all(not cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code")
    # the .py and .ipynb editions agree
    assert [c.source for c in jupytext.reads(py_text, fmt="py:percent").cells] == [
        c.source for c in notebook.cells]


def test_grade_teacher_student_and_planted_mistake(tmp_path, capsys):
    teacher = _write_notebook(TEACHER, tmp_path / "teacher.ipynb")
    planted = _write_notebook(PLANTED, tmp_path / "planted.ipynb")
    student_dir = tmp_path / "student"
    student = student_edition.write_student_edition(teacher, student_dir)[1]
    report_path = tmp_path / "grades.json"
    assert grade.main([str(teacher), str(student), str(planted), "--json",
                       str(report_path)]) == 0
    table = capsys.readouterr().out
    reports = json.loads(report_path.read_text())["notebooks"]
    statuses = [{e["exercise"]: e["status"] for e in r["exercises"]} for r in reports]
    assert statuses[0] == {"smooth_l1": "correct", "average_precision": "correct"}
    assert statuses[1] == {"smooth_l1": "not attempted", "average_precision": "not attempted"}
    assert statuses[2] == {"smooth_l1": "wrong", "average_precision": "correct"}
    assert [r["correct"] for r in reports] == [2, 0, 1]
    wrong = next(e for e in reports[2]["exercises"] if e["status"] == "wrong")
    assert "divide by beta" in wrong["message"] and wrong["message"].startswith("case '")
    assert "score: 1 / 2 correct" in table and "divide by beta" in table


def test_check_that_never_reports_is_not_run(tmp_path, monkeypatch):
    notebook = _write_notebook(TEACHER, tmp_path / "nb.ipynb")
    executed = nbformat.read(str(notebook), as_version=4)
    records = [{"exercise": "smooth_l1", "status": "not attempted", "message": ""},
               {"exercise": "smooth_l1", "status": "correct", "message": ""}]
    monkeypatch.setattr(grade, "run_notebook", lambda *a, **k: (records, executed))
    report = grade.grade_notebook(notebook)
    assert [(e["exercise"], e["status"]) for e in report["exercises"]] == [
        ("smooth_l1", "correct"), ("average_precision", "not run")]
    assert report["score"] == 0.5
    assert "not run" in grade.format_table(report)


def test_expected_exercises_are_calls_of_imported_course_checks():
    text = """# %%
from mrcnn_jax.course import check_box_iou as iou_check, check_nms
import mrcnn_jax.course as course

# %%
def check_smooth_l1(fn):  # the notebook's own check, not the course's
    pass


check_smooth_l1(None)
course.check_map_levels(None)
iou_check(None)
%time check_nms(None)
"""
    notebook = jupytext.reads(text, fmt="py:percent")
    assert grade.expected_exercises(notebook) == ["map_levels", "box_iou", "nms"]


NOTEBOOKS = pathlib.Path(__file__).resolve().parent.parent / "notebooks"
REAL = NOTEBOOKS / "01_boxes_iou_and_box_coding.py"  # three exercises, the cheapest to run
# decode without the clamp; decode is the cell's last check, so nothing after it is skipped
PLANT = ("    w = jnp.exp(jnp.minimum(deltas[..., 2] / ww, clip)) * aw\n"
         "    h = jnp.exp(jnp.minimum(deltas[..., 3] / wh, clip)) * ah\n",
         "    w = jnp.exp(deltas[..., 2] / ww) * aw\n    h = jnp.exp(deltas[..., 3] / wh) * ah\n")


@pytest.fixture
def shared_jax_cache(tmp_path_factory, monkeypatch):
    """A persistent XLA compilation cache shared by this run's notebooks (see
    test_course_notebooks.py): the three editions of 01 compile the same programs."""
    base = tmp_path_factory.getbasetemp()
    folder = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "jax_cache"
    folder.mkdir(exist_ok=True)
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(folder))  # the kernel inherits it
    # every program, however quick to compile: 01's are many small ones (measured: the planted
    # edition after the teacher's 12.6 s of kernel CPU instead of 20 s; with JAX's 1 s default
    # threshold, no gain)
    monkeypatch.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    monkeypatch.setenv("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
    return folder


def test_grade_real_notebook_teacher_student_and_planted_mistake(tmp_path, shared_jax_cache):
    """The grading command's three promises on a real notebook (fast setting): the teacher
    edition all correct, its student edition all not attempted, one planted mistake exactly
    that exercise wrong (with its hint), the others still correct."""
    source = REAL.read_text()
    assert source.count(PLANT[0]) == 1, "the planted line is gone from 01: pick another"
    teacher = _write_notebook(source, tmp_path / "teacher.ipynb")
    planted = _write_notebook(source.replace(*PLANT), tmp_path / "planted.ipynb")
    student = student_edition.write_student_edition(REAL, tmp_path / "student")[1]
    reports = [grade.grade_notebook(path, workdir=NOTEBOOKS)
               for path in (teacher, student, planted)]
    statuses = [{e["exercise"]: e["status"] for e in r["exercises"]} for r in reports]
    names = ["box_iou", "encode_boxes", "decode_boxes"]
    assert statuses[0] == dict.fromkeys(names, "correct")
    assert statuses[1] == dict.fromkeys(names, "not attempted")
    assert statuses[2] == {"box_iou": "correct", "encode_boxes": "correct",
                           "decode_boxes": "wrong"}
    assert [r["error"] is None for r in reports] == [True, True, False]  # the failing check
    wrong = next(e for e in reports[2]["exercises"] if e["status"] == "wrong")
    assert "clamp dw and dh" in wrong["message"]
    assert "score: 2 / 3 correct" in grade.format_table(reports[2])
