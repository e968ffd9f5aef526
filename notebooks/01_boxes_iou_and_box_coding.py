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
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/mrcnn-jax/mrcnn_jax/blob/v0.2.0/notebooks/01_boxes_iou_and_box_coding.ipynb)
#
# # 01 · Boxes, IoU and box coding
#
# *The geometry every later stage of Mask R-CNN stands on: how a box is written, how two boxes
# are compared, and how a network predicts a box as a small correction to another.*
#
# **You will learn**
# - the `(x1, y1, x2, y2)` convention of `mrcnn_jax`: absolute pixels of an NHWC image;
# - box area, intersection and intersection over union (IoU), first by hand, then for all
#   pairs of two box sets at once with broadcasting;
# - what happens with degenerate boxes (zero width, `x1 > x2`) and the package's rule for them;
# - the box coder: centre/size form, the deltas `(dx, dy, dw, dh)`, why there is a log and a
#   division by the anchor size, the weights `(1, 1, 1, 1)` of the RPN and `(10, 10, 5, 5)` of
#   the box head, decoding, and the `log(1000/16)` clamp;
# - how to check your own versions against `mrcnn_jax` (and, optionally, torchvision).
#
# Every function is written here first in plain `jax.numpy`; the cell after it imports the
# finished version from `mrcnn_jax` and asserts the two agree.

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
import numpy as np

import mrcnn_jax
from mrcnn_jax import plotting
from mrcnn_jax.boxes import BBOX_XFORM_CLIP, ROI_BOX_WEIGHTS, RPN_BOX_WEIGHTS

FAST = os.environ.get("MRCNN_JAX_FAST", "0") == "1"
NUM_RANDOM = 200 if FAST else 2000  # random boxes for the vectorised checks and statistics
print(f"FAST={FAST}, NUM_RANDOM={NUM_RANDOM}")

# %% [markdown]
# ## 1. The box convention
#
# Images are **NHWC**: a batch of `N` images, each `H` rows by `W` columns with `C` channels.
# Pixel coordinates start at the top-left corner: `x` grows to the right (columns), `y` grows
# **down** (rows). A box is four float32 numbers `(x1, y1, x2, y2)`: its top-left and
# bottom-right corners in pixels of the model's input image, with `x1 <= x2` and `y1 <= y2`.
#
# Our running example is a 100 x 120 image with two objects.

# %%
H, W = 100, 120
images = np.full((1, H, W, 3), 235, np.uint8)  # (N, H, W, C): one light-grey image
images[0, 20:60, 20:60] = (160, 190, 220)  # object A: rows 20..59, columns 20..59
images[0, 40:80, 40:80] = (240, 200, 150)  # object B overlaps A's bottom-right corner
box_a = jnp.array([20.0, 20.0, 60.0, 60.0])  # (x1, y1, x2, y2)
box_b = jnp.array([40.0, 40.0, 80.0, 80.0])
print("images:", images.shape, images.dtype)
print("box A:", box_a, " box B:", box_b)

# %% [markdown]
# We draw images so that pixel (row `r`, column `c`) covers the square `[c, c+1] x [r, r+1]`:
# the box `[20, 20, 60, 60]` then covers exactly columns 20..59 and rows 20..59.

# %%
def show(ax, image, title=None):
    """``plotting.show_image`` with pixel (r, c) drawn over [c, c+1] x [r, r+1]."""
    plotting.show_image(ax, image, title)
    ax.images[-1].set_extent((0, image.shape[1], image.shape[0], 0))
    return ax


fig, (ax,) = plotting.subplots(size=4.5)
show(ax, images[0], title="xyxy boxes on an NHWC image")
plotting.draw_boxes(ax, jnp.stack([box_a, box_b]), colours=[plotting.colour(0), plotting.colour(1)])
labels = [("A (x1, y1) = (20, 20)", (20, 20), (3, 10)), ("A (x2, y2)\n= (60, 60)", (60, 60), (86, 22)),
          ("B (x1, y1)\n= (40, 40)", (40, 40), (3, 72)), ("B (x2, y2)\n= (80, 80)", (80, 80), (86, 66))]
for k, (text, point, where) in enumerate(labels):
    plotting.draw_points(ax, [point], colour_index=k // 2, size=25)
    ax.annotate(text, point, where, fontsize=8, color=plotting.colour(k // 2),
                arrowprops=dict(arrowstyle="-", color="grey", linewidth=0.6))
ax.set_xticks([0, 20, 40, 60, 80, 120])
ax.set_yticks([0, 20, 40, 60, 80, 100])
ax.set_xlabel("x (columns) →")
ax.set_ylabel("← y (rows), grows downwards")
plt.show()

# %% [markdown]
# ## 2. Area
#
# Width `x2 - x1` times height `y2 - y1`. Both boxes are 40 x 40, so 1600 square pixels each.
# The `...` indexing makes the same function work on one box `(4,)` or any stack `(..., 4)`.

# %%
def area(boxes):
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])  # (...)


print("area(A) =", area(box_a), " area(B) =", area(box_b))
assert float(area(box_a)) == 1600.0 and float(area(box_b)) == 1600.0

# %% [markdown]
# ## 3. Intersection
#
# The intersection of two boxes is itself a box: its top-left corner is the **larger** of the two
# top-left corners, its bottom-right corner the **smaller** of the two bottom-right corners. If
# the boxes do not overlap that "box" is inverted, so we clip its width and height at zero.

