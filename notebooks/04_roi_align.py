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
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/mrcnn-jax/mrcnn_jax/blob/v0.2.0/notebooks/04_roi_align.ipynb)
#
# # 04 · RoIAlign
#
# *Every proposal, whatever its size, becomes a fixed-size feature crop (7 x 7 for the box head,
# 14 x 14 for the mask head), sampled by bilinear interpolation instead of rounded to cells.*
#
# **You will learn**
# - what RoIPool (Fast R-CNN) does and how far its rounding moves a box's edges: up to half a
#   cell at the top-left and up to a cell and a half at the bottom-right (8 and 24 input pixels at
#   stride 16), which is fine for classification and bad for masks;
# - bilinear interpolation by hand on a 4 x 4 map, with torchvision's border rules;
# - where RoIAlign samples: bins, `sampling_ratio` points per bin, and the half-pixel shift of
#   `aligned=True` (detectron2) versus torchvision's default `aligned=False`; why adaptive
#   sampling (`sampling_ratio <= 0`) is refused under `jit`;
# - a vectorised RoIAlign as **one gather**: bilinear weights are separable, so each box needs
#   only a few rows and columns and their weights; gradients flow through the gather;
# - the multi-level pooler: FPN's Eq. 1 sends each box to one pyramid level, and concatenating all
#   levels into one flat array lets one gather serve them all.
#
# Every function is written here first in plain `numpy` / `jax.numpy`; the cell after it imports
# the finished version from `mrcnn_jax` and asserts the two agree.

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

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import to_rgb
from matplotlib.patches import Patch

import mrcnn_jax
from mrcnn_jax import plotting

FAST = os.environ.get("MRCNN_JAX_FAST", "0") == "1"
# TPUs (and recent GPUs) run float32 matmuls and convolutions in bfloat16 or TF32 passes by default;
# this notebook's asserts compare with CPU references, so ask for full float32 (no change on a CPU).
jax.config.update("jax_default_matmul_precision", "highest")
NUM_RANDOM = 40 if FAST else 300  # random boxes for the agreement checks
print(f"FAST={FAST}, NUM_RANDOM={NUM_RANDOM}")

try:
    import torch
    import torchvision
except ImportError:
    torch = torchvision = None
    print("torchvision is not installed: the optional comparisons will be skipped")

# %% [markdown]
# Our example image is the one of notebook 02: 256 x 256 pixels, four shapes. As a stand-in for a
# feature map we average its brightness over 16 x 16 blocks, a 16 x 16 map at **stride 16** (the
# resolution of FPN level P4), and add a little smooth texture so that neighbouring cells differ,
# as real features do. (A real backbone's features would do; the geometry is the same.)

# %%
IMAGE = 256
OBJECT_COLOURS = [5, 3, 7, 6]  # palette indices, one per object


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
STRIDE = 16
brightness = example.mean(axis=-1) / 255.0  # (256, 256)
texture = jax.image.resize(jnp.asarray(np.random.default_rng(0).normal(size=(6, 6)), jnp.float32), (16, 16), "cubic")
fmap16 = (brightness.reshape(16, STRIDE, 16, STRIDE).mean(axis=(1, 3)) + 0.15 * np.asarray(texture)).astype(np.float32)
print("image:", example.shape, " feature map:", fmap16.shape, f"(stride {STRIDE})")


def show_map(ax, fmap, title=None, **kwargs):
    """Show an ``(h, w)`` map with cell ``(i, j)`` covering ``[j, j+1] x [i, i+1]``, grid lines on."""
    plotting.show_image(ax, fmap, title=title)
    ax.images[-1].set_extent((0, fmap.shape[1], fmap.shape[0], 0))
    ax.images[-1].set(**kwargs)
    ax.set_xlim(0, fmap.shape[1])
    ax.set_ylim(fmap.shape[0], 0)
    plotting.draw_grid(ax, fmap.shape[0], fmap.shape[1], origin=0.0, colour_name="#888888")
    return ax

# %% [markdown]
# ## 1. RoIPool and its quantisation error
#
# Fast R-CNN's **RoIPool** turns a box into a fixed `oh x ow` grid in two rounding steps:
#
# 1. scale the box to the feature map (`x * spatial_scale`, here `1/16`) and **round** each
#    coordinate to a cell; the box covers cells `x1..x2` *inclusive*;
# 2. split those cells into `oh x ow` bins, rounding bin edges outwards (`floor` the start,
#    `ceil` the end), and **max-pool** each bin.
#
# This is torchvision's `ops.roi_pool` (its CPU kernel `roi_pool_kernel.cpp`), written with loops.

# %%
def roi_pool(fmap, box, output_size, spatial_scale):
    """RoIPool of one box on an ``(H, W)`` map: returns the ``(oh, ow)`` output, the cell box and the bins."""
    h, w = fmap.shape
    oh, ow = output_size
    x1, y1, x2, y2 = (int(math.floor(v * spatial_scale + 0.5)) for v in box)  # C++ round (v >= 0)
    roi_w, roi_h = max(x2 - x1 + 1, 1), max(y2 - y1 + 1, 1)  # cells, ends inclusive
    bin_h, bin_w = roi_h / oh, roi_w / ow
    out = np.zeros(output_size, np.float32)
    bins = []  # (row_start, row_end, col_start, col_end), ends exclusive
    for ph in range(oh):
        r0 = min(max(math.floor(ph * bin_h) + y1, 0), h)
        r1 = min(max(math.ceil((ph + 1) * bin_h) + y1, 0), h)
        for pw in range(ow):
            c0 = min(max(math.floor(pw * bin_w) + x1, 0), w)
            c1 = min(max(math.ceil((pw + 1) * bin_w) + x1, 0), w)
            out[ph, pw] = fmap[r0:r1, c0:c1].max() if r1 > r0 and c1 > c0 else 0.0
            bins.append((r0, r1, c0, c1))
    return out, (x1, y1, x2, y2), bins


disc_box = gt_boxes[2]  # the disc, [146, 42, 210, 106] in input pixels
pooled, cells, bins = roi_pool(fmap16, disc_box, (2, 2), 1 / STRIDE)
print("box on the feature map:", disc_box / STRIDE, "-> cells", cells)
print("bins (rows, cols):", [(f"{r0}:{r1}", f"{c0}:{c1}") for r0, r1, c0, c1 in bins])
print("RoIPool 2x2 output:\n", pooled)
assert cells == (9, 3, 13, 7)

# %% [markdown]
# In input pixels, cell `i` covers `[16 i, 16 (i + 1))`, so the pooled region is
# `[16 x1, 16 y1, 16 (x2 + 1), 16 (y2 + 1)]`. How far is that from the true box?

# %%
def quantised_box(box, stride=STRIDE):
    """The input-pixel region RoIPool actually reads for ``box``."""
    x1, y1, x2, y2 = (math.floor(v / stride + 0.5) for v in box)
    return np.array([x1, y1, x2 + 1, y2 + 1], np.float32) * stride


q = quantised_box(disc_box)
print("true box:     ", disc_box)
print("RoIPool reads:", q)
print("error per edge (x1, y1, x2, y2) in input pixels:", q - disc_box)
np.testing.assert_allclose(q - disc_box, [-2, 6, 14, 22])

rng = np.random.default_rng(0)
corners = np.sort(rng.uniform(0, 240, (2000, 2, 2)), axis=1)  # (n, 2 corners sorted, xy)
random_boxes = np.concatenate([corners[:, 0], corners[:, 1]], axis=1)  # (n, 4) xyxy
errors = np.stack([quantised_box(b) for b in random_boxes]) - random_boxes  # (n, 4)
print(len(errors), "random boxes -> mean error per edge:", np.round(errors.mean(axis=0), 1),
      " mean |error|:", np.round(np.abs(errors).mean(axis=0), 1))
assert np.all(np.abs(errors[:, :2]) <= 8) and np.all((errors[:, 2:] > 8) & (errors[:, 2:] <= 24))

