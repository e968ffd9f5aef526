"""Multi-scale RoI pooler: send each RoI to one FPN level by its size, then RoIAlign there.

Paper: FPN (Lin et al. 2017) Eq. 1: ``k = floor(k0 + log2(sqrt(w h) / 224))`` with ``k0 = 4``,
clamped to the pyramid; Mask R-CNN pools box features (7x7) and mask features (14x14) this way.

torchvision's ``ops/poolers.py`` (``LevelMapper``, ``MultiScaleRoIAlign``) is followed exactly:
``floor(4 + log2(sqrt(area) / 224) + 1e-6)`` clamped to the levels present, each level's scale
``2 ** round(log2(feature_size / image_size))``, ``sampling_ratio=2`` and ``aligned=False`` by
default. torchvision runs one ``roi_align`` per level on the boxes of that level; with static
shapes that would cost one full ``roi_align`` per level. Here every level is flattened into a
single ``(T, C)`` array and each box gathers from its own level's rows, so all levels cost one
``roi_align``. For one image with small maps (the model pools image by image) each level is
instead pooled by two matrix products (``roi_align_dense``) and the levels summed, each box
being nonzero on its own level only: more arithmetic, but a backward pass of matrix products
instead of scatter-adds, which is faster on a CPU.

Shape shorthand: ``N`` images, ``R`` boxes, ``L`` levels, ``C`` channels (equal on all levels).
Taught in notebooks/04_roi_align.
"""

import math

import jax.numpy as jnp

from mrcnn_jax.boxes import box_area
from mrcnn_jax.roi_align import _check_roi_align_args, roi_align_dense, roi_align_flat

CANONICAL_SCALE = 224  # FPN Eq. 1: an ImageNet-sized RoI maps to the canonical level
CANONICAL_LEVEL = 4
LEVEL_EPS = 1e-6  # torchvision LevelMapper eps, added after log2
# One image whose levels hold at most this many cells in all is pooled by matrix products
# (roi_align_dense): 128x128 inputs give 1,360 (P2-P5), 800x1088 ones 72,420. Measured on the
# 2-core CPU (2026-12-05, benchmarks/profile_train_step.py with and without
# --dense_max_cells 0): the shapes_config training step at batch 8 went from 294-337 ms to
# 265-282 ms (two alternating runs each, median of 15 steps).
DENSE_MAX_CELLS = 4096


def infer_scale(feature_size, image_size):
    """Spatial scale of a level, a power of two (torchvision ``_infer_scale``)."""
    scales = [
        2.0 ** round(math.log2(f / i)) for f, i in zip(feature_size, image_size, strict=True)
    ]
    if scales[0] != scales[1]:
        raise ValueError(
            f"feature map {tuple(feature_size)} is not a power-of-two scale of image "
            f"{tuple(image_size)} in both axes: scales {scales}"
        )
    return scales[0]


def map_levels(boxes, k_min=2, k_max=5, canonical_scale=CANONICAL_SCALE,
               canonical_level=CANONICAL_LEVEL, eps=LEVEL_EPS):
    """FPN level of each box, counted from ``k_min`` (0 means P``k_min``).

    Args:
      boxes: ``(R, 4)`` xyxy boxes in input-image pixels.
      k_min, k_max: the lowest and highest pyramid levels present (2 and 5 for P2-P5).
    Returns:
      ``(R,)`` int32 in ``[0, k_max - k_min]``.
    """
    size = jnp.sqrt(box_area(jnp.asarray(boxes, jnp.float32)))  # (R,)
    level = jnp.floor(canonical_level + jnp.log2(size / canonical_scale) + jnp.float32(eps))
    return (jnp.clip(level, k_min, k_max) - k_min).astype(jnp.int32)


def multiscale_roi_align(
    features,
    boxes,
    batch_indices,
    image_size,
    output_size=(7, 7),
    sampling_ratio=2,
    aligned=False,
    method="auto",
):
    """Pool each box from its FPN level (torchvision ``MultiScaleRoIAlign``).

    Args:
      features: list of ``(N, H_l, W_l, C)`` maps, finest first (P2-P5).
      boxes: ``(R, 4)`` xyxy boxes in input-image pixels; batch_indices: ``(R,)`` int.
      image_size: ``(H, W)`` of the padded model input, to infer each level's scale.
      output_size, sampling_ratio, aligned: as in :func:`mrcnn_jax.roi_align`.
      method: ``"gather"`` (one flat gather for all levels), ``"dense"`` (one image only: per
        level, two matrix products, ``roi_align_dense``) or ``"auto"``: dense for one image
        with at most ``DENSE_MAX_CELLS`` cells over its levels, where it is faster.
    Returns:
      ``(R, oh, ow, C)`` pooled features.

    Taught in notebooks/04_roi_align.
    """
    features = [jnp.asarray(f) for f in features]
    boxes = jnp.asarray(boxes, jnp.float32)
    batch_indices = jnp.asarray(batch_indices)
    output_size = tuple(int(v) for v in output_size)
    for f in features:
        _check_roi_align_args(f, boxes, batch_indices, output_size, sampling_ratio)
    if len({f.shape[0] for f in features}) != 1 or len({f.shape[3] for f in features}) != 1:
        raise ValueError(
            "all levels need the same batch size and channels; got shapes "
            f"{[f.shape for f in features]}"
        )
    scales = [infer_scale(f.shape[1:3], image_size) for f in features]
    k_min, k_max = round(-math.log2(scales[0])), round(-math.log2(scales[-1]))
    level = map_levels(boxes, k_min, k_max)  # (R,)
    if method not in ("auto", "gather", "dense"):
        raise ValueError(f"method must be 'auto', 'gather' or 'dense'; got {method!r}")
    cells = sum(f.shape[1] * f.shape[2] for f in features)
    if method == "auto":
        method = "dense" if features[0].shape[0] == 1 and cells <= DENSE_MAX_CELLS else "gather"
    if method == "dense":
        if features[0].shape[0] != 1:
            raise ValueError(f"method='dense' pools one image; got {features[0].shape[0]}")
        pooled = [roi_align_dense(f[0], boxes, s, output_size, sampling_ratio, aligned,
                                  use=level == i)
                  for i, (f, s) in enumerate(zip(features, scales, strict=True))]
        return sum(pooled[1:], pooled[0])  # each box is nonzero on its own level only
    sizes = [f.shape[1] * f.shape[2] for f in features]
    starts = [0]
    for f, hw in zip(features, sizes, strict=True):
        starts.append(starts[-1] + f.shape[0] * hw)
    flat = jnp.concatenate([f.reshape(-1, f.shape[3]) for f in features])  # (T, C)

    def per_level(values):
        return jnp.asarray(values)[level]  # (R,)

    height = per_level([f.shape[1] for f in features]).astype(jnp.int32)
    width = per_level([f.shape[2] for f in features]).astype(jnp.int32)
    base = per_level(starts[:-1]) + batch_indices.astype(jnp.int32) * per_level(sizes)
    scale = per_level(jnp.asarray(scales, jnp.float32))
    return roi_align_flat(
        flat, boxes, base.astype(jnp.int32), height, width, scale, output_size, sampling_ratio,
        aligned,
    )
