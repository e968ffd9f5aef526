"""Check for notebooks/07_roi_heads: mask targets.

The student function has the signature of ``mrcnn_jax.roi_heads.mask_targets``::

    mask_targets(gt_masks (B, G, Hm, Wm), gt_boxes (B, G, 4), rois (B, R, 4),
                 matched_gt (B, R), image_size, mask_size, sampling_ratio,
                 binary=False, aligned=False) -> (B, R, M, M)

each RoI's matched ground-truth mask cut out with RoIAlign at ``M x M``; ``gt_masks`` are
either full-image masks (``(Hm, Wm) == image_size``) or masks cropped to their box.
"""

import jax
import numpy as np

from mrcnn_jax.course.boxes import random_boxes
from mrcnn_jax.course.core import call, call_jit, compare, describe_inputs, exercise
from mrcnn_jax.roi_align import roi_align
from mrcnn_jax.roi_heads import mask_targets as _package_mask_targets

oracle_mask_targets = jax.jit(_package_mask_targets, static_argnames=(
    "image_size", "mask_size", "sampling_ratio", "binary", "aligned"))


def _box_masks(boxes, image_size):
    """``(B, G, H, W)`` float32 masks, each a filled rectangle of its box (rounded)."""
    height, width = image_size
    ys = np.arange(height)[:, None] + 0.5
    xs = np.arange(width)[None, :] + 0.5
    b = np.asarray(boxes)[..., None, None]
    return ((xs >= b[..., 0, :, :]) & (xs < b[..., 2, :, :]) & (ys >= b[..., 1, :, :])
            & (ys < b[..., 3, :, :])).astype(np.float32)


def _mistakes(args, kwargs):
    masks, boxes, rois, matched = args[:4]

    def oracle(**changes):
        merged = dict(zip(("gt_masks", "gt_boxes", "rois", "matched_gt", "image_size",
                           "mask_size", "sampling_ratio"), args, strict=True), **kwargs)
        merged.update(changes)
        return np.asarray(oracle_mask_targets(**merged))

    r, g = rois.shape[1], boxes.shape[1]
    cropped = tuple(masks.shape[2:]) != tuple(args[4])
    unshifted = ()
    if cropped and not kwargs.get("aligned", False):
        unshifted = (("a crop cell's value sits at its centre: with aligned=False shift the RoIs "
                      "by half an image pixel (rois + 0.5) and cut the crop with aligned=True",
                      lambda: _unshifted_crop_targets(args, kwargs)),)
    return unshifted + (
        ("torchvision's targets are soft (the RoIAlign average); threshold at 0.5 only when "
         "binary=True", lambda: oracle(binary=not kwargs.get("binary", False))),
        ("each RoI takes the mask of *its matched* ground truth: gt_masks[b, matched_gt[b, r]]",
         lambda: oracle(matched_gt=np.broadcast_to(np.arange(r) % g, matched.shape))),
        ("aligned=True cuts with the half-pixel shift (roi_align(..., aligned=True)); "
         "aligned=False without", lambda: oracle(aligned=not kwargs.get("aligned", False))),
    )


def _unshifted_crop_targets(args, kwargs):
    """The common mistake on cropped masks: RoIs mapped into the crop and cut with
    ``aligned=False``, half an image pixel off what full masks give."""
    masks, boxes, rois, matched, _, size, ratio = args
    owner = np.take_along_axis(np.asarray(boxes), np.asarray(matched)[..., None], axis=1)
    scale = np.float32(masks.shape[3:1:-1]) / np.maximum(owner[..., 2:] - owner[..., :2], 1e-3)
    local = (np.asarray(rois) - np.tile(owner[..., :2], 2)) * np.tile(scale, 2)
    b, g = masks.shape[:2]
    which = (np.arange(b)[:, None] * g + np.asarray(matched)).reshape(-1)
    cut = roi_align(np.asarray(masks, np.float32).reshape(b * g, *masks.shape[2:], 1),
                    local.reshape(-1, 4).astype(np.float32), which, (size, size), 1.0, ratio,
                    False)
    targets = np.asarray(cut).reshape(b, -1, size, size)
    return (targets >= 0.5).astype(np.float32) if kwargs.get("binary") else targets


@exercise("mask_targets")
def check_mask_targets(fn):
    """Check ``fn(gt_masks, gt_boxes, rois, matched_gt, image_size, mask_size,
    sampling_ratio, binary=False, aligned=False) -> (B, R, M, M)``."""
    def run(case, masks, boxes, rois, matched, image_size, size, ratio, jit=False, **kwargs):
        args = (np.asarray(masks, np.float32), np.asarray(boxes, np.float32),
                np.asarray(rois, np.float32), np.asarray(matched, np.int32), image_size, size,
                ratio)
        inputs = describe_inputs(args, kwargs, names=(
            "gt_masks", "gt_boxes", "rois", "matched_gt", "image_size", "mask_size",
            "sampling_ratio"))
        if jit:
            got = call_jit(case, fn, *args, static_argnums=(4, 5, 6), **kwargs)
        else:
            got = call(case, fn, *args, **kwargs)
        compare(case, got, np.asarray(oracle_mask_targets(*args, **kwargs)), inputs,
                rtol=1e-4, atol=1e-4, mistakes=_mistakes(args, kwargs))

    boxes = np.array([[[2, 2, 6, 6], [0, 4, 8, 8]]], np.float32)
    masks = _box_masks(boxes, (8, 8))
    run("hand example: an 8 x 8 image, a 4 x 4 square mask, an RoI on its box and one "
        "shifted right by 2", masks, boxes, [[[2, 2, 6, 6], [4, 2, 8, 6]]], [[0, 0]], (8, 8),
        4, 2)
    rng = np.random.default_rng(9)
    boxes = random_boxes(rng, 6, high=14.0, min_size=3.0, max_size=10.0).reshape(2, 3, 4)
    masks = _box_masks(boxes, (16, 16))
    rois = random_boxes(rng, 8, high=14.0, min_size=2.0, max_size=10.0).reshape(2, 4, 4)
    matched = np.array([[0, 2, 1, 1], [2, 0, 0, 1]], np.int32)
    run("random RoIs on full-image masks, 2 images, 3 ground truths each, M = 6, under "
        "jax.jit", masks, boxes, rois, matched, (16, 16), 6, 2, jit=True)
    run("binary targets (detectron2): thresholded at 0.5", masks, boxes, rois, matched,
        (16, 16), 6, 2, jit=True, binary=True)
    run("aligned=True", masks, boxes, rois, matched, (16, 16), 6, 2, jit=True, aligned=True)
    cropped = rng.uniform(size=(2, 3, 8, 8)).astype(np.float32)
    run("masks cropped to their ground-truth box at 8 x 8 (not full images)", cropped, boxes,
        rois, matched, (16, 16), 6, 2, jit=True)
    run("RoIs partly outside the image", masks, boxes,
        np.array([[[-4, -4, 6, 6], [10, 10, 20, 20], [0, 0, 16, 16], [5, 5, 5, 5]]] * 2,
                 np.float32), matched, (16, 16), 4, 2, jit=True)