# %%
def intersection(a, b):
    top_left = jnp.maximum(a[..., :2], b[..., :2])  # (..., 2)
    bottom_right = jnp.minimum(a[..., 2:], b[..., 2:])  # (..., 2)
    wh = jnp.clip(bottom_right - top_left, 0.0)  # (..., 2): 0 where they do not overlap
    return wh[..., 0] * wh[..., 1]  # (...)


inter_ab = intersection(box_a, box_b)
print("intersection box:", jnp.maximum(box_a[:2], box_b[:2]), jnp.minimum(box_a[2:], box_b[2:]))
print("intersection area:", inter_ab)
assert float(inter_ab) == 400.0  # the 20 x 20 square [40, 40, 60, 60]

# %%
fig, (ax,) = plotting.subplots(size=4.0)
show(ax, images[0], title="intersection (shaded) = 20 x 20 = 400")
plotting.draw_boxes(ax, jnp.stack([box_a, box_b]), colours=[plotting.colour(0), plotting.colour(1)])
ix1, iy1 = np.maximum(box_a[:2], box_b[:2])
ix2, iy2 = np.minimum(box_a[2:], box_b[2:])
ax.add_patch(plt.Rectangle((ix1, iy1), ix2 - ix1, iy2 - iy1, facecolor=plotting.colour(2),
                           alpha=0.5, edgecolor=plotting.colour(2), hatch="//"))
ax.text(20, 18, "A", color=plotting.colour(0), fontsize=12, va="bottom")
ax.text(81, 80, "B", color=plotting.colour(1), fontsize=12, va="bottom")
plt.show()

# %% [markdown]
# ## 4. IoU by hand
#
# Intersection over union: `IoU = inter / (area(A) + area(B) - inter)`. The union subtracts
# the intersection once because both areas counted it.
#
# By hand: `400 / (1600 + 1600 - 400) = 400 / 2800 = 1/7 ≈ 0.143`. Two boxes that look quite
# overlapping have a small IoU: the RPN calls an anchor "object" at IoU ≥ 0.7 (and, through a
# "low-quality" rule, each object's best-matching anchors; notebook 06), and the box head calls a
# proposal "foreground" at IoU ≥ 0.5.

# %%
iou_ab = inter_ab / (area(box_a) + area(box_b) - inter_ab)
print(f"IoU(A, B) = {float(iou_ab):.6f}   1/7 = {1 / 7:.6f}")
assert math.isclose(float(iou_ab), 1 / 7, rel_tol=1e-6)

# %% [markdown]
# ## 5. All pairs at once: broadcasting
#
# The detector compares *every* anchor with *every* ground-truth box: `N` boxes against `M`
# boxes gives an `(N, M)` IoU matrix (from here on, `N` and `M` in this notebook count boxes, not
# images as in NHWC). Instead of a double loop, insert axes so that
# `boxes1[:, None, :]` is `(N, 1, 4)` and `boxes2[None, :, :]` is `(1, M, 4)`; every elementwise
# operation then broadcasts to `(N, M, ...)`.

# %%
boxes1 = jnp.array([[20, 20, 60, 60],     # A
                    [40, 40, 80, 80],     # B
                    [0, 0, 120, 100],     # the whole image
                    [90, 10, 110, 30]],   # a small box far away
                   jnp.float32)  # (N=4, 4)
boxes2 = jnp.array([[20, 20, 60, 60],     # A again
                    [30, 30, 70, 70],     # A shifted by 10 px
                    [40, 40, 80, 80]],    # B again
                   jnp.float32)  # (M=3, 4)
print("boxes1[:, None, :2]:", boxes1[:, None, :2].shape, "  boxes2[None, :, :2]:", boxes2[None, :, :2].shape)
print("their maximum:      ", jnp.maximum(boxes1[:, None, :2], boxes2[None, :, :2]).shape)

# %%
def pairwise_iou_v1(boxes1, boxes2):
    inter = intersection(boxes1[:, None, :], boxes2[None, :, :])  # (N, M)
    union = area(boxes1)[:, None] + area(boxes2)[None, :] - inter  # (N, M)
    return inter / union


iou_matrix = pairwise_iou_v1(boxes1, boxes2)
print(np.round(np.asarray(iou_matrix), 4))
assert math.isclose(float(iou_matrix[0, 2]), 1 / 7, rel_tol=1e-6)  # A vs B, as by hand
assert float(iou_matrix[0, 0]) == 1.0 and float(iou_matrix[3, 0]) == 0.0
assert math.isclose(float(iou_matrix[0, 1]), 900 / 2300, rel_tol=1e-6)  # A vs A + 10 px

# %%
fig, (ax,) = plotting.subplots(size=3.6)
im = ax.imshow(np.asarray(iou_matrix), cmap="viridis", vmin=0, vmax=1)
for (i, j), v in np.ndenumerate(np.asarray(iou_matrix)):
    ax.text(j, i, f"{v:.2f}", ha="center", va="center", color="white" if v < 0.6 else "black")
ax.set_xticks(range(3), ["A", "A + 10 px", "B"])
ax.set_yticks(range(4), ["A", "B", "image", "small"])
ax.set_xlabel("boxes2")
ax.set_ylabel("boxes1")
ax.set_title("IoU matrix (N=4, M=3)")
fig.colorbar(im, ax=ax, fraction=0.046)
plt.show()