# %% [markdown]
# The top-left edges are off by up to half a cell (8 pixels) either way; the bottom-right edges,
# because the last cell is included, by 8 to 24 pixels, 16 on average: the region RoIPool reads
# is systematically a cell too big. For classifying a 100-pixel object that hardly matters; for a
# 28 x 28 mask whose pixels are 4 input pixels wide at this size, it is a shift of several mask
# pixels. The picture, with the 2 x 2 bins: note that the two rows of bins **overlap** by one cell
# (row 5 in the printed bins), and so do the two columns (column 11): the second rounding.

# %%
fig, axes = plotting.subplots(ncols=2, size=4.2)
plotting.show_image(axes[0], example, title="RoIPool: the box snaps to the stride-16 grid")
axes[0].images[-1].set_extent((0, IMAGE, IMAGE, 0))
plotting.draw_grid(axes[0], 16, 16, cell=STRIDE, origin=0.0, colour_name="#666666")
plotting.draw_boxes(axes[0], np.stack([disc_box, q]), colours=[plotting.colour(0), plotting.colour(2)], linewidth=2)
axes[0].set_xlim(96, 256)
axes[0].set_ylim(160, 0)
axes[0].legend(handles=[Patch(color=plotting.colour(0), label="true box"),
                        Patch(color=plotting.colour(2), label="read by RoIPool")], loc="lower left", fontsize=8)

show_map(axes[1], fmap16, title="feature map: overlapping 2 x 2 bins, max cell")
for k, (r0, r1, c0, c1) in enumerate(bins):
    pad = 0.08 * (k + 1)
    axes[1].add_patch(plt.Rectangle((c0 + pad, r0 + pad), c1 - c0 - 2 * pad, r1 - r0 - 2 * pad, fill=False,
                                    edgecolor=plotting.colour(k + 1), linewidth=1.8, linestyle="--"))
    region = fmap16[r0:r1, c0:c1]
    i, j = np.unravel_index(np.argmax(region), region.shape)
    plotting.draw_points(axes[1], [[c0 + j + 0.5, r0 + i + 0.5]], colour_index=k + 1, size=40, marker="*")
axes[1].set_xlim(6, 16)
axes[1].set_ylim(10, 0)
fig.tight_layout()
plt.show()

# %% [markdown]
# The dashed rectangles are the four bins (slightly inset so the overlap is visible); the stars
# mark the cell whose value each bin outputs (overlapping bins can output the very same cell, so
# fewer than four stars may show). Move the box by a few pixels and nothing changes,
# until a coordinate crosses a rounding boundary and the output jumps (section 4 plots this).
# RoIAlign removes both roundings: keep the box as floats, and read the map *between* cells by
# bilinear interpolation.

# %% [markdown]
# ## 2. Bilinear interpolation by hand
#
# A feature map has values at integer positions `(y, x)` = (row, column). The value at a
# fractional point `(y, x)` blends the four surrounding cells: with `y0 = floor(y)`,
# `x0 = floor(x)`, `ly = y - y0`, `lx = x - x0`,
#
# `v = (1-ly)(1-lx) f[y0, x0] + (1-ly) lx f[y0, x0+1] + ly (1-lx) f[y0+1, x0] + ly lx f[y0+1, x0+1]`.
#
# On this 4 x 4 map, at `(y, x) = (1.25, 1.5)`: the neighbours are `f[1,1] = 0`, `f[1,2] = 2`,
# `f[2,1] = 5`, `f[2,2] = 1` with weights `0.75·0.5, 0.75·0.5, 0.25·0.5, 0.25·0.5`, so
# `v = 0 + 0.75 + 0.625 + 0.125 = 1.5`.

# %%
f4 = np.array([[1, 2, 0, 3],
               [4, 0, 2, 1],
               [0, 5, 1, 2],
               [3, 1, 4, 0]], np.float32)


def bilinear(fmap, y, x):
    """torchvision's ``bilinear_interpolate`` for one point of an ``(H, W)`` map."""
    h, w = fmap.shape
    if y < -1.0 or y > h or x < -1.0 or x > w:
        return 0.0  # more than one cell outside the map: contributes nothing
    y, x = min(max(y, 0.0), h - 1.0), min(max(x, 0.0), w - 1.0)  # clamp onto the border cells
    y0, x0 = int(math.floor(y)), int(math.floor(x))
    y1, x1 = min(y0 + 1, h - 1), min(x0 + 1, w - 1)
    ly, lx = y - y0, x - x0
    return float((1 - ly) * (1 - lx) * fmap[y0, x0] + (1 - ly) * lx * fmap[y0, x1]
                 + ly * (1 - lx) * fmap[y1, x0] + ly * lx * fmap[y1, x1])


print("f(1.25, 1.5) =", bilinear(f4, 1.25, 1.5))
assert bilinear(f4, 1.25, 1.5) == 1.5
assert bilinear(f4, 2.0, 1.0) == f4[2, 1]  # at a cell centre: the cell's value

# %% [markdown]
# The border rules (torchvision's, and so ours): a point up to one cell outside the map is
# **clamped** onto the border; a point further out contributes **0**.

# %%
for y, x in [(3.4, 1.0), (-0.5, 1.0), (-1.5, 1.0), (1.0, 4.2)]:
    print(f"f({y}, {x}) = {bilinear(f4, y, x)}")
assert bilinear(f4, 3.4, 1.0) == f4[3, 1] and bilinear(f4, -0.5, 1.0) == f4[0, 1]
assert bilinear(f4, -1.5, 1.0) == 0.0 and bilinear(f4, 1.0, 4.2) == 0.0

# %%
fig, (ax,) = plotting.subplots(size=3.6)
plotting.show_image(ax, f4, title="bilinear at (y, x) = (1.25, 1.5)")
for (i, j), v in np.ndenumerate(f4):
    ax.text(j - 0.42, i - 0.42, f"{v:.0f}", ha="left", va="top", color="white", fontsize=9)
for (i, j), wt in {(1, 1): 0.375, (1, 2): 0.375, (2, 1): 0.125, (2, 2): 0.125}.items():
    plotting.draw_points(ax, [[j, i]], colour_index=1, size=30)
    ax.text(j + 0.08, i - 0.12, f"w={wt}", color=plotting.colour(1), fontsize=8, fontweight="bold")
plotting.draw_points(ax, [[1.5, 1.25]], colour_index=2, size=120, marker="*")
ax.text(1.36, 1.25, "v = 1.5", ha="right", va="center", color=plotting.colour(2), fontsize=9, fontweight="bold")
plt.show()

# %% [markdown]
# (Here the map is drawn with cell centres at integer positions, so the dots sit on cells.)
#
# ## 3. Where RoIAlign samples
#
# RoIAlign (Mask R-CNN section 3) splits the *unrounded* box into `oh x ow` equal bins, takes
# `sampling_ratio x sampling_ratio` regularly spaced points in each bin, interpolates each point
# bilinearly and averages them. In torchvision's formula, with the box scaled to the map,
# sample `iy` of bin `ph` sits at
#
# `y = y1 + ph · bin_h + (iy + 0.5) · bin_h / sampling_ratio`,
#
# in the same coordinates as the bilinear function above: **cell `i` has its centre at `i`**.
#
# But a box is drawn in pixel coordinates, where pixel `i` covers `[i, i + 1)` and has its
# centre at `i + 0.5`. Converting a box to cell-centre coordinates needs a shift of **-0.5**.
# The original RoIAlign (Detectron, and torchvision's default `aligned=False`) forgot it: its
# samples sit half a cell to the bottom-right of where they should. detectron2's `ROIAlignV2`
# (`aligned=True`) subtracts the 0.5. `aligned=False` also forces the scaled box to be at least
# 1 x 1 cell, which `aligned=True` does not need.
#
# `mrcnn_jax` follows torchvision's `maskrcnn_resnet50_fpn` (`aligned=False`) so that its
# imported weights reproduce torchvision's results; `aligned=True` is a config option.

