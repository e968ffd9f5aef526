"""RoI heads: the box head (classify and refine each RoI) and the mask head (one mask per RoI).

Mask R-CNN section 3 and 3.1. As torchvision's ``roi_heads.py``:
- RoI sampling: proposals plus the ground-truth boxes, matched at IoU 0.5 (no low-quality
  matches), 512 sampled per image with at most 25% positives; labels 0 for background;
- box head ``TwoMLPHead`` (fc6, fc7 with ReLU on 7x7 pooled features) and predictor
  (``cls_score`` K logits, ``bbox_pred`` 4K class-specific deltas, weights 10, 10, 5, 5);
  loss: cross-entropy over the samples plus smooth-L1 (beta 1/9, summed over positives, on the
  ground-truth class's deltas) divided by the number of samples;
- mask head: four 3x3 convs, a 2x2 stride-2 transposed conv and a 1x1 conv to K masks, on
  14x14 features of the *positive* RoIs; targets are each RoI's ground-truth mask cut out with
  RoIAlign at 28x28 (soft, as torchvision; thresholded at 0.5 as detectron2 if configured);
  loss: per-pixel BCE on the ground-truth class's channel, averaged.

Static shapes: ``S`` samples per image with ``valid``, positives first; the mask head sees the
first ``S_m`` of them with ``valid = positive``: ``S * positive_fraction`` by default, so every
positive fits, or ``mask_rois_per_image`` from the config (then the best-scoring positives).

Shape shorthand: ``B`` images, ``P`` proposals, ``G`` padded ground-truth slots, ``S``
samples, ``S_m`` mask RoIs, ``K`` classes with background, ``M`` mask size, ``F`` channels.
Taught in notebooks/07_roi_heads.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from mrcnn_jax.boxes import box_iou, encode_boxes
from mrcnn_jax.layers import Conv2d, ConvTranspose2x2
from mrcnn_jax.losses import binary_cross_entropy_with_logits, smooth_l1, softmax_cross_entropy
from mrcnn_jax.matcher import match
from mrcnn_jax.roi_align import roi_align
from mrcnn_jax.sampler import sample_balanced, sampled_indices


def _normal(std):
    return lambda key, shape, dtype=jnp.float32: std * jax.random.normal(key, shape, dtype)


class BoxHead(nnx.Module):
    """TwoMLPHead + FastRCNNPredictor: ``(R, 7, 7, F) -> logits (R, K), deltas (R, K, 4)``."""

    def __init__(self, in_features, representation_size, num_classes, *, rngs):
        self.fc6 = nnx.Linear(in_features, representation_size, rngs=rngs)
        self.fc7 = nnx.Linear(representation_size, representation_size, rngs=rngs)
        # detectron2's small initial predictions: std 0.01 logits, 0.001 deltas
        self.cls_score = nnx.Linear(representation_size, num_classes,
                                    kernel_init=_normal(0.01), rngs=rngs)
        self.bbox_pred = nnx.Linear(representation_size, 4 * num_classes,
                                    kernel_init=_normal(0.001), rngs=rngs)

    def __call__(self, x):
        r = x.shape[0]
        x = jax.nn.relu(self.fc6(x.reshape(r, -1)))  # (R, rep), NHWC flatten order
        x = jax.nn.relu(self.fc7(x))
        logits, deltas = self.cls_score(x), self.bbox_pred(x).reshape(r, -1, 4)
        return logits.astype(jnp.float32), deltas.astype(jnp.float32)  # bf16 compute -> f32


class MaskHead(nnx.Module):
    """MaskRCNNHeads + MaskRCNNPredictor: ``(R, 14, 14, F) -> mask logits (R, 28, 28, K)``."""

    def __init__(self, in_channels, layers, num_classes, *, rngs):
        convs, c = [], in_channels
        for width in layers:
            convs.append(Conv2d(c, width, 3, padding=1, rngs=rngs))
            c = width
        self.convs = nnx.List(convs)
        self.conv5_mask = ConvTranspose2x2(c, c, rngs=rngs)
        self.mask_fcn_logits = Conv2d(c, num_classes, 1, rngs=rngs)

    def __call__(self, x):
        for conv in self.convs:
            x = jax.nn.relu(conv(x))  # (R, 14, 14, F)
        x = jax.nn.relu(self.conv5_mask(x))  # (R, 28, 28, F)
        return self.mask_fcn_logits(x).astype(jnp.float32)  # (R, 28, 28, K)


def sample_rois(key, proposals, proposal_valid, gt_boxes, gt_labels, gt_valid, cfg):
    """Sample one image's RoIs and their targets.

    Args:
      key: PRNG key; proposals: ``(P, 4)``; proposal_valid: ``(P,)``.
      gt_boxes: ``(G, 4)``; gt_labels: ``(G,)`` int, 1..K-1; gt_valid: ``(G,)``.
      cfg: ``RoIHeadsConfig``.
    Returns:
      dict of ``rois (S, 4)``, ``valid (S,)``, ``labels (S,)`` (0 background), ``positive (S,)``,
      ``matched_gt (S,)`` and ``box_targets (S, 4)``, positives first.
    """
    boxes = jnp.concatenate([proposals, gt_boxes])  # (P+G, 4) ground truth appended
    valid = jnp.concatenate([proposal_valid, gt_valid])  # (P+G,)
    matches = match(box_iou(gt_boxes, boxes), gt_valid, cfg.fg_iou_threshold,
                    cfg.bg_iou_threshold, allow_low_quality=False)  # (P+G,)
    fg_bg = jnp.where(matches >= 0, 1, jnp.where(matches == -1, 0, -1))
    fg_bg = jnp.where(valid, fg_bg, -1)  # padding is never sampled
    positive, negative = sample_balanced(key, fg_bg, cfg.batch_size_per_image,
                                         cfg.positive_fraction)
    index, sample_valid = sampled_indices(positive, negative, cfg.batch_size_per_image)
    matched = jnp.maximum(matches[index], 0)  # (S,)
    is_positive = positive[index] & sample_valid
    rois = boxes[index]  # (S, 4)
    return {
        "rois": rois,
        "valid": sample_valid,
        "labels": jnp.where(is_positive, gt_labels[matched], 0).astype(jnp.int32),
        "positive": is_positive,
        "matched_gt": matched,
        "box_targets": encode_boxes(gt_boxes[matched], rois, cfg.box_weights),
    }


def box_losses(class_logits, box_deltas, samples, beta):
    """``{"box_classifier", "box_regression"}`` over a batch (torchvision ``fastrcnn_loss``).

    Args:
      class_logits: ``(B, S, K)``; box_deltas: ``(B, S, K, 4)``; samples: stacked
        :func:`sample_rois` outputs.
    """
    valid, labels = samples["valid"], samples["labels"]
    count = jnp.maximum(jnp.sum(valid), 1)
    ce = softmax_cross_entropy(class_logits, labels)  # (B, S)
    chosen = jnp.take_along_axis(box_deltas, labels[..., None, None], axis=2)[:, :, 0]  # (B,S,4)
    box = jnp.sum(smooth_l1(chosen - samples["box_targets"], beta), axis=-1)  # (B, S)
    return {
        "box_classifier": jnp.sum(jnp.where(valid, ce, 0.0)) / count,
        "box_regression": jnp.sum(jnp.where(samples["positive"], box, 0.0)) / count,
    }


def mask_targets(gt_masks, gt_boxes, rois, matched_gt, image_size, mask_size, sampling_ratio,
                 binary=False, aligned=False):
    """Ground-truth masks cut out at each RoI (torchvision ``project_masks_on_boxes``).

    Args:
      gt_masks: ``(B, G, Hm, Wm)`` either full-image masks (``(Hm, Wm) == image_size``) or masks
        cropped to their ground-truth box and resized to ``Hm x Wm`` (DESIGN.md "Data").
      gt_boxes: ``(B, G, 4)``; rois: ``(B, R, 4)``; matched_gt: ``(B, R)`` int.
      image_size: static ``(H, W)``; mask_size: ``M``; sampling_ratio: static int > 0.
      binary: threshold at 0.5 (detectron2) instead of soft targets (torchvision).
      aligned: cut with ``roi_align(aligned=True)``, half-pixel-correct (detectron2's
        ``crop_and_resize``); torchvision's ``project_masks_on_boxes`` uses ``aligned=False``.
    Returns:
      ``(B, R, M, M)`` float targets in [0, 1].
    """
    hm, wm = gt_masks.shape[2:]
    owner = jnp.take_along_axis(gt_boxes, matched_gt[..., None], axis=1)  # (B, R, 4)
    if (hm, wm) == tuple(image_size):  # full masks: the frame is the image
        frame = jnp.broadcast_to(jnp.asarray([0.0, 0.0, wm, hm]), owner.shape)
        crop_aligned = aligned
    else:  # cropped masks: the frame is the ground-truth box
        frame = owner
        # A crop cell's value sits at its centre (``crop_masks``). ``aligned=True`` reads the
        # frame that way; ``aligned=False`` reads an image pixel's value at its top-left corner,
        # i.e. half an *image* pixel off. Shift the RoIs by that half pixel and read the crop
        # aligned, so that crops give the targets full masks give (not half a crop pixel off).
        rois = rois if aligned else rois + 0.5
        crop_aligned = True
    size = jnp.maximum(frame[..., 2:] - frame[..., :2], 1e-3)  # (B, R, 2) never 0: no inf
    scale = jnp.asarray([wm, hm], jnp.float32) / size  # (B, R, 2) mask pixels per image px
    local = (rois - jnp.tile(frame[..., :2], 2)) * jnp.tile(scale, 2)  # (B, R, 4)
    masks = gt_masks[..., None].astype(jnp.float32)  # (B, G, Hm, Wm, 1)
    cut = lambda m, boxes, index: roi_align(m, boxes, index, (mask_size, mask_size), 1.0,
                                            sampling_ratio, crop_aligned)[..., 0]  # (R, M, M)
    # per image (vmap), so a batch sharded over devices gathers only its own masks
    targets = jax.lax.stop_gradient(jax.vmap(cut)(masks, local, matched_gt))  # (B, R, M, M)
    return (targets >= 0.5).astype(jnp.float32) if binary else targets


def mask_loss(mask_logits, labels, targets, valid):
    """Mean per-pixel BCE on each positive RoI's own class channel.

    Args:
      mask_logits: ``(B, R, M, M, K)``; labels: ``(B, R)``; targets: ``(B, R, M, M)``;
      valid: ``(B, R)`` positives.
    """
    chosen = jnp.take_along_axis(mask_logits, labels[:, :, None, None, None], axis=-1)[..., 0]
    bce = jnp.mean(binary_cross_entropy_with_logits(chosen, targets), axis=(2, 3))  # (B, R)
    return jnp.sum(jnp.where(valid, bce, 0.0)) / jnp.maximum(jnp.sum(valid), 1)
