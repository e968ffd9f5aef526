"""COCO matching and accumulation: from per-image IoU to precision/recall tables.

The two stages of COCO's evaluation after the IoU (``coco_masks.py``), written in numpy with
the semantics of pycocotools' ``COCOeval.evaluateImg`` and ``accumulate``:

1. ``match_image``: in one image and one category, detections in descending score order each
   take the best still-free ground truth with IoU >= the threshold (ties: the later one in
   ground-truth order). Ground truth that is ignored (crowd, or area outside the area range)
   sits after the rest and is matched only when no regular one is; a crowd region may take any
   number of detections. A detection matched to ignored ground truth is ignored, and so is an
   unmatched detection whose own area is outside the range. Done for all ``T`` IoU thresholds
   at once, and for all area ranges at once (``match_image_ranges``), one detection at a time
   (only those with IoU >= 0.5 with some ground truth: the others match nothing).
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
    """Index of the largest along the last axis, the last one on ties, and whether it is
    finite: ``(..., G)`` -> ``(...)``, ``(...)``."""
    index = values.shape[-1] - 1 - np.argmax(values[..., ::-1], axis=-1)  # (...)
    return index, np.isfinite(np.max(values, axis=-1))  # (...), (...)


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
    tp, fp, num_gt = match_image_ranges(ious, gt_area, gt_crowd, dt_area, (area_range,))
    return tp[0], fp[0], int(num_gt[0])


def match_image_ranges(ious, gt_area, gt_crowd, dt_area, area_ranges=AREA_RANGES):
    """``match_image`` for several area ranges at once (one pass over the detections).

    Only detections with IoU >= the lowest threshold with some ground truth can match, so the
    loop visits those alone; the others are false positives (or ignored, when outside the range).

    Args:
      ious, gt_area, gt_crowd, dt_area: as ``match_image``.
      area_ranges: ``A`` pairs ``(low, high)``, inclusive.
    Returns:
      ``(tp (A, T, D) bool, fp (A, T, D) bool, num_gt (A,) int)``.
    """
    ious = np.asarray(ious, np.float64)
    gt_crowd = np.asarray(gt_crowd, bool)  # (G,)
    gt_area, dt_area = np.asarray(gt_area, np.float64), np.asarray(dt_area, np.float64)
    low, high = np.asarray(area_ranges, np.float64).T[:, :, None]  # (A, 1) each
    gt_ignore = gt_crowd | (gt_area < low) | (gt_area > high)  # (A, G)
    num_a, num_t, (num_d, num_g) = len(low), len(IOU_THRESHOLDS), ious.shape
    matched = np.zeros((num_a, num_t, num_d), bool)
    dt_ignore = np.zeros((num_a, num_t, num_d), bool)
    gt_taken = np.zeros((num_a, num_t, num_g), bool)
    # pycocotools caps the threshold just below 1 so that a perfect overlap always matches.
    thresholds = np.minimum(IOU_THRESHOLDS, 1 - 1e-10)[:, None]  # (T, 1)
    regular_gt, ignored_gt = ~gt_ignore[:, None, :], gt_ignore[:, None, :]  # (A, 1, G) each
    rows = np.indices((num_a, num_t))  # (2, A, T)
    candidates = np.flatnonzero(np.any(ious >= thresholds[0], axis=1)) if num_g else []
    for d in candidates:
        free = (ious[d] >= thresholds) & ~(gt_taken & ~gt_crowd)  # (A, T, G)
        regular = np.where(free & regular_gt, ious[d], -np.inf)  # (A, T, G)
        ignored = np.where(free & ignored_gt, ious[d], -np.inf)  # (A, T, G)
        best_regular, has_regular = _last_best(regular)  # (A, T), (A, T)
        best_ignored, has_ignored = _last_best(ignored)  # (A, T), (A, T)
        best = np.where(has_regular, best_regular, best_ignored)  # (A, T)
        found = has_regular | has_ignored  # (A, T)
        gt_taken[rows[0][found], rows[1][found], best[found]] = True
        matched[:, :, d] = found
        dt_ignore[:, :, d] = found & gt_ignore[rows[0], best]
    outside = (dt_area < low) | (dt_area > high)  # (A, D)
    dt_ignore |= ~matched & outside[:, None, :]
    return matched & ~dt_ignore, ~matched & ~dt_ignore, np.sum(~gt_ignore, axis=1)


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


def accumulate(dt_scores, dt_tp, dt_fp, dt_category, dt_rank, num_gt, max_dets):
    """Precision and recall tables from the matches of all images (pycocotools' ``accumulate``).

    Args:
      dt_scores: ``(N,)`` scores of the detections of all images, in image-id order and, within
        an image and category, in descending score order, capped at ``max(max_dets)``.
      dt_tp, dt_fp: ``(A, T, N)`` booleans from ``match_image_ranges``.
      dt_category: ``(N,)`` category index in ``[0, K)``.
      dt_rank: ``(N,)`` position of each detection in its image and category by score.
      num_gt: ``(K, A)`` count of ground truth that is not ignored.
      max_dets: the ``M`` caps on detections per image and category, increasing.
    Returns:
      ``(precision (T, R, K, A, M), recall (T, K, A, M))``, ``-1`` where a category has no
      ground truth in the area range.
    """
    num_k, num_a = num_gt.shape
    shape = (len(IOU_THRESHOLDS), num_k, num_a, len(max_dets))
    precision = -np.ones(shape[:1] + (len(RECALL_THRESHOLDS),) + shape[1:])  # (T, R, K, A, M)
    recall = -np.ones(shape)  # (T, K, A, M)
    by_category = np.argsort(dt_category, kind="stable")  # (N,) keeps image and rank order
    bounds = np.searchsorted(dt_category[by_category], np.arange(num_k + 1))  # (K + 1,)
    for k in np.flatnonzero(np.any(num_gt > 0, axis=1)):
        dets = by_category[bounds[k]:bounds[k + 1]]  # (N_k,)
        for m, cap in enumerate(max_dets):
            kept = dets[dt_rank[dets] < cap]  # (N_km,)
            for a in np.flatnonzero(num_gt[k] > 0):
                precision[:, :, k, a, m], recall[:, k, a, m] = precision_recall(
                    dt_scores[kept], dt_tp[a][:, kept], dt_fp[a][:, kept], num_gt[k, a])
    return precision, recall
