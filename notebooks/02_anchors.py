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
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/mrcnn-jax/mrcnn_jax/blob/v0.2.0/notebooks/02_anchors.ipynb)
#
# # 02 · Anchors
#
# *The fixed set of reference boxes, one set per FPN level, that the region proposal network
# scores and nudges into proposals.*
#
# **You will learn**
# - how the three **cell anchors** of one size are built from aspect ratios (`ratio = h / w`)
#   and rounded exactly as torchvision rounds them;
# - how they are **shifted** over a feature map with `stride = image_size // feature_size`, and
#   what the missing half-stride offset does;
# - the **order** of the anchors (position-major, then ratio), which the RPN head's outputs must
#   follow;
# - the **FPN levels** P2-P6 (sizes 32..512, strides 4..64) and how many anchors each gives;
# - which anchors overlap an object with IoU ≥ 0.7: what the RPN will learn from.
#
# We write `generate_anchors` here step by step and check it equals `mrcnn_jax.generate_anchors`
# exactly.

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
import math
import os

import jax.numpy as jnp
import matplotlib.pyplot as plt
from matplotlib.colors import to_rgb
import numpy as np

import mrcnn_jax
from mrcnn_jax import plotting
from mrcnn_jax.anchors import DEFAULT_ASPECT_RATIOS, DEFAULT_SIZES

FAST = os.environ.get("MRCNN_JAX_FAST", "0") == "1"
IMAGE = 256  # the synthetic example image is IMAGE x IMAGE; the anchors are cheap either way
print(f"FAST={FAST}; default sizes {DEFAULT_SIZES}, ratios {DEFAULT_ASPECT_RATIOS[0]}")

# %% [markdown]
# ## 1. Cell anchors: one size, three ratios
#
# An anchor **size** `s` is the square root of its area; its **aspect ratio** is `r = h / w`.
# Keeping the area `s²` fixed, `h = s·√r` and `w = s / √r`. Centred on the origin, the anchor is
# `[-w/2, -h/2, w/2, h/2]`, and torchvision **rounds** these to integers.
#
# By hand for `s = 32`, `r = 0.5`: `w = 32 / √0.5 = 45.25`, `h = 32 · √0.5 = 22.63`, half of
# each is `22.63` and `11.31`, rounded: **`[-23, -11, 23, 11]`** (torchvision's own example).
#
# In this notebook's shape comments `R` is the number of aspect ratios (3 here); from notebook 04
# on, `R` counts boxes instead.

# %%
size, ratios = 32, jnp.array([0.5, 1.0, 2.0], jnp.float32)
h_ratios = jnp.sqrt(ratios)  # (R,)
w_ratios = 1.0 / h_ratios  # (R,)
ws, hs = w_ratios * size, h_ratios * size  # (R,) each
unrounded = jnp.stack([-ws, -hs, ws, hs], axis=1) / 2  # (R, 4)
print("w:", ws, " h:", hs, " area w*h:", ws * hs)
print("unrounded:\n", unrounded)
print("rounded:\n", jnp.round(unrounded))

# %% [markdown]
# Rounding changes the areas a little (`46 x 22 = 1012` instead of 1024) but gives integer
# corners symmetric about the centre. `jnp.round`, like `torch.round`, rounds halves to even.

# %%
def my_cell_anchors(size, aspect_ratios):
    ratios = jnp.asarray(aspect_ratios, jnp.float32)  # (R,)
    h_ratios = jnp.sqrt(ratios)
    w_ratios = 1.0 / h_ratios
    ws, hs = w_ratios * size, h_ratios * size  # (R,)
    return jnp.round(jnp.stack([-ws, -hs, ws, hs], axis=1) / 2)  # (R, 4), ratio-major


cell32 = my_cell_anchors(32, (0.5, 1.0, 2.0))
print(cell32)
np.testing.assert_array_equal(cell32[0], [-23, -11, 23, 11])
np.testing.assert_array_equal(cell32, [[-23, -11, 23, 11], [-16, -16, 16, 16], [-11, -23, 11, 23]])

