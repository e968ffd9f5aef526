"""COCO evaluation: box and mask AP/AR equal to pycocotools' ``COCOeval`` ``stats``.

``coco_evaluate`` scores COCO-format detections against COCO-format ground truth with the 12
standard numbers (AP at IoU 0.5:0.95, 0.5 and 0.75; AP for small, medium, large objects; AR
with 1, 10, 100 detections per image; AR for small, medium, large), for boxes (``"bbox"``) and
masks (``"segm"``). It is written here in numpy and tested equal to pycocotools; only RLE
encoding, decoding and polygon rasterising come from ``pycocotools.mask``. The stages:

1. per image and category (a "group"): detections sorted by score (stable, ties keep input
   order) and capped at ``max_dets[-1]``; the IoU of every (detection, ground truth) pair of
   a group, all groups in one array (``coco_masks.py``; masks on their runs);
2. greedy matching at 10 IoU thresholds 0.5:0.05:0.95 and the 4 area ranges in one pass
   (``coco_matching.py``), only in groups where some pair reaches IoU 0.5: elsewhere every
   detection is a false positive, or ignored when outside the area range;
3. per category, area range and cap: 101-point interpolated precision and recall;
4. the 12 numbers: means over the entries that are not ``-1`` ("no ground truth"); ``-1`` if
   all are.

Where pycocotools fails or surprises, this module decides (each tested):

- an empty ``detections`` list gives AP and AR 0 wherever there is ground truth (``-1``
  elsewhere), as if pycocotools accepted it (its ``loadRes`` raises ``IndexError``);
- a detection whose image or category is not in ``ground_truth`` raises ``ValueError``
  (pycocotools asserts on unknown images and silently drops unknown categories);
- a ground-truth annotation whose ``id`` is 0 counts normally (pycocotools stores matches as
  annotation ids with 0 meaning "none", so a match to id 0 there counts as a false positive);
- a detection's area, which decides whether an unmatched detection falls outside an area
  range, is its box's ``w * h`` whenever it has a ``bbox``, also for masks (pycocotools does
  this for every result when the first one has a ``bbox``), else its mask's pixel count;
- caps apply per image *and category*, as in pycocotools; ``AP`` uses ``max_dets[-1]``
  (pycocotools hard-codes 100 there).

Shape shorthand: ``T`` = 10 IoU thresholds, ``R`` = 101 recall levels, ``K`` categories
(sorted ids), ``A`` = 4 area ranges (all, small, medium, large), ``M`` = 3 caps, ``N``
detections and ``G`` ground truth of all images, ``P`` pairs, ``H, W`` image size. Naming:
``gt`` ground truth, ``dt`` detections; boxes are COCO ``[x, y, w, h]`` in COCO dicts and
``xyxy`` (the package convention) in model outputs.

Taught in notebooks/10_inference_and_evaluation.
"""

import numpy as np
from pycocotools import mask as mask_utils

from mrcnn_jax.coco_masks import (
    box_iou_pairs,
    mask_iou_pairs,
    masks_to_rle,
    segmentation_to_rle,
)
from mrcnn_jax.coco_matching import (
    AREA_NAMES,
    AREA_RANGES,
    IOU_THRESHOLDS,
    accumulate,
    match_image_ranges,
)

# Pairs whose masks are read at a time: bounds the memory of the runs (about 100 MB).
_PAIRS_PER_CHUNK = 50_000
STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl",
              "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
# Each summary line: (average precision?, IoU threshold or None for all, area, cap position).
_STAT_ROWS = ((True, None, "all", 2), (True, 0.5, "all", 2), (True, 0.75, "all", 2),
              (True, None, "small", 2), (True, None, "medium", 2), (True, None, "large", 2),
              (False, None, "all", 0), (False, None, "all", 1), (False, None, "all", 2),
              (False, None, "small", 2), (False, None, "medium", 2), (False, None, "large", 2))


