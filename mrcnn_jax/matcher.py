"""Matcher: assign each anchor or proposal to a ground-truth box by IoU, or to background.

Faster R-CNN section 3.1.2 (RPN: positive at IoU >= 0.7, negative below 0.3, and each ground
truth's best anchor positive too) and Mask R-CNN section 3.1 (RoIs: positive at IoU >= 0.5).
torchvision's ``_utils.Matcher`` is followed exactly, including its low-quality rule: a
prediction whose IoU with some ground truth equals that ground truth's best IoU keeps its own
best match even when below the threshold.

Padded ground truth (``gt_valid`` False) never matches; an image with no valid ground truth
gets all background.

Shape shorthand: ``P`` predictions (anchors or proposals), ``G`` padded ground-truth slots.
Naming: ``matches`` are indices into the ground truth, or ``BELOW_LOW`` / ``BETWEEN``.
Taught in notebooks/06_rpn.
"""

import jax.numpy as jnp

BELOW_LOW = -1  # background
BETWEEN = -2  # ignored: neither foreground nor background


def match(iou, gt_valid, high, low, allow_low_quality):
    """Match predictions to ground truth.

    Args:
      iou: ``(G, P)`` IoU of each ground truth with each prediction.
      gt_valid: ``(G,)`` bool, False for padding.
      high: IoU at or above which a prediction is foreground.
      low: IoU below which it is background (in between: ignored).
      allow_low_quality: keep each ground truth's best predictions as foreground.
    Returns:
      ``(P,)`` int32: a ground-truth index, ``BELOW_LOW`` (-1) or ``BETWEEN`` (-2).
    """
    iou = jnp.where(gt_valid[:, None], iou, -1.0)  # (G, P) padding can never win
    best_iou = jnp.max(iou, axis=0)  # (P,)
    best_gt = jnp.argmax(iou, axis=0).astype(jnp.int32)  # (P,) first max, as torch
    matches = jnp.where(best_iou < low, BELOW_LOW, jnp.where(best_iou < high, BETWEEN, best_gt))
    if allow_low_quality:
        best_per_gt = jnp.max(iou, axis=1, keepdims=True)  # (G, 1)
        is_best = jnp.any((iou == best_per_gt) & gt_valid[:, None], axis=0)  # (P,)
        matches = jnp.where(is_best, best_gt, matches)
    return matches.astype(jnp.int32)