# %%
fig, axes = plotting.subplots(ncols=2, size=3.6)
ratio_names = ["r = 0.5 (wide)", "r = 1", "r = 2 (tall)"]
plotting.draw_boxes(axes[0], cell32, colours=[plotting.colour(k) for k in range(3)], linewidth=2)
for k, name in enumerate(ratio_names):
    axes[0].plot([], [], color=plotting.colour(k), label=f"{name}: {np.asarray(cell32[k]).astype(int).tolist()}")
axes[0].set_title("cell anchors, size 32", fontsize=10)
axes[0].legend(fontsize=7, loc="lower center")
axes[0].set_xlim(-40, 40)
axes[0].set_ylim(45, -30)
for level, s in enumerate(DEFAULT_SIZES):
    cells = my_cell_anchors(s[0], DEFAULT_ASPECT_RATIOS[level])  # (3, 4)
    plotting.draw_boxes(axes[1], cells, colours=[plotting.colour(level)] * 3, linewidth=1)
    axes[1].plot([], [], color=plotting.colour(level), label=f"P{level + 2}: size {s[0]}")
axes[1].set_xlim(-380, 380)
axes[1].set_ylim(380, -380)
axes[1].set_title("cell anchors of the five FPN levels", fontsize=10)
axes[1].legend(fontsize=7, loc="lower right")
for ax in axes:
    ax.set_aspect("equal")
    ax.axhline(0, color="#cccccc", linewidth=0.5)
    ax.axvline(0, color="#cccccc", linewidth=0.5)
fig.tight_layout()
plt.show()

# %% [markdown]
# The package's `cell_anchors` takes a tuple of sizes per level (a level may have several;
# Exercise 3) and computes in numpy float32. Same numbers, bit for bit:

# %%
from mrcnn_jax.anchors import cell_anchors

for s, r in zip(DEFAULT_SIZES, DEFAULT_ASPECT_RATIOS, strict=True):
    np.testing.assert_array_equal(my_cell_anchors(s[0], r), cell_anchors(s, r))
print("cell anchors of all five levels equal mrcnn_jax.anchors.cell_anchors")

# %% [markdown]
# ## 2. Shifting over a feature grid
#
# A feature map of `h x w` positions covers the image with a **stride** of
# `image_size // feature_size` pixels. torchvision places the cell anchors at
# `x = j · stride_x`, `y = i · stride_y` for every position `(i, j)`: at the **top-left corner**
# of each cell, not its centre.
#
# Small example: a 32 x 32 image and a 4 x 4 feature map, so stride 8 and shifts 0, 8, 16, 24.

# %%
image_size, feature_size = (32, 32), (4, 4)
stride_y, stride_x = image_size[0] // feature_size[0], image_size[1] // feature_size[1]
shifts_x = jnp.arange(feature_size[1]) * stride_x  # (w,)
shifts_y = jnp.arange(feature_size[0]) * stride_y  # (h,)
shift_y, shift_x = jnp.meshgrid(shifts_y, shifts_x, indexing="ij")  # (h, w) each
print("stride:", (stride_y, stride_x), " shifts_x:", shifts_x, " shifts_y:", shifts_y)
print("shift_x:\n", shift_x)

# %% [markdown]
# Each position gets every cell anchor: shifts `(h·w, 1, 4)` plus cell anchors `(1, R, 4)`
# broadcast to `(h·w, R, 4)`, then flatten.

# %%
def my_level_anchors(cells, image_size, feature_size):
    grid_h, grid_w = feature_size
    stride_h, stride_w = image_size[0] // grid_h, image_size[1] // grid_w
    shift_y, shift_x = jnp.meshgrid(jnp.arange(grid_h) * stride_h, jnp.arange(grid_w) * stride_w,
                                    indexing="ij")  # (h, w) each
    shift_x, shift_y = shift_x.reshape(-1), shift_y.reshape(-1)  # (h*w,)
    shifts = jnp.stack([shift_x, shift_y, shift_x, shift_y], axis=1).astype(jnp.float32)  # (h*w, 4)
    return (shifts[:, None, :] + cells[None, :, :]).reshape(-1, 4)  # (h*w*R, 4)


