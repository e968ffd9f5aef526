#!/usr/bin/env bash
# Python 3.13 (what Colab runs): install the package from this clone with `pip install .` into a
# fresh virtual environment, run a quick subset of the suite against the installed copy (geometry,
# model, data, evaluation, the Colab setup, one notebook in its fast setting), then import the
# shipped torchvision example and run `predict` on a generated image. scripts/test.sh calls it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY313=""
for candidate in python3.13 "$(pyenv root 2>/dev/null)"/versions/3.13*/bin/python3.13; do
  if "$candidate" -c 'import sys; assert sys.version_info[:2] == (3, 13)' 2>/dev/null; then
    PY313=$candidate
    break
  fi
done
if [ -z "$PY313" ]; then
  echo "no Python 3.13 found (python3.13 or pyenv's 3.13): the 3.13 job cannot run" >&2
  exit 1
fi
ENV=$(mktemp -d)/py313
"$PY313" -m venv "$ENV"
"$ENV/bin/python" -m pip install -q --upgrade pip
"$ENV/bin/python" -m pip install -q ".[cpu,test]"
"$ENV/bin/python" -m ipykernel install --sys-prefix --name python3 >/dev/null
echo "Python 3.13 job: $("$ENV/bin/python" -V), mrcnn_jax from $(cd / && "$ENV/bin/python" -c \
  'import mrcnn_jax, pathlib; print(pathlib.Path(mrcnn_jax.__file__).parent)')"
# `bin/pytest`, not `python -m pytest`: the clone's own mrcnn_jax/ stays off sys.path, so the
# tests exercise the installed copy.
"$ENV/bin/pytest" -q -p no:cacheprovider -n 2 tests/test_boxes.py tests/test_anchors.py \
  tests/test_nms.py tests/test_roi_align.py tests/test_model.py tests/test_data_shapes.py \
  tests/test_evaluation.py tests/test_colab.py tests/test_import_torchvision.py \
  "tests/test_notebooks.py::test_notebook_runs_fast[01_boxes_iou_and_box_coding]"
WORK=$(mktemp -d)
"$ENV/bin/python" -m mrcnn_jax.import_torchvision data/torchvision_shapes_example.npz \
  --workdir "$WORK/run" >/dev/null
"$ENV/bin/python" - "$WORK/shapes.png" <<'PY'
import sys

import numpy as np
from PIL import Image

from mrcnn_jax.data.shapes import draw_shapes

Image.fromarray(draw_shapes(np.random.default_rng(0))["image"]).save(sys.argv[1])
PY
"$ENV/bin/python" -m mrcnn_jax.predict --workdir "$WORK/run" --out "$WORK/out" "$WORK/shapes.png"
test -n "$(ls "$WORK/out")" || { echo "predict wrote nothing" >&2; exit 1; }
echo "Python 3.13 job: predict on the installed package wrote $(ls "$WORK/out")"
