"""Check for notebooks/02_anchors: the anchors of one FPN level, torchvision's values and order.

The package has no public one-level function (``generate_anchors`` concatenates levels), so the
exercise signature is defined here and ``anchors.cell_anchors`` / ``anchors._level_anchors`` are
the oracle::

    level_anchors(image_size (H, W), feature_size (h, w), sizes (S,), aspect_ratios (R,))
        -> (h * w * R * S, 4) float32 xyxy

Order: positions row-major (y, then x), and at each position the cell anchors ratio-major then
size. A cell anchor of ratio ``r = height / width`` and size ``s`` has ``h = s * sqrt(r)``,
``w = s / sqrt(r)``, is centred on 0 and rounded (half to even); it is shifted by
``(j * stride_x, i * stride_y)`` with ``stride = image_size // feature_size`` (no half-stride).
"""

import numpy as np

from mrcnn_jax import anchors as oracle
from mrcnn_jax.course.core import call, compare, describe_inputs, exercise


def _expected(image_size, feature_size, sizes, ratios):
    return oracle._level_anchors(oracle.cell_anchors(sizes, ratios), image_size, feature_size)


def _mistakes(image_size, feature_size, sizes, ratios):
    stride_y = image_size[0] // feature_size[0]
    stride_x = image_size[1] // feature_size[1]
    n_cell = len(sizes) * len(ratios)
    h, w = feature_size

    def half_stride():
        return _expected(image_size, feature_size, sizes, ratios) + np.array(
            [stride_x, stride_y, stride_x, stride_y], np.float32) / 2

    def size_major():
        base = oracle.cell_anchors(sizes, ratios).reshape(len(ratios), len(sizes), 4)
        base = base.transpose(1, 0, 2).reshape(-1, 4)
        return oracle._level_anchors(base, image_size, feature_size)

    def x_major():
        out = _expected(image_size, feature_size, sizes, ratios).reshape(h, w, n_cell, 4)
        return out.transpose(1, 0, 2, 3).reshape(-1, 4)

    def unrounded():
        s = np.asarray(sizes, np.float32)
        r = np.asarray(ratios, np.float32)
        hs = (np.sqrt(r)[:, None] * s[None, :]).reshape(-1)
        ws = (s[None, :] / np.sqrt(r)[:, None]).reshape(-1)
        base = np.stack([-ws, -hs, ws, hs], axis=1) / 2
        return oracle._level_anchors(base.astype(np.float32), image_size, feature_size)

    return (
        ("aspect ratio is height / width: h = s * sqrt(r), w = s / sqrt(r)",
         lambda: _expected(image_size, feature_size, sizes, tuple(1 / np.asarray(ratios)))),
        ("torchvision puts anchor centres at j * stride, with no half-stride offset",
         half_stride),
        ("cell anchors go ratio-major: all sizes of the first ratio, then the next ratio",
         size_major),
        ("positions go row by row (y outer, x inner), every cell anchor at each position",
         x_major),
        ("torchvision rounds the centred cell anchors (np.round / jnp.round) before shifting",
         unrounded),
    )


@exercise("level_anchors")
def check_level_anchors(fn):
    """Check ``fn(image_size, feature_size, sizes, aspect_ratios) -> (h*w*R*S, 4)``
    (module docstring). All arguments are static Python values, so no ``jit`` case."""
    def run(case, image_size, feature_size, sizes, ratios):
        inputs = describe_inputs((image_size, feature_size, sizes, ratios),
                                 names=("image_size", "feature_size", "sizes", "aspect_ratios"))
        got = call(case, fn, image_size, feature_size, sizes, ratios)
        compare(case, got, _expected(image_size, feature_size, sizes, ratios), inputs,
                rtol=0, atol=1e-3, mistakes=_mistakes(image_size, feature_size, sizes, ratios))

    run("hand example: one position, size 32, ratio 1", (16, 16), (1, 1), (32,), (1.0,))
    run("hand example: a 2 x 2 map of a 32 x 32 image, size 16, ratios (0.5, 1, 2)",
        (32, 32), (2, 2), (16,), (0.5, 1.0, 2.0))
    run("P2 of a 64 x 96 image: stride 4, size 32, three ratios", (64, 96), (16, 24), (32,),
        (0.5, 1.0, 2.0))
    run("two sizes per level (ratio-major order)", (64, 64), (4, 4), (32, 48), (0.5, 1.0, 2.0))
    run("a non-square map (strides 8 and 4)", (32, 64), (4, 16), (64,), (0.5, 2.0))
    run("rounding half to even: size 45, ratio 0.5", (32, 32), (2, 2), (45,), (0.5, 1.0))