# %% [markdown]
# Moving a 40-pixel box by 10 pixels right *and* 10 down (column "A + 10 px") already drops its
# IoU with the unmoved box to 900 / 2300 ≈ 0.39; a 10-pixel shift along one axis alone gives
# 1200 / 2000 = 0.6. IoU is a demanding measure for small boxes.
#
# Now the package's `box_iou` on the same boxes, and on `NUM_RANDOM` random boxes against
# `NUM_RANDOM // 4` others (the shape of the matrix is printed).

# %%
np.testing.assert_allclose(pairwise_iou_v1(boxes1, boxes2), mrcnn_jax.box_iou(boxes1, boxes2), rtol=1e-6)


def random_boxes(rng, n, size=(100, 120)):
    """``(n, 4)`` valid float32 boxes inside an image of ``size = (H, W)``."""
    xy = rng.uniform(0, 1, (n, 2, 2)) * np.array([size[1], size[0]], np.float32)  # (n, 2 corners, xy)
    return np.concatenate([xy.min(axis=1), xy.max(axis=1)], axis=1).astype(np.float32)  # (n, 4)


rng = np.random.default_rng(0)
rand1, rand2 = random_boxes(rng, NUM_RANDOM), random_boxes(rng, NUM_RANDOM // 4)
mine = pairwise_iou_v1(rand1, rand2)
np.testing.assert_allclose(mine, mrcnn_jax.box_iou(rand1, rand2), rtol=1e-5, atol=1e-6)
print(f"{mine.shape} IoU matrix agrees with mrcnn_jax.box_iou")

# %% [markdown]
# ## 6. Degenerate boxes
#
# Real pipelines meet boxes that are not proper rectangles: a zero-width box (a line), a
# zero-size box (a point, e.g. padded ground-truth slots `[0, 0, 0, 0]`), or an **inverted**
# box with `x1 > x2` (from a bad annotation or an untrained regressor). Our `area` gives a
# *negative* area for an inverted box, and two empty boxes give `0 / 0`.

# %%
degenerate = jnp.array([[30, 30, 30, 70],   # zero width: a vertical line
                        [0, 0, 0, 0],       # a point (a padded ground-truth slot)
                        [60, 20, 20, 60]],  # x1 > x2: A with its x-coordinates swapped
                       jnp.float32)
print("naive area:", area(degenerate))
print("naive IoU with A and with the point:\n", pairwise_iou_v1(degenerate, jnp.stack([box_a, degenerate[1]])))

# %% [markdown]
# Three `nan`s: the line and the point have zero area, so against the point their union is 0 and
# the IoU is `0 / 0`; the inverted box's area of -1600 cancels A's +1600, so that union is 0 too
# (and against the point it gives `-0`). torchvision computes the same negative area (section
# 10). `mrcnn_jax` documents one rule instead (see the docstring of `mrcnn_jax.boxes`): **an
# inverted side counts as zero**, so an inverted box has zero area and IoU 0 with everything, and
# **IoU is 0 where the union is empty**. Clamp the sides, and guard the division with `jnp.where`.

# %%
def box_area(boxes):
    width = jnp.maximum(boxes[..., 2] - boxes[..., 0], 0.0)  # inverted side -> 0
    height = jnp.maximum(boxes[..., 3] - boxes[..., 1], 0.0)
    return width * height  # (...)


def box_iou(boxes1, boxes2):
    inter = intersection(boxes1[:, None, :], boxes2[None, :, :])  # (N, M)
    union = box_area(boxes1)[:, None] + box_area(boxes2)[None, :] - inter  # (N, M)
    safe_union = jnp.where(union > 0, union, 1.0)  # never divide by 0 (keeps gradients finite too)
    return jnp.where(union > 0, inter / safe_union, 0.0)  # (N, M)


print("area:", box_area(degenerate))
iou_deg = box_iou(degenerate, jnp.stack([box_a, degenerate[1]]))
print("IoU with A and with the point:\n", iou_deg)
assert np.all(np.asarray(box_area(degenerate)) == 0.0)
assert np.all(np.asarray(iou_deg) == 0.0)

# %%
np.testing.assert_allclose(box_area(degenerate), mrcnn_jax.box_area(degenerate))
everything = jnp.concatenate([boxes1, degenerate, jnp.asarray(rand1[:50])])
np.testing.assert_allclose(box_iou(everything, everything), mrcnn_jax.box_iou(everything, everything),
                           rtol=1e-5, atol=1e-6)
print("box_area and box_iou agree with mrcnn_jax, degenerate boxes included")

# %% [markdown]
# ## 7. The box coder: boxes as corrections to anchors
#
# A detector does not output four raw pixel coordinates. It starts from a **reference box**
# (an *anchor* for the RPN, a *proposal* for the box head) and predicts a small correction, the
# **deltas** `(dx, dy, dw, dh)`. Faster R-CNN (section 3.1.2) writes them in **centre/size
# form**: with the anchor's centre `(xa, ya)` and size `(wa, ha)` and the target's `(x, y, w, h)`,
#
# $$dx = \frac{x - x_a}{w_a},\quad dy = \frac{y - y_a}{h_a},\quad dw = \log\frac{w}{w_a},\quad dh = \log\frac{h}{h_a}.$$
#
# First the conversion to centre/size form.

# %%
def centre_size(boxes):
    w = boxes[..., 2] - boxes[..., 0]
    h = boxes[..., 3] - boxes[..., 1]
    return boxes[..., 0] + 0.5 * w, boxes[..., 1] + 0.5 * h, w, h  # 4 x (...)


anchor = jnp.array([20.0, 20.0, 60.0, 60.0])  # centre (40, 40), 40 x 40
gt = jnp.array([10.0, 25.0, 90.0, 65.0])      # centre (50, 45), 80 x 40
print("anchor (cx, cy, w, h):", [float(v) for v in centre_size(anchor)])
print("gt     (cx, cy, w, h):", [float(v) for v in centre_size(gt)])

# %% [markdown]
# By hand: the centre moves 10 px right, a quarter of the anchor width, so `dx = 0.25`; 5 px down,
# `dy = 5/40 = 0.125`; the width doubles, `dw = log 2 ≈ 0.693`; the height stays, `dh = 0`.

# %%
def encode(boxes, anchors, weights=(1.0, 1.0, 1.0, 1.0)):
    wx, wy, ww, wh = weights
    ax, ay, aw, ah = centre_size(anchors)
    gx, gy, gw, gh = centre_size(boxes)
    dx = wx * (gx - ax) / aw
    dy = wy * (gy - ay) / ah
    dw = ww * jnp.log(gw / aw)
    dh = wh * jnp.log(gh / ah)
    return jnp.stack([dx, dy, dw, dh], axis=-1)  # (..., 4)


deltas = encode(gt, anchor)
print("deltas:", deltas)
np.testing.assert_allclose(deltas, [0.25, 0.125, math.log(2), 0.0], rtol=1e-6)

# %% [markdown]
# **Why divide by the anchor size?** So that the same *relative* mistake costs the same for a
# 32-pixel anchor and a 512-pixel anchor: a box 25 % of its width to the right is `dx = 0.25`
# at any scale. One regression head serves all object sizes.
#
# **Why the log?** A box twice as wide (`+log 2`) and half as wide (`-log 2`) are symmetric
# corrections, scaling is turned into addition, and decoding with `exp` can never produce a
# negative width. Check the scale invariance: blow the example up 16 times.

# %%
print("deltas at 16x scale:", encode(16 * gt, 16 * anchor))
np.testing.assert_allclose(encode(16 * gt, 16 * anchor), deltas, rtol=1e-6)
print("twice / half as wide:", encode(jnp.array([0.0, 0, 80, 40]), jnp.array([20.0, 0, 60, 40]))[2],
      encode(jnp.array([30.0, 0, 50, 40]), jnp.array([20.0, 0, 60, 40]))[2])

# %% [markdown]
# ### The weights: (1, 1, 1, 1) for the RPN, (10, 10, 5, 5) for the box head
#
# The deltas are multiplied by weights `(wx, wy, ww, wh)` before the loss sees them. The RPN
# keeps Faster R-CNN's unweighted deltas, `(1, 1, 1, 1)`. The box head's inputs are *proposals*
# that already overlap the object (IoU ≥ 0.5), so their deltas are small, a fraction of the box
# size; Detectron multiplies them by `(10, 10, 5, 5)` (kept by torchvision), which brings them to
# order 1. Below: many random proposals with IoU ≥ 0.5 around one object (jittered by 10 % of its
# size and by 0.15 in log size), encoded both ways. The printed spreads: about 0.1 to 0.15 with
# the RPN weights, about 1 (centre) and 0.75 (size) with the box-head weights.

# %%
gt_obj = np.array([200.0, 150.0, 360.0, 270.0], np.float32)  # a 160 x 120 object
cx, cy, gw, gh = 280.0, 210.0, 160.0, 120.0
n = 4 * NUM_RANDOM
jitter = rng.normal(0, 1, (n, 4)).astype(np.float32) * np.float32([0.1 * gw, 0.1 * gh, 0.15, 0.15])
pw, ph = gw * np.exp(jitter[:, 2]), gh * np.exp(jitter[:, 3])
proposals = np.stack([cx + jitter[:, 0] - pw / 2, cy + jitter[:, 1] - ph / 2,
                      cx + jitter[:, 0] + pw / 2, cy + jitter[:, 1] + ph / 2], axis=1)  # (n, 4)
proposals = proposals[np.asarray(box_iou(proposals, gt_obj[None]))[:, 0] >= 0.5]  # foreground only
targets_rpn = encode(gt_obj, proposals, RPN_BOX_WEIGHTS)  # (P, 4)
targets_roi = encode(gt_obj, proposals, ROI_BOX_WEIGHTS)  # (P, 4)
print(f"{len(proposals)} foreground proposals")
print("std of (dx, dy, dw, dh), weights (1, 1, 1, 1):  ", np.round(np.std(targets_rpn, axis=0), 3))
print("std of (dx, dy, dw, dh), weights (10, 10, 5, 5):", np.round(np.std(targets_roi, axis=0), 3))
np.testing.assert_allclose(targets_roi, targets_rpn * np.float32(ROI_BOX_WEIGHTS), rtol=1e-5, atol=1e-6)
assert np.all(np.std(targets_rpn, axis=0) < 0.25) and np.all(np.std(targets_roi, axis=0) > 0.5)

# %%
fig, axes = plotting.subplots(ncols=2, size=3.6)
names = ["dx", "dy", "dw", "dh"]
for ax, targets, title in [(axes[0], targets_rpn, "weights (1, 1, 1, 1)"),
                           (axes[1], targets_roi, "weights (10, 10, 5, 5)")]:
    for k in range(4):
        ax.hist(np.asarray(targets[:, k]), bins=80, range=(-3, 3), histtype="step",
                color=plotting.colour(k), label=names[k], linewidth=1.5)
    ax.set_title(f"targets of IoU ≥ 0.5 proposals, {title}", fontsize=9)
    ax.set_xlabel("delta value")
axes[0].legend()
fig.tight_layout()
plt.show()

# %% [markdown]
# ## 8. Decoding: from deltas back to a box
#
# Invert each line of `encode`: divide by the weights, move the centre by `dx * wa`, scale the
# size by `exp(dw)`, and go back to corners.

# %%
def decode_v1(deltas, anchors, weights=(1.0, 1.0, 1.0, 1.0)):
    wx, wy, ww, wh = weights
    ax, ay, aw, ah = centre_size(anchors)
    cx = deltas[..., 0] / wx * aw + ax
    cy = deltas[..., 1] / wy * ah + ay
    w = jnp.exp(deltas[..., 2] / ww) * aw
    h = jnp.exp(deltas[..., 3] / wh) * ah
    return jnp.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=-1)  # (..., 4)


