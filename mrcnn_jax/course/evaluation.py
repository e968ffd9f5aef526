"""Checks for notebooks/10_inference_and_evaluation: pasting masks, COCO matching, and AP from a
precision-recall curve.

- ``paste_masks(masks (D, M, M), boxes (D, 4), image_size) -> (D, H, W)`` as
  ``mrcnn_jax.paste_masks`` (torchvision's rule: pad one zero cell, grow the box by
  ``(M + 2) / M``, truncate to integers, resize bilinearly with half-pixel centres).
- ``coco_match(ious (D, G), iou_threshold) -> tp (D,) bool``: detections already in descending
  score order each take the best ground truth that is still *free* with IoU >= the threshold
  (ties: the later ground truth, as pycocotools); no crowd regions, no area ranges. Oracle:
  ``coco_matching.match_image``.
- ``average_precision(recall (N,), precision (N,)) -> float``: COCO's 101-point AP of one
  ranked list (recall non-decreasing, precision ``tp / rank`` at each rank): make precision
  non-increasing from the right, read it at recall levels 0, 0.01, ..., 1 at the first rank
  whose recall reaches the level (0 if none does), average. Oracle:
  ``coco_matching.precision_recall``.

Evaluation runs in numpy after the model, so these two have no ``jit`` case.
"""

import jax
import numpy as np

from mrcnn_jax.coco_matching import AREA_RANGES, IOU_THRESHOLDS, match_image, precision_recall
from mrcnn_jax.course.core import call, call_jit, compare, describe_inputs, exercise
from mrcnn_jax.paste_masks import paste_masks as _package_paste

oracle_paste = jax.jit(_package_paste, static_argnames=("image_size", "rule"))


def _paste_plain(masks, boxes, image_size):
    """Mistake: resize the mask into the truncated box itself (no zero border, no growing)."""
    import jax.numpy as jnp

    from mrcnn_jax.paste_masks import _resize_matrix
    b = jnp.trunc(jnp.asarray(boxes)).astype(jnp.int32)
    m = masks.shape[1]
    rows = _resize_matrix(b[:, 1], b[:, 3], m, image_size[0])
    cols = _resize_matrix(b[:, 0], b[:, 2], m, image_size[1])
    return np.asarray(jnp.einsum("dhi,dij,dwj->dhw", rows, jnp.asarray(masks), cols))


@exercise("paste_masks")
def check_paste_masks(fn):
    """Check ``fn(masks (D, M, M), boxes (D, 4), image_size (H, W)) -> (D, H, W)``."""
    def run(case, masks, boxes, image_size, jit=False):
        masks, boxes = np.asarray(masks, np.float32), np.asarray(boxes, np.float32)
        inputs = describe_inputs((masks, boxes, image_size),
                                 names=("masks", "boxes", "image_size"))
        got = (call_jit(case, fn, masks, boxes, image_size, static_argnums=(2,)) if jit
               else call(case, fn, masks, boxes, image_size))
        compare(case, got, np.asarray(oracle_paste(masks, boxes, image_size)), inputs,
                rtol=1e-4, atol=1e-4, mistakes=(
                    ("torchvision pads the mask with one zero cell and grows the box by "
                     "(M + 2) / M about its centre before resizing, so the mask fades out at "
                     "the box edge", lambda: _paste_plain(masks, boxes, image_size)),
                    ("that is detectron2's exact rule; this exercise follows torchvision's "
                     "(grown box truncated to integers)",
                     lambda: np.asarray(oracle_paste(masks, boxes, image_size, rule="exact"))),
                ))

    run("hand example: a 2 x 2 mask of ones into the box [2, 2, 6, 6] of an 8 x 8 image",
        np.ones((1, 2, 2)), [[2, 2, 6, 6]], (8, 8))
    rng = np.random.default_rng(13)
    masks = rng.uniform(size=(4, 7, 7))
    boxes = np.array([[1.5, 2.2, 12.7, 9.1], [0, 0, 24, 20], [10, 3, 14, 18], [5, 5, 9, 7]])
    run("random 7 x 7 masks into a 20 x 24 image, under jax.jit", masks, boxes, (20, 24),
        jit=True)
    run("boxes partly outside the image, and a zero-area box", masks[:3],
        [[-6, -4, 8, 9], [15, 12, 40, 30], [6, 6, 6, 6]], (20, 24), jit=True)


def _coco_oracle(ious, threshold):
    ious = np.asarray(ious, np.float64)
    d, g = ious.shape
    tp, _, _ = match_image(ious, np.full(g, 100.0), np.zeros(g, bool), np.full(d, 100.0),
                           AREA_RANGES[0])
    return tp[int(np.argmin(np.abs(IOU_THRESHOLDS - threshold)))]


def _voc_match(ious, threshold):
    """Mistake: each detection takes its best ground truth overall; if taken, a false
    positive."""
    taken, tp = set(), []
    for row in np.asarray(ious):
        best = int(np.argmax(row)) if row.size else -1
        ok = best >= 0 and row[best] >= threshold and best not in taken
        tp.append(ok)
        if ok:
            taken.add(best)
    return np.array(tp, bool)


def _reuse_match(ious, threshold):
    """Mistake: ground truth never marked taken: every detection with IoU >= thr is a TP."""
    ious = np.asarray(ious)
    return (ious >= threshold).any(axis=1) if ious.shape[1] else np.zeros(len(ious), bool)


