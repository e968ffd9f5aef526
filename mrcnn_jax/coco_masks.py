"""COCO regions and their overlaps: RLE conversion, and the IoU that COCO evaluation uses.

COCO stores a region either as a box ``[x, y, w, h]`` or as a segmentation: polygons, an
uncompressed RLE (``counts`` a list of run lengths) or a compressed RLE (``counts`` a string).
Run-length encoding (RLE) walks the ``(H, W)`` mask in column-major order and records the
lengths of alternating runs of 0s and 1s, starting with 0s. This module turns every form into a
compressed RLE with ``pycocotools.mask`` (encoding and polygon rasterising are its job), and
computes the IoU itself in numpy:

- boxes: ``intersection / union`` of ``[x, y, w, h]`` boxes;
- masks: pixel counts read off the runs, never off decoded pixels: ``rle_runs`` reads the runs
  of 1s out of the compressed strings (all masks at once), and ``mask_iou_pairs`` counts each
  pair's shared pixels with one ``searchsorted`` over all runs, so the cost follows the number
  of runs (about the masks' widths), not ``H * W``, as in pycocotools' C ``rleIou``.

Crowd rule (COCO): against a crowd ground truth (``iscrowd=1``, a region holding many objects)
the "union" is the detection's own area, so a detection lying wholly inside the crowd region
has IoU 1 with it whatever the region's size.

Shape shorthand: ``D`` detections, ``G`` ground-truth regions, ``H, W`` image size, ``P`` pairs,
``U, V`` runs of 1s, ``Q`` runs over all pairs. Naming: ``dt_*`` detections, ``gt_*`` ground
truth, ``rle`` a pycocotools RLE dict ``{"size": [H, W], "counts": ...}``.

Taught in notebooks/10_inference_and_evaluation.
"""

import numpy as np
from pycocotools import mask as mask_utils


def masks_to_rle(masks):
    """Encode binary masks as compressed, JSON-serialisable COCO RLEs.

    Args:
      masks: ``(D, H, W)`` booleans (or 0/1 numbers; anything nonzero is foreground).
    Returns:
      a list of ``D`` dicts ``{"size": [H, W], "counts": str}``, the format of COCO results.

    Taught in notebooks/10_inference_and_evaluation.
    """
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError(f"masks must have shape (D, H, W); got {masks.shape} ({masks.dtype})")
    if masks.shape[0] == 0:
        return []
    # pycocotools wants (H, W, D) uint8 in Fortran (column-major) order.
    stacked = np.asfortranarray((masks != 0).transpose(1, 2, 0).astype(np.uint8))  # (H, W, D)
    rles = mask_utils.encode(stacked)
    return [{"size": [int(s) for s in r["size"]], "counts": r["counts"].decode("ascii")}
            for r in rles]


def segmentation_to_rle(segmentation, height, width):
    """Turn a COCO segmentation (polygons, uncompressed or compressed RLE) into a compressed RLE.

    Args:
      segmentation: a list of polygons ``[[x1, y1, x2, y2, ...], ...]``, or an RLE dict whose
        ``counts`` is a list (uncompressed) or a ``str``/``bytes`` (compressed).
      height, width: the image size; polygons are rasterised at it.
    Returns:
      a pycocotools RLE dict (several polygons of one object are merged into one region).
    """
    if isinstance(segmentation, list):
        if height is None or width is None:
            raise ValueError("polygon segmentations need the image's 'height' and 'width' in "
                             "ground_truth['images']")
        return mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    if not isinstance(segmentation, dict) or "counts" not in segmentation:
        raise ValueError("a segmentation must be a list of polygons or an RLE dict with 'size' "
                         f"and 'counts'; got {type(segmentation).__name__}: {segmentation!r:.80}")
    if isinstance(segmentation["counts"], list):
        size = segmentation["size"]
        return mask_utils.frPyObjects(segmentation, size[0], size[1])
    return segmentation


def box_iou_xywh(dt_boxes, gt_boxes, gt_crowd):
    """IoU of COCO ``[x, y, w, h]`` boxes, with the crowd rule.

    Args:
      dt_boxes: ``(D, 4)`` detection boxes.
      gt_boxes: ``(G, 4)`` ground-truth boxes.
      gt_crowd: ``(G,)`` booleans; for a crowd box the union is the detection's area.
    Returns:
      ``(D, G)`` float64 IoU; 0 where the boxes do not overlap with positive width and height.
    """
    dt = np.asarray(dt_boxes, np.float64).reshape(-1, 4)  # (D, 4)
    gt = np.asarray(gt_boxes, np.float64).reshape(-1, 4)  # (G, 4)
    crowd = np.asarray(gt_crowd, bool).reshape(-1)  # (G,)
    return box_iou_pairs(dt[:, None, :], gt[None, :, :], crowd[None, :])  # (D, G)


