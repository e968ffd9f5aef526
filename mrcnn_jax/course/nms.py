"""Check for notebooks/03_nms: fixed-shape greedy NMS.

Student signature: ``nms(boxes (N, 4), scores (N,), iou_threshold, max_output_size) ->
(indices (K,) int, valid (K,) bool)`` as ``mrcnn_jax.nms``. Valid slots must hold the kept
boxes in descending score order (ties: lower index first), equal to
``torchvision.ops.nms(...)[:K]``; the index in a padded slot is not checked.
"""

import numpy as np

from mrcnn_jax.course.boxes import random_boxes
from mrcnn_jax.course.core import call, call_jit, compare, describe_inputs, exercise
from mrcnn_jax.nms import nms as oracle_nms


def _pad(kept, k):
    kept = list(kept)[:k]
    indices = np.zeros(k, np.int32)
    indices[:len(kept)] = kept
    return indices, np.arange(k) < len(kept)


def _iou(boxes):
    from mrcnn_jax.boxes import box_iou
    return np.asarray(box_iou(boxes, boxes))


def _one_pass(boxes, scores, thr, k):
    """Mistake: a box is dropped if *any* higher-scoring box overlaps it, kept or not."""
    order = np.argsort(-scores, kind="stable")
    iou = _iou(boxes)
    kept = [i for n, i in enumerate(order) if not any(iou[i, j] > thr for j in order[:n])]
    return _pad(kept, k)


def _greedy(boxes, scores, thr, k, strict=True, order=None):
    order = np.argsort(-scores, kind="stable") if order is None else order
    iou = _iou(boxes)
    kept = []
    for i in order:
        over = [iou[i, j] > thr if strict else iou[i, j] >= thr for j in kept]
        if not any(over):
            kept.append(int(i))
    return _pad(kept, k)


def _mistakes(boxes, scores, thr, k):
    return (
        ("a box suppressed earlier must not suppress others: compare each candidate only with "
         "the boxes already *kept*, visiting in score order", lambda: _one_pass(boxes, scores,
                                                                               thr, k)),
        ("suppress when IoU is strictly above the threshold (> iou_threshold), not >=",
         lambda: _greedy(boxes, scores, thr, k, strict=False)),
        ("ties in score: the lower index comes first (a stable sort of -scores, not "
         "argsort(scores)[::-1])", lambda: _greedy(boxes, scores, thr, k,
                                                   order=np.argsort(scores, kind="stable")[::-1])),
    )


@exercise("nms")
def check_nms(fn):
    """Check ``fn(boxes, scores, iou_threshold, max_output_size) -> (indices, valid)``."""
    def run(case, boxes, scores, thr, k, jit=False):
        boxes, scores = np.asarray(boxes, np.float32), np.asarray(scores, np.float32)
        inputs = describe_inputs((boxes, scores, thr, k),
                                 names=("boxes", "scores", "iou_threshold", "max_output_size"))
        if jit:
            got = call_jit(case, fn, boxes, scores, thr, k, static_argnums=(2, 3))
        else:
            got = call(case, fn, boxes, scores, thr, k)
        if not (isinstance(got, (tuple, list)) and len(got) == 2):
            raise AssertionError(f"case '{case}': return (indices, valid), two arrays of "
                                 f"length max_output_size; got {type(got).__name__}")
        indices, valid = (np.asarray(g) for g in got)
        exp_indices, exp_valid = (np.asarray(e) for e in oracle_nms(boxes, scores, thr, k))
        mistakes = _mistakes(boxes, scores, thr, k)
        compare(case, valid, exp_valid, inputs, what="valid (which slots hold a kept box)",
                mistakes=[(h, lambda f=f: f()[1]) for h, f in mistakes])
        if indices.shape != exp_indices.shape:
            compare(case, indices, exp_indices, inputs, what="indices")
        compare(case, np.where(valid, indices, -1), np.where(exp_valid, exp_indices, -1),
                inputs, what="indices (padded slots shown as -1)",
                mistakes=[(h, lambda f=f: np.where(f()[1], f()[0], -1)) for h, f in mistakes])

    run("hand example: two overlapping boxes and a separate one, threshold 0.5",
        [[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30]], [0.9, 0.8, 0.7], 0.5, 3)
    run("a chain: A suppresses B, B would suppress C, so C is kept",
        [[0, 0, 10, 10], [4, 0, 14, 10], [8, 0, 18, 10]], [0.9, 0.8, 0.7], 0.3, 3)
    rng = np.random.default_rng(3)
    boxes = random_boxes(rng, 30, high=60.0, min_size=5.0, max_size=30.0)
    run("30 random boxes, threshold 0.5, 10 slots", boxes, rng.uniform(size=30), 0.5, 10)
    run("30 random boxes under jax.jit, threshold 0.3, 8 slots", boxes,
        rng.uniform(size=30), 0.3, 8, jit=True)
    run("fewer kept boxes than slots: padding with valid False",
        [[0, 0, 10, 10], [0, 0, 10, 10]], [0.5, 0.6], 0.5, 4)
    run("IoU exactly at the threshold (0.5) is kept", [[0, 0, 3, 1], [1, 0, 4, 1]],
        [0.9, 0.8], 0.5, 2)
    run("tied scores: lower index first", [[0, 0, 10, 10], [30, 30, 40, 40], [1, 0, 11, 10]],
        [0.5, 0.5, 0.5], 0.5, 3)
    run("zero-area boxes overlap nothing", [[5, 5, 5, 5], [5, 5, 5, 5], [0, 0, 10, 10]],
        [0.9, 0.8, 0.7], 0.5, 3)
