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

import re

import numpy as np
from flax import nnx

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
