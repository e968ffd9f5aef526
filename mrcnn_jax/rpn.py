"""Region Proposal Network: score every anchor, regress it, keep the best boxes as proposals.

Faster R-CNN section 3.1; FPN section 4.1 (one shared head over P2-P6). torchvision's
``rpn.py`` is followed: a 3x3 conv + ReLU, then 1x1 convs for ``A`` objectness logits and
``4A`` deltas per position, flattened in the anchors' order (position-major, then anchor).
Targets: anchors matched at IoU 0.7 / 0.3 with low-quality matches, 256 sampled per image at
half positives; loss: BCE on the sampled anchors plus smooth-L1 (beta 1/9, summed over
positives) divided by the number sampled. Proposals: per level top-k by objectness, decode,
clip, drop tiny boxes, per-level NMS at 0.7, top-k per image; no gradient flows into them.

Shape shorthand: ``B`` images, ``A`` anchors of all levels, ``A_l`` of level ``l``, ``G``
padded ground-truth slots, ``P`` proposals per image.
Naming: ``*_logits`` unnormalised scores, ``*_deltas`` box-coder outputs, ``gt_*`` ground truth.
Taught in notebooks/06_rpn.
"""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mrcnn_jax.boxes import box_iou, clip_boxes, decode_boxes, encode_boxes
from mrcnn_jax.layers import Conv2d
from mrcnn_jax.losses import binary_cross_entropy_with_logits, smooth_l1
from mrcnn_jax.matcher import match
from mrcnn_jax.nms import class_grid_nms
from mrcnn_jax.sampler import sample_balanced


def _normal_001(key, shape):
    return 0.01 * jax.random.normal(key, shape)  # torchvision RPNHead init


class RPNHead(nnx.Module):
    """``__call__([P2..P6]) -> (logits (B, A), deltas (B, A, 4))`` over all levels."""

    def __init__(self, channels, anchors_per_location, *, rngs):
        self.conv = Conv2d(channels, channels, 3, padding=1, init=_normal_001, rngs=rngs)
        self.cls_logits = Conv2d(channels, anchors_per_location, 1, init=_normal_001, rngs=rngs)
        self.bbox_pred = Conv2d(channels, 4 * anchors_per_location, 1, init=_normal_001,
                                rngs=rngs)

    def __call__(self, features):
        logits, deltas = [], []
        for x in features:
            t = jax.nn.relu(self.conv(x))  # (B, h, w, F)
            b = x.shape[0]
            logits.append(self.cls_logits(t).reshape(b, -1))  # (B, h*w*a)
            deltas.append(self.bbox_pred(t).reshape(b, -1, 4))  # (B, h*w*a, 4)
        logits, deltas = jnp.concatenate(logits, axis=1), jnp.concatenate(deltas, axis=1)
        return logits.astype(jnp.float32), deltas.astype(jnp.float32)  # bf16 compute -> f32


def rpn_targets(key, anchors, gt_boxes, gt_valid, cfg):
    """Labels and regression targets of one image's anchors, with the sampled subset.

    Args:
      key: PRNG key for sampling; anchors: ``(A, 4)``; gt_boxes: ``(G, 4)``; gt_valid: ``(G,)``.
      cfg: ``RPNConfig``.
    Returns:
      dict with ``labels (A,)`` float 1/0, ``deltas (A, 4)`` targets, ``positive (A,)`` and
      ``sampled (A,)`` bool masks.
    """
    matches = match(box_iou(gt_boxes, anchors), gt_valid, cfg.fg_iou_threshold,
                    cfg.bg_iou_threshold, allow_low_quality=True)  # (A,)
    labels = jnp.where(matches >= 0, 1, jnp.where(matches == -1, 0, -1))  # (A,)
    positive, negative = sample_balanced(key, labels, cfg.batch_size_per_image,
                                         cfg.positive_fraction)
    matched = gt_boxes[jnp.maximum(matches, 0)]  # (A, 4)
    return {
        "labels": (labels == 1).astype(jnp.float32),
        "deltas": encode_boxes(matched, anchors),  # (A, 4), weights (1, 1, 1, 1)
        "positive": positive,
        "sampled": positive | negative,
    }