print("decode(encode(gt, anchor), anchor) =", decode_v1(deltas, anchor), " gt =", gt)
np.testing.assert_allclose(decode_v1(deltas, anchor), gt, rtol=1e-6)

# %% [markdown]
# ### The `log(1000/16)` clamp
#
# An untrained (or diverging) regressor can output any `dw`. `exp` turns a large one into an
# absurd box: `dw = 10` makes a 40-pixel anchor 881 000 pixels wide, and `dw = 100` overflows
# float32 to `inf`, which then turns into `nan` in the IoU and the losses. Detectron therefore
# clamps `dw` and `dh` (after dividing by the weights) at `log(1000/16) ≈ 4.135`: no decoded box
# is more than `1000/16 = 62.5` times its anchor. Only the upper side is clamped; a very negative
# `dw` just gives a tiny box.

# %%
CLIP = math.log(1000.0 / 16)  # Detectron's bbox_xform_clip: at most 62.5 times the anchor


def decode(deltas, anchors, weights=(1.0, 1.0, 1.0, 1.0), clip=CLIP):
    wx, wy, ww, wh = weights
    ax, ay, aw, ah = centre_size(anchors)
    cx = deltas[..., 0] / wx * aw + ax
    cy = deltas[..., 1] / wy * ah + ay
    w = jnp.exp(jnp.minimum(deltas[..., 2] / ww, clip)) * aw  # at most 62.5 * aw
    h = jnp.exp(jnp.minimum(deltas[..., 3] / wh, clip)) * ah
    return jnp.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=-1)  # (..., 4)


