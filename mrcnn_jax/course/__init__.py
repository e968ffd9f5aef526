"""Course kit: automatic checks for the notebooks' core exercises.

Each ``check_<exercise>(fn)`` runs a student's ``fn`` (same signature as the package function of
that stage, or the one in the check's docstring) on a hand example, random inputs against the
package as oracle, and named edge cases; it prints ``<exercise>: correct`` and returns True,
prints ``not attempted`` and returns False when ``fn`` raises ``NotImplementedError``, and
raises ``AssertionError`` with a specific message when ``fn`` is wrong. Outcomes are recorded
for ``python -m mrcnn_jax.course.grade`` (``core.py``). Student editions of the notebooks come
from ``python -m mrcnn_jax.course.student_edition``. The instructor guide is
``docs/instructors.md``.

| notebook | checks |
|---|---|
| 00_data | ``check_pad_example`` |
| 01_boxes_iou_and_box_coding | ``check_box_iou``, ``check_encode_boxes``, ``check_decode_boxes`` |
| 02_anchors | ``check_level_anchors`` |
| 03_nms | ``check_nms`` |
| 04_roi_align | ``check_bilinear``, ``check_roi_align``, ``check_map_levels`` |
| 05_backbone_and_fpn | ``check_fpn`` |
| 06_rpn | ``check_match``, ``check_sample_balanced`` |
| 07_roi_heads | ``check_mask_targets`` |
| 08_losses_and_train_step | ``check_smooth_l1``, ``check_rpn_losses``, ``check_mask_loss`` |
| 09_training | ``check_lr_schedule`` |
| 10_inference_and_evaluation | ``check_paste_masks``, ``check_coco_match``, |
| | ``check_average_precision`` |
| 11_pretrained_weights | ``check_from_torchvision_layout`` |
"""

from mrcnn_jax.course.anchors import check_level_anchors
from mrcnn_jax.course.boxes import check_box_iou, check_decode_boxes, check_encode_boxes
from mrcnn_jax.course.core import RESULTS
from mrcnn_jax.course.data import check_pad_example
from mrcnn_jax.course.evaluation import (
    check_average_precision,
    check_coco_match,
    check_paste_masks,
)
from mrcnn_jax.course.fpn import check_fpn
from mrcnn_jax.course.losses import check_mask_loss, check_rpn_losses, check_smooth_l1
from mrcnn_jax.course.nms import check_nms
from mrcnn_jax.course.roi_align import check_bilinear, check_map_levels, check_roi_align
from mrcnn_jax.course.roi_heads import check_mask_targets
from mrcnn_jax.course.rpn import check_match, check_sample_balanced
from mrcnn_jax.course.training import check_lr_schedule
from mrcnn_jax.course.weights import check_from_torchvision_layout

CHECKS = {
    check.exercise: check
    for check in (
        check_pad_example, check_box_iou, check_encode_boxes, check_decode_boxes,
        check_level_anchors, check_nms, check_bilinear, check_roi_align, check_map_levels,
        check_fpn, check_match, check_sample_balanced, check_mask_targets, check_smooth_l1,
        check_rpn_losses, check_mask_loss,
        check_lr_schedule, check_paste_masks, check_coco_match, check_average_precision,
        check_from_torchvision_layout,
    )
}

__all__ = ["CHECKS", "RESULTS", *sorted(f"check_{name}" for name in CHECKS)]