small_cells = my_cell_anchors(16, (0.5, 1.0, 2.0))  # size 16 fits the 32 x 32 toy image
toy = my_level_anchors(small_cells, image_size, feature_size)
print(toy.shape, "\nfirst six:\n", toy[:6])

# %% [markdown]
# ### The missing half-stride offset
#
# The anchor centres (red dots) sit on the cell corners `0, 8, 16, 24`, never on the cell
# centres `4, 12, 20, 28`; below, the square (`r = 1`) size-16 anchors of the four corner
# positions are drawn. The consequence: the whole anchor set is shifted **half a stride up and
# left**. The top-left anchors stick out of the image, the bottom and right edges are covered
# less, and the mean anchor centre is at `(W - stride) / 2` instead of `W / 2`. detectron2 calls
# this `ANCHOR_GENERATOR.OFFSET` (its default is also 0.0; 0.5 would centre them). We keep
# torchvision's choice because pretrained weights learned their deltas against these anchors;
# the regressor simply learns to shift by half a stride.

# %%
fig, axes = plotting.subplots(ncols=2, size=3.6)
toy_image = np.full((32, 32, 3), 215, np.uint8)
corners = [0, 3, 12, 15]  # positions (0, 0), (0, 3), (3, 0), (3, 3) of the 4 x 4 grid
for ax, offset, title in [(axes[0], 0.0, "torchvision: centres on cell corners"),
                          (axes[1], 0.5, "offset 0.5: centres on cell centres")]:
    plotting.show_image(ax, toy_image, title=title)
    ax.images[-1].set_extent((0, 32, 32, 0))
    for k in range(5):  # the 4 x 4 cells of the feature map, stride 8
        ax.plot([0, 32], [8 * k, 8 * k], color="white", linewidth=0.8)
        ax.plot([8 * k, 8 * k], [0, 32], color="white", linewidth=0.8)
    boxes = toy.reshape(16, 3, 4)[:, 1] + offset * 8  # (16, 4): the r = 1 anchor at each position
    plotting.draw_boxes(ax, boxes[jnp.array(corners)], colours=[plotting.colour(0)] * 4, linewidth=1.5)
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2  # (16, 2)
    plotting.draw_points(ax, centres, colour_index=2, size=18)
    plotting.draw_points(ax, centres.mean(axis=0), colour_index=2, size=90, marker="x")
    plotting.draw_points(ax, [16, 16], colour_index=4, size=110, marker="P")
    ax.set_xlim(-10, 42)
    ax.set_ylim(42, -10)
axes[0].text(-9, 40, "x mean anchor centre (12, 12), + image centre", fontsize=7)
fig.tight_layout()
plt.show()

