"""mrcnn_jax: Mask R-CNN from scratch in JAX, taught by notebooks.

The package map (one concept per module) is in README.md. Public names are re-exported here.
"""

from mrcnn_jax.anchors import generate_anchors
from mrcnn_jax.boxes import box_area, box_iou, clip_boxes, decode_boxes, encode_boxes
from mrcnn_jax.nms import batched_nms, nms
from mrcnn_jax.paste_masks import paste_masks
from mrcnn_jax.poolers import map_levels, multiscale_roi_align
from mrcnn_jax.roi_align import roi_align

__all__ = [
    "batched_nms",
    "box_area",
    "box_iou",
    "clip_boxes",
    "decode_boxes",
    "encode_boxes",
    "generate_anchors",
    "map_levels",
    "multiscale_roi_align",
    "nms",
    "paste_masks",
    "roi_align",
]
