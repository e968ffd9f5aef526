"""Postprocess: turn the box head's raw outputs into a fixed number of detections per image.

Mask R-CNN section 3.1 ("Inference"); torchvision ``RoIHeads.postprocess_detections``: softmax
class scores, class-specific boxes decoded from each proposal (weights 10, 10, 5, 5) and clipped
to the image, background dropped, every (proposal, class) pair a candidate; keep scores above
0.05 and boxes at least 0.01 px wide, per-class NMS at 0.5 (``nms.class_grid_nms``: on a CPU it
needs no sort of the ``P * (K-1)`` candidates), and the best 100. Masks are then predicted on
the detected boxes and pasted (``paste_masks``), which ``inference.py`` does.

Shape shorthand: ``P`` proposals, ``K`` classes with background, ``D`` detections.
Taught in notebooks/10_inference_and_evaluation.
"""

import jax
import jax.numpy as jnp

from mrcnn_jax.boxes import clip_boxes, decode_boxes
from mrcnn_jax.nms import class_grid_nms


def detect_boxes(class_logits, box_deltas, proposals, proposal_valid, image_size, cfg):
    """Detections of one image.

    Args:
      class_logits: ``(P, K)``; box_deltas: ``(P, K, 4)``; proposals: ``(P, 4)``;
      proposal_valid: ``(P,)``; image_size: static ``(H, W)``; cfg: ``RoIHeadsConfig``.
    Returns:
      dict of ``boxes (D, 4)``, ``scores (D,)``, ``labels (D,)`` int32 (1..K-1) and
      ``valid (D,)``, best first; padded slots have score 0 and label 0.
    """
    p, k = class_logits.shape
    scores = jax.nn.softmax(class_logits, axis=-1)[:, 1:]  # (P, K-1) background dropped
    boxes = decode_boxes(box_deltas, proposals[:, None, :], cfg.box_weights)  # (P, K, 4)
    boxes = clip_boxes(boxes, image_size)[:, 1:]  # (P, K-1, 4)
    labels = jnp.broadcast_to(jnp.arange(1, k, dtype=jnp.int32), (p, k - 1))
    wide = (boxes[..., 2] - boxes[..., 0] >= cfg.min_size) & (
        boxes[..., 3] - boxes[..., 1] >= cfg.min_size)  # (P, K-1)
    ok = proposal_valid[:, None] & (scores > cfg.score_threshold) & wide
    keep, valid = class_grid_nms(boxes, scores, cfg.nms_threshold, cfg.detections_per_image,
                                 valid=ok, algorithm=cfg.nms_algorithm)  # (D,) into P*(K-1)
    boxes, scores, labels = boxes.reshape(-1, 4), scores.reshape(-1), labels.reshape(-1)
    return {
        "boxes": jnp.where(valid[:, None], boxes[keep], 0.0),
        "scores": jnp.where(valid, scores[keep], 0.0),
        "labels": jnp.where(valid, labels[keep], 0),
        "valid": valid,
    }


def select_mask_channel(mask_logits, labels):
    """Probabilities of each detection's own class: ``(D, M, M, K), (D,) -> (D, M, M)``."""
    chosen = jnp.take_along_axis(mask_logits, labels[:, None, None, None], axis=-1)[..., 0]
    return jax.nn.sigmoid(chosen)
