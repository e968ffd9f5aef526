"""The real notebooks as teacher sources: every core exercise is checked in some notebook, the
solution markers pair up, and the student edition written from them leaks no solution line.
(Running the notebooks is test_notebooks.py's job; this file only reads them.)"""

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


@pytest.mark.skipif(not os.environ.get("MRCNN_COURSE_RUN_STUDENT"),
                    reason="runs whole notebooks (minutes each): set MRCNN_COURSE_RUN_STUDENT=1")
@pytest.mark.parametrize("twin", WITH_SOLUTIONS, ids=lambda p: p.stem)
def test_student_edition_runs_with_every_exercise_not_attempted(twin, tmp_path):
    ipynb = student_edition.write_student_edition(twin, tmp_path / "student")[1]
    # run in notebooks/, as the teacher edition runs, in case a notebook reads files beside it
    report = grade.grade_notebook(ipynb, workdir=twin.parent)
    statuses = {e["exercise"]: e["status"] for e in report["exercises"]}
    assert statuses and set(statuses.values()) == {"not attempted"}, statuses
    assert report["error"] is None, report["error"]
