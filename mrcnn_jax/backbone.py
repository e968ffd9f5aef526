"""ResNet backbone (He et al. 2016) returning the C2-C5 feature maps that feed the FPN.

Mask R-CNN section 3 ("Network Architecture") uses ResNet-50/101 with FPN; torchvision's
``resnet_fpn_backbone`` is mirrored attribute for attribute (``conv1``, ``bn1``, ``layer1`` ...
``layer4``, blocks with ``conv1..3``, ``bn1..3`` and ``downsample = [conv, norm]``), so names map
one to one onto torchvision's state dict (``weights.py``). Bottlenecks put the stride on the
3x3 conv (ResNet v1.5, as torchvision).

Norms: frozen BatchNorm for imported weights, or GroupNorm for training from scratch with small
batches (Wu & He 2018). With GroupNorm and ``zero_init_residual`` the last norm of each block
starts at zero, so every residual block starts as the identity (Goyal et al. 2017). Convolution
weights start from ``BackboneConfig.conv_init``: He fan-out as torchvision's ResNet, or PyTorch's
plain ``Conv2d`` default, which with GroupNorm after every conv trains faster on the shapes data
(``shapes_config``).

Shape shorthand: ``N`` images, ``H, W`` input size; C2-C5 have strides 4, 8, 16, 32.
Taught in notebooks/05_backbone_and_fpn.
"""

import jax
from flax import nnx

from mrcnn_jax.layers import CONV_INITS, Conv2d, kaiming_normal_fan_out, make_norm, max_pool

BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}


class BasicBlock(nnx.Module):
    expansion = 1

    def __init__(self, cin, width, stride, norm, trainable, init=kaiming_normal_fan_out, *,
                 rngs):
        self.conv1 = Conv2d(cin, width, 3, stride, 1, False, trainable, init, rngs=rngs)
        self.bn1 = norm(width)
        self.conv2 = Conv2d(width, width, 3, 1, 1, False, trainable, init, rngs=rngs)
        self.bn2 = norm(width, zero_init=True)
        self.downsample = _downsample(cin, width, stride, norm, trainable, init, rngs)

    def __call__(self, x):
        y = jax.nn.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return jax.nn.relu(y + _shortcut(self.downsample, x))


class Bottleneck(nnx.Module):
    expansion = 4

    def __init__(self, cin, width, stride, norm, trainable, init=kaiming_normal_fan_out, *,
                 rngs):
        self.conv1 = Conv2d(cin, width, 1, 1, 0, False, trainable, init, rngs=rngs)
        self.bn1 = norm(width)
        self.conv2 = Conv2d(width, width, 3, stride, 1, False, trainable, init, rngs=rngs)
        self.bn2 = norm(width)
        self.conv3 = Conv2d(width, width * 4, 1, 1, 0, False, trainable, init, rngs=rngs)
        self.bn3 = norm(width * 4, zero_init=True)
        self.downsample = _downsample(cin, width * 4, stride, norm, trainable, init, rngs)

    def __call__(self, x):
        y = jax.nn.relu(self.bn1(self.conv1(x)))
        y = jax.nn.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return jax.nn.relu(y + _shortcut(self.downsample, x))


def _downsample(cin, cout, stride, norm, trainable, init, rngs):
    if stride == 1 and cin == cout:
        return None
    return nnx.List([Conv2d(cin, cout, 1, stride, 0, False, trainable, init, rngs=rngs),
                     norm(cout)])


def _shortcut(downsample, x):
    return x if downsample is None else downsample[1](downsample[0](x))


class ResNet(nnx.Module):
    """ResNet body: ``__call__(x (N, H, W, 3)) -> [C2, C3, C4, C5]`` (NHWC)."""

    def __init__(self, config, *, rngs):
        if config.depth not in BLOCKS:
            raise ValueError(f"ResNet depth must be one of {sorted(BLOCKS)}; got {config.depth}")
        if config.conv_init not in CONV_INITS:
            raise ValueError(f"conv_init must be one of {sorted(CONV_INITS)}; "
                             f"got {config.conv_init!r}")
        init = CONV_INITS[config.conv_init]
        block = BasicBlock if config.depth < 50 else Bottleneck
        # torchvision trainable_layers counts from the top: 5 trains all, 3 freezes conv1+layer1
        first_trainable = 5 - config.trainable_layers  # 0 = stem, 1..4 = layer1..layer4

        def norm_of(trainable):  # frozen stages freeze their norms too, as torchvision
            return lambda channels, zero_init=False: make_norm(
                config.norm, channels, config.group_norm_groups, config.frozen_bn_eps,
                zero_init and config.zero_init_residual, trainable, rngs=rngs)

        self.conv1 = Conv2d(3, config.stem_width, 7, 2, 3, False, first_trainable <= 0, init,
                            rngs=rngs)
        self.bn1 = norm_of(first_trainable <= 0)(config.stem_width)
        cin = config.stem_width
        stages = zip(BLOCKS[config.depth], config.widths, strict=True)
        for i, (count, width) in enumerate(stages, 1):
            blocks = []
            for j in range(count):
                stride = 2 if (j == 0 and i > 1) else 1
                trainable = first_trainable <= i
                blocks.append(block(cin, width, stride, norm_of(trainable), trainable, init,
                                    rngs=rngs))
                cin = width * block.expansion
            setattr(self, f"layer{i}", nnx.List(blocks))
        self.out_channels = tuple(w * block.expansion for w in config.widths)

    def __call__(self, x):  # (N, H, W, 3) normalised
        x = jax.nn.relu(self.bn1(self.conv1(x)))  # (N, H/2, W/2, stem)
        x = max_pool(x, 3, 2, 1)  # (N, H/4, W/4, stem)
        features = []
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            for block in layer:
                x = block(x)
            features.append(x)  # C2 (H/4) .. C5 (H/32)
        return features
