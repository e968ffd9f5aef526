# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/mrcnn-jax/mrcnn_jax/blob/v0.2.0/notebooks/05_backbone_and_fpn.ipynb)
#
# # 05 · Backbone and FPN
#
# *From pixels to a pyramid of feature maps: a ResNet body computes C2-C5, a Feature Pyramid
# Network turns them into P2-P6, one map per object scale, all with the same channels.*
#
# **You will learn**
# - the stages of a ResNet, **basic** versus **bottleneck** blocks, and where the strides
#   4, 8, 16, 32 come from; the output-size formula of a convolution, by hand;
# - a residual block written inline, checked against `mrcnn_jax.backbone.BasicBlock` with the
#   same weights;
# - the size of every feature level for a 128 x 128 shapes image and an 800 x 1088 COCO image;
# - the FPN top-down pathway (1x1 lateral, nearest upsampling, add, 3x3 smoothing, P6 by
#   subsampling), inline, checked against `mrcnn_jax.fpn.FPN`;
# - what each level "sees": receptive field and stride, and the activations of a randomly
#   initialised model on a shapes image;
# - frozen BatchNorm versus GroupNorm, and why we train from scratch with GroupNorm;
# - how many parameters the small CPU model and torchvision's ResNet-50-FPN have.

# %%
# Colab setup: on Colab, fetch this project at the notebooks' revision and install what the
# runtime lacks (the logic is mrcnn_jax/colab.py); anywhere else this cell does nothing.
import sys

if "google.colab" in sys.modules:
    import importlib.util
    import os
    import subprocess

    REPO = "/content/mrcnn_jax"
    if not os.path.isdir(REPO):
        subprocess.run(["git", "clone", "-q", "--depth", "1", "--branch", "v0.2.0",
                        "https://github.com/mrcnn-jax/mrcnn_jax", REPO], check=True)
    spec = importlib.util.spec_from_file_location("colab_setup", f"{REPO}/mrcnn_jax/colab.py")
    colab_setup = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(colab_setup)
    colab_setup.setup(REPO)  # installs, moves into notebooks/, prints jax.devices()

# %%
import logging
import os
import time

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
from flax import nnx

from mrcnn_jax import plotting
from mrcnn_jax.backbone import BLOCKS, BasicBlock, Bottleneck
from mrcnn_jax.config import resnet50_fpn_config, small_config
from mrcnn_jax.data import CLASS_NAMES, parse_example, shapes_source
from mrcnn_jax.fpn import upsample_nearest
from mrcnn_jax.layers import FrozenBatchNorm, make_norm, max_pool
from mrcnn_jax.model import MaskRCNN, count_parameters

FAST = os.environ.get("MRCNN_JAX_FAST", "0") == "1"
# TPUs (and recent GPUs) run float32 matmuls and convolutions in bfloat16 or TF32 passes by default;
# this notebook's asserts compare with CPU references, so ask for full float32 (no change on a CPU).
jax.config.update("jax_default_matmul_precision", "highest")
logging.getLogger("absl").setLevel(logging.ERROR)  # hide TFDS's "custom config" notices
NUM_RANDOM = 2 if FAST else 8  # random inputs for the numeric checks
small, big = small_config(), resnet50_fpn_config()
print(f"FAST={FAST}")
print("small_config backbone:", small.backbone)
print("resnet50_fpn_config backbone:", big.backbone)

# %% [markdown]
# ## 1. ResNet stages
#
# A ResNet (He et al. 2016) is a **stem** followed by four **stages** `layer1..layer4`:
#
# | part | what it does | stride so far |
# |---|---|---|
# | stem | 7x7 conv, stride 2 + norm + ReLU, then 3x3 max-pool, stride 2 | 4 |
# | `layer1` | blocks at stride 1 → **C2** | 4 |
# | `layer2` | first block stride 2 → **C3** | 8 |
# | `layer3` | first block stride 2 → **C4** | 16 |
# | `layer4` | first block stride 2 → **C5** | 32 |
#
# Each stage repeats one kind of residual block `y = relu(F(x) + shortcut(x))`:
# - **basic block** (ResNet-18/34): two 3x3 convs, the first one carries the stride;
# - **bottleneck** (ResNet-50/101): 1x1 conv down to `width`, 3x3 conv (with the stride: ResNet
#   v1.5, as torchvision), 1x1 conv up to `4 x width`.
#
# The shortcut is the identity, or a 1x1 conv + norm (`downsample`) when the stride or the
# channel count changes. The blocks per stage:

# %%
for depth, counts in BLOCKS.items():
    kind = "basic" if depth < 50 else "bottleneck"
    print(f"ResNet-{depth:<3d} {kind:10s} blocks per stage {counts}")
print("\nsmall_config  : ResNet-18, widths", small.backbone.widths, "-> C2..C5 channels",
      tuple(w * BasicBlock.expansion for w in small.backbone.widths))