# %%
all_default = mrcnn_jax.generate_anchors((IMAGE, IMAGE), [(IMAGE // s, IMAGE // s) for s in (4, 8, 16, 32, 64)])
p6 = all_default[-16 * 3:]  # (48, 4): the last level, P6, stride 64 on a 4 x 4 grid
mean_centre = float(((p6[:, 0] + p6[:, 2]) / 2).mean())
print(f"P6 on a {IMAGE} x {IMAGE} image: mean anchor centre x = {mean_centre} (image centre {IMAGE / 2})")
assert mean_centre == (IMAGE - 64) / 2  # half a stride (32 px) left of the image centre

# %% [markdown]
# ## 3. The order: position-major, then ratio
#
# The flattened index of an anchor is `((i · w) + j) · R + r`: row `i` of the feature map, then
# column `j`, then ratio `r` fastest. The RPN head predicts `R` numbers per position, and its
# output `(h, w, R)` is flattened in the same order, so prediction `k` belongs to anchor `k`.
# Check on the toy grid: `toy.reshape(h, w, R, 4)[i, j, r]` must be cell anchor `r` shifted to
# `(j · stride, i · stride)`.

# %%
grid = toy.reshape(4, 4, 3, 4)  # (h, w, R, 4)
for k in [0, 1, 2, 3, 13, 47]:
    i, j, r = np.unravel_index(k, (4, 4, 3))
    print(f"anchor {k:2d}: row i={i}, column j={j}, ratio r={r} -> {np.asarray(toy[k]).astype(int).tolist()}")
    np.testing.assert_array_equal(grid[i, j, r], small_cells[r] + jnp.array([j * 8, i * 8, j * 8, i * 8]))

# %% [markdown]
# ## 4. All FPN levels
#
# Mask R-CNN's FPN has five levels P2-P6 with strides 4, 8, 16, 32, 64, and one anchor size each,
# 32, 64, 128, 256, 512: eight times the stride, so anchors at neighbouring positions of a level
# overlap heavily and every object is near several of them.
#
# The feature sizes come from the backbone: torchvision pads the input to a multiple of 32, so
# P2-P5 are exactly `H / 4 ... H / 32`, and P6 is a stride-2 max pool of P5 (rounding up). For
# an 800 x 1056 input that gives (200, 264), (100, 132), (50, 66), (25, 33), (13, 17). Note that
# P6's stride as torchvision computes it, `800 // 13 = 61` and `1056 // 17 = 62`, is **not** 64
# when P5 has an odd size.

# %%
def fpn_feature_sizes(image_size):
    """(h, w) of P2-P6 for an input whose sides are multiples of 32."""
    sizes = [(math.ceil(image_size[0] / 2**k), math.ceil(image_size[1] / 2**k)) for k in (2, 3, 4, 5)]
    h5, w5 = sizes[-1]
    return sizes + [(math.ceil(h5 / 2), math.ceil(w5 / 2))]


big_size = (800, 1056)
big_features = fpn_feature_sizes(big_size)
assert big_features == [(200, 264), (100, 132), (50, 66), (25, 33), (13, 17)]
print(f"{'level':>5} {'size':>5} {'feature':>11} {'stride':>9} {'anchors':>8}")
for level, (fs, s) in enumerate(zip(big_features, DEFAULT_SIZES, strict=True)):
    stride = (big_size[0] // fs[0], big_size[1] // fs[1])
    print(f"   P{level + 2} {s[0]:5d} {str(fs):>11} {str(stride):>9} {fs[0] * fs[1] * 3:8d}")
print(f"{'total':>41} {sum(h * w * 3 for h, w in big_features):8d}")
assert sum(h * w * 3 for h, w in big_features) == 211038

# %% [markdown]
# The anchors of all levels are concatenated level after level: all of P2, then all of P3, ...

# %%
def my_generate_anchors(image_size, feature_sizes, sizes=DEFAULT_SIZES, aspect_ratios=DEFAULT_ASPECT_RATIOS):
    levels = [my_level_anchors(my_cell_anchors(s[0], r), image_size, fs)
              for s, r, fs in zip(sizes, aspect_ratios, feature_sizes, strict=True)]
    return jnp.concatenate(levels, axis=0)  # (A, 4)


mine = my_generate_anchors(big_size, big_features)
theirs = mrcnn_jax.generate_anchors(big_size, big_features)
print("anchors:", mine.shape, mine.dtype)
assert mine.shape == (211038, 4)
np.testing.assert_array_equal(mine, theirs)
print("my_generate_anchors equals mrcnn_jax.generate_anchors exactly (800 x 1056, all five levels)")

# %% [markdown]
# The package returns a float32 **numpy** array on purpose: all the sizes are static Python
# numbers, so under `jax.jit` the anchors become a constant instead of being recomputed each step.
#
# Optional: torchvision's `AnchorGenerator` gives the same values and order (skipped if
# torchvision is not installed).

# %%
try:
    import torch
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.image_list import ImageList
except ImportError:
    print("torchvision is not installed: skipping the comparison")
else:
    generator = AnchorGenerator(DEFAULT_SIZES, DEFAULT_ASPECT_RATIOS)
    image_list = ImageList(torch.zeros(1, 3, *big_size), [big_size])
    feature_maps = [torch.zeros(1, 1, *fs) for fs in big_features]
    tv_anchors = generator(image_list, feature_maps)[0].numpy()
    np.testing.assert_array_equal(np.asarray(mine), tv_anchors)
    print(f"torchvision AnchorGenerator: {tv_anchors.shape}, identical values and order")

# %% [markdown]
# ## 5. The anchors of each level on an example image
#
# A 256 x 256 synthetic image with four objects drawn in numpy: a small square, a square, a
# disc and a triangle. Its levels are 64 x 64, 32 x 32, 16 x 16, 8 x 8 and 4 x 4. Each panel
# shows the grid of anchor centres of one level and all three anchors at two positions.

# %%
OBJECT_COLOURS = [5, 3, 7, 6]  # palette indices, one per object (0-2 mark the anchor ratios)


def synthetic_image(n=IMAGE):
    """An ``(n, n, 3)`` uint8 image with four shapes, and their ``(4, 4)`` xyxy boxes."""
    image = np.full((n, n, 3), 30, np.uint8)
    yy, xx = np.mgrid[:n, :n]  # (n, n) pixel rows and columns
    fill = [np.round(255 * np.array(to_rgb(plotting.colour(c)))).astype(np.uint8) for c in OBJECT_COLOURS]
    image[180:206, 30:56] = fill[0]  # small square, 26 x 26
    image[16:50, 98:132] = fill[1]  # square, 34 x 34
    disc = (xx + 0.5 - 178) ** 2 + (yy + 0.5 - 74) ** 2 <= 32**2  # disc of radius 32 at (178, 74)
    image[disc] = fill[2]
    tri = (yy >= 112) & (yy < 208) & (np.abs(xx + 0.5 - 124) <= (yy + 0.5 - 112) * 64 / 96)
    image[tri] = fill[3]  # triangle: apex (124, 112), base 128 px wide at y = 208
    boxes = np.array([[30, 180, 56, 206], [98, 16, 132, 50], [146, 42, 210, 106], [60, 112, 188, 208]],
                     np.float32)
    return image, boxes


example, gt_boxes = synthetic_image()
object_names = ["small square", "square", "disc", "triangle"]
features = fpn_feature_sizes((IMAGE, IMAGE))
anchors = my_generate_anchors((IMAGE, IMAGE), features)  # (A, 4)
counts = [h * w * 3 for h, w in features]  # anchors per level
print("feature sizes:", features)
print("anchors per level:", counts, " total:", sum(counts))
assert sum(counts) == anchors.shape[0] == 3 * (64**2 + 32**2 + 16**2 + 8**2 + 4**2)
level_of = np.repeat(np.arange(5), counts)  # (A,): the level index of each anchor

# %%
fig, axes = plotting.subplots(ncols=5, size=3.0)
for level, ax in enumerate(axes):
    h, w = features[level]
    stride = IMAGE // h
    plotting.show_image(ax, example, title=f"P{level + 2}: stride {stride}, size {DEFAULT_SIZES[level][0]}")
    ax.images[-1].set_extent((0, IMAGE, IMAGE, 0))
    per_level = anchors[level_of == level].reshape(h, w, 3, 4)  # (h, w, R, 4)
    centres = (per_level[:, :, 0, :2] + per_level[:, :, 0, 2:]).reshape(-1, 2) / 2  # (h*w, 2)
    plotting.draw_points(ax, centres, colour_index=9, size=max(1, 60 // h))
    shown = [per_level[h // 4, w // 4], per_level[h // 2, w // 2]]  # 2 positions x (R, 4)
    for boxes in shown:
        plotting.draw_boxes(ax, boxes, colours=[plotting.colour(k) for k in range(3)], linewidth=1.2)
    span = np.concatenate(shown)  # (2R, 4)
    lo, hi = min(0, span.min()) - 8, max(IMAGE, span.max()) + 8
    ax.add_patch(plt.Rectangle((0, 0), IMAGE, IMAGE, fill=False, edgecolor="grey", linewidth=0.8))
    ax.set_xlim(lo, hi)
    ax.set_ylim(hi, lo)
fig.tight_layout()
plt.show()

# %% [markdown]
# Anchor colours: blue r = 0.5, orange r = 1, red r = 2; grey dots are the anchor centres.
# Compare sizes: P2's 32-pixel anchors suit the two squares (26 and 34 pixels wide), P3's
# 64-pixel anchors the disc (64 pixels across), P4's 128-pixel anchors the triangle (128 x 96);
# section 6 counts which of them actually reach IoU 0.7. P5 and P6 anchors (256, 512) are as big
# as or bigger than the whole image: on a 256 x 256 input they can only match objects that fill
# it.
#
# ## 6. Which anchors overlap an object? (what the RPN learns from)
#
# The RPN is trained to call an anchor *object* when its IoU with a ground-truth box is at least
# 0.7, and *background* below 0.3 (notebook 06). Count, per level, the anchors above 0.7 for each
# object.

# %%
iou = np.asarray(mrcnn_jax.box_iou(anchors, gt_boxes))  # (A, 4)
positive = iou >= 0.7  # (A, 4)
per_level_count = np.stack([positive[level_of == lv].sum(axis=0) for lv in range(5)])  # (5, 4)
per_level_best = np.stack([iou[level_of == lv].max(axis=0) for lv in range(5)])  # (5, 4)
print("anchors with IoU >= 0.7 (rows P2..P6, columns", object_names, "):\n", per_level_count)
print("best IoU per level:\n", per_level_best.round(2))
assert per_level_count[:, 0].sum() == 0  # the small square: no anchor reaches 0.7
assert per_level_count[0, 1] > 0  # the square on P2
assert abs(per_level_best[:, 0].max() - 0.66) < 0.01  # the small square's best anchor
assert per_level_count[1, 2] > 0 and per_level_count[2, 3] > 0  # disc on P3, triangle on P4

# %%
fig, axes = plotting.subplots(ncols=3, size=3.6)
plotting.show_image(axes[0], (0.4 * example).astype(np.uint8), title="anchors with IoU ≥ 0.7")
axes[0].images[-1].set_extent((0, IMAGE, IMAGE, 0))
plotting.draw_boxes(axes[0], gt_boxes, colours=["white"] * 4, linewidth=1.5, linestyle="--")
for k in range(4):
    plotting.draw_boxes(axes[0], anchors[positive[:, k]], colours=[plotting.colour(OBJECT_COLOURS[k])] * int(positive[:, k].sum()),
                        linewidth=0.8)
    best = int(np.argmax(iou[:, k]))  # the best anchor, even below 0.7
    if not positive[:, k].any():
        plotting.draw_boxes(axes[0], anchors[best:best + 1], colours=[plotting.colour(OBJECT_COLOURS[k])], linestyle=":")
levels = [f"P{lv + 2}" for lv in range(5)]
x = np.arange(5)
for k, name in enumerate(object_names):
    axes[1].bar(x + (k - 1.5) * 0.2, per_level_count[:, k], width=0.2, color=plotting.colour(OBJECT_COLOURS[k]), label=name)
    axes[2].bar(x + (k - 1.5) * 0.2, per_level_best[:, k], width=0.2, color=plotting.colour(OBJECT_COLOURS[k]))
axes[1].set_title("anchors with IoU ≥ 0.7, per level", fontsize=10)
axes[1].legend(fontsize=7)
axes[2].axhline(0.7, color="grey", linestyle="--", linewidth=0.8)
axes[2].axhline(0.3, color="grey", linestyle=":", linewidth=0.8)
axes[2].set_title("best IoU per level (0.7 / 0.3 dashed)", fontsize=10)
for ax in axes[1:]:
    ax.set_xticks(x, levels)
fig.tight_layout()
plt.show()

# %% [markdown]
# Each object is "seen" by the level whose anchor size matches it, at only a handful of anchors
# out of 16 368. The small square has **no** anchor at 0.7 (its best, dotted, reaches 0.66):
# with the 0.7 rule alone it would never be a positive. That is why the RPN matcher also keeps,
# for every ground-truth box, the anchors with its highest IoU (`allow_low_quality_matches`,
# notebook 06).

# %% [markdown]
# ## Summary
#
# - Cell anchors: for size `s` and ratio `r = h / w`, `w = s / √r`, `h = s · √r`, centred on 0,
#   rounded; size 32, ratio 0.5 gives `[-23, -11, 23, 11]`.
# - Shifts: `x = j · stride`, `y = i · stride`, `stride = image_size // feature_size`, no
#   half-stride offset (anchors sit half a stride up-left of the cell centres).
# - Order: level, then row, then column, then ratio: `index = ((i · w) + j) · R + r` within a level.
# - FPN: P2-P6, sizes 32..512, strides 4..64; an 800 x 1056 input has 211 038 anchors, a 256 x 256
#   one 16 368.
# - Only a few anchors per object reach IoU 0.7, on the level that matches its size; small
#   objects may get none.
# - `my_generate_anchors` equals `mrcnn_jax.generate_anchors` (and torchvision's
#   `AnchorGenerator`) exactly.
#
# Next: notebook 03, non-maximum suppression.

# %% [markdown]
# ## Exercises
#
# Each exercise has a stub that raises `NotImplementedError` and a check that runs when you
# replace it. A wrong answer raises an `AssertionError`.
#
# ### Core exercises
#
# Here you write the stage this notebook teaches, and `mrcnn_jax.course` checks it: a hand
# example, random inputs against the package, named edge cases, a run under `jax.jit` (and
# gradients where the stage is differentiated). A check prints "correct", or "not attempted"
# while your function raises `NotImplementedError`, or raises an `AssertionError` that names the
# case, the inputs, expected and got, the largest error and, for a common mistake, a hint. Your
# function takes the same arguments as the package's, so any correct version passes.
#
# **Core exercise A: the anchors of one level.** Write `your_level_anchors(image_size (H, W),
# feature_size (h, w), sizes, aspect_ratios) -> (h * w * R * S, 4)` with torchvision's values and
# order: cell anchors ratio-major then size (`h = s * sqrt(r)`, `w = s / sqrt(r)`, centred on 0,
# rounded), shifted by `(j * stride_x, i * stride_y)` with `stride = image_size // feature_size`,
# positions row by row. (Plain numpy is fine: every argument is a static Python value.)

# %%
from mrcnn_jax.course import check_level_anchors


def your_level_anchors(image_size, feature_size, sizes, aspect_ratios):
    # BEGIN SOLUTION
    ratios = np.asarray(aspect_ratios, np.float32)[:, None]  # (R, 1)
    scales = np.asarray(sizes, np.float32)[None, :]  # (1, S)
    ws = (scales / np.sqrt(ratios)).reshape(-1)  # (R * S,) ratio-major
    hs = (scales * np.sqrt(ratios)).reshape(-1)
    cells = np.round(np.stack([-ws, -hs, ws, hs], axis=1) / 2)  # (R * S, 4)
    stride_y = image_size[0] // feature_size[0]
    stride_x = image_size[1] // feature_size[1]
    ys, xs = np.meshgrid(np.arange(feature_size[0]) * stride_y,
                         np.arange(feature_size[1]) * stride_x, indexing="ij")
    shifts = np.stack([xs, ys, xs, ys], axis=-1).reshape(-1, 1, 4)  # (h * w, 1, 4)
    return (shifts + cells[None]).reshape(-1, 4).astype(np.float32)
    # END SOLUTION


check_level_anchors(your_level_anchors)


# %% [markdown]
# ### Extension exercises
#
# **Exercise 1: count the anchors.** Write `my_num_anchors(image_size)` returning the total
# number of anchors of the default configuration (5 levels, 3 ratios) for an input whose sides
# are multiples of 32, *without* generating them.

# %%
def check_num_anchors(fn):
    for size, expected in [((800, 1056), 211038), ((256, 256), 16368), ((64, 96), 1536)]:
        got = fn(size)
        assert int(got) == expected, f"image {size}: expected {expected} anchors, got {got}"
    got = fn((480, 640))
    expected = len(mrcnn_jax.generate_anchors((480, 640), fpn_feature_sizes((480, 640))))
    assert int(got) == expected, f"image (480, 640): expected {expected} anchors, got {got}"


def my_num_anchors(image_size):
    raise NotImplementedError


try:
    check_num_anchors(my_num_anchors)
    print("correct!")
except NotImplementedError:
    print("not attempted yet")

# %% [markdown]
# **Exercise 2: centred anchors.** Write `my_centred_anchors(image_size, feature_sizes)`: the
# default anchors with detectron2's `OFFSET = 0.5`, i.e. centred on the cells
# (`x = (j + 0.5) · stride_x`), same order as `generate_anchors`.

# %%
def check_centred_anchors(fn):
    for size in [(256, 256), (800, 1056)]:
        fs = fpn_feature_sizes(size)
        got = np.asarray(fn(size, fs))
        ref = mrcnn_jax.generate_anchors(size, fs)
        assert got.shape == ref.shape, f"expected shape {ref.shape}, got {got.shape}"
        half = np.concatenate([np.tile([size[1] // w / 2, size[0] // h / 2] * 2, (h * w * 3, 1)) for h, w in fs])
        np.testing.assert_allclose(got, ref + half, err_msg=f"centred anchors for image {size}")


def my_centred_anchors(image_size, feature_sizes):
    raise NotImplementedError


try:
    check_centred_anchors(my_centred_anchors)
    print("correct!")
except NotImplementedError:
    print("not attempted yet")

# %% [markdown]
# **Exercise 3: several sizes per level.** RetinaNet uses three sizes per level
# (`s, s·2^(1/3), s·2^(2/3)`). Write `my_cell_anchors_multi(sizes, aspect_ratios)` returning
# `(R · S, 4)` rounded cell anchors in torchvision's order: **ratio-major**, then size.

# %%
def check_cell_anchors_multi(fn):
    got = np.asarray(fn((32, 64), (0.5, 1.0)))
    np.testing.assert_array_equal(got, [[-23, -11, 23, 11], [-45, -23, 45, 23], [-16, -16, 16, 16], [-32, -32, 32, 32]],
                                  err_msg="sizes (32, 64), ratios (0.5, 1): ratio-major, then size")
    sizes, ratios = (32, 40.32, 50.8), (0.5, 1.0, 2.0)
    np.testing.assert_array_equal(np.asarray(fn(sizes, ratios)), cell_anchors(sizes, ratios))


def my_cell_anchors_multi(sizes, aspect_ratios):
    raise NotImplementedError


try:
    check_cell_anchors_multi(my_cell_anchors_multi)
    print("correct!")
except NotImplementedError:
    print("not attempted yet")

# %% [markdown]
# **Exercise 4: where is anchor k?** Write `my_locate(k, feature_sizes, num_ratios=3)` returning
# `(level, i, j, r)` for the flat index `k` into `generate_anchors` (level 0 is P2).

# %%
def check_locate(fn):
    fs = fpn_feature_sizes((256, 256))
    for k, expected in [(0, (0, 0, 0, 0)), (2, (0, 0, 0, 2)), (3, (0, 0, 1, 0)), (3 * 64, (0, 1, 0, 0)),
                        (12288, (1, 0, 0, 0)), (16367, (4, 3, 3, 2))]:
        got = tuple(int(v) for v in fn(k, fs))
        assert got == expected, f"anchor {k}: expected (level, i, j, r) = {expected}, got {got}"
    every = mrcnn_jax.generate_anchors((256, 256), fs)
    for k in np.random.default_rng(0).integers(0, len(every), 20):
        level, i, j, r = (int(v) for v in fn(int(k), fs))
        stride = 256 // fs[level][0]
        shifted = cell_anchors(DEFAULT_SIZES[level], DEFAULT_ASPECT_RATIOS[level])[r] + [j * stride, i * stride] * 2
        np.testing.assert_array_equal(every[k], shifted, err_msg=f"anchor {k} is not at {(level, i, j, r)}")


def my_locate(k, feature_sizes, num_ratios=3):
    raise NotImplementedError


try:
    check_locate(my_locate)
    print("correct!")
except NotImplementedError:
    print("not attempted yet")