# %%
def sample_positions(box, output_size, sampling_ratio, spatial_scale=1.0, aligned=False):
    """RoIAlign sample positions of one box in cell-centre coordinates: ys ``(oh, s)``, xs ``(ow, s)``."""
    offset = 0.5 if aligned else 0.0
    x1, y1, x2, y2 = (v * spatial_scale - offset for v in box)
    roi_w, roi_h = x2 - x1, y2 - y1
    if not aligned:
        roi_w, roi_h = max(roi_w, 1.0), max(roi_h, 1.0)
    (oh, ow), s = output_size, sampling_ratio
    frac = (np.arange(s) + 0.5) / s  # (s,) offsets inside a bin, in bins
    ys = y1 + roi_h / oh * (np.arange(oh)[:, None] + frac[None, :])  # (oh, s)
    xs = x1 + roi_w / ow * (np.arange(ow)[:, None] + frac[None, :])  # (ow, s)
    return ys, xs


box8 = np.array([1.3, 1.6, 6.1, 5.2], np.float32)  # on an 8 x 8 map (spatial_scale 1)
for aligned in (False, True):
    ys, xs = sample_positions(box8, (2, 2), 2, aligned=aligned)
    print(f"aligned={aligned}:  ys = {np.round(ys.ravel(), 3)}  xs = {np.round(xs.ravel(), 3)}")
np.testing.assert_allclose(sample_positions(box8, (2, 2), 2)[1].ravel(), [1.9, 3.1, 4.3, 5.5], rtol=1e-6)
np.testing.assert_allclose(sample_positions(box8, (2, 2), 2, aligned=True)[0].ravel(),
                           [1.55, 2.45, 3.35, 4.25], rtol=1e-6)

# %% [markdown]
# By hand for `aligned=False`: the box is 4.8 cells wide, so a bin is 2.4 wide and samples sit
# 0.6 and 1.8 cells into it: `x = 1.3 + 0.6 = 1.9, 3.1, 4.3, 5.5`. The picture below draws the map
# in pixel coordinates (cell `i` covers `[i, i + 1]`), so a sample at cell-centre position `p` is
# drawn at `p + 0.5`.

# %%
rng = np.random.default_rng(1)
fmap8 = np.asarray(jax.image.resize(jnp.asarray(rng.normal(size=(4, 4)), jnp.float32), (8, 8), "linear"))
fig, axes = plotting.subplots(ncols=2, size=3.8)
for ax, aligned, name in [(axes[0], False, "aligned=False (torchvision default)"),
                          (axes[1], True, "aligned=True (detectron2)")]:
    show_map(ax, fmap8, title=name, alpha=0.6)
    x1, y1, x2, y2 = box8
    plotting.draw_boxes(ax, box8[None], colours=[plotting.colour(0)], linewidth=2)
    ax.plot([(x1 + x2) / 2] * 2, [y1, y2], color=plotting.colour(0), linewidth=1, linestyle="--")
    ax.plot([x1, x2], [(y1 + y2) / 2] * 2, color=plotting.colour(0), linewidth=1, linestyle="--")
    ys, xs = sample_positions(box8, (2, 2), 2, aligned=aligned)
    grid = np.stack(np.meshgrid(xs.ravel(), ys.ravel()), axis=-1).reshape(-1, 2) + 0.5  # (16, 2) drawn
    plotting.draw_points(ax, grid, colour_index=2, size=25)
fig.tight_layout()
plt.show()

# %% [markdown]
# Blue: the box and its 2 x 2 bins; red: the 16 sample points (2 x 2 per bin). With
# `aligned=True` each point sits at the centre of a quarter of its bin; with `aligned=False`
# every point is half a cell too far right and down, and the pooled feature is taken from a
# slightly shifted window. At stride 16 that is 8 input pixels; the network learns to live with
# it, which is why weights trained one way should be used the same way.
#
# **Adaptive sampling is refused.** torchvision's default `sampling_ratio=-1` (and detectron2's
# `0`) uses `ceil(roi_h / oh) x ceil(roi_w / ow)` points per bin: a big box gets more samples.
# The number of samples then depends on the box, a value, so the computation has no static
# shape. `mrcnn_jax` asks for a fixed `sampling_ratio > 0` (torchvision's poolers use 2):

# %%
for side in (10, 50, 200):  # box sides in input pixels at spatial_scale 1/4, 7 x 7 output
    print(f"a {side} px box on P2 -> adaptive grid {math.ceil(side / 4 / 7)} x {math.ceil(side / 4 / 7)} per bin")
try:
    mrcnn_jax.roi_align(np.zeros((1, 8, 8, 1), np.float32), box8[None], np.zeros(1, np.int32), (2, 2),
                        sampling_ratio=0)
except ValueError as error:
    print("\nmrcnn_jax.roi_align(..., sampling_ratio=0) raises ValueError:\n ", error)

# %% [markdown]
# ## 4. RoIAlign as one gather
#
# The direct way follows the definition: for each box, bin and sample, interpolate, then
# average. With loops and our `bilinear` it is our reference:

# %%
def roi_align_loop(fmap, box, output_size, sampling_ratio, spatial_scale=1.0, aligned=False):
    """RoIAlign of one box on an ``(H, W)`` map with Python loops: ``(oh, ow)``."""
    ys, xs = sample_positions(box, output_size, sampling_ratio, spatial_scale, aligned)
    out = np.zeros(output_size, np.float32)
    for ph in range(output_size[0]):
        for pw in range(output_size[1]):
            values = [bilinear(fmap, y, x) for y in ys[ph] for x in xs[pw]]
            out[ph, pw] = np.mean(values)  # average of sampling_ratio ** 2 samples
    return out


print(np.round(roi_align_loop(fmap8, box8, (2, 2), 2), 4))

# %% [markdown]
# A real detector pools ~1000 boxes x 7 x 7 bins x 4 samples x 4 neighbours x 256 channels per
# image: loops are out of the question, and on an accelerator we want one big array operation.
#
# **Separability.** The weight of cell `(r, c)` for a sample at `(y, x)` is a product
# `wy(r) · wx(c)`: a row weight that depends only on `y` and a column weight that depends only on
# `x`. So each output row `ph` needs only `2 · sampling_ratio` map rows (the low and high
# neighbour of each of its sample `y`s) with their weights, each output column the same for
# columns, and the bin value is
#
# `out[ph, pw] = Σ_i Σ_j wy[ph, i] · wx[pw, j] · f[rows[ph, i], cols[pw, j]]`.
#
# Step 1: the rows (or columns) each bin reads and their weights, for all boxes at once. The
# `1 / sampling_ratio` of the average goes into the weights of each axis (so `1 / s²` in all),
# and a sample more than one cell outside the map gets weight 0.

# %%
def axis_samples(start, length, out_size, sampling_ratio, size):
    """Rows (or columns) read by each bin and their weights, one axis.

    start, length, size: ``(R,)``. Returns index and weight, both ``(R, out, 2 s)``.
    """
    bin_size = length / out_size  # (R,)
    frac = (jnp.arange(sampling_ratio) + 0.5) / sampling_ratio  # (s,)
    pos = start[:, None, None] + bin_size[:, None, None] * (
        jnp.arange(out_size)[None, :, None] + frac[None, None, :])  # (R, out, s)
    size = size.astype(jnp.float32)[:, None, None]  # (R, 1, 1)
    inside = (pos >= -1.0) & (pos <= size)  # (R, out, s)
    pos = jnp.clip(pos, 0.0, size - 1.0)  # clamp onto the border cells
    low = jnp.floor(pos)
    high = jnp.minimum(low + 1.0, size - 1.0)
    frac_pos = pos - low  # (R, out, s)
    scale = jnp.where(inside, 1.0 / sampling_ratio, 0.0)
    index = jnp.stack([low, high], axis=-1).astype(jnp.int32)  # (R, out, s, 2)
    weight = jnp.stack([(1.0 - frac_pos) * scale, frac_pos * scale], axis=-1)  # (R, out, s, 2)
    r = start.shape[0]
    return index.reshape(r, out_size, -1), weight.reshape(r, out_size, -1)  # (R, out, 2s)