def rpn_losses(logits, deltas, targets, beta):
    """torchvision's RPN losses over a batch.

    Args:
      logits: ``(B, A)``; deltas: ``(B, A, 4)``; targets: :func:`rpn_targets` stacked on ``B``.
    Returns:
      ``{"rpn_objectness": scalar, "rpn_box": scalar}``, both divided by the total number of
      sampled anchors (at least 1).
    """
    sampled = targets["sampled"]
    count = jnp.maximum(jnp.sum(sampled), 1)
    bce = binary_cross_entropy_with_logits(logits, targets["labels"])  # (B, A)
    box = jnp.sum(smooth_l1(deltas - targets["deltas"], beta), axis=-1)  # (B, A)
    return {
        "rpn_objectness": jnp.sum(jnp.where(sampled, bce, 0.0)) / count,
        "rpn_box": jnp.sum(jnp.where(targets["positive"], box, 0.0)) / count,
    }


def _level_grid(counts):
    """``(max(counts), L)`` int32: column ``l`` numbers level ``l``'s candidates in the flat
    level-after-level order, ``-1`` below its count (a static table)."""
    starts = np.cumsum([0, *counts[:-1]])
    rows = np.arange(max(counts))[:, None]
    return jnp.asarray(np.where(rows < np.asarray(counts), starts + rows, -1), jnp.int32)


def select_proposals(logits, deltas, anchors, level_sizes, image_size, cfg, training):
    """Proposals of one image (torchvision ``RegionProposalNetwork.filter_proposals``).

    Args:
      logits: ``(A,)``; deltas: ``(A, 4)``; anchors: ``(A, 4)``.
      level_sizes: static anchors per level ``[A_2, ..., A_6]``.
      image_size: static ``(H, W)``; cfg: ``RPNConfig``; training: picks the top-n sizes.
    Returns:
      ``boxes (P, 4)``, ``scores (P,)`` objectness probabilities and ``valid (P,)``, sorted by
      score; ``P = post_nms_top_n``. No gradient flows back through them.
    """
    logits, deltas = jax.lax.stop_gradient(logits), jax.lax.stop_gradient(deltas)
    pre_n = cfg.pre_nms_top_n_train if training else cfg.pre_nms_top_n_test
    post_n = cfg.post_nms_top_n_train if training else cfg.post_nms_top_n_test
    picks, start = [], 0
    for size in level_sizes:
        picks.append(jax.lax.top_k(logits[start:start + size], min(pre_n, size))[1] + start)
        start += size
    counts = [len(p) for p in picks]  # static candidates per level
    picks = jnp.concatenate(picks)  # (Nc,)
    boxes = clip_boxes(decode_boxes(deltas[picks], anchors[picks]), image_size)  # (Nc, 4)
    scores = jax.nn.sigmoid(logits[picks])  # (Nc,)
    wide = (boxes[:, 2] - boxes[:, 0] >= cfg.min_size) & (boxes[:, 3] - boxes[:, 1] >= cfg.min_size)
    candidate = wide & (scores >= cfg.score_threshold)
    # per-level NMS with the levels as the columns of a grid (torchvision: batched_nms by level)
    grid = _level_grid(counts)  # (max count, L) flat indices, -1 where padded
    at = jnp.maximum(grid, 0)
    keep, valid = class_grid_nms(boxes[at], scores[at], cfg.nms_threshold, post_n,
                                 valid=candidate[at] & (grid >= 0), flat_index=at,
                                 algorithm=cfg.nms_algorithm)
    return boxes[keep], jnp.where(valid, scores[keep], 0.0), valid
