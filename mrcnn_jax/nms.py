"""Non-maximum suppression with a fixed output size, so it runs under ``jit`` on any device.

Greedy NMS (Faster R-CNN section 3.3, Mask R-CNN section 3.1 "Inference"): visit boxes in
descending score; keep a box unless a kept box overlaps it with IoU strictly above the
threshold. torchvision's ``ops.nms`` returns a list whose length depends on the data; XLA needs
static shapes, so here the result is always ``max_output_size`` long, with a ``valid`` mask and
index 0 in the padded slots (safe to gather with, meaningless without ``valid``).

The loop runs once per *kept* box (at most ``max_output_size`` times, stopping early when no
candidate is left) and compares that box with all ``N`` boxes in one vector operation, so the
work is ``O(kept * N)`` and no ``(N, N)`` IoU matrix is stored.

Shape shorthand: ``N`` candidate boxes, ``K = max_output_size``.
Naming: ``valid`` marks real entries of a padded array.
Taught in notebooks/03_nms.
"""

import jax
import jax.numpy as jnp

from mrcnn_jax.boxes import box_iou


def _check_inputs(boxes, scores, max_output_size, valid):
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must have shape (N, 4); got {boxes.shape} ({boxes.dtype})")
    if scores.shape != boxes.shape[:1]:
        raise ValueError(
            f"scores must have shape (N,) = {boxes.shape[:1]} to match boxes; got {scores.shape}"
        )
    if isinstance(max_output_size, bool) or not isinstance(max_output_size, int) or (
        max_output_size <= 0
    ):
        raise ValueError(
            f"max_output_size must be a positive Python int (a static shape); got "
            f"{max_output_size!r}"
        )
    if valid is not None and jnp.shape(valid) != scores.shape:
        raise ValueError(
            f"valid must have shape (N,) = {scores.shape} to match boxes; got {jnp.shape(valid)}"
        )


def _greedy_nms(boxes, scores, groups, candidate, iou_threshold, max_output_size):
    """Shared loop: ``groups`` (N,) int; boxes only suppress boxes of the same group."""
    order = jnp.argsort(-scores, stable=True)  # (N,) descending score, ties by index
    boxes, groups = boxes[order], groups[order]  # (N, 4), (N,)
    alive = candidate[order]  # (N,) not yet kept nor suppressed
    keep = jnp.zeros((max_output_size,), jnp.int32)  # (K,)

    def cond(state):
        count, alive, _ = state
        return (count < max_output_size) & jnp.any(alive)

    def body(state):
        count, alive, keep = state
        best = jnp.argmax(alive)  # first alive box in score order = highest score
        iou = box_iou(boxes[best][None], boxes)[0]  # (N,)
        suppress = (iou > iou_threshold) & (groups == groups[best])
        alive = alive & ~suppress
        alive = alive.at[best].set(False)
        keep = keep.at[count].set(order[best].astype(jnp.int32))
        return count + 1, alive, keep

    count, _, keep = jax.lax.while_loop(cond, body, (jnp.int32(0), alive, keep))
    valid = jnp.arange(max_output_size) < count  # (K,)
    return jnp.where(valid, keep, 0), valid


def nms(boxes, scores, iou_threshold, max_output_size, valid=None):
    """Greedy NMS with a fixed-size result.

    Args:
      boxes: ``(N, 4)`` xyxy boxes.
      scores: ``(N,)`` scores; higher first (ties: lower index first).
      iou_threshold: a box is suppressed when its IoU with a kept box is ``> iou_threshold``.
      max_output_size: static int ``K``, the length of the result.
      valid: optional ``(N,)`` bool; boxes marked False are never kept (padding).
    Returns:
      ``indices (K,) int32`` into ``boxes`` in descending score order, 0 where padded, and
      ``valid (K,) bool``. The valid indices equal ``torchvision.ops.nms(...)[:K]``.

    Taught in notebooks/03_nms.
    """
    boxes, scores = jnp.asarray(boxes, jnp.float32), jnp.asarray(scores, jnp.float32)
    _check_inputs(boxes, scores, max_output_size, valid)
    candidate = jnp.ones(scores.shape, bool) if valid is None else jnp.asarray(valid, bool)
    groups = jnp.zeros(scores.shape, jnp.int32)
    return _greedy_nms(boxes, scores, groups, candidate, iou_threshold, max_output_size)


def batched_nms(boxes, scores, classes, iou_threshold, max_output_size, valid=None):
    """Per-class NMS: boxes suppress only boxes of the same class (``torchvision batched_nms``).

    Args:
      boxes: ``(N, 4)``; scores: ``(N,)``; classes: ``(N,)`` integer class or group ids.
      iou_threshold, max_output_size, valid: as in :func:`nms`.
    Returns:
      ``indices (K,)`` and ``valid (K,)`` in descending score order over all classes.
    """
    boxes, scores = jnp.asarray(boxes, jnp.float32), jnp.asarray(scores, jnp.float32)
    _check_inputs(boxes, scores, max_output_size, valid)
    classes = jnp.asarray(classes)
    if classes.shape != scores.shape or not jnp.issubdtype(classes.dtype, jnp.integer):
        raise ValueError(
            f"classes must be integers of shape (N,) = {scores.shape}; got {classes.shape} "
            f"({classes.dtype})"
        )
    candidate = jnp.ones(scores.shape, bool) if valid is None else jnp.asarray(valid, bool)
    return _greedy_nms(
        boxes, scores, classes.astype(jnp.int32), candidate, iou_threshold, max_output_size
    )
