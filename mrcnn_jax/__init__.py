"""mrcnn_jax: Mask R-CNN from scratch in JAX, taught by notebooks.

The package map (one concept per module) is in README.md. Public names are re-exported here.
"""

from mrcnn_jax.anchors import generate_anchors
from mrcnn_jax.boxes import box_area, box_iou, clip_boxes, decode_boxes, encode_boxes
from mrcnn_jax.config import MaskRCNNConfig, resnet50_fpn_config, shapes_config, small_config
from mrcnn_jax.evaluation import coco_evaluate
from mrcnn_jax.inference import predict
from mrcnn_jax.model import MaskRCNN
from mrcnn_jax.nms import batched_nms, nms, nms_tiled
from mrcnn_jax.paste_masks import paste_masks
from mrcnn_jax.poolers import map_levels, multiscale_roi_align
from mrcnn_jax.roi_align import roi_align
from mrcnn_jax.training import eval_losses, make_optimizer, train_step
from mrcnn_jax.weights import from_torchvision

__all__ = [
    "MaskRCNN",
    "MaskRCNNConfig",
    "batched_nms",
    "box_area",
    "box_iou",
    "clip_boxes",
    "coco_evaluate",
    "decode_boxes",
    "encode_boxes",
    "from_torchvision",
    "eval_losses",
    "generate_anchors",
    "make_optimizer",
    "map_levels",
    "multiscale_roi_align",
    "nms",
    "nms_tiled",
    "paste_masks",
    "predict",
    "resnet50_fpn_config",
    "roi_align",
    "shapes_config",
    "small_config",
    "train_step",
]
