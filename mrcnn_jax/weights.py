"""Names and layouts of our weights in torchvision's Mask R-CNN state dict.

Every variable of :class:`MaskRCNN` has one torchvision name (``backbone.body.layer1.0.conv1
.weight`` ...) and a layout change:
- conv kernels: ours HWIO ``(kh, kw, in, out)``, torchvision OIHW ``(out, in, kh, kw)``;
- linear kernels: ours ``(in, out)``, torchvision ``(out, in)``; ``fc6`` also flattens its
  pooled input NHWC ``(y, x, c)`` here against NCHW ``(c, y, x)`` there, so its rows are
  permuted, not only transposed;
- the 2x2 transposed conv: ours ``(a, b, in, out)``, torchvision ``(in, out, a, b)``;
- norms: GroupNorm ``scale`` is torchvision's ``weight``; frozen BatchNorm keeps its names.
``num_batches_tracked`` buffers have no counterpart.

Shape shorthand: ``F`` FPN channels, ``r`` RoI size.
"""

import dataclasses
import re

import jax.numpy as jnp
import numpy as np
from flax import nnx

from mrcnn_jax.anchors import num_anchors_per_location
from mrcnn_jax.config import resnet50_fpn_config
from mrcnn_jax.model import MaskRCNN

_RENAMES = (
    (r"^body\.", "backbone.body."),
    (r"^fpn\.(inner|layer)_blocks\.(\d+)\.", r"backbone.fpn.\1_blocks.\2.0."),
    (r"^rpn_head\.conv\.", "rpn.head.conv.0.0."),
    (r"^rpn_head\.", "rpn.head."),
    (r"^box_head\.(fc6|fc7)\.", r"roi_heads.box_head.\1."),
    (r"^box_head\.(cls_score|bbox_pred)\.", r"roi_heads.box_predictor.\1."),
    (r"^mask_head\.convs\.(\d+)\.", r"roi_heads.mask_head.\1.0."),
    (r"^mask_head\.(conv5_mask|mask_fcn_logits)\.", r"roi_heads.mask_predictor.\1."),
    (r"\.(kernel|scale)$", ".weight"),
)


def torchvision_name(path):
    """torchvision state-dict name of one of our variable paths (tuple or dotted string)."""
    name = path if isinstance(path, str) else ".".join(str(p) for p in path)
    for pattern, replacement in _RENAMES:
        name = re.sub(pattern, replacement, name)
    return name


def _kind(name, ndim):
    if name.endswith("conv5_mask.weight"):
        return "conv_transpose"
    if ndim == 4:
        return "conv"
    if ndim == 2:
        return "fc6" if "box_head.fc6" in name else "linear"
    return "vector"


def to_torchvision_layout(name, value, roi_size=7):
    """Our array -> torchvision's layout for the variable called ``name`` there."""
    value = np.asarray(value)
    kind = _kind(name, value.ndim)
    if kind == "conv":
        return value.transpose(3, 2, 0, 1)  # HWIO -> OIHW
    if kind == "conv_transpose":
        return value.transpose(2, 3, 0, 1)  # (a, b, in, out) -> (in, out, a, b)
    if kind == "fc6":  # rows (y, x, c) -> columns (c, y, x)
        channels = value.shape[0] // (roi_size * roi_size)
        value = value.reshape(roi_size, roi_size, channels, -1).transpose(2, 0, 1, 3)
        return value.reshape(channels * roi_size * roi_size, -1).T
    if kind == "linear":
        return value.T
    return value


def from_torchvision_layout(name, value, roi_size=7):
    """torchvision's array for ``name`` -> our layout (inverse of :func:`to_torchvision_layout`)."""
    value = np.asarray(value)
    kind = _kind(name, value.ndim)
    if kind == "conv":
        return value.transpose(2, 3, 1, 0)
    if kind == "conv_transpose":
        return value.transpose(2, 3, 0, 1)
    if kind == "fc6":  # columns (c, y, x) -> rows (y, x, c)
        out = value.shape[0]
        channels = value.shape[1] // (roi_size * roi_size)
        value = value.reshape(out, channels, roi_size, roi_size).transpose(2, 3, 1, 0)
        return value.reshape(roi_size * roi_size * channels, out)
    if kind == "linear":
        return value.T
    return value


