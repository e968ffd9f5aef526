"""Checks for notebooks/04_roi_align: bilinear sampling, RoIAlign on one level, the FPN level
mapper.

Bilinear sampling has no public function in the package; its exercise signature is::

    bilinear(features (H, W, C), y (P,), x (P,)) -> (P, C)

with torchvision's border rules (``roi_align_kernel.cpp``): a point with ``y < -1`` or
``y > H`` (or the same in x) reads 0; otherwise ``y`` is clamped at 0, and a point at or beyond
the last cell (``floor(y) >= H - 1``) reads the last cell. Coordinates are in feature cells,
cell ``i`` sits at ``y = i``. The oracle is ``mrcnn_jax.roi_align`` on a 1 x 1 box with
``aligned=True``, ``sampling_ratio=1``, whose single sample lands exactly on ``(y, x)``.

``roi_align`` and ``map_levels`` take the package's signatures (``mrcnn_jax.roi_align``,
``mrcnn_jax.map_levels``).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np

import mrcnn_jax.poolers as poolers
from mrcnn_jax.course.boxes import random_boxes
from mrcnn_jax.course.core import (
    call,
    call_jit,
    compare,
    compare_grad,
    describe_inputs,
    exercise,
)
from mrcnn_jax.roi_align import roi_align as _package_roi_align

# jitted oracles: one compilation per case instead of one per operation
oracle_roi_align = jax.jit(_package_roi_align, static_argnames=(
    "output_size", "spatial_scale", "sampling_ratio", "aligned"))


@jax.jit
def oracle_bilinear(features, y, x):
    """Bilinear samples ``(P, C)`` of ``features (H, W, C)`` at ``(y, x)``, torchvision rules."""
    x, y = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)
    boxes = jnp.stack([x, y, x + 1.0, y + 1.0], axis=1)  # (P, 4) aligned: sample at (y, x)
    out = oracle_roi_align(jnp.asarray(features)[None], boxes, jnp.zeros(x.shape, jnp.int32),
                           (1, 1), 1.0, 1, True)  # (P, 1, 1, C)
    return out[:, 0, 0]


def _numpy_bilinear(features, y, x, zero_outside=True, clamp=True):
    """Reference with switches that model the common mistakes."""
    f = np.asarray(features, np.float64)
    height, width = f.shape[:2]
    out = np.zeros((len(y), f.shape[2]))
    for p, (yy, xx) in enumerate(zip(np.asarray(y, np.float64), np.asarray(x, np.float64),
                                     strict=True)):
        if zero_outside and (yy < -1 or yy > height or xx < -1 or xx > width):
            continue
        if clamp:
            yy, xx = max(yy, 0.0), max(xx, 0.0)
        y0, x0 = math.floor(yy), math.floor(xx)
        y1, x1 = min(y0 + 1, height - 1), min(x0 + 1, width - 1)
        ly = 0.0 if y0 >= height - 1 else yy - y0
        lx = 0.0 if x0 >= width - 1 else xx - x0
        y0, x0 = min(y0, height - 1), min(x0, width - 1)
        out[p] = ((1 - ly) * (1 - lx) * f[y0, x0] + (1 - ly) * lx * f[y0, x1]
                  + ly * (1 - lx) * f[y1, x0] + ly * lx * f[y1, x1])
    return out


def _bilinear_mistakes(features, y, x):
    return (
        ("a point beyond one cell outside the map (y < -1 or y > H, same in x) reads 0, not the "
         "border cell", lambda: _numpy_bilinear(features, y, x, zero_outside=False)),
        ("clamp y and x at 0 before floor: floor(-0.5) is -1, and index -1 wraps to the last "
         "row", lambda: _numpy_bilinear(features, y, x, clamp=False)),
        ("features are (H, W, C): y indexes rows (axis 0), x columns (axis 1)",
         lambda: np.asarray(oracle_bilinear(np.swapaxes(features, 0, 1), x, y))),
        ("cell i sits at coordinate i (no half-pixel shift inside bilinear sampling)",
         lambda: np.asarray(oracle_bilinear(features, np.asarray(y) - 0.5,
                                            np.asarray(x) - 0.5))),
    )


@exercise("bilinear")
def check_bilinear(fn):
    """Check ``fn(features (H, W, C), y (P,), x (P,)) -> (P, C)`` (module docstring)."""
    def run(case, features, y, x, jit=False):
        features = np.asarray(features, np.float32)
        y, x = np.asarray(y, np.float32), np.asarray(x, np.float32)
        inputs = describe_inputs((features, y, x), names=("features", "y", "x"))
        got = call_jit(case, fn, features, y, x) if jit else call(case, fn, features, y, x)
        compare(case, got, np.asarray(oracle_bilinear(features, y, x)), inputs, rtol=1e-4,
                atol=1e-4, mistakes=_bilinear_mistakes(features, y, x))

    grid = np.arange(16, dtype=np.float32).reshape(4, 4, 1)  # value = 4 * row + column
    run("hand example: 4 x 4 map with value 4 * row + col, at cells and between them",
        grid, [0, 1, 1.5, 0.25], [0, 2, 2.5, 3])
    rng = np.random.default_rng(4)
    features = rng.normal(size=(5, 6, 3)).astype(np.float32)
    y, x = rng.uniform(0, 4, 10), rng.uniform(0, 5, 10)
    run("random points inside a 5 x 6 x 3 map", features, y, x)
    run("random points under jax.jit", features, y, x, jit=True)
    run("points between -1 and 0: clamped to the first cell", features, [-0.5, -0.99, 2.0],
        [1.0, -0.3, -0.7])
    run("points beyond the last cell but within one cell: the last cell", features,
        [4.5, 4.0, 5.0], [5.5, 2.0, 6.0])
    run("points more than one cell outside read 0", features, [-1.5, 2.0, 7.0], [1.0, 6.5, 2.0])
    weights = rng.normal(size=(10, 3)).astype(np.float32)
    compare_grad("gradient with respect to the features",
                 lambda f: jnp.sum(fn(f, y, x) * weights),
                 lambda f: jnp.sum(oracle_bilinear(f, y, x) * weights), (features,),
                 inputs=describe_inputs((y, x), names=("y", "x")))


def _roi_mistakes(features, boxes, batch, out, scale, ratio, aligned):
    def call_oracle(**changes):
        args = dict(features=features, boxes=boxes, batch_indices=batch, output_size=out,
                    spatial_scale=scale, sampling_ratio=ratio, aligned=aligned)
        args.update(changes)
        return np.asarray(oracle_roi_align(**args))

    return (
        ("aligned=True shifts the *scaled* box by -0.5 cell (x1 * scale - 0.5), and "
         "aligned=False does not; check the half-pixel shift",
         lambda: call_oracle(aligned=not aligned)),
        ("with aligned=False torchvision makes each scaled RoI at least 1 x 1 cell "
         "(roi_w = max(roi_w, 1)); that clamp is missing",
         lambda: call_oracle(boxes=boxes + np.float32(0.5 / scale), aligned=True)),
        ("multiply the box by spatial_scale to get feature-cell coordinates",
         lambda: call_oracle(spatial_scale=1.0)),
        ("each box pools from its own image: features[batch_indices[r]]",
         lambda: call_oracle(batch_indices=np.zeros_like(batch))),
        ("boxes are (x1, y1, x2, y2): x goes along the width (axis 2 of NHWC)",
         lambda: call_oracle(boxes=boxes[:, [1, 0, 3, 2]])),
    )


@exercise("roi_align")
def check_roi_align(fn):
    """Check ``fn(features, boxes, batch_indices, output_size, spatial_scale, sampling_ratio,
    aligned) -> (R, oh, ow, C)`` (``mrcnn_jax.roi_align``), in both ``aligned`` modes."""
    def run(case, features, boxes, batch, out, scale, ratio, aligned, jit=False):
        features = np.asarray(features, np.float32)
        boxes, batch = np.asarray(boxes, np.float32), np.asarray(batch, np.int32)
        inputs = describe_inputs(
            (features, boxes, batch, out, scale, ratio, aligned),
            names=("features", "boxes", "batch_indices", "output_size", "spatial_scale",
                   "sampling_ratio", "aligned"))
        args = (features, boxes, batch, out, scale, ratio, aligned)
        if jit:
            got = call_jit(case, fn, *args, static_argnums=(3, 4, 5, 6))
        else:
            got = call(case, fn, *args)
        compare(case, got, np.asarray(oracle_roi_align(*args)), inputs, rtol=1e-4, atol=1e-4,
                mistakes=_roi_mistakes(*args))

    grid = np.arange(16, dtype=np.float32).reshape(1, 4, 4, 1)
    for aligned in (False, True):
        run(f"hand example: the whole 4 x 4 map into 2 x 2 bins, one sample each, "
            f"aligned={aligned}", grid, [[0, 0, 4, 4]], [0], (2, 2), 1.0, 1, aligned)
    rng = np.random.default_rng(5)
    features = rng.normal(size=(2, 8, 8, 3)).astype(np.float32)
    boxes = random_boxes(rng, 6, high=24.0, min_size=2.0, max_size=20.0)
    batch = np.array([0, 1, 0, 1, 1, 0], np.int32)
    for aligned in (False, True):
        run(f"random boxes on two 8 x 8 maps, scale 1/4, 2 samples, aligned={aligned}, under "
            f"jax.jit", features, boxes, batch, (3, 3), 0.25, 2, aligned, jit=True)
    run("3 samples per bin, a 2 x 3 output", features, boxes, batch, (2, 3), 0.25, 3, True,
        jit=True)
    edge = np.array([[-8, -8, 6, 6], [26, 20, 40, 40], [10, 10, 10, 10], [12, 4, 13, 5]],
                    np.float32)
    for aligned in (False, True):
        run(f"boxes partly outside the map, zero-area and sub-cell boxes, aligned={aligned}",
            features, edge, [0, 1, 0, 1], (2, 2), 0.25, 2, aligned, jit=True)
    weights = rng.normal(size=(6, 3, 3, 3)).astype(np.float32)
    compare_grad("gradient with respect to the features, aligned=False",
                 lambda f: jnp.sum(fn(f, boxes, batch, (3, 3), 0.25, 2, False) * weights),
                 lambda f: jnp.sum(oracle_roi_align(f, boxes, batch, (3, 3), 0.25, 2, False)
                                   * weights), (features,),
                 inputs=describe_inputs((boxes, batch), names=("boxes", "batch_indices")))


def _level_mistakes(boxes, k_min, k_max):
    def raw(size_fn, rounding=np.floor, eps=poolers.LEVEL_EPS):
        b = np.asarray(boxes, np.float32)
        area = np.maximum(b[:, 2] - b[:, 0], 0) * np.maximum(b[:, 3] - b[:, 1], 0)
        with np.errstate(divide="ignore"):
            return rounding(4 + np.log2(size_fn(area) / 224) + eps)

    def relative(levels):
        return (np.clip(levels, k_min, k_max) - k_min).astype(np.int32)

    return (
        ("return the level counted from k_min (0 for P2), not the level number itself",
         lambda: np.asarray(poolers.map_levels(boxes, k_min, k_max)) + k_min),
        ("clamp the level to [k_min, k_max] before subtracting k_min",
         lambda: (np.nan_to_num(raw(np.sqrt), neginf=-99) - k_min).astype(np.int32)),
        ("the level uses floor, not round", lambda: relative(raw(np.sqrt, np.round))),
        ("the scale of a box is sqrt(w * h), not its area",
         lambda: relative(np.nan_to_num(raw(lambda a: a), neginf=-99))),
    )


@exercise("map_levels")
def check_map_levels(fn):
    """Check ``fn(boxes (R, 4), k_min=2, k_max=5) -> (R,) int`` (``mrcnn_jax.map_levels``):
    ``floor(4 + log2(sqrt(area) / 224) + 1e-6)`` clamped to ``[k_min, k_max]``, minus
    ``k_min``."""
    def run(case, boxes, k_min=2, k_max=5, jit=False):
        boxes = np.asarray(boxes, np.float32)
        inputs = describe_inputs((boxes, k_min, k_max), names=("boxes", "k_min", "k_max"))
        if jit:
            got = call_jit(case, fn, boxes, k_min, k_max, static_argnums=(1, 2))
        else:
            got = call(case, fn, boxes, k_min, k_max)
        compare(case, got, np.asarray(poolers.map_levels(boxes, k_min, k_max)), inputs,
                mistakes=_level_mistakes(boxes, k_min, k_max))

    run("hand example: 224 x 224 goes to P4 (index 2), 112 x 112 to P3, 448 x 448 to P5",
        [[0, 0, 224, 224], [0, 0, 112, 112], [0, 0, 448, 448]])
    rng = np.random.default_rng(6)
    boxes = random_boxes(rng, 12, high=300.0, min_size=8.0, max_size=500.0)
    run("random boxes from 8 to 500 pixels", boxes)
    run("random boxes under jax.jit", boxes, jit=True)
    run("levels P3-P6 (k_min 3, k_max 6)", boxes, 3, 6)
    run("tiny boxes clamp to the lowest level, huge ones to the highest",
        [[0, 0, 4, 4], [0, 0, 2000, 2000], [0, 0, 111, 113]])
    run("a zero-area box goes to the lowest level", [[5, 5, 5, 5], [0, 0, 30, 0]])
