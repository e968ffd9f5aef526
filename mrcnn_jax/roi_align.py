"""RoIAlign by bilinear gather: a fixed-size feature crop for each box, without quantisation.

Paper: Mask R-CNN section 3 ("RoIAlign"): split each RoI into ``oh x ow`` bins, sample
``sampling_ratio x sampling_ratio`` regularly spaced points per bin by bilinear interpolation of
the four nearest feature cells, and average them.

Semantics are torchvision's ``ops.roi_align`` (CPU kernel ``roi_align_kernel.cpp``):
- ``aligned=True`` shifts the scaled box by -0.5 pixel (detectron2's ROIAlignV2);
  ``aligned=False`` instead forces the scaled RoI to be at least 1x1;
- sample ``iy`` of bin ``ph``: ``y = y1 + ph * bin_h + (iy + 0.5) * bin_h / sampling_ratio``;
- a sample with ``y < -1`` or ``y > H`` (or the same in x) contributes 0; otherwise ``y`` is
  clamped to ``[0, H - 1]`` before interpolation;
- the bin value is the sum of its samples divided by ``sampling_ratio ** 2``.
torchvision's adaptive grid (``sampling_ratio <= 0``, ``ceil(roi_h / oh)`` samples) depends on
the data, so it is refused: pass a fixed ``sampling_ratio > 0``.

Implementation: the interpolation weights are separable, so each box gets, per output row, the
``2 * sampling_ratio`` feature rows it reads with their weights, and the same for columns. Each
of the ``(2s)^2`` (row, column) taps is one gather of ``(R, oh, ow)`` feature vectors of length
``C`` from the flattened map, weighted and added: XLA fuses all of it into one vectorised loop.
Gradients flow through the gathers (scatter-adds), so ``jax.grad`` works with no custom rule.
Every index is in range by construction (clamped to the map, out-of-map samples get weight 0).

Multi-level pooling (``poolers.py``) reuses :func:`roi_align_flat` with a different feature map
per box, all levels concatenated into one flat array, so it costs the same as one level; for
small maps it uses :func:`roi_align_dense`, the same weights as two matrix products, with its
own backward pass (matrix products again; no gradient to the boxes, as in torchvision).

Shape shorthand: ``N`` images, ``H, W, C`` feature map, ``R`` boxes, ``oh, ow`` output size,
``s`` sampling ratio, ``T`` rows of a flattened feature map.
Taught in notebooks/04_roi_align.
"""

import jax
import jax.numpy as jnp
import numpy as np


def _axis_samples(start, length, out_size, sampling_ratio, size):
    """Rows (or columns) read by each output bin and their bilinear weights, one axis.

    Args:
      start, length: ``(R,)`` scaled RoI start and length on this axis.
      out_size: bins on this axis; sampling_ratio: samples per bin on this axis.
      size: ``(R,)`` feature-map extent on this axis (H or W of the box's level).
    Returns:
      ``index (R, out, 2s)`` int32 and ``weight (R, out, 2s)`` float32, where the two entries
      of each sample are its low and high neighbours; weights include the ``1 / s`` average.
    """
    bin_size = length / out_size  # (R,)
    bins = jnp.arange(out_size, dtype=jnp.float32)  # (out,)
    offsets = (jnp.arange(sampling_ratio, dtype=jnp.float32) + 0.5) / sampling_ratio  # (s,)
    pos = start[:, None, None] + bin_size[:, None, None] * (
        bins[None, :, None] + offsets[None, None, :]
    )  # (R, out, s)
    size = size.astype(jnp.float32)[:, None, None]  # (R, 1, 1)
    inside = (pos >= -1.0) & (pos <= size)  # samples beyond one cell outside read 0
    pos = jnp.maximum(pos, 0.0)
    low = jnp.floor(pos)
    at_edge = low >= size - 1  # torchvision: snap to the last cell, high = low
    low = jnp.where(at_edge, size - 1, low)
    high = jnp.where(at_edge, low, low + 1)
    frac = jnp.where(at_edge, 0.0, pos - low)  # (R, out, s)
    scale = jnp.where(inside, 1.0 / sampling_ratio, 0.0)
    index = jnp.stack([low, high], axis=-1).astype(jnp.int32)  # (R, out, s, 2)
    weight = jnp.stack([(1.0 - frac) * scale, frac * scale], axis=-1)  # (R, out, s, 2)
    r = start.shape[0]
    return index.reshape(r, out_size, 2 * sampling_ratio), weight.reshape(
        r, out_size, 2 * sampling_ratio
    )