def coco_evaluate(ground_truth, detections, iou_types=("bbox", "segm"), max_dets=(1, 10, 100),
                  with_arrays=False):
    """COCO AP/AR of ``detections`` against ``ground_truth``, equal to pycocotools' stats.

    Args:
      ground_truth: COCO dict: ``images`` (``id``; ``height``, ``width`` for polygons),
        ``annotations`` (``id``, ``image_id``, ``category_id``, ``bbox`` [x, y, w, h],
        ``segmentation`` polygons or RLE, ``area``, ``iscrowd`` (0 if absent)), ``categories``
        (``id``). ``area`` decides small/medium/large; ``iscrowd`` regions are ignored.
      detections: list of COCO results: ``image_id``, ``category_id``, ``score``, ``bbox``
        [x, y, w, h] and, for ``"segm"``, ``segmentation`` RLE (a result without one is
        its box, as in pycocotools).
      iou_types: any of ``"bbox"``, ``"segm"``.
      max_dets: 3 increasing caps on detections per image and category.
      with_arrays: also return ``precision`` ``(T, R, K, A, M)``, ``recall`` ``(T, K, A, M)``
        and ``category_ids`` ``(K,)`` for each IoU type (for plotting PR curves).
    Returns:
      ``{iou_type: {"AP": ..., ..., "ARl": ...}}`` with the keys of ``STAT_NAMES`` in the
      order of pycocotools' ``stats``; ``AR1, AR10, AR100`` use ``max_dets[0], [1], [2]``.

    Taught in notebooks/10_inference_and_evaluation.
    """
    max_dets = _check_max_dets(max_dets)
    images, category_ids, gt = _index_ground_truth(ground_truth)
    dt = _index_detections(detections, images, category_ids, max_dets[-1])
    results = {}
    for iou_type in iou_types:
        if iou_type not in ("bbox", "segm"):
            raise ValueError(f"iou_types must be 'bbox' or 'segm'; got {iou_type!r}")
        tp, fp, num_gt = _match_all(gt, dt, images, iou_type, len(category_ids))
        precision, recall = accumulate(dt["score"], tp, fp, dt["group"] % len(category_ids),
                                       dt["rank"], num_gt, max_dets)
        results[iou_type] = _summarize(precision, recall)
        if with_arrays:
            results[iou_type].update(precision=precision, recall=recall,
                                     category_ids=np.asarray(category_ids))
    return results


def _check_max_dets(max_dets):
    caps = tuple(int(m) for m in max_dets)
    if len(caps) != 3 or caps[0] < 1 or list(caps) != sorted(set(caps)):
        raise ValueError(f"max_dets must be 3 increasing positive caps like (1, 10, 100); "
                         f"got {max_dets!r}")
    return caps


def _require(record, keys, what):
    missing = [key for key in keys if key not in record]
    if missing:
        raise ValueError(f"{what} lacks {missing}; got keys {sorted(record)}")


def _groups(image_ids, category_ids, images, category_index):
    """Group number ``image position * K + category index`` (images in id order): ``(N,)``."""
    image_index = {image_id: i for i, image_id in enumerate(sorted(images))}
    return np.array([image_index[i] * len(category_index) + category_index[c]
                     for i, c in zip(image_ids, category_ids, strict=True)], np.int64)


def _index_ground_truth(ground_truth):
    """``{image_id: (H, W)}``, sorted category ids, and the annotations sorted by group.

    The annotations come as a dict: ``anns`` (list), ``group``, ``area``, ``crowd`` (each
    ``(G,)``), sorted by group (image, then category), in input order within a group.
    """
    if not isinstance(ground_truth, dict):
        raise ValueError(f"ground_truth must be a COCO dict; got {type(ground_truth).__name__}")
    _require(ground_truth, ("images", "annotations", "categories"), "ground_truth")
    images = {img["id"]: (img.get("height"), img.get("width")) for img in ground_truth["images"]}
    category_ids = sorted({cat["id"] for cat in ground_truth["categories"]})
    category_index = {cat: k for k, cat in enumerate(category_ids)}
    anns = ground_truth["annotations"]
    for i, ann in enumerate(anns):
        _require(ann, ("image_id", "category_id", "area"), f"ground_truth['annotations'][{i}]")
        if ann["image_id"] not in images or ann["category_id"] not in category_index:
            raise ValueError(f"ground_truth['annotations'][{i}] has image_id "
                             f"{ann['image_id']!r} and category_id {ann['category_id']!r}, "
                             f"one of which is not in ground_truth['images'/'categories']")
    group = _groups([a["image_id"] for a in anns], [a["category_id"] for a in anns], images,
                    category_index)  # (G,)
    order = np.argsort(group, kind="stable")  # (G,)
    anns = [anns[i] for i in order]
    return images, category_ids, {
        "anns": anns, "group": group[order],
        "area": np.array([a["area"] for a in anns], np.float64).reshape(-1),
        "crowd": np.array([bool(a.get("iscrowd", 0)) for a in anns], bool).reshape(-1)}