print("resnet50_fpn  : ResNet-50, widths", big.backbone.widths, "-> C2..C5 channels",
      tuple(w * Bottleneck.expansion for w in big.backbone.widths))

# %% [markdown]
# ## 2. Output sizes by hand
#
# A convolution (or pooling) with kernel `k`, stride `s` and symmetric padding `p` maps `n`
# positions to `floor((n + 2p - k) / s) + 1`. By hand for a 128-pixel side:
# - stem conv `k=7, s=2, p=3`: `floor((128 + 6 - 7) / 2) + 1 = 63 + 1 = 64`;
# - max-pool `k=3, s=2, p=1`: `floor((64 + 2 - 3) / 2) + 1 = 31 + 1 = 32` (C2, stride 4);
# - a 3x3 stride-2 conv with `p=1`: `floor((n - 1) / 2) + 1 = ceil(n / 2)`: 16, 8, 4.
#
# For 800: 400, 200, 100, 50, 25; for 1088: 544, 272, 136, 68, 34. Odd sizes round **up**.

# %%
def conv_out(n, k, s, p):
    return (n + 2 * p - k) // s + 1


def level_sizes(n):
    """Side lengths of C2..C5 and P6 for an input side ``n`` (ResNet stem + stages + FPN)."""
    c = conv_out(conv_out(n, 7, 2, 3), 3, 2, 1)  # stem conv, max-pool: C2
    sizes = [c]
    for _ in range(3):  # layer2..layer4: a 3x3 stride-2 conv each
        c = conv_out(c, 3, 2, 1)
        sizes.append(c)
    sizes.append(conv_out(c, 1, 2, 0))  # P6: max-pool kernel 1, stride 2
    return sizes


print("128 :", level_sizes(128))
print("800 :", level_sizes(800))
print("1088:", level_sizes(1088))
assert conv_out(128, 7, 2, 3) == 64 and level_sizes(128) == [32, 16, 8, 4, 2]
assert level_sizes(800) == [200, 100, 50, 25, 13] and level_sizes(1088) == [272, 136, 68, 34, 17]

# %% [markdown]
# ## 3. A residual block, inline
#
# We write the basic block with nothing but `lax.conv_general_dilated` (NHWC input, HWIO kernel,
# symmetric padding, as torchvision) and a GroupNorm, then give the package's `BasicBlock` the
# very same weights. GroupNorm (section 7) splits the `C` channels into `g` groups and
# normalises each group of each image over `(H, W, C/g)`.
#
# **Precision on accelerators.** The first cell of this notebook set
# `jax.config.update("jax_default_matmul_precision", "highest")`. On a CPU it changes nothing. A
# TPU, by default, multiplies float32 matrices and convolves float32 maps in bfloat16 passes
# (7 stored mantissa bits), and recent NVIDIA GPUs use TF32 (10 stored mantissa bits): fast, and
# fine for training, but two convolutions of the same numbers computed two ways would then differ
# by about 1e-3 relative, and the `assert_allclose(..., rtol=1e-4)` below would fail on a Colab
# TPU although nothing is wrong. Every notebook that compares with a CPU reference asks for full float32; the
# test suite does the same (`tests/conftest.py`). Training in bfloat16 on purpose is another
# matter: a compute dtype, not a precision default.

