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
        updated.append((path, variable.replace(value=np.asarray(value, np.float32))))
    unexpected = sorted(n for n in state_dict if n not in used
                        and not n.endswith("num_batches_tracked"))
    if missing or unexpected or misshaped:
        raise ValueError("torchvision state dict does not fit the model:\n"
                         f"  missing ({len(missing)}): {missing}\n"
                         f"  unexpected ({len(unexpected)}): {unexpected}\n"
                         f"  mis-shaped ({len(misshaped)}): {misshaped}")
    nnx.update(model, nnx.from_flat_state(updated))
