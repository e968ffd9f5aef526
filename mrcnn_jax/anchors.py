"""Anchors: the reference boxes the RPN scores and regresses, one set per FPN level.

Paper: Faster R-CNN section 3.1.1 (anchors at every feature-map position); FPN (Lin et al. 2017)
section 4.1 (one anchor size per pyramid level P2-P6, three aspect ratios each).

Values and order follow torchvision's ``AnchorGenerator`` exactly:
- cell anchors of a level: for ratio ``r = h / w`` and size ``s``, ``h = s * sqrt(r)`` and
  ``w = s / sqrt(r)``, centred on 0 and rounded (half to even), ratio-major then size;
- shifts: ``x = j * stride_x`` with ``stride_x = image_width // feature_width`` (no half-stride
  offset), positions in row-major order (y, then x), and every cell anchor at each position.

All sizes are static Python numbers, so the anchors are computed once in numpy float32 (the
dtype torchvision uses) and become a constant under ``jax.jit``.

Shape shorthand: ``A`` anchors of all levels of one image, ``L`` levels.
Taught in notebooks/02_anchors.
"""

import numpy as np

DEFAULT_SIZES = ((32,), (64,), (128,), (256,), (512,))  # one size per level, P2-P6
DEFAULT_ASPECT_RATIOS = ((0.5, 1.0, 2.0),) * 5  # ratio = height / width


def cell_anchors(sizes, aspect_ratios):
    """Anchors of one level centred on the origin, rounded as torchvision does.

    Args:
      sizes: anchor sizes (square-root areas) of the level, e.g. ``(32,)``.
      aspect_ratios: height / width ratios, e.g. ``(0.5, 1.0, 2.0)``.
    Returns:
      ``(len(aspect_ratios) * len(sizes), 4)`` float32 xyxy, ratio-major.
    """
    scales = np.asarray(sizes, np.float32)  # (S,)
    ratios = np.asarray(aspect_ratios, np.float32)  # (R,)
    h_ratios = np.sqrt(ratios)
    w_ratios = np.float32(1.0) / h_ratios
    ws = (w_ratios[:, None] * scales[None, :]).reshape(-1)  # (R * S,)
    hs = (h_ratios[:, None] * scales[None, :]).reshape(-1)  # (R * S,)
    base = np.stack([-ws, -hs, ws, hs], axis=1) / np.float32(2)  # (R * S, 4)
    return np.round(base).astype(np.float32)


def _level_anchors(base, image_size, feature_size):
    grid_h, grid_w = feature_size
    stride_h, stride_w = image_size[0] // grid_h, image_size[1] // grid_w
    shifts_x = np.arange(grid_w, dtype=np.int32) * stride_w  # (w,)
    shifts_y = np.arange(grid_h, dtype=np.int32) * stride_h  # (h,)
    shift_y, shift_x = np.meshgrid(shifts_y, shifts_x, indexing="ij")  # (h, w)
    shift_x, shift_y = shift_x.reshape(-1), shift_y.reshape(-1)
    shifts = np.stack([shift_x, shift_y, shift_x, shift_y], axis=1).astype(np.float32)  # (h*w, 4)
    return (shifts[:, None, :] + base[None, :, :]).reshape(-1, 4)  # (h*w*R*S, 4)


def generate_anchors(
    image_size, feature_sizes, sizes=DEFAULT_SIZES, aspect_ratios=DEFAULT_ASPECT_RATIOS
):
    """All anchors of one image, level after level, in torchvision's order.

    Args:
      image_size: ``(H, W)`` of the (padded) model input.
      feature_sizes: ``[(h, w), ...]`` one per level, e.g. P2-P6.
      sizes: per level, a tuple of anchor sizes.
      aspect_ratios: per level, a tuple of height / width ratios.
    Returns:
      ``(A, 4)`` float32 numpy array of xyxy anchors (a constant under ``jit``).

    Taught in notebooks/02_anchors.
    """
    feature_sizes = [tuple(int(v) for v in fs) for fs in feature_sizes]
    if not (len(feature_sizes) == len(sizes) == len(aspect_ratios)):
        raise ValueError(
            "generate_anchors needs one entry per level in feature_sizes, sizes and "
            f"aspect_ratios; got {len(feature_sizes)}, {len(sizes)} and {len(aspect_ratios)}"
        )
    if len(image_size) != 2:
        raise ValueError(f"image_size must be (H, W); got {image_size!r}")
    for fs in feature_sizes:
        if len(fs) != 2 or min(fs) <= 0 or fs[0] > image_size[0] or fs[1] > image_size[1]:
            raise ValueError(
                f"each feature size must be a positive (h, w) no larger than image_size "
                f"{tuple(image_size)}; got {fs}"
            )
    levels = [
        _level_anchors(cell_anchors(s, r), image_size, fs)
        for s, r, fs in zip(sizes, aspect_ratios, feature_sizes, strict=True)
    ]
    return np.concatenate(levels, axis=0)  # (A, 4)


def num_anchors_per_location(sizes=DEFAULT_SIZES, aspect_ratios=DEFAULT_ASPECT_RATIOS):
    """Anchors per feature-map position of each level: ``len(sizes) * len(ratios)``."""
    return [len(s) * len(r) for s, r in zip(sizes, aspect_ratios, strict=True)]
