"""Configuration: frozen dataclasses and named presets. Every static size lives here.

A config is hashable, so it rides on the model as a static attribute and ``jit`` specialises
on it; nothing in it may come from data. Three presets:
- :func:`resnet50_fpn_config`: torchvision's ``maskrcnn_resnet50_fpn`` exactly (layer sizes and
  its train/eval defaults), for imported COCO weights.
- :func:`small_config`: a narrow ResNet-18-FPN with GroupNorm for 128x128 shapes images, sized
  so a train step at batch 8 runs in well under a second on a 2-core CPU; the notebooks use it.
- :func:`shapes_config`: ``small_config`` tuned for the main job's time budget (another
  backbone init, two anchor scales per level, a narrower mask head, RoI sampling and mask
  training with the mask term weighted 3, test-time settings and the mirrored-image mask
  average).
"""

import dataclasses

from mrcnn_jax.anchors import DEFAULT_ASPECT_RATIOS, DEFAULT_SIZES

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # torchvision GeneralizedRCNNTransform defaults
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True)
class BackboneConfig:
    depth: int = 50  # 18, 34 (basic blocks) or 50, 101 (bottlenecks)
    stem_width: int = 64
    widths: tuple = (64, 128, 256, 512)  # bottleneck inner widths; outputs are 4x for 50/101
    norm: str = "frozen_bn"  # "frozen_bn" (imported weights) or "group_norm" (from scratch)
    group_norm_groups: int = 32
    frozen_bn_eps: float = 1e-5  # torchvision FrozenBatchNorm2d; legacy COCO weights use 0.0
    trainable_layers: int = 3  # torchvision default: layer2..layer4 train, stem+layer1 frozen
    # from-scratch training only (imported weights replace both):
    conv_init: str = "kaiming_normal_fan_out"  # torchvision ResNet; or "kaiming_uniform_sqrt5"
    zero_init_residual: bool = True  # GroupNorm: each block's last norm starts at scale 0


@dataclasses.dataclass(frozen=True)
class RPNConfig:
    anchor_sizes: tuple = DEFAULT_SIZES
    aspect_ratios: tuple = DEFAULT_ASPECT_RATIOS
    pre_nms_top_n_train: int = 2000  # per level (torchvision)
    pre_nms_top_n_test: int = 1000
    post_nms_top_n_train: int = 2000  # per image
    post_nms_top_n_test: int = 1000
    nms_threshold: float = 0.7
    fg_iou_threshold: float = 0.7
    bg_iou_threshold: float = 0.3
    batch_size_per_image: int = 256
    positive_fraction: float = 0.5
    score_threshold: float = 0.0
    min_size: float = 1e-3  # torchvision remove_small_boxes in filter_proposals
    smooth_l1_beta: float = 1.0 / 9  # torchvision; detectron2 uses 0 (L1)
    # "greedy", "tiled" (same boxes, fewer loop trips) or "auto": greedy on CPU, tiled on GPU/TPU
    nms_algorithm: str = "auto"


@dataclasses.dataclass(frozen=True)
class RoIHeadsConfig:
    fg_iou_threshold: float = 0.5
    bg_iou_threshold: float = 0.5
    batch_size_per_image: int = 512
    positive_fraction: float = 0.25
    box_weights: tuple = (10.0, 10.0, 5.0, 5.0)
    box_roi_size: int = 7
    mask_roi_size: int = 14
    sampling_ratio: int = 2
    aligned: bool = False  # features and mask targets; torchvision False, detectron2 True
    representation_size: int = 1024  # TwoMLPHead width
    mask_layers: tuple = (256, 256, 256, 256)
    mask_size: int = 28
    # RoIs the mask head trains on per image; None = every possible positive (S * fraction),
    # as torchvision. Fewer is cheaper: the positives are then the best-scoring ones.
    mask_rois_per_image: int | None = None
    # torchvision samples mask targets adaptively; static shapes need a fixed ratio
    mask_target_sampling_ratio: int = 2
    binary_mask_targets: bool = False  # detectron2 thresholds at 0.5; torchvision keeps soft
    mask_loss_weight: float = 1.0  # the mask term's weight in the total loss (paper: 1)
    smooth_l1_beta: float = 1.0 / 9
    score_threshold: float = 0.05
    nms_threshold: float = 0.5
    detections_per_image: int = 100
    min_size: float = 1e-2  # torchvision remove_small_boxes in postprocess_detections
    paste_rule: str = "torchvision"  # or "exact" (detectron2): see paste_masks.paste_masks
    mask_flip_test: bool = False  # average each mask with the mirrored image's (inference.py)
    nms_algorithm: str = "auto"  # as RPNConfig.nms_algorithm


