"""COCO regions and their overlaps: RLE conversion, and the IoU that COCO evaluation uses.

COCO stores a region either as a box ``[x, y, w, h]`` or as a segmentation: polygons, an
uncompressed RLE (``counts`` a list of run lengths) or a compressed RLE (``counts`` a string).
Run-length encoding (RLE) walks the ``(H, W)`` mask in column-major order and records the
lengths of alternating runs of 0s and 1s, starting with 0s. This module turns every form into a
compressed RLE with ``pycocotools.mask`` (encoding and polygon rasterising are its job), and
computes the IoU itself in numpy:

- boxes: ``intersection / union`` of ``[x, y, w, h]`` boxes;
- masks: pixel counts of decoded masks, packed 64 pixels to a word so that 100 detections on a
  640x480 image take 4 MB, with the intersection counted by ``np.bitwise_count``.

Crowd rule (COCO): against a crowd ground truth (``iscrowd=1``, a region holding many objects)
the "union" is the detection's own area, so a detection lying wholly inside the crowd region
has IoU 1 with it whatever the region's size.

Shape shorthand: ``D`` detections, ``G`` ground-truth regions, ``H, W`` image size, ``P`` packed
64-pixel words per mask. Naming: ``dt_*`` detections, ``gt_*`` ground truth, ``rle`` a
pycocotools RLE dict ``{"size": [H, W], "counts": ...}``.

Taught in notebooks/10_inference_and_evaluation.
"""

import warnings

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
    dx, dy, dw, dh = (dt[:, None, i] for i in range(4))  # each (D, 1)
    gx, gy, gw, gh = (gt[None, :, i] for i in range(4))  # each (1, G)
    inter_w = np.minimum(dx + dw, gx + gw) - np.maximum(dx, gx)  # (D, G)
    inter_h = np.minimum(dy + dh, gy + gh) - np.maximum(dy, gy)  # (D, G)
    overlap = (inter_w > 0) & (inter_h > 0)
    inter = np.where(overlap, inter_w * inter_h, 0.0)  # (D, G)
    dt_area, gt_area = dw * dh, gw * gh
    union = np.where(crowd[None, :], dt_area, dt_area + gt_area - inter)  # (D, G)
    return np.divide(inter, union, out=np.zeros_like(inter), where=overlap)


def _packed_masks(rles):
    """Decode RLEs of one size into ``(N, P)`` uint64 words of 64 pixels and ``(N,)`` areas."""
    with warnings.catch_warnings():  # pycocotools' decode predates numpy 2's copy keyword
        warnings.filterwarnings("ignore", "__array__ implementation", DeprecationWarning)
        dense = mask_utils.decode(list(rles))  # (H, W, N) uint8
    flat = dense.reshape(-1, dense.shape[-1], order="F").T  # (N, H*W), column-major pixels
    packed = np.packbits(flat, axis=1)  # (N, ceil(H*W / 8)) uint8
    packed = np.pad(packed, ((0, 0), (0, -packed.shape[1] % 8)))  # (N, 8 * P)
    areas = flat.sum(axis=1, dtype=np.int64)  # (N,)
    return np.ascontiguousarray(packed).view(np.uint64), areas  # (N, P), (N,)


def mask_iou(dt_rles, gt_rles, gt_crowd):
    """IoU of RLE masks, counted in pixels, with the crowd rule.

    Args:
      dt_rles: ``D`` detection RLEs.
      gt_rles: ``G`` ground-truth RLEs, all of the detections' size.
      gt_crowd: ``(G,)`` booleans; for a crowd region the union is the detection's area.
    Returns:
      ``(D, G)`` float64 IoU; 0 where the masks share no pixel.
    """
    crowd = np.asarray(gt_crowd, bool).reshape(-1)  # (G,)
    if len(dt_rles) == 0 or len(gt_rles) == 0:
        return np.zeros((len(dt_rles), len(gt_rles)))
    sizes = {tuple(int(s) for s in r["size"]) for r in list(dt_rles) + list(gt_rles)}
    if len(sizes) != 1:
        raise ValueError(f"detection and ground-truth masks of one image must have one size; "
                         f"got sizes {sorted(sizes)} (pycocotools would give IoU -1)")
    dt_bits, dt_area = _packed_masks(dt_rles)  # (D, P), (D,)
    gt_bits, gt_area = _packed_masks(gt_rles)  # (G, P), (G,)
    inter = np.stack([np.bitwise_count(dt_bits & g).sum(axis=1, dtype=np.int64)
                      for g in gt_bits], axis=1)  # (D, G)
    union = np.where(crowd[None, :], dt_area[:, None],
                     dt_area[:, None] + gt_area[None, :] - inter)  # (D, G)
    inter = inter.astype(np.float64)
    return np.divide(inter, union, out=np.zeros_like(inter), where=inter > 0)
