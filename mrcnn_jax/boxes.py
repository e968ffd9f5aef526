"""Boxes: area, IoU, clipping, mirroring, and the box coder that turns boxes into regression
deltas and back.

The one box convention of mrcnn_jax, stated here once and tested in tests/test_boxes.py:
boxes are ``(x1, y1, x2, y2)`` float32 in absolute pixels of the model's input image, with
``x1 <= x2`` and ``y1 <= y2``. Images and feature maps are NHWC.

Paper: Faster R-CNN (Ren et al. 2015) section 3.1.2 gives the box parameterisation
(``tx = (x - xa) / wa``, ``tw = log(w / wa)``); Mask R-CNN reuses it for the RPN and box head.

Shape shorthand: ``N``, ``M`` numbers of boxes; ``...`` any leading batch dimensions.
Naming: ``*_deltas`` are encoded regression targets or outputs ``(dx, dy, dw, dh)``.

Degenerate input (documented, never NaN):
- a box with ``x2 < x1`` (or ``y2 < y1``) has zero area here (torchvision would give a negative
  one); its IoU with anything is 0;
- the IoU of two zero-area boxes is 0 (torchvision gives NaN for 0 / 0);
- ``encode_boxes`` floors widths and heights at ``1e-6`` pixel, so a zero-size box (or anchor)
  gives large finite deltas instead of ``-inf``.

Taught in notebooks/01_boxes_iou_and_box_coding.
"""

import math

import jax.numpy as jnp

# log(1000/16): Detectron's clamp on dw, dh before exp, so no box grows beyond 1000/16 times
# its anchor (torchvision _utils.BoxCoder.bbox_xform_clip).
BBOX_XFORM_CLIP = math.log(1000.0 / 16)
RPN_BOX_WEIGHTS = (1.0, 1.0, 1.0, 1.0)
ROI_BOX_WEIGHTS = (10.0, 10.0, 5.0, 5.0)  # torchvision RoIHeads / detectron2 defaults
# Floor on widths/heights in encode_boxes. Not float32 ``tiny``: ``tiny / w`` is subnormal, which
# XLA flushes to 0 (log -> -inf), and ``dx / tiny`` overflows to inf.
_MIN_SIDE = 1e-6


def _check_last_dim(name, boxes):
    if boxes.ndim < 1 or boxes.shape[-1] != 4:
        raise ValueError(
            f"{name} must have shape (..., 4) as (x1, y1, x2, y2); got shape {boxes.shape} "
            f"and dtype {boxes.dtype}"
        )


def box_area(boxes):
    """Area of ``(..., 4)`` xyxy boxes; inverted sides count as zero. Returns ``(...)``."""
    boxes = jnp.asarray(boxes)
    _check_last_dim("boxes", boxes)
    width = jnp.maximum(boxes[..., 2] - boxes[..., 0], 0.0)
    height = jnp.maximum(boxes[..., 3] - boxes[..., 1], 0.0)
    return width * height


def box_iou(boxes1, boxes2):
    """Pairwise intersection over union.

    Args:
      boxes1: ``(N, 4)`` xyxy boxes.
      boxes2: ``(M, 4)`` xyxy boxes.
    Returns:
      ``(N, M)`` IoU in [0, 1]; 0 where the union is empty.

    Taught in notebooks/01_boxes_iou_and_box_coding.
    """
    boxes1, boxes2 = jnp.asarray(boxes1), jnp.asarray(boxes2)
    for name, b in (("boxes1", boxes1), ("boxes2", boxes2)):
        if b.ndim != 2 or b.shape[-1] != 4:
            raise ValueError(f"{name} must have shape (N, 4); got {b.shape} ({b.dtype})")
    area1 = box_area(boxes1)  # (N,)
    area2 = box_area(boxes2)  # (M,)
    top_left = jnp.maximum(boxes1[:, None, :2], boxes2[None, :, :2])  # (N, M, 2)
    bottom_right = jnp.minimum(boxes1[:, None, 2:], boxes2[None, :, 2:])  # (N, M, 2)
    wh = jnp.clip(bottom_right - top_left, 0.0)  # (N, M, 2)
    inter = wh[..., 0] * wh[..., 1]  # (N, M)
    union = area1[:, None] + area2[None, :] - inter  # (N, M)
    safe_union = jnp.where(union > 0, union, 1.0)
    return jnp.where(union > 0, inter / safe_union, 0.0)