def _index_detections(detections, images, category_ids, max_det):
    """The detections sorted by group and score, each group's capped at ``max_det``.

    A dict: ``dets`` (list), ``group``, ``score``, ``rank`` (position in its group), each
    ``(N,)``; ties in score keep input order (pycocotools sorts with a stable mergesort).
    """
    if not isinstance(detections, list | tuple):
        raise ValueError(f"detections must be a list of dicts; got {type(detections).__name__}")
    category_index = {cat: k for k, cat in enumerate(category_ids)}
    for i, det in enumerate(detections):
        _require(det, ("image_id", "category_id", "score"), f"detections[{i}]")
        if det["image_id"] not in images:
            raise ValueError(f"detections[{i}] has image_id {det['image_id']!r}, which is not "
                             f"in ground_truth['images']")
        if det["category_id"] not in category_index:
            raise ValueError(f"detections[{i}] has category_id {det['category_id']!r}, which "
                             f"is not in ground_truth['categories'] {category_ids}")
        if not _has_box(det) and "segmentation" not in det:
            raise ValueError(f"detections[{i}] needs a 'bbox' or a 'segmentation'")
    group = _groups([d["image_id"] for d in detections],
                    [d["category_id"] for d in detections], images, category_index)  # (N,)
    score = np.array([d["score"] for d in detections], np.float64).reshape(-1)  # (N,)
    order = np.lexsort((-score, group))  # (N,) stable: by group, then descending score
    group, score = group[order], score[order]
    first = np.searchsorted(group, group)  # (N,) where each detection's group starts
    rank = np.arange(len(group)) - first  # (N,)
    kept = np.flatnonzero(rank < max_det)  # (N',)
    return {"dets": [detections[i] for i in order[kept]], "group": group[kept],
            "score": score[kept], "rank": rank[kept]}


def _has_box(det):
    return det.get("bbox") is not None and len(det["bbox"]) > 0


def _dt_area(det):
    if _has_box(det):
        return float(det["bbox"][2]) * float(det["bbox"][3])
    return float(mask_utils.area(det["segmentation"]))


def _pairs(dt_group, gt_group):
    """Every (detection, ground truth) pair of one image and category: ``(P,)`` indices each,
    detection-major, so each group's pairs form a ``(D_g, G_g)`` block in row-major order."""
    gt_first = np.searchsorted(gt_group, dt_group, side="left")  # (N,)
    gt_count = np.searchsorted(gt_group, dt_group, side="right") - gt_first  # (N,)
    pair_dt = np.repeat(np.arange(len(dt_group)), gt_count)  # (P,)
    offset = np.arange(len(pair_dt)) - np.repeat(np.cumsum(gt_count) - gt_count, gt_count)
    return pair_dt, gt_first[pair_dt] + offset  # (P,), (P,)


def _rle(ann, images, is_gt):
    """An annotation's or detection's region as a compressed RLE."""
    height, width = images[ann["image_id"]]
    if "segmentation" in ann or is_gt:
        return segmentation_to_rle(ann["segmentation"], height, width)
    x, y, w, h = ann["bbox"]  # a box-only result is evaluated as its box's polygon, as in
    return segmentation_to_rle([[x, y, x, y + h, x + w, y + h, x + w, y]], height, width)