def roi_align_flat(
    flat_features, boxes, base, height, width, spatial_scale, output_size, sampling_ratio, aligned
):
    """RoIAlign where each box reads its own map inside one flattened feature array.

    Args:
      flat_features: ``(T, C)``; the map of box ``r`` is rows ``base[r] : base[r] + H_r * W_r``
        in row-major (y, x) order.
      boxes: ``(R, 4)`` xyxy in input-image pixels.
      base: ``(R,)`` int32 first row of each box's map; height, width: ``(R,)`` its size.
      spatial_scale: ``(R,)`` or scalar, feature cells per input pixel.
      output_size: ``(oh, ow)``; sampling_ratio: int > 0; aligned: bool.
    Returns:
      ``(R, oh, ow, C)`` pooled features, dtype of ``flat_features``.
    """
    out_h, out_w = output_size
    r = boxes.shape[0]
    scale = jnp.broadcast_to(jnp.asarray(spatial_scale, jnp.float32), (r,))
    x1, y1, roi_w, roi_h = _scaled_rois(boxes, scale, aligned)
    y_idx, y_w = _axis_samples(y1, roi_h, out_h, sampling_ratio, height)  # (R, oh, 2s)
    x_idx, x_w = _axis_samples(x1, roi_w, out_w, sampling_ratio, width)  # (R, ow, 2s)
    rows = base[:, None, None] + y_idx * width[:, None, None]  # (R, oh, 2s) flat row starts
    y_w = y_w.astype(flat_features.dtype)
    x_w = x_w.astype(flat_features.dtype)
    # One gather per tap (i, j) of the 2s x 2s neighbourhood, summed elementwise. Written as a
    # Python loop on purpose: XLA fuses the gathers and adds into one loop over (R, oh, ow, C)
    # with C innermost and vectorised; a jnp.sum over a tap axis compiled to a reduction that
    # ran about 20x slower on CPU (benchmarks/bench_geometry.py).
    pooled = None
    for i in range(y_idx.shape[-1]):
        for j in range(x_idx.shape[-1]):
            index = rows[:, :, None, i] + x_idx[:, None, :, j]  # (R, oh, ow)
            weight = y_w[:, :, None, i] * x_w[:, None, :, j]  # (R, oh, ow)
            term = flat_features.at[index].get(mode="promise_in_bounds") * weight[..., None]
            pooled = term if pooled is None else pooled + term  # (R, oh, ow, C)
    return pooled


def _scaled_rois(boxes, scale, aligned):
    """Each box's start and length on the feature map: ``(x1, y1, roi_w, roi_h)``, each (R,)."""
    offset = 0.5 if aligned else 0.0
    x1 = boxes[:, 0] * scale - offset  # (R,)
    y1 = boxes[:, 1] * scale - offset
    roi_w = boxes[:, 2] * scale - offset - x1
    roi_h = boxes[:, 3] * scale - offset - y1
    if not aligned:  # torchvision's legacy mode: RoIs are at least one cell
        roi_w, roi_h = jnp.maximum(roi_w, 1.0), jnp.maximum(roi_h, 1.0)
    return x1, y1, roi_w, roi_h


def _axis_matrix(index, weight, size):
    """``(R, out, size)`` interpolation matrix of one axis from its taps ``(R, out, 2s)``."""
    cells = jnp.arange(size, dtype=index.dtype)  # (size,)
    return jnp.sum(weight[..., None] * (index[..., None] == cells), axis=-2)


