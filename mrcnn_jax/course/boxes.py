"""Checks for notebooks/01_boxes_iou_and_box_coding: ``box_iou``, ``encode_boxes``,
``decode_boxes``.

Each student function has the signature of the package's public function (``mrcnn_jax.box_iou``
and so on), and the package is the oracle on random inputs.
"""

import numpy as np

import mrcnn_jax.boxes as oracle
from mrcnn_jax.course.core import call, call_jit, compare, describe_inputs, exercise

_RNG_SEED = 0


def random_boxes(rng, n, low=0.0, high=100.0, min_size=1.0, max_size=60.0):
    """``(n, 4)`` float32 xyxy boxes with sides in ``[min_size, max_size]``."""
    xy = rng.uniform(low, high, (n, 2))
    wh = rng.uniform(min_size, max_size, (n, 2))
    return np.concatenate([xy, xy + wh], axis=1).astype(np.float32)


def _xywh_iou(b1, b2):
    """What box_iou gives when boxes are read as (x, y, w, h)."""
    def to_xyxy(b):
        return np.concatenate([b[:, :2], b[:, :2] + b[:, 2:]], axis=1)
    return np.asarray(oracle.box_iou(to_xyxy(b1), to_xyxy(b2)))


def _plus_one_iou(b1, b2):
    """IoU with Detectron's legacy ``+1`` on widths and heights."""
    def area(b):
        return (b[:, 2] - b[:, 0] + 1) * (b[:, 3] - b[:, 1] + 1)
    lt = np.maximum(b1[:, None, :2], b2[None, :, :2])
    rb = np.minimum(b1[:, None, 2:], b2[None, :, 2:])
    wh = np.clip(rb - lt + 1, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    with np.errstate(divide="ignore", invalid="ignore"):
        return inter / (area(b1)[:, None] + area(b2)[None, :] - inter)


def _unclamped_iou(b1, b2):
    """IoU without clamping the intersection's sides at 0."""
    lt = np.maximum(b1[:, None, :2], b2[None, :, :2])
    rb = np.minimum(b1[:, None, 2:], b2[None, :, 2:])
    wh = rb - lt
    inter = wh[..., 0] * wh[..., 1]
    a1 = np.asarray(oracle.box_area(b1))
    a2 = np.asarray(oracle.box_area(b2))
    with np.errstate(divide="ignore", invalid="ignore"):  # a mistake model may divide by 0
        return inter / (a1[:, None] + a2[None, :] - inter)


def _iou_mistakes(b1, b2):
    return (
        ("the boxes are (x1, y1, x2, y2) corners, not (x, y, width, height): width is x2 - x1",
         lambda: _xywh_iou(b1, b2)),
        ("no +1 on widths and heights: boxes are continuous, a box [0, 0, 2, 2] has area 4 "
         "(the +1 is old Detectron's pixel-index convention)", lambda: _plus_one_iou(b1, b2)),
        ("clamp the intersection's width and height at 0 (jnp.maximum(..., 0)): for boxes that "
         "do not overlap both can be negative, and their product positive",
         lambda: _unclamped_iou(b1, b2)),
    )


def _check_iou_case(fn, case, b1, b2, jit=False):
    b1, b2 = np.asarray(b1, np.float32), np.asarray(b2, np.float32)
    got = call_jit(case, fn, b1, b2) if jit else call(case, fn, b1, b2)
    expected = np.asarray(oracle.box_iou(b1, b2))
    compare(case, got, expected, describe_inputs((b1, b2), names=("boxes1", "boxes2")),
            mistakes=_iou_mistakes(b1, b2))


@exercise("box_iou")
def check_box_iou(fn):
    """Check ``fn(boxes1 (N, 4), boxes2 (M, 4)) -> (N, M)`` IoU of xyxy boxes."""
    _check_iou_case(fn, "hand example: [0, 0, 2, 2] and [1, 1, 3, 3] overlap in 1 of 7",
                    [[0, 0, 2, 2]], [[1, 1, 3, 3]])
    rng = np.random.default_rng(_RNG_SEED)
    _check_iou_case(fn, "random boxes", random_boxes(rng, 7), random_boxes(rng, 5))
    _check_iou_case(fn, "random boxes under jax.jit", random_boxes(rng, 6), random_boxes(rng, 4),
                    jit=True)
    _check_iou_case(fn, "boxes far apart (IoU 0)", [[0, 0, 10, 10]], [[20, 30, 40, 50]])
    _check_iou_case(fn, "identical boxes (IoU 1) and a box inside another",
                    [[10, 10, 50, 30]], [[10, 10, 50, 30], [20, 15, 30, 25]])
    _check_iou_case(fn, "zero-area boxes: IoU 0, never NaN",
                    [[5, 5, 5, 5], [0, 0, 10, 0]], [[5, 5, 5, 5], [0, 0, 10, 10]])
    _check_iou_case(fn, "empty input: no boxes1", np.zeros((0, 4)), [[0, 0, 1, 1]])
    _check_iou_case(fn, "boxes outside the image (negative coordinates)",
                    [[-20, -10, 5, 5]], [[-15, -15, 0, 0], [0, 0, 5, 5]])


def _encode_mistakes(boxes, anchors, weights):
    def corners():  # deltas from top-left corners instead of centres
        a_w, a_h = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
        g_w, g_h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        return np.stack([weights[0] * (boxes[:, 0] - anchors[:, 0]) / a_w,
                         weights[1] * (boxes[:, 1] - anchors[:, 1]) / a_h,
                         weights[2] * np.log(g_w / a_w), weights[3] * np.log(g_h / a_h)], 1)

    def plus_one():
        return np.asarray(oracle.encode_boxes(boxes + np.array([0, 0, 1, 1], np.float32),
                                              anchors + np.array([0, 0, 1, 1], np.float32),
                                              weights))

    return (
        ("the weights (wx, wy, ww, wh) multiply the deltas: dx = wx * (gx - ax) / aw",
         lambda: np.asarray(oracle.encode_boxes(boxes, anchors))),
        ("the weights multiply, not divide, when encoding (decode divides)",
         lambda: np.asarray(oracle.encode_boxes(boxes, anchors))
         / np.asarray(weights, np.float32)),
        ("dx and dy move the box *centre*: use x1 + 0.5 * width, not x1", corners),
        ("dw = log(box width / anchor width): the ratio is the other way round",
         lambda: np.asarray(oracle.encode_boxes(boxes, anchors, weights))
         * np.array([1, 1, -1, -1], np.float32)),
        ("no +1 on widths and heights: width is x2 - x1", plus_one),
    )


@exercise("encode_boxes")
def check_encode_boxes(fn):
    """Check ``fn(boxes (..., 4), anchors (..., 4), weights=(1, 1, 1, 1)) -> deltas (..., 4)``
    (torchvision ``BoxCoder.encode``)."""
    def run(case, boxes, anchors, weights, jit=False):
        boxes, anchors = np.asarray(boxes, np.float32), np.asarray(anchors, np.float32)
        inputs = describe_inputs((boxes, anchors, weights), names=("boxes", "anchors", "weights"))
        if jit:
            got = call_jit(case, fn, boxes, anchors, static_argnums=(2,), weights=weights)
        else:
            got = call(case, fn, boxes, anchors, weights)
        expected = np.asarray(oracle.encode_boxes(boxes, anchors, weights))
        compare(case, got, expected, inputs, rtol=1e-4, atol=1e-4,
                mistakes=_encode_mistakes(boxes, anchors, weights))

    run("hand example: anchor [20, 20, 60, 60] onto box [10, 25, 90, 65], weights 1",
        [[10, 25, 90, 65]], [[20, 20, 60, 60]], (1.0, 1.0, 1.0, 1.0))
    run("hand example with the box head's weights (10, 10, 5, 5)",
        [[10, 25, 90, 65]], [[20, 20, 60, 60]], (10.0, 10.0, 5.0, 5.0))
    rng = np.random.default_rng(_RNG_SEED + 1)
    run("random boxes and anchors, weights (10, 10, 5, 5)", random_boxes(rng, 8),
        random_boxes(rng, 8), (10.0, 10.0, 5.0, 5.0))
    run("random boxes under jax.jit", random_boxes(rng, 5), random_boxes(rng, 5),
        (1.0, 1.0, 1.0, 1.0), jit=True)
    run("leading batch dimensions (2, 3, 4)", random_boxes(rng, 6).reshape(2, 3, 4),
        random_boxes(rng, 6).reshape(2, 3, 4), (1.0, 1.0, 1.0, 1.0))
    run("box equal to its anchor: zero deltas", [[3, 4, 30, 40]], [[3, 4, 30, 40]],
        (1.0, 1.0, 1.0, 1.0))
    run("empty input", np.zeros((0, 4)), np.zeros((0, 4)), (1.0, 1.0, 1.0, 1.0))


def _decode_mistakes(deltas, anchors, weights, clip):
    def no_clip():
        return np.asarray(oracle.decode_boxes(deltas, anchors, weights, clip=np.inf))

    return (
        ("clamp dw and dh at `clip` (log(1000/16)) before exp: a large delta otherwise "
         "explodes the box (or gives inf)", no_clip),
        ("divide the deltas by the weights before using them (encode multiplied by them)",
         lambda: np.asarray(oracle.decode_boxes(deltas, anchors, (1.0, 1.0, 1.0, 1.0), clip))),
        ("dx, dy move the anchor's centre (x1 + 0.5 * w), and the result is xyxy corners",
         lambda: np.asarray(oracle.decode_boxes(deltas, anchors, weights, clip))
         + np.concatenate([-0.5 * (anchors[:, 2:] - anchors[:, :2])] * 2, axis=1)),
    )


@exercise("decode_boxes")
def check_decode_boxes(fn):
    """Check ``fn(deltas (..., 4), anchors (..., 4), weights=(1, 1, 1, 1),
    clip=log(1000/16)) -> boxes (..., 4)`` (torchvision ``BoxCoder.decode``)."""
    clip = oracle.BBOX_XFORM_CLIP

    def run(case, deltas, anchors, weights, jit=False):
        deltas, anchors = np.asarray(deltas, np.float32), np.asarray(anchors, np.float32)
        inputs = describe_inputs((deltas, anchors, weights, clip),
                                 names=("deltas", "anchors", "weights", "clip"))
        if jit:
            got = call_jit(case, fn, deltas, anchors, static_argnums=(2, 3), weights=weights,
                           clip=clip)
        else:
            got = call(case, fn, deltas, anchors, weights, clip)
        expected = np.asarray(oracle.decode_boxes(deltas, anchors, weights, clip))
        compare(case, got, expected, inputs, rtol=1e-4, atol=1e-3,
                mistakes=_decode_mistakes(deltas, anchors, weights, clip))

    run("hand example: deltas (0.25, 0.125, log 2, 0) on anchor [20, 20, 60, 60]",
        [[0.25, 0.125, np.log(2.0), 0.0]], [[20, 20, 60, 60]], (1.0, 1.0, 1.0, 1.0))
    rng = np.random.default_rng(_RNG_SEED + 2)
    anchors = random_boxes(rng, 8)
    boxes = random_boxes(rng, 8)
    weights = (10.0, 10.0, 5.0, 5.0)
    run("decode(encode(box)) = box, weights (10, 10, 5, 5)",
        np.asarray(oracle.encode_boxes(boxes, anchors, weights)), anchors, weights)
    run("random deltas", rng.normal(0, 0.5, (8, 4)), anchors, (1.0, 1.0, 1.0, 1.0))
    run("random deltas under jax.jit", rng.normal(0, 0.5, (5, 4)), anchors[:5], weights,
        jit=True)
    run("huge dw, dh: clamped at log(1000/16)", [[0.0, 0.0, 10.0, 12.0], [0, 0, -3.0, 9.0]],
        [[0, 0, 16, 16], [10, 10, 20, 30]], (1.0, 1.0, 1.0, 1.0))
    run("leading batch dimensions (2, 2, 4)", rng.normal(0, 0.5, (2, 2, 4)),
        anchors[:4].reshape(2, 2, 4), (1.0, 1.0, 1.0, 1.0))