wild = jnp.array([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 100.0, 100.0]])
print("clip =", CLIP, " mrcnn_jax.boxes.BBOX_XFORM_CLIP =", BBOX_XFORM_CLIP)
assert CLIP == BBOX_XFORM_CLIP
print("no clamp:  ", decode_v1(wild, anchor))
print("with clamp:", decode(wild, anchor))
assert not np.all(np.isfinite(np.asarray(decode_v1(wild, anchor))))
assert np.all(np.isfinite(np.asarray(decode(wild, anchor))))
np.testing.assert_allclose(decode(wild, anchor)[0, 2] - decode(wild, anchor)[0, 0], 40 * 62.5, rtol=1e-5)

# %%
fig, axes = plotting.subplots(ncols=2, size=3.8)
dws = np.linspace(0, 8, 200)
axes[0].semilogy(dws, 40 * np.exp(dws), color=plotting.colour(2), label="no clamp")
axes[0].semilogy(dws, 40 * np.exp(np.minimum(dws, BBOX_XFORM_CLIP)), color=plotting.colour(0),
                 linewidth=2.5, linestyle="--", label="clamped at log(1000/16)")
axes[0].axhline(W, color="grey", linewidth=0.8)
axes[0].text(0.1, W * 1.3, "image width", fontsize=8, color="grey")
axes[0].set_xlabel("predicted dw")
axes[0].set_ylabel("decoded width of a 40 px anchor (px)")
axes[0].legend(fontsize=8)
big = jnp.array([0.0, 0.0, 5.0, 5.0])
ax = axes[1]
ax.add_patch(plt.Rectangle((0, 0), W, H, facecolor="#dddddd", edgecolor="grey"))
plotting.draw_boxes(ax, jnp.stack([anchor, decode(big, anchor), decode_v1(big, anchor)]),
                    colours=[plotting.colour(1), plotting.colour(0), plotting.colour(2)], linewidth=2)
ax.set_xlim(-3500, 3600)
ax.set_ylim(3600, -3500)
ax.set_aspect("equal")
ax.set_title("dw = dh = 5 on the 40 px anchor", fontsize=10)
ax.text(-3300, -3100, "no clamp: 5937 px", color=plotting.colour(2), fontsize=8)
ax.text(-1150, -1350, "clamped: 2500 px", color=plotting.colour(0), fontsize=8)
ax.text(200, 400, "image + anchor", fontsize=8)
fig.tight_layout()
plt.show()

