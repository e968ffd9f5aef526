"""Grade submitted notebooks: run each one and report every course exercise it checks.

    python -m mrcnn_jax.course.grade SUBMISSION.ipynb [MORE.ipynb ...] [--json grades.json]

How a notebook exposes its results: every ``mrcnn_jax.course.check_<exercise>(fn)`` call
records its outcome (``core.record``) as one JSON line in the file named by the environment
variable ``MRCNN_COURSE_RESULTS``. This command sets that variable to a fresh file, runs the
notebook top to bottom with nbclient (kernel ``python3``; a cell that fails does not stop the
run, so one wrong exercise does not hide the others), and reads the lines back. The exercises a
notebook *should* report are its calls of checks imported from ``mrcnn_jax.course`` (``from
mrcnn_jax.course import check_x`` then ``check_x(...)``, or ``course.check_x(...)``; a
notebook's own function that happens to share a check's name does not count); one that never
reported (its cell did not run to the check, or was deleted) is ``not run``.

Statuses: ``correct``, ``wrong`` (with the check's first failure), ``not attempted`` (the
function still raises ``NotImplementedError``), ``not run``. The score of a notebook is the
number of correct exercises over the number it should report.

The fast setting (``MRCNN_JAX_FAST=1``) is on unless ``--full`` is given. A submission's code
runs with the grader's rights: run untrusted submissions in a container or a throwaway VM.
"""

import argparse
import ast
import json
import os
import pathlib
import re
import sys
import tempfile

from mrcnn_jax.course.core import CORRECT, NOT_ATTEMPTED, RESULTS_ENV, WRONG

NOT_RUN = "not run"
_SHELL = re.compile(r"^\s*(!|%%).*$", re.M)  # shell lines and cell magics: dropped
_LINE_MAGIC = re.compile(r"^(\s*)%\w+\s*", re.M)  # `%time f(x)` is read as `f(x)`


def _course_calls(tree, imported):
    """Course check names called in one cell, in source order; ``imported`` (local name ->
    exercise) grows with the cell's ``from mrcnn_jax.course import check_*``."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "mrcnn_jax.course":
            for alias in node.names:
                if alias.name.startswith("check_"):
                    imported[alias.asname or alias.name] = alias.name[len("check_"):]
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Name) and func.id in imported:
            found.append((node.lineno, node.col_offset, imported[func.id]))
        elif isinstance(func, ast.Attribute) and func.attr.startswith("check_") and (
                ast.unparse(func.value).endswith("course")):
            found.append((node.lineno, node.col_offset, func.attr[len("check_"):]))
    return [name for _, _, name in sorted(found)]


def expected_exercises(notebook):
    """Exercises checked by the notebook's code cells with checks imported from
    ``mrcnn_jax.course``, in order of first appearance."""
    from mrcnn_jax.course import CHECKS

    names, imported = [], {}
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        try:
            tree = ast.parse(_LINE_MAGIC.sub(r"\1", _SHELL.sub("", cell.source)))
        except SyntaxError:  # a cell the grader cannot read still runs; it just adds no names
            continue
        for name in _course_calls(tree, imported):
            if name in CHECKS and name not in names:
                names.append(name)
    return names


def _first_error(notebook):
    for index, cell in enumerate(notebook.cells):
        for output in cell.get("outputs", []) if cell.cell_type == "code" else []:
            if output.get("output_type") == "error":
                return f"cell {index}: {output.get('ename')}: {output.get('evalue', '')}"
    return None


def run_notebook(path, timeout=600, fast=True, kernel_name="python3", workdir=None):
    """Execute the notebook at ``path`` (in ``workdir``, by default its own folder) and return
    its recorded results: ``(records, executed_notebook)``, records in the order written."""
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(str(path), as_version=4)
    with tempfile.TemporaryDirectory() as tmp:
        results_file = pathlib.Path(tmp) / "results.jsonl"
        results_file.touch()
        overrides = {RESULTS_ENV: str(results_file), "MRCNN_JAX_FAST": "1" if fast else "0",
                     "MPLBACKEND": "Agg"}
        previous = {name: os.environ.get(name) for name in overrides}
        os.environ.update(overrides)  # the kernel inherits this process's environment
        try:
            client = NotebookClient(notebook, timeout=timeout, kernel_name=kernel_name,
                                    allow_errors=True,
                                    resources={"metadata": {"path": str(workdir or path.parent)}})
            client.execute()
        finally:
            for name, value in previous.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
        lines = results_file.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()], notebook


def grade_notebook(path, timeout=600, fast=True, kernel_name="python3", workdir=None):
    """Grade one notebook: a dict with ``notebook``, ``exercises`` (list of ``exercise``,
    ``status``, ``message``), ``correct``, ``total``, ``score`` and ``error`` (the first cell
    error, or None)."""
    import nbformat

    path = pathlib.Path(path)
    expected = expected_exercises(nbformat.read(str(path), as_version=4))
    records, executed = run_notebook(path, timeout, fast, kernel_name, workdir)
    latest = {}
    for item in records:  # the last call of a check wins (a student may re-run it)
        latest[item["exercise"]] = item
    names = expected + [name for name in latest if name not in expected]
    exercises = []
    for name in names:
        item = latest.get(name, {"status": NOT_RUN, "message": ""})
        exercises.append({"exercise": name, "status": item["status"],
                          "message": item.get("message", "")})
    correct = sum(e["status"] == CORRECT for e in exercises)
    return {"notebook": str(path), "exercises": exercises, "correct": correct,
            "total": len(exercises), "score": correct / len(exercises) if exercises else 0.0,
            "error": _first_error(executed)}


def _short(message, width=110):
    """The hint (if any) first, then the failing case, cut to ``width`` characters."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    hint = next((line for line in lines if line.startswith("hint:")), None)
    text = lines[0] if lines else ""
    if hint:
        text = f"{hint} -- {text}"
    return text if len(text) <= width else text[:width - 3] + "..."


