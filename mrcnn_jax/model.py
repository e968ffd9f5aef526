"""MaskRCNN: the NNX module that wires every stage, and its two forward passes.

Mask R-CNN (He et al. 2017) section 3: backbone + FPN -> RPN -> RoIAlign -> box head and, in
parallel, mask head. ``MaskRCNN.__init__`` builds every learnable part explicitly from the
config; the forward passes are plain methods that return *raw predictions* (and, in training,
the targets they are compared with). Losses (``training.py``) and postprocessing
(``inference.py``) are separate pure functions, so a validation loss is always available.

Attributes map onto torchvision's ``maskrcnn_resnet50_fpn`` names (``weights.py``):
``body`` = backbone.body, ``fpn`` = backbone.fpn, ``rpn_head`` = rpn.head, ``box_head`` =
roi_heads.box_head + box_predictor, ``mask_head`` = roi_heads.mask_head + mask_predictor.

Shape shorthand: ``B`` images, ``H, W`` input size, ``A`` anchors, ``G`` ground-truth slots,
``P`` proposals, ``S`` sampled RoIs, ``S_m`` mask RoIs, ``K`` classes, ``M`` mask size.
Batch keys (from ``mrcnn_jax.data``): ``images (B, H, W, 3) uint8``, ``boxes (B, G, 4)``,
``labels (B, G) int32`` (0 = background/padding), ``masks (B, G, Hm, Wm)``, ``valid (B, G)``.
"""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mrcnn_jax.anchors import generate_anchors, num_anchors_per_location
from mrcnn_jax.backbone import ResNet
from mrcnn_jax.fpn import FPN
from mrcnn_jax.layers import set_compute_dtype
from mrcnn_jax.poolers import multiscale_roi_align
from mrcnn_jax.roi_heads import BoxHead, MaskHead, mask_targets, sample_rois
from mrcnn_jax.rpn import RPNHead, rpn_targets, select_proposals