def roi_align_dense(features, boxes, spatial_scale, output_size, sampling_ratio, aligned,
                    use=None):
    """RoIAlign of one image's map as two matrix products (for small maps).

    The same numbers as :func:`roi_align_flat` up to summation order: bilinear weights and the
    in-map test are separable, so ``pooled[r] = Ay[r] @ F @ Ax[r]^T`` per channel, with
    ``Ay (R, oh, H)`` and ``Ax (R, ow, W)`` the row and column interpolation matrices (the
    ``2s`` taps of each bin, averaged). Its backward pass is two more matrix products instead
    of the gather's scatter-adds, which is what made RoIAlign the costliest part of a CPU
    training step; its work grows with ``H * W`` per box, so it suits small maps only
    (``poolers.multiscale_roi_align`` chooses).

    Args:
      features: ``(H, W, C)`` one image's map.
      boxes: ``(R, 4)`` xyxy in input-image pixels; spatial_scale: scalar.
      output_size, sampling_ratio, aligned: as in :func:`roi_align`.
      use: optional ``(R,)`` booleans; boxes with False get zeros (another level's boxes).
    Returns:
      ``(R, oh, ow, C)``.
    """
    h, w, _ = features.shape
    out_h, out_w = output_size
    r = boxes.shape[0]
    scale = jnp.broadcast_to(jnp.asarray(spatial_scale, jnp.float32), (r,))
    x1, y1, roi_w, roi_h = _scaled_rois(boxes, scale, aligned)
    y_idx, y_w = _axis_samples(y1, roi_h, out_h, sampling_ratio, jnp.full((r,), h))
    x_idx, x_w = _axis_samples(x1, roi_w, out_w, sampling_ratio, jnp.full((r,), w))
    if use is not None:
        y_w = y_w * use[:, None, None]
    ay = _axis_matrix(y_idx, y_w, h).astype(features.dtype)  # (R, oh, H)
    ax = _axis_matrix(x_idx, x_w, w).astype(features.dtype)  # (R, ow, W)
    return _separable_pool(features, ay, ax)


@jax.custom_vjp
def _separable_pool(features, ay, ax):
    """``pooled[r, i, j] = sum_hw ay[r, i, h] * ax[r, j, w] * features[h, w]``: ``(R, oh, ow, C)``.

    Two products, each written so that XLA:CPU multiplies row-major operands as they lie:
    ``ay (R*oh, H) @ features (H, W*C)`` gives the rows ``(R, oh, W, C)``, then for every
    (box, output row) ``ax[r] (ow, W) @ rows[r, i] (W, C)``, with ``ax`` repeated over the
    output rows. The backward pass (below) does the same with the transposed matrices, made
    explicitly: left to ``jax.grad``, XLA transposed the ``(R, oh, W, C)`` gradient instead of
    the small matrices, and those copies cost more than the products (benchmarks/README.md,
    issue 19). Like torchvision's ``roi_align``, no gradient flows to the boxes (``ay, ax``).
    """
    return _separable_pool_fwd(features, ay, ax)[0]


def _separable_pool_fwd(features, ay, ax):
    h, w, c = features.shape
    r, out_h, _ = ay.shape
    out_w = ax.shape[1]
    rows = (ay.reshape(r * out_h, h) @ features.reshape(h, w * c)).reshape(r, out_h, w, c)
    ax_rows = jnp.broadcast_to(ax[:, None], (r, out_h, out_w, w))  # (R, oh, ow, W)
    return ax_rows @ rows, (ay, ax)  # (R, oh, ow, C)


