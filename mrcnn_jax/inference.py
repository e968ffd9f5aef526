"""Inference: ``predict(model, images)`` in one jit, from pixels to padded detections.

Mask R-CNN section 3.1 ("Inference"): proposals (test-time top-n), box head on them,
postprocessing to at most ``D`` detections per image, then the mask head runs on the detected
boxes only, each mask's own class is taken and pasted into the image. With
``roi_heads.mask_flip_test`` each mask is also predicted on the mirrored image and mirrored box
and the two probabilities are averaged (test-time flip augmentation for masks, as detectron2's
``GeneralizedRCNNWithTTA`` does; one more backbone pass).

Shape shorthand: ``B`` images, ``H, W`` input size, ``D`` detections, ``K`` classes.
Taught in notebooks/10_inference_and_evaluation.
"""

import jax

from mrcnn_jax import xla_cpu
from mrcnn_jax.boxes import mirror_boxes
from mrcnn_jax.paste_masks import paste_masks
from mrcnn_jax.postprocess import detect_boxes, select_mask_channel


def predict_raw(model, images):
    """Detections without the pasted masks: boxes, scores, labels, valid and ``mask_probs``
    ``(B, D, M, M)`` in each box's frame."""
    heads = model.config.roi_heads
    features = model.features(images)
    out = detections(model, features)  # each (B, D, ...)
    out["mask_probs"] = mask_probs(model, features, out["boxes"], out["labels"])
    if heads.mask_flip_test:
        flipped = mirrored_mask_probs(model, images, out["boxes"], out["labels"])
        out["mask_probs"] = 0.5 * (out["mask_probs"] + flipped)  # (B, D, M, M)
    return out


def detections(model, features):
    """Proposals, the box head on them and postprocessing: ``boxes (B, D, 4)``, ``scores``,
    ``labels`` and ``valid (B, D)``, best first (no masks)."""
    cfg, heads = model.config, model.config.roi_heads
    rpn = model.proposals(features, training=False)
    b, p = rpn["proposals"].shape[:2]
    class_logits, box_deltas = model.box_head(model.pool(features, rpn["proposals"],
                                                         heads.box_roi_size, "gather"))
    detect = lambda cl, bd, pr, pv: detect_boxes(cl, bd, pr, pv, cfg.image_size, heads)
    return jax.vmap(detect)(class_logits.reshape(b, p, -1), box_deltas.reshape(b, p, -1, 4),
                            rpn["proposals"], rpn["proposal_valid"])


def mask_probs(model, features, boxes, labels):
    """Mask probabilities ``(B, D, M, M)`` of each box's own class, in the box's frame."""
    heads = model.config.roi_heads
    b, d = boxes.shape[:2]
    mask_logits = model.mask_head(model.pool(features, boxes, heads.mask_roi_size, "gather"))
    return select_mask_channel(mask_logits, labels.reshape(-1)).reshape(
        b, d, heads.mask_size, heads.mask_size)


def mirrored_mask_probs(model, images, boxes, labels):
    """:func:`mask_probs` predicted on the left-right mirrored images at the mirrored boxes,
    mirrored back into each box's frame: ``(B, D, M, M)``."""
    features = model.features(images[:, :, ::-1])  # (B, H, W, 3) mirrored
    mirrored = mirror_boxes(boxes, model.config.image_size[1])  # (B, D, 4)
    return mask_probs(model, features, mirrored, labels)[..., ::-1]


@xla_cpu.jit
def predict(model, images):
    """Detect objects in ``images (B, H, W, 3)`` uint8 at the config's ``image_size``.

    Returns:
      dict of ``boxes (B, D, 4)`` xyxy pixels, ``scores (B, D)``, ``labels (B, D)`` int32
      (1..K-1, 0 where padded), ``masks (B, D, H, W)`` float probabilities (threshold at 0.5)
      and ``valid (B, D)`` bool; detections sorted by score.

    Taught in notebooks/10_inference_and_evaluation.
    """
    out = predict_raw(model, images)
    rule = model.config.roi_heads.paste_rule
    paste = lambda m, bx: paste_masks(m, bx, model.config.image_size, rule)
    masks = jax.vmap(paste)(out.pop("mask_probs"), out["boxes"])  # (B, D, H, W)
    out["masks"] = masks * out["valid"][:, :, None, None]
    return out
