"""Feature Pyramid Network (Lin et al. 2017): P2-P6, every level with the same channels.

Mask R-CNN section 3 uses FPN so small objects are pooled from fine maps and large ones from
coarse maps. As torchvision's ``FeaturePyramidNetwork`` with ``LastLevelMaxPool``:
- a 1x1 lateral conv (``inner_blocks``) brings each C_k to ``fpn_channels``;
- top-down: the coarser merged map is upsampled by nearest neighbour to the finer map's size
  and added to its lateral;
- a 3x3 conv (``layer_blocks``) smooths each merged map into P_k;
- P6 is P5 max-pooled with kernel 1, stride 2 (a subsample, used only by the RPN).

Shape shorthand: ``N`` images, level ``k`` has stride ``2**k`` and ``F = fpn_channels``.
Taught in notebooks/05_backbone_and_fpn.
"""

import jax.numpy as jnp
from flax import nnx

from mrcnn_jax.layers import Conv2d, kaiming_uniform_a1, max_pool


def upsample_nearest(x, size):
    """``F.interpolate(x, size, mode="nearest")`` on NHWC: source index ``floor(i * in / out)``."""
    _, h, w, _ = x.shape
    rows = (jnp.arange(size[0]) * h) // size[0]  # (H',)
    cols = (jnp.arange(size[1]) * w) // size[1]  # (W',)
    return x[:, rows][:, :, cols]  # (N, H', W', C)


class FPN(nnx.Module):
    """``__call__([C2..C5]) -> [P2, P3, P4, P5, P6]``, each ``(N, H/2**k, W/2**k, F)``."""

    def __init__(self, in_channels, out_channels, *, rngs):
        self.inner_blocks = nnx.List([
            Conv2d(c, out_channels, 1, init=kaiming_uniform_a1, rngs=rngs) for c in in_channels
        ])
        self.layer_blocks = nnx.List([
            Conv2d(out_channels, out_channels, 3, padding=1, init=kaiming_uniform_a1, rngs=rngs)
            for _ in in_channels
        ])

    def __call__(self, features):
        last = self.inner_blocks[-1](features[-1])  # (N, h5, w5, F)
        outputs = [self.layer_blocks[-1](last)]
        for k in range(len(features) - 2, -1, -1):
            lateral = self.inner_blocks[k](features[k])  # (N, h_k, w_k, F)
            last = lateral + upsample_nearest(last, lateral.shape[1:3])
            outputs.insert(0, self.layer_blocks[k](last))
        outputs.append(max_pool(outputs[-1], 1, 2, 0))  # P6: (N, ceil(h5/2), ceil(w5/2), F)
        return outputs
