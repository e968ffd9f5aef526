"""Rebuild notebooks from their jupytext twins and execute them top to bottom.

The plain-text twin ``notebooks/NN_name.py`` (jupytext percent format) is the source a reviewer
reads; the ``.ipynb`` beside it is made from it here and carries the outputs of a clean run.

    python tools/run_notebooks.py                 # every notebook, full setting, outputs saved
    python tools/run_notebooks.py 03_nms --fast   # one notebook, fast setting (as CI runs it)

The fast setting sets ``MRCNN_JAX_FAST=1``; notebooks read it to shrink sizes and steps.
"""

import argparse
import os
import pathlib
import sys
import time

import jupytext
import nbformat
from nbclient import NotebookClient

NOTEBOOKS = pathlib.Path(__file__).resolve().parent.parent / "notebooks"


# The kernel inherits this process's environment: a caller with ``MPLBACKEND=Agg`` (set by many CI
# images and terminals without a display) would get a kernel that draws nowhere, and the saved
# notebook would hold no pictures. Force the inline backend, which embeds each figure as a PNG.
KERNEL_ENV = {"MPLBACKEND": "module://matplotlib_inline.backend_inline"}


def execute(notebook, fast, timeout=1200):
    """Run ``notebook`` (an nbformat node) in ``notebooks/`` with inline PNG figures; raises on
    the first failing cell."""
    overrides = {**KERNEL_ENV, "MRCNN_JAX_FAST": "1" if fast else "0"}
    previous = {name: os.environ.get(name) for name in overrides}
    os.environ.update(overrides)
    try:
        client = NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                                resources={"metadata": {"path": str(NOTEBOOKS)}})
        client.execute()
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    return notebook


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="notebook stems, e.g. 03_nms (default: all)")
    parser.add_argument("--fast", action="store_true", help="fast setting; outputs not saved")
    args = parser.parse_args(argv)
    twins = sorted(NOTEBOOKS.glob("[0-9][0-9]*_*.py"))
    if args.names:
        twins = [t for t in twins if t.stem in args.names]
        if not twins:
            sys.exit(f"no notebook twin named {args.names} in {NOTEBOOKS}")
    for twin in twins:
        start = time.perf_counter()
        notebook = jupytext.read(twin)
        notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                           "language": "python"}
        execute(notebook, args.fast)
        if not args.fast:
            nbformat.write(notebook, twin.with_suffix(".ipynb"))
        print(f"{twin.stem}: ran in {time.perf_counter() - start:.1f} s"
              f"{' (fast, not saved)' if args.fast else ', saved'}")


if __name__ == "__main__":
    main()
