"""The real notebooks as teacher sources: every core exercise is checked in some notebook, the
solution markers pair up, the student edition written from them leaks no solution line, and
each student edition runs top to bottom (fast setting) with every exercise "not attempted".
(Running the teacher editions is test_notebooks.py's job.) About 3-4 minutes of CPU in all,
spread over the xdist workers."""

import os
import pathlib
import re

import jupytext
import pytest

from mrcnn_jax.course import CHECKS, grade, student_edition

ROOT = pathlib.Path(__file__).resolve().parent.parent
TWINS = sorted((ROOT / "notebooks").glob("[0-9][0-9]*_*.py"))
BLOCK = re.compile(r"^[ \t]*# BEGIN SOLUTION\n.*?^[ \t]*# END SOLUTION\n", re.M | re.S)
WITH_SOLUTIONS = [t for t in TWINS if student_edition.BEGIN in t.read_text()]
GRADED_ON_REAL_NOTEBOOK = "01_boxes_iou_and_box_coding"


def test_every_core_exercise_is_checked_in_a_notebook():
    called = set()
    for twin in TWINS:
        called |= set(grade.expected_exercises(jupytext.read(twin)))
    assert called == set(CHECKS), f"exercises no notebook checks: {set(CHECKS) - called}"


@pytest.mark.parametrize("twin", WITH_SOLUTIONS, ids=lambda p: p.stem)
def test_student_edition_leaks_no_solution_line(twin, tmp_path):
    teacher = twin.read_text()
    py_path, ipynb_path = student_edition.write_student_edition(twin, tmp_path)
    student = py_path.read_text()
    blocks = teacher.count(student_edition.BEGIN)
    assert student.count(student_edition.STUB) == blocks > 0
    # found here with a regular expression, independently of student_edition's parser; a
    # solution line that also appears outside every solution block is not a secret
    blocks_text = BLOCK.findall(teacher)
    outside = {line.strip() for line in BLOCK.sub("", teacher).splitlines()}
    secret = {line.strip() for block in blocks_text for line in block.splitlines()[1:-1]}
    secret -= outside | {""}
    assert secret, "the solutions should hold lines of their own"
    notebook = jupytext.read(ipynb_path)
    ipynb_lines = {line.strip() for cell in notebook.cells for line in cell.source.splitlines()}
    student_lines = {line.strip() for line in student.splitlines()}
    assert not secret & student_lines
    assert not secret & ipynb_lines
    # each check call of the teacher source is still there for the student
    assert re.findall(r"\bcheck_\w+\(", teacher) == re.findall(r"\bcheck_\w+\(", student)


# 01 is graded as teacher, student and planted-mistake edition in test_course_grade.py
STUDENT_RUNS = [t for t in WITH_SOLUTIONS if t.stem != GRADED_ON_REAL_NOTEBOOK]


@pytest.fixture
def shared_jax_cache(tmp_path_factory, monkeypatch):
    """One persistent XLA compilation cache for the notebooks this test run executes (all xdist
    workers of the run share it), so a program compiled by one notebook, e.g. a train step of
    the same config and shapes, is loaded by the next instead of compiled again."""
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


@pytest.mark.parametrize("twin", STUDENT_RUNS, ids=lambda p: p.stem)
def test_student_edition_runs_with_every_exercise_not_attempted(twin, tmp_path, shared_jax_cache):
    """Top to bottom in the fast setting (the grader's default): every check the notebook calls
    reports 'not attempted' and no cell fails, so no later cell needs an exercise's result."""
    ipynb = student_edition.write_student_edition(twin, tmp_path / "student")[1]
    # run in notebooks/, as the teacher edition runs, in case a notebook reads files beside it
    report = grade.grade_notebook(ipynb, workdir=twin.parent)
    statuses = {e["exercise"]: e["status"] for e in report["exercises"]}
    assert statuses and set(statuses.values()) == {"not attempted"}, statuses
    assert report["error"] is None, report["error"]
