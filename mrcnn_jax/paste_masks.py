"""Paste masks: put each ``M x M`` mask prediction back into the full image at its box.

Paper: Mask R-CNN section 3.1 ("Inference"): the m x m mask is resized to the RoI size and
binarised at 0.5. torchvision's rule (``roi_heads.paste_masks_in_image``) is followed exactly,
so imported weights give the same masks:
1. pad the mask with a one-cell border of zeros and grow the box by ``(M + 2) / M`` about its
   centre, so the mask fades to 0 at the box edge instead of being cut;
2. truncate the grown box to integers ``(x0, y0, x1, y1)`` and resize the padded mask to
   ``(y1 - y0 + 1, x1 - x0 + 1)`` (at least 1) with bilinear interpolation, half-pixel centres
   (``F.interpolate(..., align_corners=False)``);
3. write it at ``(x0, y0)``, clipped to the image; zero elsewhere.
Returns probabilities; threshold at 0.5 afterwards.

Bilinear resizing is separable, so each mask is pasted with two small matrix products:
``rows (H, M+2) @ mask (M+2, M+2) @ cols (M+2, W)``, static shapes, no per-box Python loop.

Shape shorthand: ``D`` detections, ``M`` mask size, ``H, W`` image size.
Taught in notebooks/10_inference_and_evaluation.
"""

import jax
import jax.numpy as jnp


def _resize_matrix(start, end, in_size, out_size):
    """``(D, out_size, in_size)`` bilinear weights placing a resized axis on ``[start, end]``.

    Image pixel ``p`` in ``[start, end]`` reads coordinate ``u = p - start`` of the mask resized
    to ``length = max(end - start + 1, 1)``; ``u`` maps to ``(u + 0.5) * in / length - 0.5`` in
    the mask (clamped at 0), interpolated between its two neighbours (torchvision's upsample
    rule). An inverted box (``end < start``) pastes nothing, as in torchvision.
    """
    length = jnp.maximum(end - start + 1, 1)  # TO_REMOVE = 1 in torchvision
    pixels = jnp.arange(out_size, dtype=jnp.int32)  # (P,)
    u = pixels[None, :] - start[:, None]  # (D, P)
    inside = (u >= 0) & (pixels[None, :] <= end[:, None])
    ratio = jnp.float32(in_size) / length.astype(jnp.float32)  # (D,)
    src = jnp.maximum((u.astype(jnp.float32) + 0.5) * ratio[:, None] - 0.5, 0.0)  # (D, P)
    low = jnp.floor(src).astype(jnp.int32)
    high = jnp.minimum(low + 1, in_size - 1)
    frac = src - low.astype(jnp.float32)
    low = jnp.minimum(low, in_size - 1)
    cells = jnp.arange(in_size, dtype=jnp.int32)  # (in,)
    weight = (1.0 - frac)[..., None] * (cells == low[..., None]) + frac[..., None] * (
        cells == high[..., None]
    )  # (D, P, in)
    return jnp.where(inside[..., None], weight, 0.0)


def _exact_resize_matrix(start, end, in_size, out_size):
    """``(D, out_size, in_size)`` bilinear weights spreading ``in_size`` cells over the float
    interval ``[start, end]``: pixel ``p`` (centre ``p + 0.5``) reads mask coordinate
    ``(p + 0.5 - start) / (end - start) * in_size - 0.5`` between its two neighbours, a
    neighbour outside the mask counting as 0 (``grid_sample``, zero padding, half-pixel
    centres). No rounding of the box, so a 12-pixel box is not off by up to a pixel."""
    length = jnp.maximum(end - start, 1e-6)  # (D,) an empty box reads far outside: all 0
    centres = jnp.arange(out_size, dtype=jnp.float32) + 0.5  # (P,)
    src = (centres[None, :] - start[:, None]) / length[:, None] * in_size - 0.5  # (D, P)
    low = jnp.floor(src)
    frac = src - low
    cells = jnp.arange(in_size, dtype=jnp.float32)  # (in,) a cell outside matches nothing
    return (1.0 - frac)[..., None] * (cells == low[..., None]) + frac[..., None] * (
        cells == low[..., None] + 1.0)  # (D, P, in)


PASTE_RULES = ("torchvision", "exact")


def paste_masks(masks, boxes, image_size, rule="torchvision"):
    """Paste ``(D, M, M)`` mask probabilities into ``(D, H, W)`` images.

    Args:
      masks: ``(D, M, M)`` probabilities of each detection's class.
      boxes: ``(D, 4)`` xyxy detection boxes in image pixels.
      image_size: ``(H, W)`` static output size.
      rule: ``"torchvision"`` (the module docstring's rule: grown box truncated to integers,
        imported weights give torchvision's masks) or ``"exact"`` (detectron2's
        ``paste_masks_in_image``: the ``M x M`` cells cover the float box exactly, bilinear,
        fading to 0 half a cell outside the box; better for boxes a few pixels wide).
    Returns:
      ``(D, H, W)`` float32 probabilities, 0 outside each (grown) box.

    Taught in notebooks/10_inference_and_evaluation.
    """
    masks = jnp.asarray(masks, jnp.float32)
    boxes = jnp.asarray(boxes, jnp.float32)
    if masks.ndim != 3 or masks.shape[1] != masks.shape[2]:
        raise ValueError(f"masks must have shape (D, M, M); got {masks.shape} ({masks.dtype})")
    if boxes.shape != (masks.shape[0], 4):
        raise ValueError(f"boxes must have shape (D, 4) = ({masks.shape[0]}, 4); got {boxes.shape}")
    if rule not in PASTE_RULES:
        raise ValueError(f"rule must be one of {PASTE_RULES}; got {rule!r}")
    height, width = (int(v) for v in image_size)
    m = masks.shape[1]
    highest = jax.lax.Precision.HIGHEST  # no TF32/bf16 shortcuts on GPU/TPU
    if rule == "exact":
        rows = _exact_resize_matrix(boxes[:, 1], boxes[:, 3], m, height)  # (D, H, M)
        cols = _exact_resize_matrix(boxes[:, 0], boxes[:, 2], m, width)  # (D, W, M)
        pasted = jnp.einsum("dhi,dij->dhj", rows, masks, precision=highest)  # (D, H, M)
        return jnp.einsum("dhj,dwj->dhw", pasted, cols, precision=highest)  # (D, H, W)
    padded = jnp.pad(masks, ((0, 0), (1, 1), (1, 1)))  # (D, M+2, M+2)
    scale = (m + 2.0) / m  # grow the box so the zero border lands just outside it
    half_w = (boxes[:, 2] - boxes[:, 0]) * 0.5 * scale
    half_h = (boxes[:, 3] - boxes[:, 1]) * 0.5 * scale
    ctr_x = (boxes[:, 2] + boxes[:, 0]) * 0.5
    ctr_y = (boxes[:, 3] + boxes[:, 1]) * 0.5
    grown = jnp.stack([ctr_x - half_w, ctr_y - half_h, ctr_x + half_w, ctr_y + half_h], axis=1)
    grown = jnp.trunc(grown).astype(jnp.int32)  # (D, 4), as torchvision's .to(int64)
    rows = _resize_matrix(grown[:, 1], grown[:, 3], m + 2, height)  # (D, H, M+2)
    cols = _resize_matrix(grown[:, 0], grown[:, 2], m + 2, width)  # (D, W, M+2)
    pasted = jnp.einsum("dhi,dij->dhj", rows, padded, precision=highest)  # (D, H, M+2)
    return jnp.einsum("dhj,dwj->dhw", pasted, cols, precision=highest)  # (D, H, W)