def _pair_ious(gt, dt, pair_dt, pair_gt, iou_type, images):
    """IoU of each (detection, ground truth) pair: ``(P,)``."""
    crowd = gt["crowd"][pair_gt]  # (P,)
    if iou_type == "bbox":
        for ann in gt["anns"]:
            _require(ann, ("bbox",), f"ground-truth annotation id {ann.get('id')!r}")
        gt_boxes = np.array([a["bbox"] for a in gt["anns"]], np.float64).reshape(-1, 4)
        dt_boxes = np.array([d["bbox"] if _has_box(d) else mask_utils.toBbox(d["segmentation"])
                             for d in dt["dets"]], np.float64).reshape(-1, 4)  # (N, 4)
        return box_iou_pairs(dt_boxes[pair_dt], gt_boxes[pair_gt], crowd)
    for ann in gt["anns"]:
        if "segmentation" not in ann:
            raise ValueError(f"ground-truth annotation id {ann.get('id')!r} has no "
                             "'segmentation', which 'segm' evaluation needs")
    ious = np.zeros(len(pair_dt))  # (P,)
    for start in range(0, len(pair_dt), _PAIRS_PER_CHUNK):  # bounds the memory of the runs
        chunk = slice(start, start + _PAIRS_PER_CHUNK)
        dt_used, dt_index = np.unique(pair_dt[chunk], return_inverse=True)
        gt_used, gt_index = np.unique(pair_gt[chunk], return_inverse=True)
        dt_rles = [_rle(dt["dets"][i], images, is_gt=False) for i in dt_used]
        gt_rles = [_rle(gt["anns"][i], images, is_gt=True) for i in gt_used]
        ious[chunk] = mask_iou_pairs(dt_rles, gt_rles, dt_index, gt_index, crowd[chunk])
    return ious


def _match_all(gt, dt, images, iou_type, num_categories):
    """Matches of every detection: ``tp, fp (A, T, N)`` and ``num_gt (K, A)``.

    Only groups (image, category) where some pair has IoU >= 0.5 go through
    ``match_image_ranges``; every other detection matches nothing.
    """
    pair_dt, pair_gt = _pairs(dt["group"], gt["group"])  # (P,), (P,)
    ious = _pair_ious(gt, dt, pair_dt, pair_gt, iou_type, images)  # (P,)
    low, high = np.array(AREA_RANGES).T[:, :, None]  # (A, 1) each
    dt_area = np.array([_dt_area(d) for d in dt["dets"]], np.float64).reshape(-1)  # (N,)
    outside = (dt_area < low) | (dt_area > high)  # (A, N)
    tp = np.zeros((len(AREA_RANGES), len(IOU_THRESHOLDS), len(dt_area)), bool)  # (A, T, N)
    fp = np.repeat(~outside[:, None, :], len(IOU_THRESHOLDS), axis=1)  # (A, T, N)
    groups = np.unique(dt["group"][pair_dt[ious >= IOU_THRESHOLDS[0]]])  # groups that can match
    dt_bounds = np.searchsorted(dt["group"], [groups, groups + 1])  # (2, groups)
    gt_bounds = np.searchsorted(gt["group"], [groups, groups + 1])  # (2, groups)
    pair_first = np.searchsorted(pair_dt, dt_bounds[0])  # (groups,)
    for (d0, d1), (g0, g1), p0 in zip(dt_bounds.T, gt_bounds.T, pair_first, strict=True):
        block = ious[p0:p0 + (d1 - d0) * (g1 - g0)].reshape(d1 - d0, g1 - g0)  # (D_g, G_g)
        tp[:, :, d0:d1], fp[:, :, d0:d1], _ = match_image_ranges(
            block, gt["area"][g0:g1], gt["crowd"][g0:g1], dt_area[d0:d1])
    gt_ignore = gt["crowd"] | (gt["area"] < low) | (gt["area"] > high)  # (A, G)
    num_gt = np.stack([np.bincount(gt["group"][~ignore] % num_categories,
                                   minlength=num_categories) for ignore in gt_ignore], 1)
    return tp, fp, num_gt  # num_gt (K, A)


def _mean_present(values):
    """Mean over the entries that are not ``-1``; ``-1`` if there are none."""
    kept = values[values > -1]
    return float(np.mean(kept)) if kept.size else -1.0