@dataclasses.dataclass(frozen=True)
class MaskRCNNConfig:
    num_classes: int = 91  # including background 0 (torchvision COCO)
    image_size: tuple = (800, 1088)  # static (H, W) of the padded input
    fpn_channels: int = 256
    backbone: BackboneConfig = BackboneConfig()
    rpn: RPNConfig = RPNConfig()
    roi_heads: RoIHeadsConfig = RoIHeadsConfig()
    pixel_mean: tuple = IMAGENET_MEAN
    pixel_std: tuple = IMAGENET_STD
    # compute dtype of convolutions and matmuls: "float32" or "bfloat16" (parameters, norm
    # statistics, losses and box geometry stay float32; the heads' outputs are cast back)
    dtype: str = "float32"

    def replace(self, **changes):
        """A copy with top-level fields changed (``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)


def resnet50_fpn_config(num_classes=91, image_size=(800, 1088), frozen_bn_eps=1e-5):
    """torchvision ``maskrcnn_resnet50_fpn``: same layers, sizes and defaults.

    ``frozen_bn_eps=0.0`` for torchvision's COCO_V1 weights (it calls ``overwrite_eps(model,
    0.0)`` when it loads them); 1e-5 is ``FrozenBatchNorm2d``'s and ``BatchNorm2d``'s default.
    """
    return MaskRCNNConfig(num_classes=num_classes, image_size=tuple(image_size),
                          backbone=BackboneConfig(frozen_bn_eps=frozen_bn_eps))


def small_config(num_classes=4, image_size=(128, 128)):
    """A ResNet-18-FPN, narrow and GroupNorm-ed, that trains on CPU on 128x128 shapes images.

    Anchors 16..256 suit objects of 10-90 px; fewer proposals and RoIs than torchvision since an
    image holds at most a handful of objects.
    """
    return MaskRCNNConfig(
        num_classes=num_classes,
        image_size=tuple(image_size),
        fpn_channels=64,
        backbone=BackboneConfig(
            depth=18, stem_width=32, widths=(32, 64, 128, 256), norm="group_norm",
            group_norm_groups=8, trainable_layers=5,
        ),
        rpn=RPNConfig(
            anchor_sizes=((16,), (32,), (64,), (128,), (256,)),
            pre_nms_top_n_train=600, pre_nms_top_n_test=300,
            post_nms_top_n_train=300, post_nms_top_n_test=100,
        ),
        roi_heads=RoIHeadsConfig(
            batch_size_per_image=64, representation_size=256, mask_layers=(64, 64, 64, 64),
            mask_rois_per_image=8, detections_per_image=20,
        ),
    )


def shapes_config(num_classes=4, image_size=(128, 128)):
    """:func:`small_config` tuned for the main job (``python -m mrcnn_jax.train``): more accurate
    per step and ~1.5x faster per step on a 2-core CPU, so more steps fit the time budget.

    Each change measured (batch 8 of 128x128, benchmarks/README.md and docs/tuning_notes.md; "tuning
    images": 500 drawn with data seed 1, kept apart from the 500 held-out ones the job reports):
    - backbone convolutions start from PyTorch's plain ``Conv2d`` default (variance a sixth of
      He's) and no block starts as the identity (``zero_init_residual=False``), as torchvision's
      from-scratch model in ``benchmarks/bench_train_shapes.py``: with GroupNorm after every conv
      the smaller weights take larger relative steps. Main job: mask AP50 0.912 -> 0.936;
    - two anchor scales per level (``s`` and ``s * sqrt(2)``): 91% of the shapes' boxes then have
      an anchor at IoU >= 0.7, against 32% with one scale, so most objects get RPN positives by
      the IoU rule and not only by the low-quality rule; costs nothing measurable;
    - mask head convolutions 32 wide instead of 64: the mask head was a third of the step;
    - 32 sampled RoIs per image instead of 64, half of them positives when there are enough
      (torchvision: a quarter; background is easy here, the classes and duplicates are not):
      box AP50 +0.006 on the tuning images; binary mask targets (detectron2's) and 8,000
      training images (``train --num_train``) together: mask AP +0.009;
    - test time: 600/300 proposals before/after NMS (as in training), per-class NMS at 0.6
      rather than 0.5 (overlapping shapes of one class), score threshold 0.01 and 50
      detections: mask AP50 +0.008 on the same trained model;
    - the mask term weighs 3 in the total loss (``mask_loss_weight``; the paper's is 1): most
      missed shapes had a right box and a mask under IoU 0.5 (occluded shapes, rings and
      slivers). Tuning images, mask AP50 / AP: weight 1 0.948 / 0.776, 2 0.955 / 0.800,
      3 0.959 / 0.809, 4 0.957 / 0.807; box AP unchanged (0.867-0.869);
    - each mask is averaged with the mask predicted on the mirrored image (``mask_flip_test``,
      one more backbone pass at test time): with weight 3, mask AP50 0.959 -> 0.960 and mask
      AP 0.809 -> 0.825.
    Tried and not taken (tuning images, weight 2 or 3): ``aligned=True`` (RoIAlign and mask
    targets half-pixel-correct, detectron2's) gave the same AP50 (0.959 / 0.958 with the flip);
    16 mask RoIs per image instead of 8 cost 16% more per step for less (AP50 0.952 at weight 1);
    rescoring by mask confidence or suppressing by mask IoU moved AP50 by 0.001 or less.
    """
    config = small_config(num_classes, image_size)
    return config.replace(
        backbone=dataclasses.replace(config.backbone, conv_init="kaiming_uniform_sqrt5",
                                     zero_init_residual=False),
        rpn=dataclasses.replace(config.rpn, anchor_sizes=(
            (16, 23), (32, 45), (64, 91), (128, 181), (256, 362)),
            pre_nms_top_n_test=600, post_nms_top_n_test=300),
        roi_heads=dataclasses.replace(
            config.roi_heads, mask_layers=(32, 32, 32, 32), batch_size_per_image=32,
            positive_fraction=0.5, binary_mask_targets=True, mask_loss_weight=3.0,
            nms_threshold=0.6, score_threshold=0.01, detections_per_image=50,
            mask_flip_test=True),
    )