def box_iou_pairs(dt_boxes, gt_boxes, gt_crowd):
    """``box_iou_xywh`` of aligned pairs: ``(..., 4)``, ``(..., 4)``, ``(...)`` -> ``(...)``."""
    dx, dy, dw, dh = (dt_boxes[..., i] for i in range(4))  # each (...)
    gx, gy, gw, gh = (gt_boxes[..., i] for i in range(4))  # each (...)
    inter_w = np.minimum(dx + dw, gx + gw) - np.maximum(dx, gx)  # (...)
    inter_h = np.minimum(dy + dh, gy + gh) - np.maximum(dy, gy)  # (...)
    overlap = (inter_w > 0) & (inter_h > 0)
    inter = np.where(overlap, inter_w * inter_h, 0.0)  # (...)
    dt_area, gt_area = dw * dh, gw * gh
    union = np.where(gt_crowd, dt_area, dt_area + gt_area - inter)  # (...)
    return np.divide(inter, union, out=np.zeros_like(inter), where=overlap)


def _segment_cumsum(values, segment):
    """Cumulative sums of ``values (N,)`` restarting at each new value of sorted ``segment``."""
    total = np.cumsum(values)  # (N,)
    if len(values) == 0:
        return total
    first = np.flatnonzero(np.r_[True, segment[1:] != segment[:-1]])  # (S,)
    before = (total - values)[first]  # (S,) sum before each segment
    return total - np.repeat(before, np.diff(np.r_[first, len(values)]))  # (N,)


def rle_runs(rles):
    """Foreground runs of compressed RLEs, read from their ``counts`` strings in numpy.

    The string (pycocotools' ``rleToString``) holds one number per run length, 5 bits to a
    character (``chr(48 + bits)``) low bits first, bit ``0x20`` meaning "more characters follow"
    and bit ``0x10`` of the last one the sign; from the third number on, each is stored as the
    difference to the number two places before it. All strings are decoded at once.

    Args:
      rles: ``N`` compressed RLE dicts (``counts`` a ``str`` or ``bytes``).
    Returns:
      ``(starts, lengths, owner)``, each ``(U,)`` int64: the runs of 1s, by mask and then
      position, as column-major pixel index in their mask, and the index of that mask.
    """
    strings = [r["counts"] if isinstance(r["counts"], bytes) else r["counts"].encode("ascii")
               for r in rles]
    chars = np.frombuffer(b"".join(strings), np.uint8).astype(np.int64) - 48  # (C,)
    if len(chars) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
    last = (chars & 0x20) == 0  # (C,) the last character of a number
    number = np.cumsum(last) - last  # (C,) which number each character belongs to
    first_char = np.flatnonzero(np.r_[True, last[:-1]])  # (Z,)
    shift = 5 * (np.arange(len(chars)) - first_char[number])  # (C,) bit position
    value = np.bincount(number, weights=(chars & 0x1F) * 2.0**shift,
                        minlength=len(first_char)).astype(np.int64)  # (Z,) exact below 2^53
    negative = (chars[last] & 0x10) != 0  # (Z,)
    value[negative] -= 2 ** (shift[last][negative] + 5)  # two's complement sign extension
    owner_char = np.repeat(np.arange(len(strings)), [len(s) for s in strings])  # (C,)
    owner = owner_char[last]  # (Z,)
    index = np.arange(len(value)) - np.searchsorted(owner, owner)  # (Z,) position in its mask
    counts = value.copy()
    for parity in (0, 1):  # number m >= 3 is stored as counts[m] - counts[m - 2]
        chained = (index % 2 == parity) & (index >= 1)  # (Z,) 1, 3, 5, ... or 2, 4, ...
        counts[chained] = _segment_cumsum(value[chained], owner[chained])
    ends = _segment_cumsum(counts, owner)  # (Z,) end of each run within its mask
    ones = (index % 2 == 1) & (counts > 0)  # runs alternate 0s, 1s, starting with 0s
    return ends[ones] - counts[ones], counts[ones], owner[ones]


def _covered_before(x, starts, lengths, covered):
    """Count of run pixels before positions ``x``: runs ``starts`` (sorted), ``covered`` their
    exclusive cumulative lengths."""
    run = np.searchsorted(starts, x, side="right") - 1  # (Q,) last run starting at or before x
    safe = np.maximum(run, 0)
    inside = np.minimum(x - starts[safe], lengths[safe])  # (Q,)
    return np.where(run >= 0, covered[safe] + inside, 0)  # (Q,)


