"""Check for notebooks/11_pretrained_weights: torchvision's tensor layouts to ours.

``from_torchvision_layout(name, value, roi_size=7) -> array`` as
``mrcnn_jax.weights.from_torchvision_layout`` (the oracle), for the tensor called ``name`` in
torchvision's state dict:
- conv kernels (4-D) OIHW ``(out, in, kh, kw)`` -> HWIO ``(kh, kw, in, out)``;
- the mask head's 2x2 transposed conv (``...conv5_mask.weight``) ``(in, out, a, b)`` ->
  ``(a, b, in, out)``;
- linear weights (2-D) ``(out, in)`` -> ``(in, out)``;
- ``fc6`` (``...box_head.fc6.weight``) ``(out, C * r * r)`` with inputs flattened ``(c, y, x)``
  -> ``(r * r * C, out)`` with rows in ``(y, x, c)`` order (``r = roi_size``);
- vectors (biases, norm weights and statistics) unchanged.
Numpy at load time, so no ``jit`` case; values are compared exactly (a layout change only moves
numbers).
"""

import numpy as np

from mrcnn_jax.course.core import call, compare, describe_inputs, exercise
from mrcnn_jax.weights import from_torchvision_layout as oracle


def _mistakes(name, value, roi_size):
    return (
        ("a conv kernel goes OIHW -> HWIO: transpose(2, 3, 1, 0); the last two axes are (in, "
         "out)", lambda: value.transpose(2, 3, 0, 1) if value.ndim == 4 else None),
        ("np.transpose / .T with no axes reverses all four: (kw, kh, in, out), a mirrored "
         "kernel; give the axes: transpose(2, 3, 1, 0)",
         lambda: value.T if value.ndim == 4 else None),
        ("conv5_mask is a *transposed* conv: torchvision stores (in, out, a, b), so it goes "
         "transpose(2, 3, 0, 1)",
         lambda: value.transpose(2, 3, 1, 0) if "conv5_mask" in name else None),
        ("fc6's inputs are flattened (c, y, x) by torchvision and (y, x, c) by us: reshape to "
         "(out, C, r, r), move the axes to (r, r, C, out), flatten the first three",
         lambda: value.T if "box_head.fc6" in name else None),
        ("a linear weight is (out, in) in torchvision and (in, out) here: transpose it",
         lambda: value if value.ndim == 2 else None),
    )


@exercise("from_torchvision_layout")
def check_from_torchvision_layout(fn):
    """Check ``fn(name, value, roi_size=7) -> array in our layout`` (module docstring)."""
    def run(case, name, shape, roi_size=7, seed=0):
        value = np.random.default_rng(seed).normal(size=shape).astype(np.float32)
        if seed == 0:  # the hand example: entries are their own flat index
            value = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
        inputs = describe_inputs((name, value), {"roi_size": roi_size},
                                 names=("name", "value"))
        got = call(case, fn, name, value.copy(), roi_size)
        compare(case, got, oracle(name, value, roi_size), inputs, rtol=0, atol=0,
                mistakes=_mistakes(name, value, roi_size))

    run("hand example: a 1 x 2 conv with 3 inputs and 2 outputs, OIHW (2, 3, 1, 2)",
        "backbone.body.conv1.weight", (2, 3, 1, 2))
    run("hand example: fc6 with 2 outputs, C = 3 channels, roi_size 2 (columns c * 4 + y * 2 "
        "+ x)", "roi_heads.box_head.fc6.weight", (2, 12), 2)
    run("a 3x3 conv with as many inputs as outputs (in/out mix-ups keep the shape)",
        "backbone.body.layer1.0.conv2.weight", (6, 6, 3, 3), seed=1)
    run("a 1x1 lateral conv of the FPN", "backbone.fpn.inner_blocks.2.0.weight", (8, 16, 1, 1),
        seed=2)
    run("the RPN head's 3x3 conv", "rpn.head.conv.0.0.weight", (8, 8, 3, 3), seed=3)
    run("the mask head's 2x2 transposed conv, (in, out, a, b)",
        "roi_heads.mask_predictor.conv5_mask.weight", (5, 4, 2, 2), seed=4)
    run("fc7, a linear layer (out, in)", "roi_heads.box_head.fc7.weight", (6, 10), seed=5)
    run("a square linear layer (a missing transpose keeps the shape)",
        "roi_heads.box_predictor.cls_score.weight", (7, 7), seed=6)
    run("fc6 at roi_size 7: (out 5, C 4 * 7 * 7)", "roi_heads.box_head.fc6.weight",
        (5, 4 * 7 * 7), 7, seed=7)
    for index, (name, shape) in enumerate((
            ("backbone.body.layer2.0.conv1.bias", (6,)),
            ("backbone.body.bn1.running_var", (8,)),
            ("backbone.fpn.layer_blocks.0.0.bias", (4,)),
            ("roi_heads.mask_head.0.0.weight", (4, 4, 3, 3)))):
        run(f"{name}: {'a conv kernel' if len(shape) == 4 else 'a vector, unchanged'}", name,
            shape, seed=8 + index)