def _summarize(precision, recall):
    """The 12 COCO numbers from ``precision (T, R, K, A, M)`` and ``recall (T, K, A, M)``."""
    stats = {}
    for name, (is_ap, iou, area, m) in zip(STAT_NAMES, _STAT_ROWS, strict=True):
        a = AREA_NAMES.index(area)
        t = slice(None) if iou is None else np.flatnonzero(IOU_THRESHOLDS == iou)
        values = precision[t, :, :, a, m] if is_ap else recall[t, :, a, m]
        stats[name] = _mean_present(values)
    return stats


def print_table(results, max_dets=(1, 10, 100)):
    """Print the standard 12-line COCO summary for each IoU type in ``results``.

    Args:
      results: the output of ``coco_evaluate``.
      max_dets: the caps it was given (only printed).

    Taught in notebooks/10_inference_and_evaluation.
    """
    for iou_type, stats in results.items():
        print(f"IoU type: {iou_type}")
        for name, (is_ap, iou, area, m) in zip(STAT_NAMES, _STAT_ROWS, strict=True):
            title = "Average Precision  (AP)" if is_ap else "Average Recall     (AR)"
            iou_text = "0.50:0.95" if iou is None else f"{iou:0.2f}"
            print(f" {title} @[ IoU={iou_text:<9} | area={area:>6s} | "
                  f"maxDets={max_dets[m]:>3d} ] = {stats[name]:0.3f}")


def detections_to_coco(image_id, boxes, scores, labels, masks=None, valid=None,
                       label_to_category_id=None, mask_threshold=0.5):
    """One image's model detections as COCO result dicts (the input of ``coco_evaluate``).

    Args:
      image_id: the COCO image id.
      boxes: ``(D, 4)`` xyxy boxes in the image's pixels.
      scores: ``(D,)`` scores.
      labels: ``(D,)`` contiguous class labels.
      masks: optional ``(D, H, W)`` mask probabilities (foreground where ``> mask_threshold``,
        torchvision's rule) or booleans.
      valid: optional ``(D,)`` booleans; padded slots (False) are dropped.
      label_to_category_id: optional mapping (dict or sequence) label -> COCO category id;
        the label itself when None.
      mask_threshold: probability above which a pixel is foreground.
    Returns:
      a list of dicts with ``image_id``, ``category_id``, ``bbox`` [x, y, w, h], ``score`` and,
      with ``masks``, ``segmentation`` (compressed RLE, JSON-serialisable).

    Taught in notebooks/10_inference_and_evaluation.
    """
    if isinstance(image_id, np.generic):
        image_id = image_id.item()  # a plain int, so the results are JSON-serialisable
    boxes = np.asarray(boxes, np.float64)
    scores, labels = np.asarray(scores).reshape(-1), np.asarray(labels).reshape(-1)
    if boxes.ndim != 2 or boxes.shape[1] != 4 or not len(boxes) == len(scores) == len(labels):
        raise ValueError(f"boxes (D, 4), scores (D,), labels (D,) must agree; got shapes "
                         f"{boxes.shape}, {scores.shape}, {labels.shape}")
    keep = np.ones(len(boxes), bool) if valid is None else np.asarray(valid, bool).reshape(-1)
    if keep.shape != scores.shape:
        raise ValueError(f"valid must have shape {scores.shape}; got {keep.shape}")
    keep = np.flatnonzero(keep)  # (D',)
    rles = None
    if masks is not None:
        masks = np.asarray(masks)
        if masks.ndim != 3 or len(masks) != len(boxes):
            raise ValueError(f"masks must have shape ({len(boxes)}, H, W); got {masks.shape}")
        binary = masks[keep] if masks.dtype == bool else masks[keep] > mask_threshold
        rles = masks_to_rle(binary)  # D' RLEs
    results = []
    for j, i in enumerate(keep):
        x1, y1, x2, y2 = (float(v) for v in boxes[i])
        label = int(labels[i])
        category = label if label_to_category_id is None else label_to_category_id[label]
        result = {"image_id": image_id, "category_id": int(category),
                  "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(scores[i])}
        if rles is not None:
            result["segmentation"] = rles[j]
        results.append(result)
    return results