def mask_iou_pairs(dt_rles, gt_rles, dt_index, gt_index, gt_crowd):
    """IoU of RLE masks for the pairs ``(dt_rles[dt_index[p]], gt_rles[gt_index[p]])``.

    The intersection is counted on runs, never on pixels: all detection masks are laid end to
    end (mask ``i`` from pixel ``i * S``), so one ``searchsorted`` tells, for every ground-truth
    run shifted into its partner's stretch, how many detection pixels lie before its two ends.

    Args:
      dt_rles: ``D`` detection RLEs.
      gt_rles: ``G`` ground-truth RLEs.
      dt_index, gt_index: ``(P,)`` indices of the pairs; the two masks of a pair must have one
        size.
      gt_crowd: ``(P,)`` booleans; for a crowd region the union is the detection's area.
    Returns:
      ``(P,)`` float64 IoU; 0 where the masks share no pixel.
    """
    dt_index, gt_index = np.asarray(dt_index, np.int64), np.asarray(gt_index, np.int64)
    dt_sizes = np.array([r["size"] for r in dt_rles], np.int64).reshape(-1, 2)  # (D, 2)
    gt_sizes = np.array([r["size"] for r in gt_rles], np.int64).reshape(-1, 2)  # (G, 2)
    if len(dt_index) and np.any(dt_sizes[dt_index] != gt_sizes[gt_index]):
        p = int(np.flatnonzero(np.any(dt_sizes[dt_index] != gt_sizes[gt_index], axis=1))[0])
        raise ValueError(f"detection and ground-truth masks of one image must have one size; "
                         f"got {dt_sizes[dt_index[p]].tolist()} and "
                         f"{gt_sizes[gt_index[p]].tolist()} (pycocotools would give IoU -1)")
    dt_starts, dt_lengths, dt_owner = rle_runs(dt_rles)  # (U,) each
    gt_starts, gt_lengths, gt_owner = rle_runs(gt_rles)  # (V,) each
    dt_area = np.bincount(dt_owner, weights=dt_lengths, minlength=len(dt_rles))  # (D,)
    gt_area = np.bincount(gt_owner, weights=gt_lengths, minlength=len(gt_rles))  # (G,)
    stretch = int(np.prod(dt_sizes, axis=1).max(initial=0)) + 1  # S
    starts = dt_starts + dt_owner * stretch  # (U,) sorted: by mask, then position
    covered = np.cumsum(dt_lengths) - dt_lengths  # (U,)
    # every ground-truth run of every pair: pair q_pair, run q_run
    gt_first = np.searchsorted(gt_owner, np.arange(len(gt_rles)))  # (G,)
    num_runs = np.bincount(gt_owner, minlength=len(gt_rles))[gt_index]  # (P,)
    q_pair = np.repeat(np.arange(len(gt_index)), num_runs)  # (Q,)
    q_run = np.arange(len(q_pair)) - np.repeat(np.cumsum(num_runs) - num_runs, num_runs)
    q_run += gt_first[gt_index][q_pair]  # (Q,)
    q_start = gt_starts[q_run] + dt_index[q_pair] * stretch  # (Q,)
    q_end = q_start + gt_lengths[q_run]  # (Q,)
    inside = (_covered_before(q_end, starts, dt_lengths, covered)
              - _covered_before(q_start, starts, dt_lengths, covered))  # (Q,)
    inter = np.bincount(q_pair, weights=inside, minlength=len(gt_index)).astype(np.float64)
    dt_pair_area = dt_area[dt_index]  # (P,)
    union = np.where(np.asarray(gt_crowd, bool), dt_pair_area,
                     dt_pair_area + gt_area[gt_index] - inter)  # (P,)
    return np.divide(inter, union, out=np.zeros_like(inter), where=inter > 0)


def mask_iou(dt_rles, gt_rles, gt_crowd):
    """IoU of RLE masks, counted in pixels, with the crowd rule.

    Args:
      dt_rles: ``D`` detection RLEs (compressed).
      gt_rles: ``G`` ground-truth RLEs (compressed), all of the detections' size.
      gt_crowd: ``(G,)`` booleans; for a crowd region the union is the detection's area.
    Returns:
      ``(D, G)`` float64 IoU; 0 where the masks share no pixel.
    """
    crowd = np.asarray(gt_crowd, bool).reshape(-1)  # (G,)
    num_d, num_g = len(dt_rles), len(gt_rles)
    dt_index, gt_index = np.divmod(np.arange(num_d * num_g), max(num_g, 1))  # (D * G,) each
    ious = mask_iou_pairs(dt_rles, gt_rles, dt_index, gt_index, crowd[gt_index])
    return ious.reshape(num_d, num_g)