def torchvision_shapes(model):
    """``{torchvision name: shape in torchvision's layout}`` for every variable of ``model``
    (works on an abstract model from ``nnx.eval_shape`` too)."""
    shapes = {}
    for path, leaf in nnx.to_flat_state(nnx.state(model)):
        name = torchvision_name(path)
        shapes[name] = _layout_shape(name, tuple(leaf.shape))
    return shapes


def _layout_shape(name, shape):
    kind = _kind(name, len(shape))
    if kind == "conv":
        return (shape[3], shape[2], shape[0], shape[1])
    if kind == "conv_transpose":
        return (shape[2], shape[3], shape[0], shape[1])
    if kind in ("fc6", "linear"):
        return (shape[1], shape[0])
    return tuple(shape)


def _to_numpy(value):
    if hasattr(value, "detach"):  # a torch tensor, without importing torch
        value = value.detach().cpu()
    return np.asarray(value.numpy() if hasattr(value, "numpy") else value)


def load_torchvision_state(model, state_dict, prefix=(), roi_size=7):
    """Copy torchvision tensors into ``model`` in place, converting layouts.

    Args:
      model: a :class:`MaskRCNN` or one of its parts (then ``prefix`` is its attribute path in
        ``MaskRCNN``, e.g. ``("body",)``, so names resolve to full torchvision names).
      state_dict: ``{torchvision name: array}``; tensors (anything with ``.numpy()``) or numpy.
      roi_size: the box head's pooled size (fc6's input layout).
    Raises:
      ValueError listing every missing, unexpected and mis-shaped tensor at once.
    """
    used, updated, missing, misshaped = set(), [], [], []
    for path, variable in nnx.to_flat_state(nnx.state(model)):
        name = torchvision_name(tuple(prefix) + tuple(path))
        if name not in state_dict:
            missing.append(name)
            continue
        value = from_torchvision_layout(name, _to_numpy(state_dict[name]), roi_size)
        used.add(name)
        if value.shape != tuple(variable.shape):
            misshaped.append(f"{name}: ours {tuple(variable.shape)}, given {value.shape}")
            continue
        # device arrays, made once: numpy leaves (transposed views of the torch tensors) were
        # copied and re-laid out to the device on every jitted call (~0.3 s per R50 predict)
        updated.append((path, variable.replace(value=jnp.asarray(value, jnp.float32))))
    unexpected = sorted(n for n in state_dict if n not in used
                        and not n.endswith("num_batches_tracked"))
    if missing or unexpected or misshaped:
        raise ValueError("torchvision state dict does not fit the model:\n"
                         f"  missing ({len(missing)}): {missing}\n"
                         f"  unexpected ({len(unexpected)}): {unexpected}\n"
                         f"  mis-shaped ({len(misshaped)}): {misshaped}")
    nnx.update(model, nnx.from_flat_state(updated))


_DEPTHS = {("basic", (2, 2, 2, 2)): 18, ("basic", (3, 4, 6, 3)): 34,
           ("bottleneck", (3, 4, 6, 3)): 50, ("bottleneck", (3, 4, 23, 3)): 101}


def _shape(state_dict, name):
    if name not in state_dict:
        raise ValueError(f"not a torchvision Mask R-CNN state dict: {name!r} is missing "
                         f"({len(state_dict)} tensors given, e.g. {sorted(state_dict)[:3]})")
    return tuple(_to_numpy(state_dict[name]).shape)


