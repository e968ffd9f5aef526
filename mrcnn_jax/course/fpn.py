"""Check for notebooks/05_backbone_and_fpn: the FPN's top-down pathway.

``fpn(module, features) -> [P2, ..., P6]`` computes what ``mrcnn_jax.fpn.FPN.__call__(self,
features)`` computes (the oracle), reading the weights of the given ``FPN`` module: for
``features = [C2, ..., C5]`` (NHWC, any number of levels), the lateral 1x1 convs
``module.inner_blocks[k]``, the top-down merge (the coarser *merged* map upsampled by nearest
neighbour to the next lateral's size, source index ``floor(i * in / out)``, and added), the 3x3
convs ``module.layer_blocks[k]``, and one extra level last, ``P6 = P5[:, ::2, ::2]`` (max-pool,
kernel 1, stride 2; with fewer input levels it follows the last one). A
student may call the blocks (``module.inner_blocks[k](x)``) or use their ``kernel``/``bias``.
The FPN is trained, so gradients with respect to the features are checked too.
"""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mrcnn_jax.course.core import call, call_jit, compare, compare_grad, describe_inputs, exercise
from mrcnn_jax.fpn import FPN, upsample_nearest
from mrcnn_jax.layers import max_pool


def _half_pixel_nearest(x, size):  # jax.image.resize's "nearest": floor((i + 0.5) * in / out)
    rows = ((jnp.arange(size[0]) + 0.5) * x.shape[1] / size[0]).astype(jnp.int32)
    cols = ((jnp.arange(size[1]) + 0.5) * x.shape[2] / size[1]).astype(jnp.int32)
    return x[:, rows][:, :, cols]


def _model(fpn, features, upsample=upsample_nearest, merge_smoothed=False, top_down=True,
           p6=lambda p5: max_pool(p5, 1, 2, 0)):
    """The FPN with one step changed: the models of the common mistakes."""
    last = fpn.inner_blocks[-1](features[-1])
    outputs = [fpn.layer_blocks[-1](last)]
    for k in range(len(features) - 2, -1, -1):
        lateral = fpn.inner_blocks[k](features[k])
        above = outputs[0] if merge_smoothed else last
        last = lateral + upsample(above, lateral.shape[1:3]) if top_down else lateral
        outputs.insert(0, fpn.layer_blocks[k](last))
    return [*outputs, p6(outputs[-1])]


def _mistakes(fpn, features):
    return (
        ("each merged map adds the coarser map *upsampled*: without the top-down sum a level "
         "never sees the coarser levels", lambda: _model(fpn, features, top_down=False)),
        ("upsample the coarser *merged* map (lateral + upsampled), before its 3x3 conv, not "
         "the smoothed output P", lambda: _model(fpn, features, merge_smoothed=True)),
        ("nearest upsampling as torch's F.interpolate: source index floor(i * in / out) "
         "(jax.image.resize's 'nearest' uses half-pixel centres, floor((i + 0.5) * in / out))",
         lambda: _model(fpn, features, upsample=_half_pixel_nearest)),
        ("P6 is P5 max-pooled with kernel 1 and stride 2: P5[:, ::2, ::2] (every other "
         "position, no 2 x 2 window)",
         lambda: _model(fpn, features, p6=lambda p5: max_pool(p5, 2, 2, 0))),
    )


def _fpn(in_channels, out_channels, seed):
    """An FPN with random weights *and* biases (torchvision starts biases at 0)."""
    fpn = FPN(in_channels, out_channels, rngs=nnx.Rngs(seed))
    key = jax.random.key(seed)
    for k, block in enumerate([*fpn.inner_blocks, *fpn.layer_blocks]):
        block.bias[...] = jax.random.normal(jax.random.fold_in(key, k), block.bias.shape)
    return fpn


def _features(seed, sizes, channels, batch=2):
    key = jax.random.key(seed)
    return [jax.random.normal(jax.random.fold_in(key, k), (batch, h, w, c))
            for k, ((h, w), c) in enumerate(zip(sizes, channels, strict=True))]


def _compare_levels(case, got, expected, inputs, mistakes):
    levels = len(expected) - 1  # inputs C2 ... C(levels + 1), then the extra max-pooled level
    if not isinstance(got, (list, tuple)) or len(got) != len(expected):
        count = len(got) if isinstance(got, (list, tuple)) else type(got).__name__
        raise AssertionError(
            f"case '{case}': return a list of {len(expected)} maps: P2 ... P{levels + 1}, one per "
            f"input level, then the extra level P{levels + 2} max-pooled from P{levels + 1} (P6 "
            f"for C2 ... C5); got {count}")
    for k, (g, e) in enumerate(zip(got, expected, strict=True)):
        compare(case, g, np.asarray(e), inputs, rtol=1e-4, atol=1e-4, what=f"P{k + 2}",
                mistakes=[(hint, lambda f=f, k=k: np.asarray(f()[k])) for hint, f in mistakes])


@exercise("fpn")
def check_fpn(fn):
    """Check ``fn(module, features) -> [P2, ..., P6]`` (module docstring) and its gradient."""
    def run(case, fpn, features, jit=False):
        inputs = describe_inputs(features, names=[f"C{k + 2}" for k in range(len(features))])
        if jit:
            graphdef, state = nnx.split(fpn)
            got = call_jit(case, lambda s, f: fn(nnx.merge(graphdef, s), f), state, features)
        else:
            got = call(case, fn, fpn, features)
        _compare_levels(case, got, fpn(features), inputs, _mistakes(fpn, features))

    hand = FPN((1, 1), 1, rngs=nnx.Rngs(0))
    for block in hand.inner_blocks:  # identity laterals
        block.kernel[...] = jnp.ones((1, 1, 1, 1))
    for block in hand.layer_blocks:  # identity 3x3 convs: centre 1
        block.kernel[...] = jnp.zeros((3, 3, 1, 1)).at[1, 1].set(1.0)
    c2 = jnp.arange(9.0).reshape(1, 3, 3, 1)
    c3 = jnp.array([[10.0, 20.0], [30.0, 40.0]]).reshape(1, 2, 2, 1)
    run("hand example: a two-level FPN with identity convs: C3 2 x 2 upsampled to C2's 3 x 3 "
        "(rows and columns 0, 0, 1) and added; the extra level P4 = P3[::2, ::2]", hand,
        [c2, c3])
    fpn = _fpn((4, 8, 16, 32), 8, seed=1)
    features = _features(2, [(16, 16), (8, 8), (4, 4), (2, 2)], (4, 8, 16, 32))
    run("random weights, 2 images of 64 x 64 (C2 16 x 16 ... C5 2 x 2)", fpn, features)
    run("the same under jax.jit", fpn, features, jit=True)
    odd = _features(3, [(25, 19), (13, 10), (7, 5), (4, 3)], (4, 8, 16, 32), batch=1)
    run("odd sizes, an input of 100 x 75: C5 4 x 3 goes to C4's 7 x 5 (not doubled)", fpn, odd)
    weights = [jax.random.normal(jax.random.key(10 + k), p.shape) for k, p in
               enumerate(fpn(odd))]

    def loss(f, levels):
        return sum(jnp.sum(p * w) for p, w in zip(f(levels), weights, strict=True))

    compare_grad("gradient with respect to C5 (it flows down through every level; odd sizes)",
                 lambda c5: loss(lambda x: fn(fpn, x), [*odd[:3], c5]),
                 lambda c5: loss(fpn, [*odd[:3], c5]), (odd[3],), rtol=1e-3, atol=1e-3,
                 inputs=describe_inputs(odd, names=["C2", "C3", "C4", "C5"]))