def _separable_pool_bwd(residuals, grad):  # grad (R, oh, ow, C)
    ay, ax = residuals
    r, out_h, h = ay.shape
    out_w, w = ax.shape[1:]
    c = grad.shape[-1]
    ax_t = jnp.broadcast_to(jnp.swapaxes(ax, 1, 2)[:, None], (r, out_h, w, out_w))
    grad_rows = ax_t @ grad  # (R, oh, W, C)
    ay_t = ay.reshape(r * out_h, h).T  # (H, R*oh), a small copy
    grad_features = (ay_t @ grad_rows.reshape(r * out_h, w * c)).reshape(h, w, c)
    return grad_features, jnp.zeros_like(ay), jnp.zeros_like(ax)


_separable_pool.defvjp(_separable_pool_fwd, _separable_pool_bwd)


def _check_roi_align_args(features, boxes, batch_indices, output_size, sampling_ratio):
    if features.ndim != 4:
        raise ValueError(f"features must be NHWC (N, H, W, C); got shape {features.shape}")
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must have shape (R, 4) xyxy; got {boxes.shape} ({boxes.dtype})")
    if batch_indices.shape != boxes.shape[:1] or not jnp.issubdtype(
        batch_indices.dtype, jnp.integer
    ):
        raise ValueError(
            f"batch_indices must be integers of shape (R,) = {boxes.shape[:1]}; got "
            f"{batch_indices.shape} ({batch_indices.dtype})"
        )
    if len(output_size) != 2 or min(output_size) <= 0:
        raise ValueError(f"output_size must be a positive (oh, ow); got {output_size!r}")
    if not isinstance(sampling_ratio, int) or sampling_ratio <= 0:
        raise ValueError(
            "sampling_ratio must be a Python int > 0: torchvision's adaptive sampling "
            "(sampling_ratio <= 0, ceil(roi_size / output_size) points per bin) depends on the "
            f"box sizes and cannot have a static shape; got {sampling_ratio!r}"
        )


def _check_batch_range(batch_indices, n):
    if isinstance(batch_indices, jax.core.Tracer):
        return  # traced values are unknown here; roi_align clips them
    values = np.asarray(batch_indices)
    if values.size and (values.min() < 0 or values.max() >= n):
        raise ValueError(
            f"batch_indices must lie in [0, {n}) for features with N={n} images; got values "
            f"from {values.min()} to {values.max()}"
        )


def roi_align(
    features,
    boxes,
    batch_indices,
    output_size=(7, 7),
    spatial_scale=1.0,
    sampling_ratio=2,
    aligned=False,
):
    """torchvision ``roi_align`` for NHWC features, by bilinear gather.

    Args:
      features: ``(N, H, W, C)`` feature maps.
      boxes: ``(R, 4)`` xyxy boxes in input-image pixels.
      batch_indices: ``(R,)`` int in ``[0, N)``, which image each box pools from. Concrete
        (non-traced) indices out of range raise ``ValueError``; under ``jit`` they cannot be
        checked and are clipped into range, so memory is never read out of bounds.
      output_size: ``(oh, ow)`` bins.
      spatial_scale: feature cells per input pixel (1/4 for P2).
      sampling_ratio: int > 0, samples per bin along each axis.
      aligned: True shifts boxes by -0.5 cell (detectron2); False is torchvision's default.
    Returns:
      ``(R, oh, ow, C)`` pooled features.

    Taught in notebooks/04_roi_align.
    """
    features = jnp.asarray(features)
    boxes = jnp.asarray(boxes, jnp.float32)
    batch_indices = jnp.asarray(batch_indices)
    output_size = tuple(int(v) for v in output_size)
    _check_roi_align_args(features, boxes, batch_indices, output_size, sampling_ratio)
    n, h, w, c = features.shape
    r = boxes.shape[0]
    flat = features.reshape(n * h * w, c)  # (N*H*W, C)
    _check_batch_range(batch_indices, n)
    base = jnp.clip(batch_indices.astype(jnp.int32), 0, n - 1) * (h * w)  # (R,)
    height = jnp.full((r,), h, jnp.int32)
    width = jnp.full((r,), w, jnp.int32)
    return roi_align_flat(
        flat, boxes, base, height, width, spatial_scale, output_size, sampling_ratio, aligned
    )