def format_table(report):
    """The human-readable table of one notebook's grades."""
    rows = [(e["exercise"], e["status"], _short(e["message"]) if e["status"] == WRONG else "")
            for e in report["exercises"]]
    width = max([len("exercise")] + [len(r[0]) for r in rows])
    status_width = max(len(s) for s in (CORRECT, WRONG, NOT_ATTEMPTED, NOT_RUN))
    out = [report["notebook"], f"  {'exercise'.ljust(width)}  {'status'.ljust(status_width)}  "
           f"first failure"]
    for name, status, detail in rows:
        out.append(f"  {name.ljust(width)}  {status.ljust(status_width)}  {detail}".rstrip())
    out.append(f"  score: {report['correct']} / {report['total']} correct")
    if report["error"]:
        out.append(f"  first error in the notebook: {_short(report['error'], 200)}")
    return "\n".join(out)


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m mrcnn_jax.course.grade",
        description="Run submitted notebooks and report each course exercise: correct, wrong "
                    "(with the first failure), not attempted or not run.")
    parser.add_argument("notebooks", nargs="+", type=pathlib.Path, help="submitted .ipynb files")
    parser.add_argument("--json", type=pathlib.Path, help="also write the grades as JSON here")
    parser.add_argument("--timeout", type=int, default=600, help="seconds per cell (600)")
    parser.add_argument("--full", action="store_true",
                        help="run in the full setting (default: MRCNN_JAX_FAST=1)")
    parser.add_argument("--kernel", default="python3", help="Jupyter kernel name (python3)")
    args = parser.parse_args(argv)
    try:
        import nbclient  # noqa: F401
        import nbformat  # noqa: F401
    except ImportError as error:
        parser.error(f"{error.name} is missing: pip install nbclient nbformat ipykernel "
                     "(all in requirements.txt)")
    reports = []
    for path in args.notebooks:
        if not path.is_file():
            parser.error(f"no such notebook: {path}")
        report = grade_notebook(path, args.timeout, not args.full, args.kernel)
        reports.append(report)
        print(format_table(report))
    if args.json:
        args.json.write_text(json.dumps({"notebooks": reports}, indent=2) + "\n",
                             encoding="utf-8")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