rows, row_w = axis_samples(jnp.array([box8[1]]), jnp.array([box8[3] - box8[1]]), 2, 2, jnp.array([8]))
print("rows read by each output row:\n", rows[0])
print("their weights:\n", np.round(row_w[0], 3))
np.testing.assert_allclose(row_w.sum(axis=-1), 1.0, rtol=1e-6)  # every sample inside: weights sum to 1

# %% [markdown]
# Output row 0 samples `y = 2.05` and `y = 2.95`, so it reads rows 2, 3 (weights `0.95/2` and
# `0.05/2`) and rows 2, 3 again (`0.05/2`, `0.95/2`). Repeated rows are harmless: their weights
# simply add up.
#
# Step 2: the whole RoIAlign. To let each box read its **own** map (its image in the batch; in
# section 5 its pyramid level), flatten the maps into one `(T, C)` array of feature vectors and
# give each box the `base` row where its map starts, with that map's height and width. The flat
# row of cell `(r, c)` is `base + r · width + c`. One gather fetches `(R, oh, 2s, ow, 2s)` feature
# vectors; an `einsum` with the outer product of row and column weights sums them.

# %%
def my_roi_align_flat(flat, boxes, base, height, width, spatial_scale, output_size, sampling_ratio, aligned):
    """RoIAlign of ``boxes (R, 4)`` where box ``r`` reads rows ``base[r]:`` of ``flat (T, C)``."""
    oh, ow = output_size
    scale = jnp.broadcast_to(jnp.asarray(spatial_scale, jnp.float32), boxes.shape[:1])  # (R,)
    offset = 0.5 if aligned else 0.0
    x1, y1 = boxes[:, 0] * scale - offset, boxes[:, 1] * scale - offset  # (R,)
    roi_w = boxes[:, 2] * scale - offset - x1
    roi_h = boxes[:, 3] * scale - offset - y1
    if not aligned:
        roi_w, roi_h = jnp.maximum(roi_w, 1.0), jnp.maximum(roi_h, 1.0)
    rows, row_w = axis_samples(y1, roi_h, oh, sampling_ratio, height)  # (R, oh, 2s)
    cols, col_w = axis_samples(x1, roi_w, ow, sampling_ratio, width)  # (R, ow, 2s)
    flat_index = (base[:, None, None, None, None] + rows[:, :, :, None, None] * width[:, None, None, None, None]
                  + cols[:, None, None, :, :])  # (R, oh, 2s, ow, 2s)
    gathered = flat[flat_index]  # (R, oh, 2s, ow, 2s, C): the one gather
    return jnp.einsum("rpiqjc,rpi,rqj->rpqc", gathered, row_w, col_w)  # (R, oh, ow, C)


def my_roi_align(features, boxes, batch_indices, output_size=(7, 7), spatial_scale=1.0, sampling_ratio=2,
                 aligned=False):
    """RoIAlign on NHWC ``features (N, H, W, C)``: ``(R, oh, ow, C)``."""
    n, h, w, c = features.shape
    r = boxes.shape[0]
    flat = features.reshape(n * h * w, c)  # (N*H*W, C)
    base = batch_indices * (h * w)  # (R,) each image's map starts at row n * H * W
    return my_roi_align_flat(flat, boxes, base, jnp.full(r, h), jnp.full(r, w), spatial_scale,
                             output_size, sampling_ratio, aligned)


for aligned in (False, True):
    mine = my_roi_align(jnp.asarray(fmap8)[None, :, :, None], jnp.asarray(box8)[None], jnp.zeros(1, jnp.int32),
                        (2, 2), aligned=aligned)[0, :, :, 0]
    np.testing.assert_allclose(mine, roi_align_loop(fmap8, box8, (2, 2), 2, aligned=aligned), rtol=1e-5, atol=1e-6)
print("gather version == loop version on the 8 x 8 example, both aligned modes")

# %% [markdown]
# Now against `mrcnn_jax.roi_align` on random maps and boxes: two images, boxes of all sizes,
# some partly or entirely outside the map, both `aligned` modes, several output sizes and
# sampling ratios. Both are jitted, as in the model. `jax.jit` traces a function with abstract
# arrays that have a shape and dtype but no values; an argument named in `static_argnames` is
# instead passed as an ordinary Python value (it must be hashable, e.g. a tuple), becomes part of
# the compilation cache key, and a new value compiles a new program. The output size, sampling
# ratio and `aligned` must be static: they fix shapes or choose Python branches.

