"""COCO matching and accumulation: from per-image IoU to precision/recall tables.

The two stages of COCO's evaluation after the IoU (``coco_masks.py``), written in numpy with
the semantics of pycocotools' ``COCOeval.evaluateImg`` and ``accumulate``:

1. ``match_image``: in one image and one category, detections in descending score order each
   take the best still-free ground truth with IoU >= the threshold (ties: the later one in
   ground-truth order). Ground truth that is ignored (crowd, or area outside the area range)
   sits after the rest and is matched only when no regular one is; a crowd region may take any
   number of detections. A detection matched to ignored ground truth is ignored, and so is an
   unmatched detection whose own area is outside the range. Done for all ``T`` IoU thresholds
   at once, one detection at a time.
2. ``accumulate``: per category, area range and detection cap, the detections of all images
   are ranked by score, and cumulative true/false positives give precision and recall.
   Precision is made non-increasing from the right (the "interpolated" precision of PASCAL
   VOC 2010+), then read at 101 recall levels 0, 0.01, ..., 1: the precision of the first
   rank whose recall reaches the level, 0 if none does. ``-1`` marks "no ground truth here".

Shape shorthand: ``T`` IoU thresholds, ``R`` recall levels, ``K`` categories, ``A`` area
ranges, ``M`` detection caps, ``D`` detections, ``G`` ground truth (of one image and category).
Naming: ``dt_*`` detections, ``gt_*`` ground truth, ``tp``/``fp`` true/false positives.

Taught in notebooks/10_inference_and_evaluation.
"""

import numpy as np

# np.linspace, not np.arange (whose steps overshoot): values equal pycocotools' bit for bit, so
# IoUs and recalls that land exactly on a threshold are treated the same.
IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)  # (T,)
RECALL_THRESHOLDS = np.linspace(0.0, 1.0, 101)  # (R,)
# COCO's object sizes in pixels of area: all, small < 32^2, medium 32^2..96^2, large > 96^2
# (both ends inclusive, as in pycocotools).
AREA_RANGES = ((0.0, 1e5**2), (0.0, 32.0**2), (32.0**2, 96.0**2), (96.0**2, 1e5**2))
AREA_NAMES = ("all", "small", "medium", "large")


def _last_best(values):
    """Index of the largest of each row, the last one on ties, and whether it is finite."""
    flipped = values[:, ::-1]  # (T, G)
    index = values.shape[1] - 1 - np.argmax(flipped, axis=1)  # (T,)
    return index, np.isfinite(values[np.arange(len(values)), index])  # (T,), (T,)


def match_image(ious, gt_area, gt_crowd, dt_area, area_range):
    """Greedy COCO matching in one image and category for one area range.

    Args:
      ious: ``(D, G)`` IoU, detections already in descending score order.
      gt_area: ``(G,)`` ground-truth areas (the annotations' ``area``).
      gt_crowd: ``(G,)`` booleans, crowd regions.
      dt_area: ``(D,)`` detection areas.
      area_range: ``(low, high)`` inclusive.
    Returns:
      ``(tp (T, D) bool, fp (T, D) bool, num_gt)`` with ``num_gt`` the count of ground truth
      that is not ignored.
    """
    low, high = area_range
    gt_ignore = gt_crowd | (gt_area < low) | (gt_area > high)  # (G,)
    order = np.argsort(gt_ignore, kind="stable")  # regular ground truth first
    ious, gt_ignore, gt_crowd = ious[:, order], gt_ignore[order], gt_crowd[order]
    num_t, (num_d, num_g) = len(IOU_THRESHOLDS), ious.shape
    matched = np.zeros((num_t, num_d), bool)
    dt_ignore = np.zeros((num_t, num_d), bool)
    gt_taken = np.zeros((num_t, num_g), bool)
    # pycocotools caps the threshold just below 1 so that a perfect overlap always matches.
    thresholds = np.minimum(IOU_THRESHOLDS, 1 - 1e-10)[:, None]  # (T, 1)
    rows = np.arange(num_t)
    for d in range(num_d if num_g else 0):
        free = (ious[d][None, :] >= thresholds) & ~(gt_taken & ~gt_crowd)  # (T, G)
        regular = np.where(free & ~gt_ignore, ious[d], -np.inf)  # (T, G)
        ignored = np.where(free & gt_ignore, ious[d], -np.inf)  # (T, G)
        best_regular, has_regular = _last_best(regular)  # (T,), (T,)
        best_ignored, has_ignored = _last_best(ignored)  # (T,), (T,)
        best = np.where(has_regular, best_regular, best_ignored)  # (T,)
        found = has_regular | has_ignored  # (T,)
        gt_taken[rows[found], best[found]] = True
        matched[:, d] = found
        dt_ignore[:, d] = found & gt_ignore[best]
    outside = (dt_area < low) | (dt_area > high)  # (D,)
    dt_ignore |= ~matched & outside[None, :]
    return matched & ~dt_ignore, ~matched & ~dt_ignore, int(np.sum(~gt_ignore))