# %%
def conv(x, kernel, stride, padding):
    pad = ((padding, padding), (padding, padding))
    return jax.lax.conv_general_dilated(x, kernel, (stride, stride), pad,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


def group_norm(x, scale, bias, groups, eps=1e-5):
    n, h, w, c = x.shape
    xg = x.reshape(n, h, w, groups, c // groups)  # (N, H, W, g, C/g)
    mean = xg.mean(axis=(1, 2, 4), keepdims=True)  # (N, 1, 1, g, 1)
    var = xg.var(axis=(1, 2, 4), keepdims=True)
    xg = (xg - mean) / jnp.sqrt(var + eps)
    return xg.reshape(n, h, w, c) * scale + bias  # (N, H, W, C)


def my_basic_block(x, p, stride, groups):
    """relu(GN(conv3x3(relu(GN(conv3x3_stride(x))))) + shortcut(x)); ``p`` holds the weights."""
    y = jax.nn.relu(group_norm(conv(x, p["conv1"], stride, 1), *p["bn1"], groups))
    y = group_norm(conv(y, p["conv2"], 1, 1), *p["bn2"], groups)
    shortcut = x
    if "down_conv" in p:  # stride or channels change: 1x1 conv (with the stride) + GN
        shortcut = group_norm(conv(x, p["down_conv"], stride, 0), *p["down_norm"], groups)
    return jax.nn.relu(y + shortcut)


def block_weights(block):
    """The arrays of a ``BasicBlock`` (GroupNorm) as the dict ``my_basic_block`` reads."""
    p = {"conv1": block.conv1.kernel[...], "conv2": block.conv2.kernel[...],
         "bn1": (block.bn1.scale[...], block.bn1.bias[...]),
         "bn2": (block.bn2.scale[...], block.bn2.bias[...])}
    if block.downsample is not None:
        p["down_conv"] = block.downsample[0].kernel[...]
        p["down_norm"] = (block.downsample[1].scale[...], block.downsample[1].bias[...])
    return p

# %% [markdown]
# First a block that keeps the shape (stride 1, 16 -> 16 channels). With GroupNorm the package
# starts the **last norm of every block at scale 0** (Goyal et al. 2017), so the residual branch
# is zero and a fresh block is `relu(x)`: a deep network starts close to a shallow one. It is a
# switch, `BackboneConfig.zero_init_residual`. `shapes_config`, the preset of the README's
# default training run (`python -m mrcnn_jax.train`), turns it off and starts the convolutions
# smaller (PyTorch's default init): on the shapes that gave a better mask AP50 after the same
# training (docs/tuning_notes.md records the measurement).

# %%
rngs = nnx.Rngs(0)


def gn(channels, zero_init=False):
    return make_norm("group_norm", channels, groups=4, zero_init=zero_init, rngs=rngs)


x = jax.random.normal(jax.random.key(1), (NUM_RANDOM, 8, 8, 16))  # (N, H, W, C)
same = BasicBlock(16, 16, stride=1, norm=gn, trainable=True, rngs=rngs)
print("bn2 scale at init:", same.bn2.scale[...][:4], "...  downsample:", same.downsample)
np.testing.assert_allclose(same(x), jax.nn.relu(x), atol=1e-6)
np.testing.assert_allclose(my_basic_block(x, block_weights(same), 1, 4), same(x), atol=1e-5)
print("a fresh block is relu(x), and the inline block agrees")

# %% [markdown]
# Now a block that halves the resolution and doubles the channels (16 -> 32, stride 2, so it has
# a `downsample` shortcut), with random norm scales so that every path matters.

# %%
down = BasicBlock(16, 32, stride=2, norm=gn, trainable=True, rngs=rngs)
for k, norm in enumerate([down.bn1, down.bn2, down.downsample[1]]):
    norm.scale.value = 1.0 + 0.3 * jax.random.normal(jax.random.key(10 + k), norm.scale.shape)
    norm.bias.value = 0.1 * jax.random.normal(jax.random.key(20 + k), norm.bias.shape)
mine, theirs = my_basic_block(x, block_weights(down), 2, 4), down(x)
print("input", x.shape, "-> output", mine.shape, "; max |difference|",
      float(jnp.abs(mine - theirs).max()))
np.testing.assert_allclose(mine, theirs, rtol=1e-4, atol=1e-4)
assert mine.shape == (NUM_RANDOM, 4, 4, 32)

# %% [markdown]
# ## 4. Feature-map sizes of every level
#
# The small CPU model (`small_config`, 128 x 128 input) and torchvision's ResNet-50-FPN
# (`resnet50_fpn_config`, 800 x 1088 padded input). `nnx.eval_shape` builds a model with
# abstract arrays (shapes only, no memory) and `jax.eval_shape` runs its forward pass on shapes
# only: we get every feature size of the big model without computing anything.
#
# `jax.eval_shape` (like `jax.jit` and `jax.grad`) takes functions of arrays, not Python objects
# such as an NNX module. `nnx.split(model)` therefore takes the model apart into a `graphdef`, the
# static structure (which modules, their settings, how they connect), and a `state`, a pytree
# (nested dict) of all its arrays; `nnx.merge(graphdef, state)` rebuilds an equivalent model. We
# pass the `state` through `jax.eval_shape` and merge inside the function.

# %%
def feature_shapes(config):
    """Shapes of [C2..C5] and [P2..P6] for one image of ``config.image_size``."""
    abstract = nnx.eval_shape(lambda: MaskRCNN(config, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)

    def forward(state, images):
        model = nnx.merge(graphdef, state)
        c = model.body(images.astype(jnp.float32))
        return c, model.fpn(c)

    image = jax.ShapeDtypeStruct((1, *config.image_size, 3), jnp.uint8)
    return jax.eval_shape(forward, state, image)


print(f"{'level':6s}{'stride':>7s}{'small 128x128':>22s}{'resnet50 800x1088':>24s}")
shapes = {name: feature_shapes(cfg) for name, cfg in [("small", small), ("big", big)]}
for k in range(2, 7):
    rows = []
    for name, cfg in [("small", small), ("big", big)]:
        c, p = shapes[name]
        h, w = cfg.image_size
        level = p[k - 2]
        if k <= 5:  # C_k and P_k have the same size: stride 2**k (rounded up)
            assert c[k - 2].shape[1:3] == level.shape[1:3]
            assert level.shape[1:3] == (-(-h // 2**k), -(-w // 2**k))
        else:  # P6 = ceil(P5 / 2)
            assert level.shape[1:3] == tuple(-(-s // 2) for s in p[3].shape[1:3])
        rows.append(f"{level.shape[1]:>4d} x {level.shape[2]:<4d} x {level.shape[3]:<4d}")
    print(f"P{k:<5d}{2**k:>7d}{rows[0]:>22s}{rows[1]:>24s}")
print("C2..C5 channels: small", [c.shape[-1] for c in shapes["small"][0]],
      " big", [c.shape[-1] for c in shapes["big"][0]])

# %% [markdown]
# Both tables agree with section 2: C_k and P_k have stride `2**k` (sizes rounded up), and
# `P6 = ceil(P5 / 2)` (800 / 32 = 25 gives 13). The FPN brings every level to the same
# `fpn_channels` (64 small, 256 big), so **one** RPN head and one RoIAlign serve every level.
#
# ## 5. The FPN top-down pathway, inline
#
# Feature maps of a ResNet are fine and weak at C2, coarse and strong at C5. The FPN (Lin et al.
# 2017) gives every level the semantics of C5:
# 1. a **lateral** 1x1 conv brings each `C_k` to `F` channels;
# 2. going down from C5, the coarser merged map is **upsampled** (nearest neighbour) to the size
#    of the next lateral and **added** to it;
# 3. a 3x3 conv **smooths** each merged map into `P_k`;
# 4. `P6` is `P5` max-pooled with kernel 1 and stride 2: every other position, used only by the
#    RPN for the largest anchors.
#
# Nearest upsampling to size `out` takes source index `floor(i * in / out)`. By hand, 2 -> 4
# repeats each entry twice; 4 -> 7 (an input of side 100 gives C5 = 4 and C4 = 7) takes rows
# `0, 0, 1, 1, 2, 2, 3`.

# %%
def my_upsample_nearest(x, size):
    rows = (jnp.arange(size[0]) * x.shape[1]) // size[0]  # (H',) source rows
    cols = (jnp.arange(size[1]) * x.shape[2]) // size[1]  # (W',)
    return x[:, rows][:, :, cols]


tiny = jnp.arange(4.0).reshape(1, 2, 2, 1)
print(my_upsample_nearest(tiny, (4, 4))[0, ..., 0])
print("4 -> 7 rows:", (jnp.arange(7) * 4) // 7)
np.testing.assert_array_equal((jnp.arange(7) * 4) // 7, [0, 0, 1, 1, 2, 2, 3])
odd = jax.random.normal(jax.random.key(2), (1, 4, 5, 3))
np.testing.assert_array_equal(my_upsample_nearest(odd, (7, 9)), upsample_nearest(odd, (7, 9)))

# %% [markdown]
# Now the real thing: a shapes image through a **randomly initialised** `small_config` model.
# `nnx.jit` is `jax.jit` for functions that take NNX modules: it does the split for us (the
# module's arrays become traced inputs, its `graphdef` part of the cache key), compiles the
# function once per input shape, and merges the module back, with any state the function
# changed. One `nnx.jit` compiles the body and the FPN together (running the model op by op
# would compile every operation separately, which is very slow on a CPU).

# %%
start = time.perf_counter()
train = shapes_source("train", num_train=200, num_val=20, image_size=128, seed=0)
example = parse_example(train[0])
model = MaskRCNN(small, rngs=nnx.Rngs(0))
print(f"model built in {time.perf_counter() - start:.1f} s")


@nnx.jit
def backbone_and_fpn(model, images):
    mean = jnp.asarray(model.config.pixel_mean) * 255.0
    std = jnp.asarray(model.config.pixel_std) * 255.0
    c = model.body((images.astype(jnp.float32) - mean) / std)  # [C2..C5]
    return c, model.fpn(c)  # [P2..P6]


start = time.perf_counter()
images = jnp.asarray(example["image"])[None]  # (1, 128, 128, 3) uint8
c_maps, p_maps = backbone_and_fpn(model, images)
print(f"compiled and ran in {time.perf_counter() - start:.1f} s")
print("C:", [tuple(c.shape) for c in c_maps])
print("P:", [tuple(p.shape) for p in p_maps])

# %% [markdown]
# The inline FPN reads the weights of `model.fpn`: `inner_blocks[k]` are the laterals,
# `layer_blocks[k]` the 3x3 smoothing convs (torchvision's names).

# %%
def my_fpn(c_maps, fpn):
    lateral = [conv(c, blk.kernel[...], 1, 0) + blk.bias[...]
               for c, blk in zip(c_maps, fpn.inner_blocks, strict=True)]  # F channels each
    merged = [lateral[-1]]  # start at C5
    for k in range(len(c_maps) - 2, -1, -1):  # C4, C3, C2
        merged.insert(0, lateral[k] + my_upsample_nearest(merged[0], lateral[k].shape[1:3]))
    p = [conv(m, blk.kernel[...], 1, 1) + blk.bias[...]
         for m, blk in zip(merged, fpn.layer_blocks, strict=True)]
    p.append(p[-1][:, ::2, ::2])  # P6: max-pool with kernel 1, stride 2 = every other position
    return p


mine = my_fpn(c_maps, model.fpn)
for k, (a, b) in enumerate(zip(mine, p_maps, strict=True)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4, err_msg=f"P{k + 2}")
np.testing.assert_array_equal(max_pool(p_maps[3], 1, 2, 0), p_maps[3][:, ::2, ::2])
print("inline FPN == mrcnn_jax.fpn.FPN on all five levels; P6 = P5[::2, ::2]")

# %% [markdown]
# ## 6. What each level sees
#
# The **stride** of a level is the distance in pixels between neighbouring positions; the
# **receptive field** (RF) is the size of the input window that can influence one position.
# Walking through the layers, each `k x k` layer at cumulative stride `j` widens the RF by
# `(k - 1) * j`, and its stride multiplies `j`. By hand for the stem: conv 7 (RF 7, `j = 2`),
# max-pool 3 (RF `7 + 2 * 2 = 11`, `j = 4`).

# %%
def resnet_layers(depth):
    """(kernel, stride) of the layers on the longest path, per stage: stem, layer1..layer4."""
    stages = [[(7, 2), (3, 2)]]
    for i, count in enumerate(BLOCKS[depth]):
        stride = 1 if i == 0 else 2
        if depth < 50:  # basic: 3x3 (stride), 3x3
            blocks = [[(3, stride), (3, 1)]] + [[(3, 1), (3, 1)]] * (count - 1)
        else:  # bottleneck: 1x1, 3x3 (stride), 1x1
            blocks = [[(1, 1), (3, stride), (1, 1)]] + [[(1, 1), (3, 1), (1, 1)]] * (count - 1)
        stages.append([layer for block in blocks for layer in block])
    return stages


def receptive_fields(depth):
    rf, jump, out = 1, 1, []
    for stage in resnet_layers(depth):
        for k, s in stage:
            rf, jump = rf + (k - 1) * jump, jump * s
        out.append((rf, jump))
    return out[1:]  # C2..C5


rf18, rf50 = receptive_fields(18), receptive_fields(50)
print(f"{'level':6s}{'stride':>7s}{'RF ResNet-18':>14s}{'RF ResNet-50':>14s}"
      f"{'anchor small':>14s}{'anchor r50':>12s}")
for k in range(4):
    print(f"C{k + 2:<5d}{rf18[k][1]:>7d}{rf18[k][0]:>14d}{rf50[k][0]:>14d}"
          f"{small.rpn.anchor_sizes[k][0]:>14d}{big.rpn.anchor_sizes[k][0]:>12d}")
assert [j for _, j in rf18] == [4, 8, 16, 32]
assert rf18[-1][0] == 435 and rf50[-1][0] == 427  # the well-known values for C5
assert small.rpn.anchor_sizes[4][0] == 256 and big.rpn.anchor_sizes[4][0] == 512  # P6

# %% [markdown]
# Two things to notice:
# - Bottom-up, the RF grows fast: a C5 position of ResNet-18 can see 435 pixels, more than the
#   whole 128-pixel shapes image. Through the top-down path **every** P level inherits C5's
#   receptive field (P_k adds `2 * 2**k` for its 3x3 conv), so theoretically P2 sees as much
#   as P5. The *effective* receptive field is much smaller and concentrated near the centre
#   (Luo et al. 2016), so what really differs between levels is the **stride**: P2 places an
#   anchor every 4 pixels, P5 every 32.
# - Anchor sizes double with the stride (16 on P2 to 128 on P5 in the small model, 32 to 256 in
#   torchvision's; P6, not in the table, continues with 256 and 512), so every level handles
#   objects of a fixed size in *its own* positions.
#
# Here is the mean absolute activation over channels of every level, for the shapes image,
# through the **randomly initialised** model: no training yet, yet shape edges already stand out
# (random convolutions are edge and colour detectors), finer on P2 and blurrier on P5.

# %%
def mean_abs(feature):
    return np.asarray(jnp.abs(feature[0]).mean(axis=-1))  # (h, w)


fig, axes = plotting.subplots(5, 2, size=2.4)
plotting.show_image(axes[0], example["image"], "input 128x128")
plotting.draw_boxes(axes[0], example["boxes"], labels=example["labels"],
                    class_names=["background", *CLASS_NAMES])
for k, c in enumerate(c_maps):
    plotting.show_image(axes[k + 1], mean_abs(c), f"C{k + 2} {c.shape[1]}x{c.shape[2]}x{c.shape[3]}")
for k, p in enumerate(p_maps):
    plotting.show_image(axes[k + 5], mean_abs(p), f"P{k + 2} {p.shape[1]}x{p.shape[2]}x{p.shape[3]}")
fig.suptitle("mean |activation| per level, randomly initialised small_config model", fontsize=10)
fig.tight_layout()
plt.show()

# %% [markdown]
# And a few single channels of P3 and P5: each channel reacts to something different; at P5 a
# position covers a 32 x 32 pixel cell.

# %%
fig, axes = plotting.subplots(6, 2, size=1.9)
for row, k in enumerate([1, 3]):
    for j in range(6):
        ax = axes[row * 6 + j]
        plotting.show_image(ax, np.asarray(p_maps[k][0, ..., j]), f"P{k + 2} ch {j}")
fig.tight_layout()
plt.show()

# %% [markdown]
# ## 7. Frozen BatchNorm versus GroupNorm
#
# **BatchNorm** normalises each channel with statistics of the *batch*; at inference it uses
# running averages. torchvision's detection models **freeze** it: the ImageNet statistics and
# affine parameters become constants, and the layer is an affine map per channel:
#
# `y = x * w / sqrt(var + eps) + (b - mean * w / sqrt(var + eps))`.
#
# By hand for one channel with `w = 2, b = 1, mean = 3, var = 4, eps = 0`: scale `2 / 2 = 1`,
# shift `1 - 3 * 1 = -2`, so `x = 5` gives `3`.

# %%
bn = FrozenBatchNorm(2, eps=0.0)
bn.weight.value = jnp.array([2.0, 0.5])
bn.bias.value = jnp.array([1.0, 0.0])
bn.running_mean.value = jnp.array([3.0, -1.0])
bn.running_var.value = jnp.array([4.0, 0.25])
x = jnp.array([5.0, 1.0]).reshape(1, 1, 1, 2)
print("by hand: channel 0: (5 - 3) / 2 * 2 + 1 = 3;  channel 1: (1 + 1) / 0.5 * 0.5 + 0 = 2")
print("FrozenBatchNorm:", bn(x).ravel())
np.testing.assert_allclose(bn(x).ravel(), [3.0, 2.0], rtol=1e-6)


def my_frozen_bn(x, weight, bias, mean, var, eps):
    scale = weight / jnp.sqrt(var + eps)
    return x * scale + (bias - mean * scale)


bn.eps = 1e-5
feat = c_maps[0][..., :2]  # any (N, H, W, 2) input
np.testing.assert_allclose(
    my_frozen_bn(feat, bn.weight[...], bn.bias[...], bn.running_mean[...], bn.running_var[...], 1e-5),
    bn(feat), rtol=1e-5, atol=1e-6)
print("inline frozen BN == mrcnn_jax.layers.FrozenBatchNorm")

# %% [markdown]
# Frozen BN is right for **imported** weights: their ImageNet statistics are meaningful. When we
# train **from scratch** there are no statistics to freeze, and trainable BatchNorm with the
# tiny batches of detection (1-2 images of 800 x 1088 per GPU) has noisy batch statistics, and
# each image's output depends on the other images in its batch. **GroupNorm** (Wu & He 2018)
# uses each image's own statistics (per group of channels), so it behaves the same at any batch
# size, in training and at inference. That is why `small_config` uses
# `norm="group_norm"` with 8 groups. A check on the C3 map of our image:

# %%
def my_batch_norm_train(x, eps=1e-5):  # training-mode BN, no affine part: batch statistics
    mean, var = x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2))
    return (x - mean) / jnp.sqrt(var + eps)


c3 = c_maps[1]  # (1, 16, 16, 64)
others = jax.random.normal(jax.random.key(3), (3, *c3.shape[1:])) * 2.0 + 1.0
alone, with_others = my_batch_norm_train(c3)[0], my_batch_norm_train(jnp.concatenate([c3, others]))[0]
print(f"BatchNorm: image 0 alone vs in a batch of 4: max difference {float(jnp.abs(alone - with_others).max()):.3f}")
gn8 = make_norm("group_norm", 64, groups=8, rngs=nnx.Rngs(0))
print(f"GroupNorm: max difference {float(jnp.abs(gn8(c3)[0] - gn8(jnp.concatenate([c3, others]))[0]).max()):.1e}")
np.testing.assert_allclose(gn8(c3)[0], gn8(jnp.concatenate([c3, others]))[0], atol=1e-5)
np.testing.assert_allclose(group_norm(c3, gn8.scale[...], gn8.bias[...], 8), gn8(c3), atol=1e-4)
print("inline group_norm == flax nnx.GroupNorm (as built by mrcnn_jax.layers.make_norm)")

# %% [markdown]
# ## 8. How many parameters?
#
# `count_parameters` counts the scalars of a real model: trainable `nnx.Param`s, and `Frozen`
# ones (frozen BN statistics and the frozen stem and `layer1` of an imported backbone). For the
# big model we do not allocate anything: `nnx.eval_shape` gives abstract arrays, and we sum the
# products of their shapes.

# %%
def count(module, kind=nnx.Variable):
    return int(sum(np.prod(leaf.shape) for leaf in jax.tree.leaves(nnx.state(module, kind))))


abstract_big = nnx.eval_shape(lambda: MaskRCNN(big, rngs=nnx.Rngs(0)))
abstract_small = nnx.eval_shape(lambda: MaskRCNN(small, rngs=nnx.Rngs(0)))
assert count_parameters(model) == (count(abstract_small, nnx.Param), 0)
print(f"{'part':10s}{'small_config':>14s}{'resnet50_fpn':>14s}")
for part in ["body", "fpn", "rpn_head", "box_head", "mask_head"]:
    print(f"{part:10s}{count(getattr(model, part)):>14,d}{count(getattr(abstract_big, part)):>14,d}")
trainable, frozen = count(abstract_big, nnx.Param), count(abstract_big) - count(abstract_big, nnx.Param)
print(f"{'total':10s}{sum(count_parameters(model)):>14,d}{trainable + frozen:>14,d}")
print(f"resnet50_fpn: {trainable:,d} trainable, {frozen:,d} frozen")

# %% [markdown]
# The big model's 328,640 frozen scalars are the stem and `layer1` convolutions (222,400; the
# torchvision default `trainable_layers=3`) plus 4 x 26,560 frozen BatchNorm values (weight,
# bias, running mean and variance of 26,560 channels). torchvision counts BN statistics as
# buffers, not parameters: without them we get its well-known **44,401,393** for
# `maskrcnn_resnet50_fpn`. The small model has about 11 times fewer parameters, and far fewer
# FLOPs: 64 FPN channels instead of 256 on a 128 x 128 image instead of 800 x 1088.

# %%
frozen_leaves = jax.tree.leaves(nnx.state(abstract_big, nnx.Not(nnx.Param)))
bn_buffers = sum(leaf.shape[0] for leaf in frozen_leaves if leaf.ndim == 1)  # 1-D: BN values
print("frozen BN values:", bn_buffers, " frozen conv weights:", frozen - bn_buffers)
assert bn_buffers == 4 * 26_560 and frozen - bn_buffers == 222_400
assert trainable + frozen - bn_buffers == 44_401_393  # torchvision's parameter count
fig, (ax,) = plotting.subplots(size=4.2)
parts = ["body", "fpn", "rpn_head", "box_head", "mask_head"]
for i, (name, m) in enumerate([("small_config", model), ("resnet50_fpn", abstract_big)]):
    values = [count(getattr(m, part)) / 1e6 for part in parts]
    ax.barh(np.arange(5) + 0.2 * (1 - 2 * i), values, height=0.4, color=plotting.colour(i), label=name)
ax.set_yticks(range(5), parts)
ax.set_xscale("log")
ax.set_xlabel("millions of parameters (log scale)")
ax.legend(fontsize=8)
ax.invert_yaxis()
fig.tight_layout()
plt.show()

# %% [markdown]
# ## Summary
#
# - A ResNet is a stem (stride 4) and four stages; C2..C5 have strides 4, 8, 16, 32. Basic blocks
#   (two 3x3) for ResNet-18/34, bottlenecks (1x1, 3x3 with the stride, 1x1 x4) for 50/101.
# - Output size `floor((n + 2p - k) / s) + 1`; stride-2 3x3 convs round up: 800 x 1088 gives P5
#   25 x 34 and P6 13 x 17.
# - FPN: 1x1 laterals, nearest upsampling (`floor(i * in / out)`), add, 3x3 smoothing, P6 =
#   P5[::2, ::2]; every level has the same channels so one RPN head serves all.
# - The levels differ in stride (and so in anchor size), not much in theoretical receptive field.
# - Frozen BN is a fixed per-channel affine map, right for imported weights; GroupNorm uses
#   per-image statistics, right for training from scratch with small batches.
# - `small_config`: about 4 M parameters; `resnet50_fpn_config`: 44.4 M (torchvision's count).
#
# Next: **06 · RPN**, which scores and regresses the anchors on P2-P6.

# %% [markdown]
# ## Exercises
#
# Each exercise has a stub that raises `NotImplementedError` and a check that runs when you
# replace it. A wrong answer raises an `AssertionError` that says what was expected.
#
# ### Core exercise
#
# Here you write the stage this notebook teaches, and `mrcnn_jax.course` checks it: a hand
# example, random inputs against the package, named edge cases, a run under `jax.jit` and the
# gradient. The check prints "correct", or "not attempted" while your function raises
# `NotImplementedError`, or raises an `AssertionError` that names the case, the inputs, expected
# and got, the largest error and, for a common mistake, a hint. Your function computes what the
# package's `FPN.__call__(self, features)` computes, so any correct version passes.
#
# **Core exercise A: the top-down pathway.** Write `your_fpn(module, features)`: for an `FPN`
# module and `features = [C2, ..., C5]` (any number of levels) return `[P2, ..., P5, P6]` as
# `module(features)` does. Use the module's blocks (`module.inner_blocks[k](x)` is the lateral 1x1
# conv of level `k`, `module.layer_blocks[k](x)` its 3x3 conv); the top-down merge, the nearest
# upsampling (torch's rule, for odd sizes too) and P6 are yours to write.

# %%
from mrcnn_jax.course import check_fpn


def your_fpn(module, features):
    # BEGIN SOLUTION
    merged = module.inner_blocks[-1](features[-1])  # the top level: its lateral alone
    outputs = [module.layer_blocks[-1](merged)]
    for k in range(len(features) - 2, -1, -1):  # going down: C4, C3, C2
        lateral = module.inner_blocks[k](features[k])  # (N, h_k, w_k, F)
        rows = (jnp.arange(lateral.shape[1]) * merged.shape[1]) // lateral.shape[1]
        cols = (jnp.arange(lateral.shape[2]) * merged.shape[2]) // lateral.shape[2]
        merged = lateral + merged[:, rows][:, :, cols]  # + the coarser merged map, upsampled
        outputs.insert(0, module.layer_blocks[k](merged))
    return [*outputs, outputs[-1][:, ::2, ::2]]  # P6: every other position of P5
    # END SOLUTION


check_fpn(your_fpn)

# %% [markdown]
# ### Extension exercises
#
# **Exercise 1: feature sizes of any input.** Write `my_feature_sizes(height, width) -> list` of
# the `(h, w)` of P2..P6 for the ResNet-FPN, *without* running a model (use the output-size
# formula).

# %%
def check_feature_sizes(fn):
    assert list(map(tuple, fn(128, 128))) == [(32, 32), (16, 16), (8, 8), (4, 4), (2, 2)], "128 x 128"
    for h, w in [(800, 1088), (100, 150), (513, 97)]:
        got = [tuple(s) for s in fn(h, w)]
        expected = [tuple(p.shape[1:3]) for p in feature_shapes(small.replace(image_size=(h, w)))[1]]
        assert got == expected, f"{h} x {w}: expected {expected}, got {got}"


def my_feature_sizes(height, width):
    raise NotImplementedError


try:
    check_feature_sizes(my_feature_sizes)
    print("correct!")
except NotImplementedError:
    print("not attempted yet")

# %% [markdown]
# **Exercise 2: parameters of a bottleneck.** Write `my_bottleneck_params(cin, width, stride)`:
# the number of convolution weights (no norms, no biases) of one ResNet bottleneck block,
# including its `downsample` conv when it has one (stride 2 or `cin != 4 * width`).

# %%
def check_bottleneck_params(fn):
    assert fn(256, 64, 1) == 256 * 64 + 9 * 64 * 64 + 64 * 256, "no downsample: three convs"
    for cin, width, stride in [(64, 64, 1), (256, 128, 2), (1024, 512, 2), (512, 128, 1)]:
        def build(cin=cin, width=width, stride=stride):  # norms left out: convolutions only
            return Bottleneck(cin, width, stride, lambda c, zero_init=False: None, True,
                              rngs=nnx.Rngs(0))

        block = nnx.eval_shape(build)
        expected = count(block)
        got = fn(cin, width, stride)
        assert got == expected, f"Bottleneck({cin}, {width}, stride {stride}): expected {expected}, got {got}"


def my_bottleneck_params(cin, width, stride):
    raise NotImplementedError


try:
    check_bottleneck_params(my_bottleneck_params)
    print("correct!")
except NotImplementedError:
    print("not attempted yet")

# %% [markdown]
# **Exercise 3: receptive field.** Write `my_receptive_field(layers)` for a list of
# `(kernel, stride)` layers applied one after another, returning `(rf, jump)`. (Hint: section 6.)

# %%
def check_receptive_field(fn):
    assert tuple(fn([(3, 1)])) == (3, 1), "one 3x3 conv"
    assert tuple(fn([(3, 1), (3, 1)])) == (5, 1), "two 3x3 convs see 5 pixels"
    assert tuple(fn([(7, 2), (3, 2)])) == (11, 4), "the ResNet stem"
    layers = [layer for stage in resnet_layers(34) for layer in stage]
    assert tuple(fn(layers)) == (899, 32), "ResNet-34 C5"


def my_receptive_field(layers):
    raise NotImplementedError


try:
    check_receptive_field(my_receptive_field)
    print("correct!")
except NotImplementedError:
    print("not attempted yet")

# %% [markdown]
# **Exercise 4: a bigger P6 alternative.** RetinaNet computes P6 with a 3x3 stride-2 conv instead
# of a 1x1 max-pool. Write `my_p6_conv(p5, kernel)` with padding 1 for a `(3, 3, F, F)` kernel
# (no bias), and check that its output has the same size as the FPN's P6 for P5 sizes 4 and 25.

# %%
def check_p6_conv(fn):
    for side in (4, 25):
        p5 = jax.random.normal(jax.random.key(side), (1, side, side + 9, 8))
        kernel = jax.random.normal(jax.random.key(0), (3, 3, 8, 8))
        got = fn(p5, kernel)
        expected = max_pool(p5, 1, 2, 0).shape
        assert got.shape == expected, f"P5 {p5.shape}: expected {expected}, got {got.shape}"
        np.testing.assert_allclose(got, conv(p5, kernel, 2, 1), rtol=1e-4, atol=1e-4)


def my_p6_conv(p5, kernel):
    raise NotImplementedError


try:
    check_p6_conv(my_p6_conv)
    print("correct!")
except NotImplementedError:
    print("not attempted yet")