@exercise("coco_match")
def check_coco_match(fn):
    """Check ``fn(ious (D, G), iou_threshold) -> tp (D,) bool`` (module docstring)."""
    def run(case, ious, threshold):
        ious = np.asarray(ious, np.float64)
        inputs = describe_inputs((ious, threshold), names=("ious", "iou_threshold"))
        got = call(case, fn, ious, threshold)
        compare(case, np.asarray(got).astype(bool) if np.asarray(got).dtype.kind in "biu"
                else got, _coco_oracle(ious, threshold), inputs, what="tp", mistakes=(
                    ("COCO matching: when a detection's best ground truth is already taken, it "
                     "takes the best *free* one (IoU >= threshold) instead of becoming a false "
                     "positive (that is VOC-style)", lambda: _voc_match(ious, threshold)),
                    ("a ground truth can be matched only once: mark it taken",
                     lambda: _reuse_match(ious, threshold)),
                    ("a match needs IoU >= threshold (not >)",
                     lambda: (_coco_oracle(np.where(ious == threshold, 0.0, ious),
                                           threshold))),
                ))

    run("hand example: 3 detections (by score), 2 ground truths, threshold 0.5",
        [[0.9, 0.1], [0.8, 0.6], [0.4, 0.2]], 0.5)
    run("the best ground truth is taken: the detection takes the next free one",
        [[0.7, 0.0], [0.9, 0.55]], 0.5)
    rng = np.random.default_rng(14)
    run("random IoUs, 8 detections, 4 ground truths, threshold 0.5",
        rng.uniform(size=(8, 4)) ** 2, 0.5)
    run("the same at threshold 0.75", rng.uniform(size=(8, 4)) ** 0.5, 0.75)
    run("IoU exactly at the threshold matches", [[0.5, 0.0], [0.5, 0.5]], 0.5)
    run("no ground truth: every detection is a false positive", np.zeros((3, 0)), 0.5)
    run("no detections", np.zeros((0, 2)), 0.5)


def _curve(tp, num_gt):
    tp = np.asarray(tp, bool)
    ranks = np.arange(1, len(tp) + 1)
    return np.cumsum(tp) / num_gt, np.cumsum(tp) / ranks


def _ap_oracle(tp, num_gt):
    tp = np.asarray(tp, bool)
    scores = -np.arange(len(tp), dtype=np.float64)  # already ranked
    precision, _ = precision_recall(scores, tp[None], ~tp[None], num_gt)
    return np.float64(precision[0].mean())


def _ap_mistakes(recall, precision):
    def interpolated():
        return np.maximum.accumulate(precision[::-1])[::-1] if len(precision) else precision

    def at_levels(levels, prec, side="left"):
        index = np.searchsorted(recall, levels, side=side)
        return np.where(index < len(recall), prec[np.minimum(index, max(len(prec) - 1, 0))]
                        if len(prec) else 0.0, 0.0)

    def voc11():
        return np.mean([interpolated()[recall >= t].max() if np.any(recall >= t) else 0.0
                        for t in np.linspace(0, 1, 11)])

    def area():
        r = np.concatenate([[0.0], recall])
        return np.sum((r[1:] - r[:-1]) * interpolated())

    levels = np.linspace(0, 1, 101)
    return (
        ("COCO reads precision at 101 recall levels 0, 0.01, ..., 1, not VOC 2007's 11",
         voc11),
        ("make precision non-increasing from the right first (the running maximum from the "
         "end, np.maximum.accumulate on the reversed array)",
         lambda: np.mean(at_levels(levels, precision))),
        ("COCO samples the curve at 101 recall levels; the area under the interpolated curve "
         "(VOC 2010+) differs", area),
        ("at each level take the first rank whose recall *reaches* the level (>=, "
         "searchsorted side='left')",
         lambda: np.mean(at_levels(levels, interpolated(), side="right"))),
    )


@exercise("average_precision")
def check_average_precision(fn):
    """Check ``fn(recall (N,), precision (N,)) -> float`` (module docstring)."""
    def run(case, tp, num_gt):
        recall, precision = _curve(tp, num_gt)
        inputs = describe_inputs((recall, precision), names=("recall", "precision"))
        got = np.asarray(call(case, fn, recall, precision), np.float64)
        compare(case, got.reshape(()) if got.size == 1 else got, _ap_oracle(tp, num_gt), inputs,
                rtol=1e-6, atol=1e-6, what="AP", mistakes=_ap_mistakes(recall, precision))

    run("hand example: ranks TP, FP, TP with 2 ground truths", [1, 0, 1], 2)
    run("a dip in precision that interpolation removes: TP FP FP TP TP, 4 ground truths",
        [1, 0, 0, 1, 1], 4)
    rng = np.random.default_rng(15)
    run("random ranking of 40 detections, 25 ground truths", rng.uniform(size=40) < 0.5, 25)
    run("random ranking of 17 detections, 7 ground truths", rng.uniform(size=17) < 0.4, 7)
    run("perfect ranking: AP 1", [1, 1, 1, 0, 0], 3)
    run("recall never reaches 1 (missed ground truth)", [1, 1, 0], 5)
    run("no true positive: AP 0", [0, 0, 0], 2)
    run("no detections: AP 0", [], 3)