class MaskRCNN(nnx.Module):
    """Mask R-CNN with a ResNet-FPN backbone; see ``config.py`` for the presets."""

    def __init__(self, config, *, rngs):
        self.config = config
        rpn, heads = config.rpn, config.roi_heads
        anchors_per_location = set(num_anchors_per_location(rpn.anchor_sizes,
                                                            rpn.aspect_ratios))
        if len(anchors_per_location) != 1:
            raise ValueError("the shared RPN head needs the same anchors per location on every "
                             f"level; got {sorted(anchors_per_location)}")
        f = config.fpn_channels
        self.body = ResNet(config.backbone, rngs=rngs)
        self.fpn = FPN(self.body.out_channels, f, rngs=rngs)
        self.rpn_head = RPNHead(f, anchors_per_location.pop(), rngs=rngs)
        self.box_head = BoxHead(f * heads.box_roi_size**2, heads.representation_size,
                                config.num_classes, rngs=rngs)
        self.mask_head = MaskHead(f, heads.mask_layers, config.num_classes, rngs=rngs)
        if config.dtype != "float32":
            set_compute_dtype(self, config.dtype)

    def normalize(self, images):
        """``(B, H, W, 3)`` uint8 (or float 0-255) -> float32 with ImageNet's mean and std."""
        _check_images(images, self.config.image_size)
        mean = jnp.asarray(self.config.pixel_mean) * 255.0
        std = jnp.asarray(self.config.pixel_std) * 255.0
        return (images.astype(jnp.float32) - mean) / std

    def features(self, images):
        """``(B, H, W, 3)`` uint8 (or float 0-255) -> ``[P2, ..., P6]`` NHWC."""
        return self.fpn(self.body(self.normalize(images)))  # normalised inside the model

    def anchors(self, features):
        """Anchors of all levels ``(A, 4)`` and per-level counts, from static shapes."""
        rpn = self.config.rpn
        sizes = [tuple(p.shape[1:3]) for p in features]
        anchors = generate_anchors(self.config.image_size, sizes, rpn.anchor_sizes,
                                   rpn.aspect_ratios)
        per_location = num_anchors_per_location(rpn.anchor_sizes, rpn.aspect_ratios)
        counts = [h * w * a for (h, w), a in zip(sizes, per_location, strict=True)]
        return jnp.asarray(anchors), counts

    def pool(self, features, rois, size, method="auto"):
        """Multi-scale RoIAlign of ``rois (B, R, 4)`` from P2-P5 -> ``(B*R, size, size, F)``.

        ``method`` as in ``poolers.multiscale_roi_align``: ``"auto"`` (the default, for
        training) takes the dense form on small maps, whose backward pass is faster than the
        gather's scatter-add; inference passes ``"gather"``, whose forward pass is faster.

        Each image pools from its own maps (``vmap`` over images): a gather whose indices may
        reach any image would make XLA all-gather the FPN maps to every device when the
        batch is sharded (``sharding.py``); a per-image gather stays on the image's device.
        """
        b, r = rois.shape[:2]
        heads = self.config.roi_heads
        zeros = jnp.zeros((r,), jnp.int32)  # one image per call: batch index 0

        def one_image(maps, boxes):  # [(H_l, W_l, F)], (R, 4) -> (R, size, size, F)
            return multiscale_roi_align([m[None] for m in maps], boxes, zeros,
                                        self.config.image_size, (size, size),
                                        heads.sampling_ratio, heads.aligned, method)

        pooled = jax.vmap(one_image)(features[:4], rois)  # (B, R, size, size, F)
        return pooled.reshape(b * r, *pooled.shape[2:])

    def proposals(self, features, training):
        """RPN raw outputs and each image's proposals ``(B, P, 4)``, scores, valid."""
        logits, deltas = self.rpn_head(features)  # (B, A), (B, A, 4)
        anchors, counts = self.anchors(features)
        select = lambda lg, dl: select_proposals(lg, dl, anchors, counts,
                                                 self.config.image_size, self.config.rpn,
                                                 training)
        boxes, scores, valid = jax.vmap(select)(logits, deltas)  # (B, P, 4), (B, P), (B, P)
        return {"rpn_logits": logits, "rpn_deltas": deltas, "anchors": anchors,
                "proposals": boxes, "proposal_scores": scores, "proposal_valid": valid}

    def train_forward(self, batch, key):
        """Raw predictions and their targets for a training batch (no losses).

        Returns a dict with the RPN outputs and targets, the sampled RoIs, box-head logits and
        deltas ``(B, S, K)``, ``(B, S, K, 4)``, and mask logits ``(B, S_m, M, M, K)`` with their
        targets ``(B, S_m, M, M)``.
        """
        cfg, heads = self.config, self.config.roi_heads
        gt_boxes, gt_valid = batch["boxes"].astype(jnp.float32), batch["valid"].astype(bool)
        b = gt_boxes.shape[0]
        rpn_key, roi_key = jax.random.split(key)
        features = self.features(batch["images"])
        out = self.proposals(features, training=True)
        out["rpn_targets"] = jax.vmap(rpn_targets, in_axes=(0, None, 0, 0, None))(
            jax.random.split(rpn_key, b), out["anchors"], gt_boxes, gt_valid, cfg.rpn)
        samples = jax.vmap(sample_rois, in_axes=(0, 0, 0, 0, 0, 0, None))(
            jax.random.split(roi_key, b), out["proposals"], out["proposal_valid"], gt_boxes,
            batch["labels"], gt_valid, heads)
        class_logits, box_deltas = self.box_head(self.pool(features, samples["rois"],
                                                           heads.box_roi_size))
        s = samples["rois"].shape[1]
        out.update(samples=samples, class_logits=class_logits.reshape(b, s, -1),
                   box_deltas=box_deltas.reshape(b, s, -1, 4))
        s_m = heads.mask_rois_per_image or int(s * heads.positive_fraction)  # positives first
        mask_rois = samples["rois"][:, :s_m]  # (B, S_m, 4)
        mask_logits = self.mask_head(self.pool(features, mask_rois, heads.mask_roi_size))
        out["mask_logits"] = mask_logits.reshape(b, s_m, *mask_logits.shape[1:])
        out["mask_targets"] = mask_targets(
            batch["masks"], gt_boxes, mask_rois, samples["matched_gt"][:, :s_m],
            cfg.image_size, heads.mask_size, heads.mask_target_sampling_ratio,
            heads.binary_mask_targets, heads.aligned)  # targets cut as features are pooled
        out["mask_labels"] = samples["labels"][:, :s_m]
        out["mask_valid"] = samples["positive"][:, :s_m]
        return out


def _check_images(images, image_size):
    shape = tuple(images.shape)
    if len(shape) != 4 or shape[1:3] != tuple(image_size) or shape[3] != 3:
        raise ValueError(
            f"images must be (B, {image_size[0]}, {image_size[1]}, 3) as the config's "
            f"image_size says (resize and pad in the input pipeline); got {shape} "
            f"({images.dtype})"
        )
    if not (jnp.issubdtype(images.dtype, jnp.integer) or jnp.issubdtype(images.dtype,
                                                                       jnp.floating)):
        raise ValueError(f"images must be uint8 or float 0-255; got dtype {images.dtype}")


def count_parameters(model):
    """Number of trainable and frozen scalars: ``(trainable, frozen)``."""
    params = nnx.state(model, nnx.Param)
    total = nnx.state(model)
    n_params = sum(np.prod(x.shape) for x in jax.tree.leaves(params))
    n_total = sum(np.prod(x.shape) for x in jax.tree.leaves(total))
    return int(n_params), int(n_total - n_params)