# %% [markdown]
# ### Round trip, and agreement with `mrcnn_jax`
#
# `decode(encode(b, a), a) == b` must hold for any weights (as long as `|dw|, |dh|` stay under
# the clamp). Check it on random boxes and anchors, then compare with the package.

# %%
anchors_r = random_boxes(rng, NUM_RANDOM)
boxes_r = random_boxes(rng, NUM_RANDOM)
sides = lambda b: np.minimum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1])  # (n,) shorter side
keep = (sides(anchors_r) >= 4) & (sides(boxes_r) >= 4)  # size ratios stay below 120 / 4 < 62.5
anchors_r, boxes_r = anchors_r[keep], boxes_r[keep]  # (n, 4) each
for weights in (RPN_BOX_WEIGHTS, ROI_BOX_WEIGHTS):
    d = encode(boxes_r, anchors_r, weights)  # (n, 4)
    np.testing.assert_allclose(decode(d, anchors_r, weights), boxes_r, atol=2e-3)
    np.testing.assert_allclose(d, mrcnn_jax.encode_boxes(boxes_r, anchors_r, weights), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(decode(d, anchors_r, weights), mrcnn_jax.decode_boxes(d, anchors_r, weights),
                               rtol=1e-5, atol=1e-3)
np.testing.assert_allclose(decode(wild, anchor), mrcnn_jax.decode_boxes(wild, anchor), rtol=1e-6)
print(f"round trip holds on {len(boxes_r)} random pairs for both weight sets; encode/decode agree with mrcnn_jax")

# %% [markdown]
# One more degenerate case: a zero-width target has `dw = log(0 / wa) = -inf` with our `encode`.
# The package's `encode_boxes` floors widths and heights at `1e-6` pixel, so the deltas stay
# finite (large) instead. In the detector, padded ground-truth slots are in any case masked out
# of the losses by their `valid` flag (notebook 06).

# %%
zero_width = jnp.array([30.0, 30.0, 30.0, 70.0])
print("ours:     ", encode(zero_width, anchor))
print("mrcnn_jax:", mrcnn_jax.encode_boxes(zero_width, anchor))
assert np.all(np.isfinite(np.asarray(mrcnn_jax.encode_boxes(zero_width, anchor))))

# %% [markdown]
# ## 9. Regression as moving a box
#
# Training teaches the network to output `encode(gt, anchor)`. A partly trained one outputs
# something in between; decoding a **fraction** `t · deltas` shows the path from the anchor
# (`t = 0`) to the ground truth (`t = 1`). Note the width grows geometrically (`exp(t · log 2)`).

# %%
fig, (ax,) = plotting.subplots(size=4.5)
canvas = np.full((100, 120, 3), 245, np.uint8)
show(ax, canvas, title="anchor → ground truth by decoding t · deltas")
fractions = [0.25, 0.5, 0.75]
partial = decode(jnp.asarray(fractions)[:, None] * deltas[None, :], anchor[None, :])  # (3, 4)
plotting.draw_boxes(ax, partial, colours=[plotting.colour(3)] * 3, linestyle=":", linewidth=1.2)
plotting.draw_boxes(ax, jnp.stack([anchor, gt]), colours=[plotting.colour(1), plotting.colour(0)], linewidth=2)
plotting.draw_boxes(ax, partial[1:2], colours=[plotting.colour(4)], linestyle="--", linewidth=2)
plotting.draw_points(ax, np.stack([np.asarray(centre_size(b)[:2]) for b in [anchor, *partial, gt]]),
                     colour_index=2, size=12)
ax.text(20, 19, "anchor", color=plotting.colour(1), fontsize=9, va="bottom")
ax.text(10, 68, "ground truth", color=plotting.colour(0), fontsize=9, va="top")
ax.text(91, 45, "t = 0.5", color=plotting.colour(4), fontsize=9)
ax.set_xlim(0, 120)
ax.set_ylim(85, 5)
plt.show()
print("t = 0.5 box:", partial[1])
np.testing.assert_allclose(decode(1.0 * deltas, anchor), gt, rtol=1e-6)

# %% [markdown]
# ## 10. Optional: the same numbers as torchvision
#
# torchvision is *not* a dependency of `mrcnn_jax`; if it is installed, compare with its
# `box_iou` and `BoxCoder` (its boxes are also xyxy in absolute pixels).

# %%
try:
    import torch
    import torchvision
    from torchvision.models.detection._utils import BoxCoder
except ImportError:
    print("torchvision is not installed: skipping the comparison")
else:
    t1, t2 = torch.from_numpy(rand1), torch.from_numpy(rand2)
    np.testing.assert_allclose(box_iou(rand1, rand2), torchvision.ops.box_iou(t1, t2).numpy(), rtol=1e-5, atol=1e-6)
    for weights in (RPN_BOX_WEIGHTS, ROI_BOX_WEIGHTS):
        coder = BoxCoder(weights)
        tv_deltas = coder.encode_single(torch.from_numpy(boxes_r), torch.from_numpy(anchors_r)).numpy()
        np.testing.assert_allclose(encode(boxes_r, anchors_r, weights), tv_deltas, rtol=1e-4, atol=1e-4)
        tv_boxes = coder.decode_single(torch.from_numpy(tv_deltas), torch.from_numpy(anchors_r)).numpy()
        np.testing.assert_allclose(decode(tv_deltas, anchors_r, weights), tv_boxes, rtol=1e-5, atol=1e-3)
    print(f"torchvision {torchvision.__version__}: box_iou, BoxCoder.encode and decode agree")
    print("torchvision on the inverted box: area", torchvision.ops.box_area(torch.tensor([[60.0, 20, 20, 60]])).item(),
          "(mrcnn_jax: 0)")

# %% [markdown]
# ## Summary
#
# - Boxes are `(x1, y1, x2, y2)` float32 in absolute pixels of the NHWC input image; `y` grows
#   downwards.
# - IoU = intersection / union; the intersection's corners are the max of the top-lefts and the
#   min of the bottom-rights, clipped at zero. Our hand example: 400 / 2800 = 1/7.
# - Pairwise IoU of `(N, 4)` and `(M, 4)` is one broadcast: `[:, None]` against `[None, :]`.
# - `mrcnn_jax` rule for degenerate boxes: inverted sides count as zero, IoU is 0 where the
#   union is empty, never `nan`.
# - The box coder writes a box relative to a reference box: centre offsets divided by the
#   reference size, log size ratios; weights (1, 1, 1, 1) for the RPN, (10, 10, 5, 5) for the
#   box head; `dw`, `dh` clamped at `log(1000/16)` before `exp`.
# - `decode(encode(b, a), a) == b`, and our versions agree with `mrcnn_jax.box_iou`,
#   `encode_boxes` and `decode_boxes`.
#
# Next: **02 · Anchors**, the reference boxes the RPN starts from.

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
# **Core exercise A: IoU.** Write `your_box_iou(boxes1 (N, 4), boxes2 (M, 4)) -> (N, M)` for xyxy
# boxes, with 0 (never NaN) where the union is empty.

# %%
import jax.numpy as jnp

from mrcnn_jax.course import check_box_iou, check_decode_boxes, check_encode_boxes


def your_box_iou(boxes1, boxes2):
    # BEGIN SOLUTION
    def area(b):
        return jnp.maximum(b[:, 2] - b[:, 0], 0) * jnp.maximum(b[:, 3] - b[:, 1], 0)

    top_left = jnp.maximum(boxes1[:, None, :2], boxes2[None, :, :2])  # (N, M, 2)
    bottom_right = jnp.minimum(boxes1[:, None, 2:], boxes2[None, :, 2:])  # (N, M, 2)
    wh = jnp.maximum(bottom_right - top_left, 0.0)
    inter = wh[..., 0] * wh[..., 1]
    union = area(boxes1)[:, None] + area(boxes2)[None, :] - inter
    return jnp.where(union > 0, inter / jnp.where(union > 0, union, 1.0), 0.0)
    # END SOLUTION


check_box_iou(your_box_iou)

# %% [markdown]
# **Core exercise B: the box coder.** Write `your_encode_boxes(boxes, anchors, weights)` and
# `your_decode_boxes(deltas, anchors, weights, clip)` with the semantics of
# `mrcnn_jax.encode_boxes` / `decode_boxes` (torchvision's `BoxCoder`): any leading dimensions,
# widths floored at `1e-6` when encoding, `dw`, `dh` clamped at `clip` before `exp` when decoding.

# %%
def your_encode_boxes(boxes, anchors, weights=(1.0, 1.0, 1.0, 1.0)):
    # BEGIN SOLUTION
    def centre_size(b):
        w, h = b[..., 2] - b[..., 0], b[..., 3] - b[..., 1]
        return b[..., 0] + 0.5 * w, b[..., 1] + 0.5 * h, jnp.maximum(w, 1e-6), jnp.maximum(h, 1e-6)

    ax, ay, aw, ah = centre_size(jnp.asarray(anchors))
    gx, gy, gw, gh = centre_size(jnp.asarray(boxes))
    wx, wy, ww, wh = weights
    return jnp.stack([wx * (gx - ax) / aw, wy * (gy - ay) / ah,
                      ww * jnp.log(gw / aw), wh * jnp.log(gh / ah)], axis=-1)
    # END SOLUTION


def your_decode_boxes(deltas, anchors, weights=(1.0, 1.0, 1.0, 1.0), clip=BBOX_XFORM_CLIP):
    # BEGIN SOLUTION
    anchors = jnp.asarray(anchors)
    aw, ah = anchors[..., 2] - anchors[..., 0], anchors[..., 3] - anchors[..., 1]
    ax, ay = anchors[..., 0] + 0.5 * aw, anchors[..., 1] + 0.5 * ah
    wx, wy, ww, wh = weights
    cx = deltas[..., 0] / wx * aw + ax
    cy = deltas[..., 1] / wy * ah + ay
    w = jnp.exp(jnp.minimum(deltas[..., 2] / ww, clip)) * aw
    h = jnp.exp(jnp.minimum(deltas[..., 3] / wh, clip)) * ah
    return jnp.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=-1)
    # END SOLUTION