def infer_architecture(state_dict):
    """What the tensor names and shapes of a torchvision Mask R-CNN say about its layers.

    Returns ``{"num_classes", "fpn_channels", "backbone": {...}, "roi_heads": {...},
    "anchors_per_location"}``: ResNet depth from the blocks per stage and the block type
    (``conv3`` means bottleneck), widths, norm (``running_mean`` means frozen BatchNorm), head
    sizes. Raises ValueError naming what does not fit.
    """
    names = set(state_dict)
    body = "backbone.body."
    _shape(state_dict, f"{body}conv1.weight")  # the clear error for something else entirely
    blocks = []
    for stage in range(1, 5):
        pattern = re.compile(rf"^{re.escape(body)}layer{stage}\.(\d+)\.")
        blocks.append(len({m.group(1) for n in names if (m := pattern.match(n))}))
    kind = "bottleneck" if f"{body}layer1.0.conv3.weight" in names else "basic"
    if (kind, tuple(blocks)) not in _DEPTHS:
        raise ValueError(f"unknown ResNet: {kind} blocks per stage {tuple(blocks)}; expected "
                         f"one of {sorted(_DEPTHS.items(), key=lambda kv: kv[1])}")
    inner = [n for n in names if re.match(r"^backbone\.fpn\.inner_blocks\.\d+\.0\.weight$", n)]
    if len(inner) != 4:
        raise ValueError("expected an FPN on layer1..layer4 (resnet_fpn_backbone's default "
                         f"returned_layers), found {len(inner)} inner blocks")
    fpn_channels = _shape(state_dict, "backbone.fpn.inner_blocks.0.0.weight")[0]
    num_classes = _shape(state_dict, "roi_heads.box_predictor.cls_score.weight")[0]
    representation, fc6_in = _shape(state_dict, "roi_heads.box_head.fc6.weight")
    roi_size = int(round((fc6_in / fpn_channels) ** 0.5))
    if roi_size * roi_size * fpn_channels != fc6_in:
        raise ValueError(f"fc6 takes {fc6_in} inputs, not FPN channels ({fpn_channels}) times "
                         "a square RoI size")
    mask_layers = []
    while f"roi_heads.mask_head.{len(mask_layers)}.0.weight" in names:
        mask_layers.append(_shape(state_dict,
                                  f"roi_heads.mask_head.{len(mask_layers)}.0.weight")[0])
    return {
        "num_classes": num_classes,
        "fpn_channels": fpn_channels,
        "backbone": {
            "depth": _DEPTHS[(kind, tuple(blocks))],
            "stem_width": _shape(state_dict, f"{body}conv1.weight")[0],
            "widths": tuple(_shape(state_dict, f"{body}layer{s}.0.conv1.weight")[0]
                            for s in range(1, 5)),
            "norm": "frozen_bn" if f"{body}bn1.running_mean" in names else "group_norm",
        },
        "roi_heads": {"representation_size": representation, "box_roi_size": roi_size,
                      "mask_layers": tuple(mask_layers)},
        "anchors_per_location": _shape(state_dict, "rpn.head.cls_logits.weight")[0],
    }


def config_for(state_dict, config=None):
    """``config`` (default: torchvision's ``maskrcnn_resnet50_fpn`` settings) with the layer
    sizes the state dict implies: class count, FPN channels, ResNet depth, widths and norm, head
    sizes are replaced by the weights'; thresholds, anchors, sizes and the image size are kept."""
    arch = infer_architecture(state_dict)
    config = resnet50_fpn_config() if config is None else config
    config = config.replace(
        num_classes=arch["num_classes"], fpn_channels=arch["fpn_channels"],
        backbone=dataclasses.replace(config.backbone, **arch["backbone"]),
        roi_heads=dataclasses.replace(config.roi_heads, **arch["roi_heads"]))
    per_location = set(num_anchors_per_location(config.rpn.anchor_sizes,
                                                config.rpn.aspect_ratios))
    if per_location != {arch["anchors_per_location"]}:
        raise ValueError(f"the RPN head predicts {arch['anchors_per_location']} anchors per "
                         f"location, the config's anchors give {sorted(per_location)}; set "
                         "config.rpn.anchor_sizes / aspect_ratios to those the weights were "
                         "trained with")
    return config


def from_torchvision(state_dict, config=None):
    """A :class:`MaskRCNN` holding the tensors of a torchvision Mask R-CNN state dict.

    Works for ``maskrcnn_resnet50_fpn`` and for ``MaskRCNN`` on ``resnet_fpn_backbone`` with
    resnet18/34/50/101: depth, block type, widths, norm, class count and head sizes are read
    from the names and shapes (:func:`infer_architecture`). Needs no torch: any mapping of
    names to arrays (numpy, or tensors with ``.numpy()``).

    Args:
      state_dict: ``model.state_dict()`` of the torchvision model, or the file's dict.
      config: thresholds, sizes and ``image_size`` to use (default: torchvision's eval
        defaults, :func:`resnet50_fpn_config`); its layer sizes are replaced by the weights'.
        torchvision's COCO_V1 weights were trained with frozen BatchNorm eps 0:
        ``resnet50_fpn_config(frozen_bn_eps=0.0)`` reproduces them exactly.
    Raises:
      ValueError listing every missing, unexpected and mis-shaped tensor at once.
    """
    config = config_for(state_dict, config)
    model = nnx.eval_shape(lambda: MaskRCNN(config, rngs=nnx.Rngs(0)))
    load_torchvision_state(model, state_dict, roi_size=config.roi_heads.box_roi_size)
    return model