def _centre_size(boxes):
    width = boxes[..., 2] - boxes[..., 0]
    height = boxes[..., 3] - boxes[..., 1]
    ctr_x = boxes[..., 0] + 0.5 * width
    ctr_y = boxes[..., 1] + 0.5 * height
    return ctr_x, ctr_y, width, height


def encode_boxes(boxes, anchors, weights=RPN_BOX_WEIGHTS):
    """Deltas that move ``anchors`` onto ``boxes`` (torchvision ``BoxCoder.encode``).

    Args:
      boxes: ``(..., 4)`` target boxes, xyxy.
      anchors: ``(..., 4)`` reference boxes (anchors or proposals), broadcastable to ``boxes``.
      weights: ``(wx, wy, ww, wh)`` multipliers; (1, 1, 1, 1) for the RPN, (10, 10, 5, 5) for
        the box head.
    Returns:
      ``(..., 4)`` deltas ``(dx, dy, dw, dh)``.
    """
    boxes, anchors = jnp.asarray(boxes, jnp.float32), jnp.asarray(anchors, jnp.float32)
    _check_last_dim("boxes", boxes)
    _check_last_dim("anchors", anchors)
    wx, wy, ww, wh = weights
    a_x, a_y, a_w, a_h = _centre_size(anchors)
    g_x, g_y, g_w, g_h = _centre_size(boxes)
    a_w, a_h = jnp.maximum(a_w, _MIN_SIDE), jnp.maximum(a_h, _MIN_SIDE)
    g_w, g_h = jnp.maximum(g_w, _MIN_SIDE), jnp.maximum(g_h, _MIN_SIDE)
    dx = wx * (g_x - a_x) / a_w
    dy = wy * (g_y - a_y) / a_h
    dw = ww * jnp.log(g_w / a_w)
    dh = wh * jnp.log(g_h / a_h)
    return jnp.stack([dx, dy, dw, dh], axis=-1)  # (..., 4)


def decode_boxes(deltas, anchors, weights=RPN_BOX_WEIGHTS, clip=BBOX_XFORM_CLIP):
    """Apply ``deltas`` to ``anchors`` (torchvision ``BoxCoder.decode``): inverse of encode.

    Args:
      deltas: ``(..., 4)`` ``(dx, dy, dw, dh)``.
      anchors: ``(..., 4)`` reference boxes, broadcastable to ``deltas``.
      weights: the same weights the deltas were encoded with.
      clip: upper clamp on ``dw``/``dh`` after dividing by the weights.
    Returns:
      ``(..., 4)`` decoded xyxy boxes.
    """
    deltas, anchors = jnp.asarray(deltas, jnp.float32), jnp.asarray(anchors, jnp.float32)
    _check_last_dim("deltas", deltas)
    _check_last_dim("anchors", anchors)
    wx, wy, ww, wh = weights
    a_x, a_y, a_w, a_h = _centre_size(anchors)
    dx = deltas[..., 0] / wx
    dy = deltas[..., 1] / wy
    dw = jnp.minimum(deltas[..., 2] / ww, clip)
    dh = jnp.minimum(deltas[..., 3] / wh, clip)
    ctr_x = dx * a_w + a_x
    ctr_y = dy * a_h + a_y
    half_w = 0.5 * (jnp.exp(dw) * a_w)
    half_h = 0.5 * (jnp.exp(dh) * a_h)
    return jnp.stack([ctr_x - half_w, ctr_y - half_h, ctr_x + half_w, ctr_y + half_h], axis=-1)


def clip_boxes(boxes, image_size):
    """Clip ``(..., 4)`` boxes to an image of ``image_size = (H, W)`` (torchvision rule)."""
    boxes = jnp.asarray(boxes)
    _check_last_dim("boxes", boxes)
    height, width = image_size
    x = jnp.clip(boxes[..., 0::2], 0.0, width)  # (..., 2)
    y = jnp.clip(boxes[..., 1::2], 0.0, height)  # (..., 2)
    return jnp.stack([x[..., 0], y[..., 0], x[..., 1], y[..., 1]], axis=-1)


def mirror_boxes(boxes, width):
    """Mirror ``(..., 4)`` boxes left to right in an image ``width`` pixels wide:
    ``(x1, x2) -> (width - x2, width - x1)`` (a pixel covers ``[j, j + 1)``; the data pipeline's
    ``transforms.hflip_example`` applies the same rule in numpy)."""
    boxes = jnp.asarray(boxes)
    _check_last_dim("boxes", boxes)
    x1, y1, x2, y2 = (boxes[..., i] for i in range(4))
    return jnp.stack([width - x2, y1, width - x1, y2], axis=-1)
