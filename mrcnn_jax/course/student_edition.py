"""Write the student edition of teacher notebooks: every solution replaced by a stub.

    python -m mrcnn_jax.course.student_edition notebooks/01_*.py --out student/

Teacher sources (jupytext percent ``.py`` twins, or ``.ipynb``) mark each solution with
comment lines, the convention nbgrader and otter-grader share::

    def my_box_iou(boxes1, boxes2):
        # BEGIN SOLUTION
        ...
        # END SOLUTION

Everything from ``# BEGIN SOLUTION`` to ``# END SOLUTION`` (markers included) becomes one line
``raise NotImplementedError  # your code here`` at the marker's indentation, so the student's
check reports "not attempted" until the stub is replaced. For each source the edition is
written as ``OUT/NAME.py`` (jupytext percent) and ``OUT/NAME.ipynb`` (no outputs). Colab badges
pointing at ``.../notebooks/NAME.ipynb`` are pointed at ``.../<badge dir>/NAME.ipynb``
(``--badge-dir``, by default the output folder relative to the repository when it lies inside
it). Unbalanced or nested markers are an error naming the line.
"""

import argparse
import pathlib
import re
import sys

BEGIN, END = "# BEGIN SOLUTION", "# END SOLUTION"
STUB = "raise NotImplementedError  # your code here"
_BADGE = re.compile(r"(https://colab\.research\.google\.com/github/[^)\s]*?/)notebooks/"
                    r"([\w.-]+\.ipynb)")


class MarkerError(ValueError):
    """Solution markers that do not pair up."""


def strip_solutions(text, source="<text>"):
    """``text`` with each solution block replaced by the stub; raises MarkerError."""
    out, start = [], None
    for number, line in enumerate(text.splitlines(keepends=True), start=1):
        marker = line.strip()
        if marker == BEGIN:
            if start is not None:
                raise MarkerError(f"{source}:{number}: '{BEGIN}' inside the block opened on "
                                  f"line {start}")
            start = number
            indent = line[:len(line) - len(line.lstrip())]
            out.append(f"{indent}{STUB}\n")
        elif marker == END:
            if start is None:
                raise MarkerError(f"{source}:{number}: '{END}' without a '{BEGIN}'")
            start = None
        elif start is None:
            out.append(line)
    if start is not None:
        raise MarkerError(f"{source}:{start}: '{BEGIN}' is never closed by '{END}'")
    return "".join(out)


def solution_lines(text):
    """The lines inside solution blocks (markers excluded), for leak tests."""
    lines, inside = [], False
    for line in text.splitlines():
        if line.strip() == BEGIN:
            inside = True
        elif line.strip() == END:
            inside = False
        elif inside:
            lines.append(line)
    return lines


def point_badges(text, badge_dir):
    """Colab badge links to ``notebooks/NAME.ipynb`` -> ``<badge_dir>/NAME.ipynb``."""
    if not badge_dir:
        return text
    return _BADGE.sub(lambda m: f"{m.group(1)}{badge_dir.strip('/')}/{m.group(2)}", text)


def _read_text(path):
    """Teacher source as jupytext percent text (an .ipynb is converted)."""
    import jupytext

    if path.suffix == ".ipynb":
        return jupytext.writes(jupytext.read(path), fmt="py:percent")
    return path.read_text(encoding="utf-8")


def _default_badge_dir(out):
    root = pathlib.Path(__file__).resolve().parents[2]
    try:
        return out.resolve().relative_to(root).as_posix()
    except ValueError:
        return None


def write_student_edition(source, out, badge_dir=None):
    """Write ``out/NAME.py`` and ``out/NAME.ipynb`` for one teacher source; returns both
    paths."""
    import jupytext

    source, out = pathlib.Path(source), pathlib.Path(out)
    text = point_badges(strip_solutions(_read_text(source), str(source)), badge_dir)
    out.mkdir(parents=True, exist_ok=True)
    py_path, ipynb_path = out / f"{source.stem}.py", out / f"{source.stem}.ipynb"
    py_path.write_text(text, encoding="utf-8")
    notebook = jupytext.reads(text, fmt="py:percent")
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                       "language": "python"}
    notebook.metadata.pop("jupytext", None)
    jupytext.write(notebook, ipynb_path, fmt="ipynb")
    return py_path, ipynb_path


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m mrcnn_jax.course.student_edition",
        description="Write student editions: solutions between '# BEGIN SOLUTION' and "
                    "'# END SOLUTION' replaced by a NotImplementedError stub, as .py and .ipynb.")
    parser.add_argument("sources", nargs="+", type=pathlib.Path,
                        help="teacher notebooks (.py jupytext twins or .ipynb)")
    parser.add_argument("--out", type=pathlib.Path, required=True, help="output folder")
    parser.add_argument("--badge-dir", default=None,
                        help="repository folder the Colab badges should open (default: --out "
                             "relative to the repository, when inside it)")
    args = parser.parse_args(argv)
    try:
        import jupytext  # noqa: F401
    except ImportError:
        parser.error("jupytext is missing: pip install jupytext (it is in requirements.txt)")
    badge_dir = args.badge_dir if args.badge_dir is not None else _default_badge_dir(args.out)
    try:
        for source in args.sources:
            for path in write_student_edition(source, args.out, badge_dir):
                print(f"wrote {path}")
    except MarkerError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