check_encode_boxes(your_encode_boxes)
check_decode_boxes(your_decode_boxes)


# %% [markdown]
# ### Extension exercises
#
# **Exercise 1: generalised IoU.** GIoU (Rezatofighi et al. 2019) is `IoU - (C - U) / C`, where
# `C` is the area of the smallest box enclosing both boxes and `U` their union. It is negative
# for far-apart boxes, so it still says *how* far. Write `my_giou(boxes1 (N, 4), boxes2 (M, 4))
# -> (N, M)` for proper (non-degenerate) boxes.

# %%
def check_giou(fn):
    a = jnp.array([[20.0, 20.0, 60.0, 60.0]])
    b = jnp.array([[40.0, 40.0, 80.0, 80.0], [20.0, 20.0, 60.0, 60.0], [100.0, 20.0, 140.0, 60.0]])
    got = np.asarray(fn(a, b))
    assert got.shape == (1, 3), f"expected shape (1, 3) for 1 x 3 boxes, got {got.shape}"
    expected = [1 / 7 - 800 / 3600, 1.0, 0.0 - (4800 - 3200) / 4800]  # hand-computed
    np.testing.assert_allclose(got[0], expected, rtol=1e-5, err_msg="GIoU of the hand-checked boxes")
    g = np.asarray(fn(rand1[:20], rand2[:10]))
    iou = np.asarray(mrcnn_jax.box_iou(rand1[:20], rand2[:10]))
    assert g.shape == (20, 10), f"expected shape (20, 10), got {g.shape}"
    assert np.all(g <= iou + 1e-6) and np.all(g >= -1 - 1e-6), "GIoU must lie in [-1, IoU]"