def precision_recall(scores, tp, fp, num_gt):
    """Interpolated precision at the recall levels, and the final recall, for one setting.

    Args:
      scores: ``(N,)`` scores of the detections of all images.
      tp, fp: ``(T, N)`` booleans (an ignored detection is neither).
      num_gt: count of ground truth that is not ignored, > 0.
    Returns:
      ``(precision (T, R), recall (T,))``.
    """
    order = np.argsort(-scores, kind="stable")  # pycocotools: mergesort, ties by image order
    tp_sum = np.cumsum(tp[:, order], axis=1).astype(np.float64)  # (T, N)
    fp_sum = np.cumsum(fp[:, order], axis=1).astype(np.float64)  # (T, N)
    num_d = len(scores)
    precision = np.zeros((len(tp), len(RECALL_THRESHOLDS)))  # (T, R)
    if num_d == 0:
        return precision, np.zeros(len(tp))
    recall = tp_sum / num_gt  # (T, N)
    # np.spacing(1): pycocotools' guard against 0 / 0, kept so values match to the last bit.
    prec = tp_sum / (fp_sum + tp_sum + np.spacing(1))  # (T, N)
    prec = np.maximum.accumulate(prec[:, ::-1], axis=1)[:, ::-1]  # non-increasing
    for t in range(len(tp)):
        index = np.searchsorted(recall[t], RECALL_THRESHOLDS, side="left")  # (R,)
        reached = index < num_d
        precision[t, reached] = prec[t, index[reached]]
    return precision, recall[:, -1]


def accumulate(per_image, num_categories, max_dets):
    """Precision and recall tables from the per-image matches (pycocotools' ``accumulate``).

    Args:
      per_image: dict ``(k, a) -> list`` over images (in image-id order) of
        ``(scores (D,), tp (T, D), fp (T, D), num_gt)``, detections in descending score order
        and already capped at ``max(max_dets)``.
      num_categories: ``K``.
      max_dets: the ``M`` caps on detections per image and category, increasing.
    Returns:
      ``(precision (T, R, K, A, M), recall (T, K, A, M))``, ``-1`` where a category has no
      ground truth in the area range.
    """
    shape = (len(IOU_THRESHOLDS), num_categories, len(AREA_RANGES), len(max_dets))
    precision = -np.ones(shape[:1] + (len(RECALL_THRESHOLDS),) + shape[1:])  # (T, R, K, A, M)
    recall = -np.ones(shape)  # (T, K, A, M)
    for (k, a), images in per_image.items():
        num_gt = sum(image[3] for image in images)
        if num_gt == 0:
            continue
        for m, cap in enumerate(max_dets):
            scores = np.concatenate([image[0][:cap] for image in images])  # (N,)
            tp = np.concatenate([image[1][:, :cap] for image in images], axis=1)  # (T, N)
            fp = np.concatenate([image[2][:, :cap] for image in images], axis=1)  # (T, N)
            precision[:, :, k, a, m], recall[:, k, a, m] = precision_recall(scores, tp, fp,
                                                                            num_gt)
    return precision, recall