# %%
STATIC = ("output_size", "sampling_ratio", "aligned")
my_roi_align_jit = jax.jit(my_roi_align, static_argnames=STATIC)
roi_align_jit = jax.jit(mrcnn_jax.roi_align, static_argnames=STATIC)
rng = np.random.default_rng(2)
feats = rng.normal(size=(2, 20, 24, 3)).astype(np.float32)  # (N, H, W, C)
xy = rng.uniform(-30, 220, (NUM_RANDOM, 2, 2)).astype(np.float32)  # input pixels, map covers 0..192
rand_boxes = np.concatenate([xy.min(axis=1), xy.max(axis=1)], axis=1)  # (R, 4)
rand_boxes[: NUM_RANDOM // 4, 2:] = rand_boxes[: NUM_RANDOM // 4, :2] + rng.uniform(0, 6, (NUM_RANDOM // 4, 2))
rand_batch = rng.integers(0, 2, NUM_RANDOM).astype(np.int32)  # a quarter of the boxes are tiny
cases = [((7, 7), 2, 1 / 8), ((2, 3), 1, 1 / 8), ((14, 14), 3, 1 / 4)]
for output_size, sampling_ratio, scale in cases:
    for aligned in (False, True):
        kwargs = dict(output_size=output_size, spatial_scale=scale, sampling_ratio=sampling_ratio, aligned=aligned)
        mine = my_roi_align_jit(jnp.asarray(feats), jnp.asarray(rand_boxes), jnp.asarray(rand_batch), **kwargs)
        np.testing.assert_allclose(mine, roi_align_jit(feats, rand_boxes, rand_batch, **kwargs), rtol=1e-5, atol=1e-5)
print(f"my_roi_align == mrcnn_jax.roi_align on {NUM_RANDOM} random boxes, {len(cases)} settings x 2 aligned modes")

# %% [markdown]
# Optional: torchvision's `roi_align` wants **NCHW** features and boxes as `(R, 5)` rows
# `[batch_index, x1, y1, x2, y2]`, and returns `(R, C, oh, ow)`: transpose on the way in and out.

# %%
if torchvision is None:
    print("torchvision is not installed: skipping the comparison")
else:
    t_feats = torch.from_numpy(feats.transpose(0, 3, 1, 2).copy())  # NHWC -> NCHW
    t_rois = torch.from_numpy(np.concatenate([rand_batch[:, None].astype(np.float32), rand_boxes], axis=1))
    for output_size, sampling_ratio, scale in cases:
        for aligned in (False, True):
            expected = torchvision.ops.roi_align(t_feats, t_rois, output_size, scale, sampling_ratio, aligned)
            mine = my_roi_align_jit(jnp.asarray(feats), jnp.asarray(rand_boxes), jnp.asarray(rand_batch),
                                    output_size=output_size, spatial_scale=scale, sampling_ratio=sampling_ratio,
                                    aligned=aligned)
            np.testing.assert_allclose(mine, expected.numpy().transpose(0, 2, 3, 1), rtol=1e-5, atol=1e-5)
    print(f"torchvision {torchvision.__version__}: roi_align agrees (NCHW transposed to NHWC)")

# %% [markdown]
# ### The real thing: 14 x 14 crops of the example image
#
# The mask head pools 14 x 14 features per box. Here the "feature map" is the example image
# itself at half resolution (128 x 128, RGB as three channels, lightly blurred), and the boxes are
# the four objects' boxes, halved. Pixel geometry is exact here, so we use `aligned=True`. The
# second panel shows the 7 x 7 bins and the 2 x 2 samples per bin that the box head would use on
# the disc.

# %%
small = example.reshape(128, 2, 128, 2, 3).mean(axis=(1, 3)) / 255.0  # (128, 128, 3) in [0, 1]
blur = np.array([1, 2, 1], np.float32) / 4
small = np.apply_along_axis(lambda v: np.convolve(v, blur, "same"), 0, small)
small = np.apply_along_axis(lambda v: np.convolve(v, blur, "same"), 1, small).astype(np.float32)
small_boxes = gt_boxes / 2 + np.array([-3, -3, 3, 3], np.float32)  # a little context around each object
crops = my_roi_align(jnp.asarray(small)[None], jnp.asarray(small_boxes), jnp.zeros(4, jnp.int32), (14, 14),
                     aligned=True)  # (4, 14, 14, 3)
np.testing.assert_allclose(crops, mrcnn_jax.roi_align(small[None], small_boxes, np.zeros(4, np.int32), (14, 14),
                                                      aligned=True), rtol=1e-5, atol=1e-5)
print("crops:", crops.shape)

fig, axes = plotting.subplots(ncols=6, size=2.3)
plotting.show_image(axes[0], small, title="image + boxes")
axes[0].images[-1].set_extent((0, 128, 128, 0))
plotting.draw_boxes(axes[0], small_boxes, colours=[plotting.colour(c) for c in [0, 0, 0, 0]])
plotting.show_image(axes[1], small, title="7x7 bins, 2x2 samples")
axes[1].images[-1].set_extent((0, 128, 128, 0))
x1, y1, x2, y2 = small_boxes[2]
for k in range(8):
    axes[1].plot([x1 + k * (x2 - x1) / 7] * 2, [y1, y2], color=plotting.colour(0), linewidth=0.8)
    axes[1].plot([x1, x2], [y1 + k * (y2 - y1) / 7] * 2, color=plotting.colour(0), linewidth=0.8)
ys, xs = sample_positions(small_boxes[2], (7, 7), 2, aligned=True)
plotting.draw_points(axes[1], np.stack(np.meshgrid(xs.ravel(), ys.ravel()), -1).reshape(-1, 2) + 0.5,
                     colour_index=2, size=3)
axes[1].set_xlim(x1 - 4, x2 + 4)
axes[1].set_ylim(y2 + 4, y1 - 4)
names = ["small square", "square", "disc", "triangle"]
for ax, crop, name in zip(axes[2:], np.asarray(crops), names, strict=True):
    plotting.show_image(ax, np.clip(crop, 0, 1), title=f"{name} 14x14")
fig.tight_layout()
plt.show()

# %% [markdown]
# Every crop is 14 x 14 whatever the box size: the small square's box (19 x 19 pixels of the
# 128 x 128 image) is *upsampled*, the triangle's (70 x 54) *downsampled*, and all four can be
# batched into one mask head.
#
# ### RoIPool jumps, RoIAlign slides
#
# Back to the disc on the stride-16 map of section 1. Slide its box to the right one input pixel
# at a time and watch one output bin (the top-left of a 7 x 7 output, the box head's size) of both
# operators.

# %%
shifts = np.arange(0, 49, 1, np.float32)
shifted = disc_box[None] + shifts[:, None] * np.array([1, 0, 1, 0], np.float32)  # (S, 4)
pool_values = [roi_pool(fmap16, b, (7, 7), 1 / STRIDE)[0][0, 0] for b in shifted]
align_values = my_roi_align(jnp.asarray(fmap16)[None, :, :, None], jnp.asarray(shifted),
                            jnp.zeros(len(shifts), jnp.int32), (7, 7), 1 / STRIDE, 2, True)[:, 0, 0, 0]
fig, (ax,) = plotting.subplots(size=4.0)
fig.set_size_inches(6.0, 3.0)
ax.step(shifts, pool_values, where="mid", color=plotting.colour(2), label="RoIPool (max of rounded bin)")
ax.plot(shifts, align_values, color=plotting.colour(0), label="RoIAlign (aligned=True)")
for k in range(1, 4):
    ax.axvline(16 * k, color="#bbbbbb", linewidth=0.8, linestyle=":")
ax.set_xlabel("box shifted right by (input pixels); dotted: one cell = 16 px")
ax.set_ylabel("top-left bin value")
ax.legend(fontsize=8)
fig.tight_layout()
plt.show()
print("distinct RoIPool values:", len(set(np.round(pool_values, 6))), " distinct RoIAlign values:",
      len(set(np.round(np.asarray(align_values), 6))))

# %% [markdown]
# RoIPool is piecewise constant in the box position: its output, and so the loss, does not
# respond to a small shift at all, then jumps. RoIAlign's output changes smoothly with the box
# position: the mask head sees where the box actually is. (Both pass gradients back to the
# feature cells they read; the difference is how the output depends on the box.)
#
# ### Gradients flow through the gather
#
# JAX differentiates a gather as a scatter-add: each sampled feature cell receives the sum of
# the weights with which it was read. No custom gradient is needed. Which cells of the map does
# one bin depend on? And the whole 7 x 7 output?

# %%
def pooled_sum(fmap, bin_index=None):
    out = my_roi_align(fmap[None, :, :, None], jnp.asarray(disc_box)[None], jnp.zeros(1, jnp.int32), (7, 7),
                       1 / STRIDE, 2, True)[0, :, :, 0]  # (7, 7)
    return out.sum() if bin_index is None else out[bin_index]


grad_bin = jax.grad(pooled_sum)(jnp.asarray(fmap16), (0, 0))  # (16, 16)
grad_all = jax.grad(pooled_sum)(jnp.asarray(fmap16))  # (16, 16)
rows_hit, cols_hit = np.nonzero(np.asarray(grad_bin))
print(f"one bin: {len(rows_hit)} cells get gradient (rows {sorted(set(rows_hit.tolist()))}, columns "
      f"{sorted(set(cols_hit.tolist()))}), summing to {float(grad_bin.sum()):.4f}")
print(f"all 49 bins: {int((grad_all != 0).sum())} cells, summing to {float(grad_all.sum()):.4f}")
np.testing.assert_allclose(grad_bin.sum(), 1.0, rtol=1e-5)  # a bin is a weighted average: weights sum to 1
np.testing.assert_allclose(grad_all.sum(), 49.0, rtol=1e-5)
ref = jax.grad(lambda f: mrcnn_jax.roi_align(f[None, :, :, None], disc_box[None], np.zeros(1, np.int32), (7, 7),
                                             1 / STRIDE, 2, True).sum())(jnp.asarray(fmap16))
np.testing.assert_allclose(grad_all, ref, rtol=1e-5, atol=1e-6)

fig, axes = plotting.subplots(ncols=2, size=3.6)
for ax, g, title in [(axes[0], grad_bin, "d bin (0, 0) / d features"), (axes[1], grad_all, "d sum of 7x7 / d features")]:
    show_map(ax, np.asarray(g), title=title, cmap="magma")
    plotting.draw_boxes(ax, disc_box[None] / STRIDE, colours=[plotting.colour(0)], linewidth=2)
    ax.set_xlim(7, 15)
    ax.set_ylim(9, 1)
fig.tight_layout()
plt.show()

# %% [markdown]
# The top-left bin's 2 x 2 samples sit at rows `y = 2.27, 2.55` and columns `x = 8.77, 9.05`
# (cell-centre coordinates): rows 2 and 3, and columns 8, 9 (first sample) and 9, 10 (second),
# so 6 cells get gradient. The whole output reaches the cells under the box (blue) and, more
# weakly, their neighbours just outside it: bilinear interpolation reads up to half a cell beyond
# the box edge. With `aligned=True` the footprint is centred on the box; try `aligned=False` and it
# moves half a cell down-right.

# %% [markdown]
# ## 5. The multi-level pooler
#
# With an FPN there are four maps, P2 to P5 (strides 4, 8, 16, 32). FPN's Eq. 1 sends a box of
# size `w x h` (input pixels) to level
#
# `k = floor(4 + log2(sqrt(w h) / 224))`, clamped to `[2, 5]`:
#
# a 224-pixel box (224 x 224 is the ImageNet pre-training image size, FPN's "canonical" size)
# goes to P4, half of that to P3, twice to P5. Small boxes go to fine maps, big ones to coarse
# maps, so that every box spans a similar number of cells. torchvision adds `1e-6` after the log2 so that a size that is *exactly* a power of two
# times 224 is not pushed down a level by rounding in `log2`.

# %%
def my_map_levels(boxes, k_min=2, k_max=5):
    """FPN level of each box: absolute level numbers ``(R,)`` in ``[k_min, k_max]``."""
    size = jnp.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))  # (R,)
    level = jnp.floor(4 + jnp.log2(size / 224) + 1e-6)
    return jnp.clip(level, k_min, k_max).astype(jnp.int32)