def my_giou(boxes1, boxes2):
    raise NotImplementedError


try:
    check_giou(my_giou)
    print("correct!")
except NotImplementedError:
    print("not attempted yet")

# %% [markdown]
# **Exercise 2: COCO boxes.** COCO annotations store boxes as `[x, y, width, height]` (top-left
# corner and size). Write `my_xywh_to_xyxy(boxes (..., 4)) -> (..., 4)` and use it to compute the
# IoU of the COCO boxes `[20, 20, 40, 40]` and `[40, 40, 40, 40]` (it should be our 1/7).

# %%
def check_xywh_to_xyxy(fn):
    got = np.asarray(fn(jnp.array([[20.0, 20.0, 40.0, 40.0], [40.0, 40.0, 40.0, 40.0]])))
    np.testing.assert_allclose(got, [[20, 20, 60, 60], [40, 40, 80, 80]], err_msg="xywh -> xyxy")
    got = np.asarray(fn(jnp.zeros((2, 3, 4))))
    assert got.shape == (2, 3, 4), f"must keep leading dimensions: expected (2, 3, 4), got {got.shape}"
    iou = float(mrcnn_jax.box_iou(fn(jnp.array([[20.0, 20, 40, 40]])), fn(jnp.array([[40.0, 40, 40, 40]])))[0, 0])
    assert math.isclose(iou, 1 / 7, rel_tol=1e-5), f"IoU of the two COCO boxes should be 1/7, got {iou}"


def my_xywh_to_xyxy(boxes):
    raise NotImplementedError


try:
    check_xywh_to_xyxy(my_xywh_to_xyxy)
    print("correct!")
except NotImplementedError:
    print("not attempted yet")

# %% [markdown]
# **Exercise 3: deltas by hand, box-head weights.** For the anchor `[20, 20, 60, 60]` and the
# ground truth `[10, 25, 90, 65]` of section 7, write down the deltas the **box head** is trained
# to predict (weights `(10, 10, 5, 5)`) *without calling* `encode`: set `my_roi_deltas` to a list
# of four numbers (you may use `math.log`).

# %%
def check_roi_deltas(values):
    got = np.asarray(values, np.float64)
    assert got.shape == (4,), f"expected four numbers (dx, dy, dw, dh), got shape {got.shape}"
    np.testing.assert_allclose(got, [2.5, 1.25, 5 * math.log(2), 0.0], rtol=1e-4,
                               err_msg="deltas with weights (10, 10, 5, 5)")


my_roi_deltas = None  # e.g. [dx, dy, dw, dh]

try:
    if my_roi_deltas is None:
        raise NotImplementedError
    check_roi_deltas(my_roi_deltas)
    print("correct!")
except NotImplementedError:
    print("not attempted yet")

# %% [markdown]
# **Exercise 4: clip boxes to the image.** After decoding, boxes are clipped to the image so no
# coordinate leaves `[0, W]` (x) or `[0, H]` (y). Write `my_clip_boxes(boxes (..., 4), image_size
# = (H, W))`. Careful: `H` comes first in `image_size`, but `x` first in a box.

# %%
def check_clip_boxes(fn):
    boxes = jnp.array([[-10.0, -5.0, 50.0, 40.0], [100.0, 90.0, 150.0, 130.0], [10.0, 10.0, 20.0, 20.0]])
    got = np.asarray(fn(boxes, (100, 120)))
    np.testing.assert_allclose(got, [[0, 0, 50, 40], [100, 90, 120, 100], [10, 10, 20, 20]],
                               err_msg="clipping to a 100 x 120 (H x W) image")
    np.testing.assert_allclose(np.asarray(fn(rand1, (50, 60))), mrcnn_jax.clip_boxes(rand1, (50, 60)))


def my_clip_boxes(boxes, image_size):
    raise NotImplementedError


try:
    check_clip_boxes(my_clip_boxes)
    print("correct!")
except NotImplementedError:
    print("not attempted yet")
