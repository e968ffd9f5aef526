#!/usr/bin/env bash
# The whole test suite on a fresh machine: virtual environment, install, lint, tests (the
# notebooks included, in their fast setting). README's test command and .ci/run call this.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -r requirements.txt
.venv/bin/python -m ipykernel install --sys-prefix --name python3 >/dev/null
.venv/bin/ruff check .
set +e
.venv/bin/python -m pytest -n 2 "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: that is a failure here" >&2
  exit 1
fi
[ "$rc" -eq 0 ] || exit "$rc"
# Only for the whole suite (no arguments): the same package on Python 3.13, installed from the
# clone into a fresh environment (scripts/test_py313.sh). MRCNN_JAX_SKIP_PY313=1 leaves it out.
if [ "$#" -eq 0 ] && [ "${MRCNN_JAX_SKIP_PY313:-0}" != "1" ]; then
  bash scripts/test_py313.sh
fi