sides = np.array([16, 32, 56, 111.9, 112, 150, 223.9, 224, 300, 447.9, 448, 800], np.float32)
square_boxes = np.stack([np.zeros_like(sides), np.zeros_like(sides), sides, sides], axis=1)  # (12, 4)
levels = np.asarray(my_map_levels(jnp.asarray(square_boxes)))
print("side (px)  4 + log2(side / 224)  level")
for side, level in zip(sides, levels, strict=True):
    print(f"{side:9.1f}  {4 + math.log2(side / 224):20.4f}  P{level}")
assert levels.tolist() == [2, 2, 2, 2, 3, 3, 3, 4, 4, 4, 5, 5]
np.testing.assert_array_equal(levels - 2, mrcnn_jax.map_levels(square_boxes))  # the package counts from P2

# %% [markdown]
# Note `mrcnn_jax.map_levels` returns levels counted from the lowest level present (0 means P2),
# the index into the list of feature maps. On an 800 x 800 image:

# %%
rng = np.random.default_rng(4)
sizes = np.array([24, 40, 64, 100, 150, 230, 330, 480, 640], np.float32)
aspect = np.exp(rng.uniform(-0.4, 0.4, len(sizes)))
bw, bh = sizes * np.sqrt(aspect), sizes / np.sqrt(aspect)
x0 = rng.uniform(0, 800 - bw)
y0 = rng.uniform(0, 800 - bh)
level_boxes = np.stack([x0, y0, x0 + bw, y0 + bh], axis=1).astype(np.float32)  # (9, 4)
box_levels = np.asarray(my_map_levels(jnp.asarray(level_boxes)))
assert box_levels.tolist() == [2, 2, 2, 2, 3, 4, 4, 5, 5]

fig, (ax,) = plotting.subplots(size=4.5)
plotting.show_image(ax, np.full((800, 800, 3), 245, np.uint8), title="boxes coloured by FPN level")
plotting.draw_boxes(ax, level_boxes, colours=[plotting.colour(k - 2) for k in box_levels], linewidth=2)
ax.legend(handles=[Patch(color=plotting.colour(k - 2), label=f"P{k} (stride {2 ** k})") for k in range(2, 6)],
          loc="lower right", fontsize=8)
plt.show()
print("sizes:", sizes.astype(int).tolist())
print("levels:", box_levels.tolist())

# %% [markdown]
# torchvision's `MultiScaleRoIAlign` loops over levels: gather the boxes of level `k`, run
# `roi_align` on map `k`, scatter the results back. Under `jit` the number of boxes per level is
# data-dependent, so each level's `roi_align` would have to process **all** `R` boxes and mask
# the wrong ones: four times the work.
#
# **The trick: one flat array for all levels.** `my_roi_align_flat` already lets every box read
# its own map. Flatten every level of every image into one `(T, C)` array, one block after the
# other, and give each box the `base`, height, width and `spatial_scale` of its level. One gather
# then serves all levels, at the cost of a single `roi_align`. The layout for two 256 x 256
# images:

# %%
N, C = 2, 4
rng = np.random.default_rng(5)
pyramid = [rng.normal(size=(N, 256 // s, 256 // s, C)).astype(np.float32) for s in (4, 8, 16, 32)]  # P2..P5
starts = np.cumsum([0] + [f.shape[0] * f.shape[1] * f.shape[2] for f in pyramid])  # (5,) level blocks
flat = jnp.concatenate([jnp.asarray(f).reshape(-1, C) for f in pyramid])  # (T, C)
print("flat:", flat.shape)
for k, f in enumerate(pyramid):
    hw = f.shape[1] * f.shape[2]
    print(f"P{k + 2}: {f.shape[1]:2d} x {f.shape[2]:2d} maps, image 0 at rows {starts[k]:5d}..{starts[k] + hw - 1:5d},"
          f" image 1 at rows {starts[k] + hw:5d}..{starts[k + 1] - 1:5d}")
assert flat.shape == (N * (64**2 + 32**2 + 16**2 + 8**2), C)

# %%
def my_multiscale_roi_align(pyramid, boxes, batch_indices, output_size=(7, 7), sampling_ratio=2, aligned=False,
                            strides=(4, 8, 16, 32)):
    flat = jnp.concatenate([jnp.asarray(f).reshape(-1, f.shape[-1]) for f in pyramid])  # (T, C)
    level = my_map_levels(boxes, 2, 1 + len(pyramid)) - 2  # (R,) index into the pyramid
    hw = [f.shape[1] * f.shape[2] for f in pyramid]
    starts = jnp.asarray(np.cumsum([0] + [f.shape[0] * s for f, s in zip(pyramid, hw, strict=True)])[:-1])
    height = jnp.asarray([f.shape[1] for f in pyramid])[level]  # (R,) per-box lookups
    width = jnp.asarray([f.shape[2] for f in pyramid])[level]
    base = starts[level] + batch_indices * jnp.asarray(hw)[level]
    scale = 1.0 / jnp.asarray(strides, jnp.float32)[level]
    return my_roi_align_flat(flat, boxes, base, height, width, scale, output_size, sampling_ratio, aligned)


# Also static: our `strides`, a constant of the model rather than data, and the package's
# `image_size`, from which it infers each level's stride in Python `math` while tracing (as
# torchvision does), so it must be a Python tuple, not a traced array.
my_multiscale_jit = jax.jit(my_multiscale_roi_align, static_argnames=STATIC + ("strides",))
multiscale_jit = jax.jit(mrcnn_jax.multiscale_roi_align, static_argnames=STATIC + ("image_size",))
rng = np.random.default_rng(6)
side = np.exp(rng.uniform(np.log(8), np.log(600), NUM_RANDOM))  # all levels; the biggest overhang the image
xy = rng.uniform(-10, 250, (NUM_RANDOM, 2))
ms_boxes = np.concatenate([xy, xy + side[:, None] * np.exp(rng.uniform(-0.4, 0.4, (NUM_RANDOM, 2)))], axis=1)
ms_boxes = ms_boxes.astype(np.float32)
ms_batch = rng.integers(0, N, NUM_RANDOM).astype(np.int32)
print("boxes per level P2..P5:", np.bincount(np.asarray(my_map_levels(jnp.asarray(ms_boxes))) - 2, minlength=4))
for aligned in (False, True):
    mine = my_multiscale_jit(pyramid, jnp.asarray(ms_boxes), jnp.asarray(ms_batch), aligned=aligned)
    pkg = multiscale_jit(pyramid, ms_boxes, ms_batch, image_size=(256, 256), aligned=aligned)
    np.testing.assert_allclose(mine, pkg, rtol=1e-5, atol=1e-5)
    for k in range(4):  # and each box equals a plain roi_align on its own level
        on_k = np.flatnonzero(np.asarray(my_map_levels(jnp.asarray(ms_boxes))) == k + 2)
        single = roi_align_jit(pyramid[k], ms_boxes[on_k], ms_batch[on_k], output_size=(7, 7),
                               spatial_scale=1 / 4 / 2**k, sampling_ratio=2, aligned=aligned)
        np.testing.assert_allclose(np.asarray(mine)[on_k], single, rtol=1e-5, atol=1e-5)
print("my_multiscale_roi_align == mrcnn_jax.multiscale_roi_align == per-level roi_align")

# %%
if torchvision is None:
    print("torchvision is not installed: skipping the comparison")
else:
    from collections import OrderedDict

    pooler = torchvision.ops.MultiScaleRoIAlign(["p2", "p3", "p4", "p5"], output_size=7, sampling_ratio=2)
    t_pyramid = OrderedDict((f"p{k + 2}", torch.from_numpy(f.transpose(0, 3, 1, 2).copy()))
                            for k, f in enumerate(pyramid))
    t_boxes = [torch.from_numpy(ms_boxes[ms_batch == b]) for b in range(N)]  # a list per image
    expected = pooler(t_pyramid, t_boxes, [(256, 256)] * N).numpy().transpose(0, 2, 3, 1)
    order = np.concatenate([np.flatnonzero(ms_batch == b) for b in range(N)])  # torchvision's box order
    mine = my_multiscale_jit(pyramid, jnp.asarray(ms_boxes), jnp.asarray(ms_batch))
    # sample positions are rounded to float32 in a different order than torchvision's kernel; at
    # P2 scale with coordinates of a few hundred pixels that moves values by about 1e-5
    np.testing.assert_allclose(np.asarray(mine)[order], expected, rtol=1e-4, atol=1e-4)
    print(f"torchvision {torchvision.__version__}: MultiScaleRoIAlign agrees; max |difference| "
          f"{np.abs(np.asarray(mine)[order] - expected).max():.1e}")

# %% [markdown]
# ## Summary
#
# - RoIPool rounds twice (box to cells, bins to cells) and max-pools; the region it reads is off
#   by up to 8 px at the top-left and 8 to 24 px at the bottom-right at stride 16, and its output
#   jumps as the box moves.
# - RoIAlign keeps the box as floats: `oh x ow` bins, `sampling_ratio²` bilinear samples per bin,
#   averaged. Points more than one cell outside the map read 0; others are clamped to the border.
# - `aligned=False` (torchvision's default, used by `maskrcnn_resnet50_fpn` and by `mrcnn_jax`'s
#   default config) samples half a cell down-right of `aligned=True` (detectron2), and forces
#   boxes to be at least one cell. Adaptive sampling (`sampling_ratio <= 0`) is data-dependent and
#   refused.
# - Bilinear weights are separable: per box, `2s` rows and `2s` columns per bin with weights, one
#   gather of `(R, oh, 2s, ow, 2s, C)` feature vectors, one weighted sum. Gradients are the
#   scatter-add of the gather.
# - FPN Eq. 1 `floor(4 + log2(sqrt(wh)/224) + 1e-6)` clamped to `[2, 5]` picks the level; all
#   levels concatenated into one flat array cost one `roi_align`.
#
# Next: notebook 05, the backbone and FPN that produce the feature maps pooled here; the RPN
# (06) and the heads (07) then use the pooled features.

# %% [markdown]
# ## Exercises
#
# Each exercise has a stub that raises `NotImplementedError` and a check that runs when you
# replace it. A wrong answer raises an `AssertionError` that says what was expected.
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
# **Core exercise A: bilinear sampling with torchvision's border rules.** Write
# `your_bilinear(features (H, W, C), y (P,), x (P,)) -> (P, C)`: cell `i` sits at coordinate `i`; a
# point with `y < -1` or `y > H` (or the same in x) reads 0; otherwise clamp `y`, `x` at 0, and a
# point at or beyond the last cell (`floor(y) >= H - 1`) reads the last cell.

# %%
from mrcnn_jax.course import check_bilinear, check_map_levels, check_roi_align


def your_bilinear(features, y, x):
    # BEGIN SOLUTION
    height, width = features.shape[:2]
    outside = (y < -1) | (y > height) | (x < -1) | (x > width)  # (P,)

    def axis(pos, size):
        pos = jnp.maximum(pos, 0.0)
        low = jnp.floor(pos)
        edge = low >= size - 1
        low = jnp.where(edge, size - 1, low)
        high = jnp.where(edge, low, low + 1)
        frac = jnp.where(edge, 0.0, pos - low)
        return low.astype(jnp.int32), high.astype(jnp.int32), frac

    y0, y1, ly = axis(y, height)
    x0, x1, lx = axis(x, width)
    value = (((1 - ly) * (1 - lx))[:, None] * features[y0, x0]
             + ((1 - ly) * lx)[:, None] * features[y0, x1]
             + (ly * (1 - lx))[:, None] * features[y1, x0]
             + (ly * lx)[:, None] * features[y1, x1])  # (P, C)
    return jnp.where(outside[:, None], 0.0, value)
    # END SOLUTION


check_bilinear(your_bilinear)

# %% [markdown]
# **Core exercise B: RoIAlign on one level, both `aligned` modes.** Write `your_roi_align(features
# (N, H, W, C), boxes (R, 4), batch_indices (R,), output_size, spatial_scale, sampling_ratio,
# aligned) -> (R, oh, ow, C)` with the semantics of `mrcnn_jax.roi_align` (use your
# `your_bilinear`): scale the box, shift it by -0.5 when `aligned`, otherwise make it at least 1 x 1,
# average `sampling_ratio x sampling_ratio` regularly spaced samples per bin.

# %%
def your_roi_align(features, boxes, batch_indices, output_size=(7, 7), spatial_scale=1.0,
                 sampling_ratio=2, aligned=False):
    # BEGIN SOLUTION
    out_h, out_w = output_size
    s = sampling_ratio
    features = jnp.asarray(features)

    def one_box(box, image):
        x1, y1, x2, y2 = box * spatial_scale - (0.5 if aligned else 0.0)
        w, h = x2 - x1, y2 - y1
        if not aligned:  # a Python bool, so a Python `if` is fine
            w, h = jnp.maximum(w, 1.0), jnp.maximum(h, 1.0)
        offsets = (jnp.arange(s) + 0.5) / s  # (s,)
        ys = y1 + (jnp.arange(out_h)[:, None] + offsets[None, :]) * h / out_h  # (oh, s)
        xs = x1 + (jnp.arange(out_w)[:, None] + offsets[None, :]) * w / out_w  # (ow, s)
        yy = jnp.broadcast_to(ys[:, :, None, None], (out_h, s, out_w, s)).reshape(-1)
        xx = jnp.broadcast_to(xs[None, None], (out_h, s, out_w, s)).reshape(-1)
        samples = your_bilinear(features[image], yy, xx).reshape(out_h, s, out_w, s, -1)
        return samples.mean(axis=(1, 3))  # (oh, ow, C)

    return jax.vmap(one_box)(jnp.asarray(boxes), jnp.asarray(batch_indices))
    # END SOLUTION


check_roi_align(your_roi_align)

# %% [markdown]
# **Core exercise C: the FPN level mapper.** Write `your_map_levels(boxes (R, 4), k_min=2, k_max=5)
# -> (R,) int32`: `floor(4 + log2(sqrt(area) / 224) + 1e-6)` clamped to `[k_min, k_max]`, counted
# from `k_min` (0 means P2).

# %%
def your_map_levels(boxes, k_min=2, k_max=5):
    # BEGIN SOLUTION
    size = jnp.sqrt(jnp.maximum(boxes[:, 2] - boxes[:, 0], 0)
                    * jnp.maximum(boxes[:, 3] - boxes[:, 1], 0))  # (R,)
    level = jnp.floor(4 + jnp.log2(size / 224) + 1e-6)
    return (jnp.clip(level, k_min, k_max) - k_min).astype(jnp.int32)
    # END SOLUTION


check_map_levels(your_map_levels)


# %% [markdown]
# ### Extension exercises
#
# **Exercise 1: bilinear by hand.** On the 4 x 4 map `f4` of section 2, compute the bilinear
# value at `(y, x) = (2.5, 0.75)` with pencil and paper (name the four neighbours and their
# weights), and set `my_value` to it. Do not call `bilinear`.

# %%
def check_bilinear_value(value):
    assert isinstance(value, (int, float)), f"expected a number, got {type(value).__name__}"
    assert abs(value - 2.625) < 1e-6, (
        f"got {value}: the neighbours are f[2,0]=0, f[2,1]=5, f[3,0]=3, f[3,1]=1; ly = 0.5, lx = 0.75")


my_value = None

try:
    if my_value is None:
        raise NotImplementedError
    check_bilinear_value(my_value)
    print("correct!")
except NotImplementedError:
    print("not attempted yet")

# %% [markdown]
# **Exercise 2: sample positions along one axis.** Write `my_axis_positions(x1, x2, out_size,
# sampling_ratio, spatial_scale, aligned) -> (out_size, sampling_ratio)` array: the
# cell-centre coordinates of RoIAlign's samples along one axis for one box (input pixels `x1 <
# x2`), including `aligned=False`'s at-least-one-cell rule.

# %%
def check_axis_positions(fn):
    got = np.asarray(fn(20.0, 52.0, 2, 2, 1 / 8, False), np.float64)
    assert got.shape == (2, 2), f"expected shape (out_size, sampling_ratio) = (2, 2), got {got.shape}"
    np.testing.assert_allclose(got, [[3.0, 4.0], [5.0, 6.0]], rtol=1e-6, err_msg="[20, 52] at 1/8, aligned=False")
    np.testing.assert_allclose(np.asarray(fn(20.0, 52.0, 2, 2, 1 / 8, True)), [[2.5, 3.5], [4.5, 5.5]], rtol=1e-6,
                               err_msg="aligned=True shifts by -0.5")
    np.testing.assert_allclose(np.asarray(fn(20.0, 24.0, 2, 2, 1 / 8, False)), [[2.625, 2.875], [3.125, 3.375]],
                               rtol=1e-6, err_msg="a box 0.5 cells wide counts as 1 cell when aligned=False")
    np.testing.assert_allclose(np.asarray(fn(20.0, 24.0, 2, 2, 1 / 8, True)), [[2.0625, 2.1875], [2.3125, 2.4375]],
                               rtol=1e-6, err_msg="aligned=True keeps the 0.5-cell box as it is")


def my_axis_positions(x1, x2, out_size, sampling_ratio, spatial_scale, aligned):
    raise NotImplementedError


try:
    check_axis_positions(my_axis_positions)
    print("correct!")
except NotImplementedError:
    print("not attempted yet")

# %% [markdown]
# **Exercise 3: detectron2's level mapper.** detectron2 computes the level as
# `floor(4 + log2(sqrt(w h) / 224 + 1e-8))` (the epsilon *inside* the log) clamped to `[2, 5]`.
# Write `my_detectron2_levels(boxes (R, 4)) -> (R,)` absolute levels. Then find out for which of
# the test sizes and random boxes it differs from torchvision's rule (`my_map_levels`), and why
# (hint: what is `0.5 + 1e-8` in float32?).

# %%
def check_detectron2_levels(fn):
    got = np.asarray(fn(jnp.asarray(square_boxes)))
    assert got.shape == (len(sides),), f"expected one level per box, got shape {got.shape}"
    np.testing.assert_array_equal(got, [2, 2, 2, 2, 3, 3, 3, 4, 4, 4, 5, 5], err_msg=f"levels of sides {sides}")
    got = np.asarray(fn(jnp.asarray(ms_boxes)))
    expected = np.clip(np.floor(4 + np.log2(np.sqrt(np.prod(ms_boxes[:, 2:] - ms_boxes[:, :2], axis=1)) / 224
                                            + 1e-8)), 2, 5)
    np.testing.assert_array_equal(got, expected, err_msg="random boxes")


def my_detectron2_levels(boxes):
    raise NotImplementedError


try:
    check_detectron2_levels(my_detectron2_levels)
    print("correct!")
except NotImplementedError:
    print("not attempted yet")

# %% [markdown]
# **Exercise 4 (challenge): adaptive sampling with a static bound.** torchvision's adaptive grid
# uses `gh = ceil(roi_h / oh)` by `gw = ceil(roi_w / ow)` samples per bin (roi sizes in cells after
# scaling, at least 1). Make it jit-friendly with a static maximum `G = max_grid`: every bin gets
# `G` sample slots per axis; slot `i` sits at `y1 + ph · bin_h + (i + 0.5) · bin_h / gh` for
# `i < gh` and gets weight 0 for `i >= gh`; the average divides by `gh · gw`. Write
# `my_roi_align_adaptive(features (N, H, W, C), boxes, batch_indices, output_size, spatial_scale,
# max_grid, aligned) -> (R, oh, ow, C)`, where boxes whose grid exceeds `max_grid` use
# `max_grid`. Hint: `axis_samples` with `sampling_ratio = max_grid` is almost what you need.

# %%
def check_roi_align_adaptive(fn):
    rng = np.random.default_rng(7)
    feats = rng.normal(size=(1, 12, 12, 2)).astype(np.float32)
    # sizes chosen so that both axes of each box have the same grid: 1, 2 and 3 samples per bin
    boxes = np.array([[1.0, 2.0, 2.2, 3.6], [2.0, 1.0, 5.5, 4.9], [0.5, 0.5, 5.7, 5.3]], np.float32)
    grids = [1, 2, 3]
    got = np.asarray(fn(feats, boxes, np.zeros(3, np.int32), (2, 2), 1.0, 4, True))
    assert got.shape == (3, 2, 2, 2), f"expected (R, oh, ow, C) = (3, 2, 2, 2), got {got.shape}"
    for r, g in enumerate(grids):
        expected = mrcnn_jax.roi_align(feats, boxes[r : r + 1], np.zeros(1, np.int32), (2, 2), 1.0, g, True)[0]
        np.testing.assert_allclose(got[r], expected, rtol=1e-5, atol=1e-5,
                                   err_msg=f"box {r} has an adaptive grid of {g} x {g}")
    capped = np.asarray(fn(feats, boxes[2:], np.zeros(1, np.int32), (2, 2), 1.0, 2, True))[0]
    expected = mrcnn_jax.roi_align(feats, boxes[2:], np.zeros(1, np.int32), (2, 2), 1.0, 2, True)[0]
    np.testing.assert_allclose(capped, expected, rtol=1e-5, atol=1e-5, err_msg="grid 3 capped at max_grid = 2")
    if torchvision is not None:  # and the real thing, on random boxes whose grids fit in max_grid = 8
        xy = rng.uniform(0, 10, (20, 2, 2)).astype(np.float32)
        rb = np.concatenate([xy.min(axis=1), xy.max(axis=1)], axis=1)
        t = torchvision.ops.roi_align(torch.from_numpy(feats.transpose(0, 3, 1, 2).copy()),
                                      torch.from_numpy(np.concatenate([np.zeros((20, 1), np.float32), rb], 1)),
                                      (2, 2), 1.0, -1, True).numpy().transpose(0, 2, 3, 1)
        np.testing.assert_allclose(fn(feats, rb, np.zeros(20, np.int32), (2, 2), 1.0, 8, True), t,
                                   rtol=1e-5, atol=1e-5, err_msg="torchvision roi_align with sampling_ratio=-1")


def my_roi_align_adaptive(features, boxes, batch_indices, output_size, spatial_scale, max_grid, aligned):
    raise NotImplementedError


try:
    check_roi_align_adaptive(my_roi_align_adaptive)
    print("correct!")
except NotImplementedError:
    print("not attempted yet")
