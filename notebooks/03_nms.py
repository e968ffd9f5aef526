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
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/mrcnn-jax/mrcnn_jax/blob/v0.2.0/notebooks/03_nms.ipynb)
#
# # 03 · Non-maximum suppression
#
# *A detector fires many overlapping boxes on every object; NMS keeps the best one of each
# cluster, and under `jit` it must do so with an output whose length does not depend on the data.*
#
# **You will learn**
# - why detectors produce clusters of overlapping, near-duplicate boxes;
# - greedy NMS, step by step on six boxes you can check by hand, and why the visiting order
#   matters (a suppressed box suppresses nothing);
# - why XLA (and so TPUs and `jax.jit`) needs static shapes: a jitted function cannot return a
#   list whose length depends on the data, and every new input length recompiles;
# - the fixed-shape design of `mrcnn_jax.nms`: `max_output_size` slots, a `valid` mask, index 0
#   in padded slots, a `jax.lax.while_loop` over kept boxes;
# - the `valid` *input* for padded candidates, and per-class (batched) NMS;
# - how fast the jitted version is compared with a Python loop (and torchvision, if installed).
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
import os
import time

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import mrcnn_jax
from mrcnn_jax import plotting

FAST = os.environ.get("MRCNN_JAX_FAST", "0") == "1"
# TPUs (and recent GPUs) run float32 matmuls and convolutions in bfloat16 or TF32 passes by default;
# this notebook's asserts compare with CPU references, so ask for full float32 (no change on a CPU).
jax.config.update("jax_default_matmul_precision", "highest")
NUM_RANDOM = 300 if FAST else 2000  # random boxes for the agreement checks
TIMING_SIZES = (250, 1000) if FAST else (250, 1000, 4000)  # N for the timing table
TIMING_REPEATS = 3 if FAST else 10
print(f"FAST={FAST}, NUM_RANDOM={NUM_RANDOM}, TIMING_SIZES={TIMING_SIZES}")

# %% [markdown]
# ## 1. Why there are so many boxes
#
# The RPN scores every anchor (hundreds of thousands of them on a real image) and the box head
# refines a thousand proposals. An object is covered by *many* anchors and proposals, and each
# of them, after regression, lands near the object with a high score. The raw output is a cloud
# of near-duplicates. Below we fake such an output: two objects on a 120 x 160 image, a dozen
# noisy boxes around each (scored higher the better they fit), and a few stray low-score boxes.

# %%
H, W = 120, 160
image = np.full((H, W, 3), 235, np.uint8)
image[25:85, 20:75] = (160, 190, 220)  # object 0: a rectangle
yy, xx = np.mgrid[:H, :W]
image[(yy - 70) ** 2 + (xx - 118) ** 2 < 28**2] = (240, 200, 150)  # object 1: a disc
gt_boxes = np.array([[20, 25, 75, 85], [90, 42, 146, 98]], np.float32)  # (2, 4)


def noisy_boxes(rng, gt, n, spread=0.08):
    """``n`` boxes jittered around ``gt (4,)``: centre ~ N(0, spread * size), log-size ~ N(0, 0.12)."""
    w, h = gt[2] - gt[0], gt[3] - gt[1]
    cx, cy = gt[0] + w / 2 + rng.normal(0, spread * w, n), gt[1] + h / 2 + rng.normal(0, spread * h, n)
    bw, bh = w * np.exp(rng.normal(0, 0.12, n)), h * np.exp(rng.normal(0, 0.12, n))
    return np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], axis=1).astype(np.float32)


rng = np.random.default_rng(3)
strays = np.float32([[95, 4, 135, 30], [4, 92, 44, 116], [70, 88, 110, 116]])  # empty background
cluster = np.concatenate([noisy_boxes(rng, gt_boxes[0], 12), noisy_boxes(rng, gt_boxes[1], 12)]
                         + [noisy_boxes(rng, b, 1, spread=0.2) for b in strays])  # (27, 4)
cluster = np.asarray(mrcnn_jax.clip_boxes(cluster, (H, W)))  # detectors clip boxes to the image
source = np.repeat([0, 1, 2], [12, 12, 3])  # which object each box came from (2 = stray)
fit = np.asarray(mrcnn_jax.box_iou(cluster, gt_boxes)).max(axis=1)  # (27,) IoU with its object
cluster_scores = np.clip(0.25 + 0.7 * fit ** 2 + rng.normal(0, 0.03, len(fit)), 0.02, 0.99)
cluster_scores[source == 2] *= 0.4  # stray boxes score low
cluster_scores = cluster_scores.astype(np.float32)
print(f"{len(cluster)} candidate boxes for 2 objects; scores from {cluster_scores.min():.2f} "
      f"to {cluster_scores.max():.2f}")

# %%
fig, axes = plotting.subplots(ncols=2, size=4.0)
plotting.show_image(axes[0], image, title=f"{len(cluster)} raw detections")
plotting.draw_boxes(axes[0], cluster, colours=[plotting.colour(s) for s in source], linewidth=1.0)
plotting.show_image(axes[1], image, title="the 5 best-scoring, with scores")
top5 = np.argsort(-cluster_scores)[:5]
plotting.draw_boxes(axes[1], cluster[top5], scores=cluster_scores[top5],
                    colours=[plotting.colour(s) for s in source[top5]])
fig.tight_layout()
plt.show()

# %% [markdown]
# The five best boxes all sit on the same two objects. We want **one box per object**: the
# best-scoring box of each cluster. Non-maximum suppression (NMS) does exactly that.

# %% [markdown]
# ## 2. Greedy NMS by hand
#
# The rule (Faster R-CNN section 3.3, Mask R-CNN section 3.1 "Inference"):
#
# 1. visit the boxes in **descending score**;
# 2. a visited box is **kept** unless an already kept box overlaps it with IoU **strictly above**
#    the threshold (0.5 for the box head, 0.7 for the RPN); otherwise it is **suppressed**.
#
# Six boxes, numbered 0 to 5, with scores *not* in index order:

# %%
boxes6 = np.array([[10, 10, 50, 50],     # 0
                   [20, 10, 60, 50],     # 1: box 0 shifted 10 px right
                   [60, 20, 100, 60],    # 2
                   [32, 10, 72, 50],     # 3: box 1 shifted 12 px right
                   [64, 24, 104, 64],    # 4: box 2 shifted 4 px right and down
                   [20, 60, 60, 90]],    # 5: alone
                  np.float32)  # (6, 4)
scores6 = np.array([0.90, 0.80, 0.65, 0.70, 0.85, 0.50], np.float32)  # (6,)
iou6 = np.asarray(mrcnn_jax.box_iou(boxes6, boxes6))  # (6, 6), box_iou from notebook 01
print("descending score order:", np.argsort(-scores6))
print("IoU matrix:\n", np.round(iou6, 3))

# %% [markdown]
# By hand, with threshold 0.5. The order is 0 (0.90), 4 (0.85), 1 (0.80), 3 (0.70), 2 (0.65),
# 5 (0.50):
#
# | step | visit | overlaps with kept boxes | decision |
# |---|---|---|---|
# | 1 | 0 | none kept yet | **keep** |
# | 2 | 4 | IoU(4, 0) = 0 | **keep** |
# | 3 | 1 | IoU(1, 0) = 0.60 > 0.5 | suppressed by 0 |
# | 4 | 3 | IoU(3, 0) = 0.29, IoU(3, 4) = 0.07 | **keep** |
# | 5 | 2 | IoU(2, 4) = 0.68 > 0.5 | suppressed by 4 |
# | 6 | 5 | IoU 0 with everything | **keep** |
#
# Kept: **[0, 4, 3, 5]**, in descending score order. Note box 3: it overlaps box 1 with IoU
# 0.54 > 0.5, but box 1 was already suppressed, and a suppressed box suppresses nothing. So NMS
# is *not* "drop every box that a better box overlaps": the order of the decisions matters.
#
# The same in Python. Instead of comparing each visited box with every kept box, it is
# equivalent (and vectorises better) to let each newly kept box suppress every box it overlaps
# in one go.

# %%
def iou_one_to_many(box, boxes):
    """IoU of ``box (4,)`` with ``boxes (N, 4)`` in numpy; 0 where the union is empty."""
    x1, y1 = np.maximum(box[0], boxes[:, 0]), np.maximum(box[1], boxes[:, 1])  # (N,)
    x2, y2 = np.minimum(box[2], boxes[:, 2]), np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)  # (N,)
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])  # (N,)
    union = (box[2] - box[0]) * (box[3] - box[1]) + areas - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def greedy_nms(boxes, scores, iou_threshold, max_output_size=None, log=None):
    """Plain-Python greedy NMS: a list of kept indices in descending score order."""
    boxes, scores = np.asarray(boxes, np.float32), np.asarray(scores, np.float32)
    suppressed = np.zeros(len(boxes), bool)
    keep = []
    for i in np.argsort(-scores, kind="stable"):  # descending score, ties by index
        if suppressed[i]:
            continue
        keep.append(int(i))
        if len(keep) == max_output_size:
            break
        iou = iou_one_to_many(boxes[i], boxes)  # (N,)
        newly = (iou > iou_threshold) & ~suppressed
        newly[i] = False
        suppressed |= newly
        if log is not None:
            log.append((int(i), [(int(j), round(float(iou[j]), 3)) for j in np.flatnonzero(newly)]))
    return keep


log = []
kept6 = greedy_nms(boxes6, scores6, 0.5, log=log)
for i, victims in log:
    print(f"keep box {i} (score {scores6[i]:.2f}); it suppresses {victims or 'nothing'}")
print("kept:", kept6)
assert kept6 == [0, 4, 3, 5]  # the hand-derived answer

# %%
def before_after(boxes, scores, kept, background=None, size=3.6, titles=("before NMS", "after NMS")):
    """Two panels: all boxes, and the kept ones with their scores (palette colour = box index)."""
    fig, axes = plotting.subplots(ncols=2, size=size)
    bg = np.full((100, 115, 3), 245, np.uint8) if background is None else background
    for ax, idx, title in [(axes[0], np.arange(len(boxes)), titles[0]), (axes[1], np.asarray(kept), titles[1])]:
        plotting.show_image(ax, bg, title=title)
        plotting.draw_boxes(ax, boxes[idx], scores=scores[idx], colours=[plotting.colour(i) for i in idx])
        for i in idx:
            ax.text(boxes[i, 2] - 2, boxes[i, 3] - 2, str(i), ha="right", va="bottom", fontsize=9,
                    color=plotting.colour(i), fontweight="bold")
    fig.tight_layout()
    return fig


before_after(boxes6, scores6, kept6)
plt.show()

# %% [markdown]
# Now the cloud of section 1. The best box of each object is kept and suppresses the boxes that
# overlap it by more than 0.5. NMS does not promise *one* box per object, though: a jittered box
# that overlaps every better kept box by 0.5 or less survives as a second detection of the same
# object (the run below counts them), and the stray boxes survive because nothing overlaps them.
# This is why the box head also drops boxes scoring below a threshold and keeps at most a fixed
# number of detections (torchvision's defaults: 0.05 and 100).

# %%
kept_cluster = greedy_nms(cluster, cluster_scores, 0.5)
print("kept:", kept_cluster, " sources:", source[kept_cluster])
for obj, name in enumerate(["object 0", "object 1", "stray"]):
    mine = [i for i in kept_cluster if source[i] == obj]
    print(f"{name}: {len(mine)} kept box(es) {mine}, scores {[round(float(x), 2) for x in cluster_scores[mine]]}")
twice = [i for i in kept_cluster if source[i] == 0]
if len(twice) > 1:
    pair_iou = float(mrcnn_jax.box_iou(cluster[twice[:1]], cluster[twice[1:2]])[0, 0])
    print(f"the two kept boxes of object 0 overlap by IoU {pair_iou:.2f} <= 0.5: neither suppresses the other")
assert {0, 1} <= set(source[kept_cluster][:2])  # the two best kept boxes are the two objects

fig, axes = plotting.subplots(ncols=2, size=4.0)
plotting.show_image(axes[0], image, title=f"before NMS: {len(cluster)} boxes")
plotting.draw_boxes(axes[0], cluster, colours=[plotting.colour(s) for s in source], linewidth=1.0)
plotting.show_image(axes[1], image, title=f"after NMS (IoU > 0.5): {len(kept_cluster)} boxes")
plotting.draw_boxes(axes[1], cluster[kept_cluster], scores=cluster_scores[kept_cluster],
                    colours=[plotting.colour(s) for s in source[kept_cluster]])
fig.tight_layout()
plt.show()

# %% [markdown]
# ## 3. Why a jitted NMS cannot return a list
#
# `jax.jit` traces a function once with abstract arrays that have a **shape and dtype but no
# values**, and XLA compiles that trace for those shapes. Every output shape must therefore be
# known *before* the data is seen. "The kept boxes" has a length that depends on the values, so
# it cannot be the output of a compiled function. Two ways to see it: boolean indexing is
# refused, and our Python loop cannot even read the values.

# %%
@jax.jit
def confident_boxes(boxes, scores):
    return boxes[scores > 0.5]  # how many rows? depends on the scores


for name, fn in [("boolean indexing", lambda: confident_boxes(boxes6, scores6)),
                 ("greedy_nms under jit", lambda: jax.jit(greedy_nms, static_argnames="iou_threshold")(boxes6, scores6, 0.5))]:
    try:
        fn()
    except Exception as error:  # the exact error class differs: both are tracer errors
        print(f"{name}: {type(error).__name__}: {str(error).splitlines()[0][:110]}")

# %% [markdown]
# (`static_argnames="iou_threshold"` tells `jit` to treat that argument as a plain Python value
# instead of tracing it; more on static arguments in section 4. Even so, the loop fails: the
# boxes and scores are traced.)
#
# Shapes that change from call to call are not refused but **recompiled**: `jit` caches one
# compiled program per input shape. The Python body of a jitted function only runs while
# tracing, so a side effect in it counts compilations.

# %%
traces = []


@jax.jit
def sorted_scores(scores):
    traces.append(scores.shape)  # runs only while tracing
    return jnp.sort(scores)[::-1]


for n in [4, 4, 5, 6, 6, 4]:
    sorted_scores(jnp.ones(n))
print("calls: 6, traces (compilations):", traces)
assert traces == [(4,), (5,), (6,)]

# %% [markdown]
# Each compilation of a detector's forward pass takes seconds (minutes on a TPU pod). If NMS
# returned a data-dependent number of boxes, every later stage (mask head, loss) would recompile
# on nearly every image. So `mrcnn_jax` fixes the output length:
#
# - `nms(boxes, scores, iou_threshold, max_output_size)` always returns `max_output_size`
#   indices (`N_out = max_output_size`, a **static** Python int) and a boolean `valid (N_out,)`;
# - the valid indices come first, in descending score order, and equal
#   `torchvision.ops.nms(...)[:N_out]`;
# - padded slots hold index **0**: a harmless index you can gather with
#   (`boxes[indices]` works), meaningless unless `valid` says so.

# %% [markdown]
# ## 4. NMS with a fixed output size, step by step
#
# The Python loop visits every box. On an accelerator we loop over *kept* boxes instead, with
# all the bookkeeping in fixed-shape arrays:
#
# - sort once: `order = argsort(-scores)`; from now on work in sorted order;
# - `alive (N,)`: boxes neither kept nor suppressed yet. The highest-scoring alive box is the
#   **first** alive one, `argmax(alive)` (argmax returns the first maximum);
# - keep it, write its original index into slot `count` of `keep (N_out,)`, and mark dead every box
#   whose IoU with it exceeds the threshold, in one vector operation.
#
# First the state, then one step at a time on the six boxes.

# %%
order = jnp.argsort(-jnp.asarray(scores6), stable=True)  # (N,) descending, ties by index
sorted_boxes = jnp.asarray(boxes6)[order]  # (N, 4)
N_out = 6
state = (jnp.int32(0), jnp.ones(6, bool), jnp.zeros(N_out, jnp.int32))  # count, alive (N,), keep (N_out,)
print("order:", order)


def nms_step(state, iou_threshold=0.5):
    count, alive, keep = state
    best = jnp.argmax(alive)  # first alive box in sorted order = highest score left
    iou = mrcnn_jax.box_iou(sorted_boxes[best][None], sorted_boxes)[0]  # (N,)
    alive = alive & (iou <= iou_threshold)  # suppress the overlapping ones (and best itself: IoU 1)
    keep = keep.at[count].set(order[best])  # write the original index into slot `count`
    return count + 1, alive, keep


while bool(jnp.any(state[1])):  # a Python loop, for display only
    state = nms_step(state)
    count, alive, keep = state
    print(f"count={int(count)}  alive (sorted order)={alive.astype(int)}  keep={keep}")
assert keep[: int(count)].tolist() == kept6

# %% [markdown]
# Four rounds of this loop, then nothing is alive. The last two slots of `keep` were never
# written: they are the padding, index 0.
#
# Under `jit` the Python `while` (which reads a value with `bool(...)`) becomes
# `jax.lax.while_loop(cond, body, state)`: `cond` and `body` are traced once, and the state keeps
# its shapes from one iteration to the next. The loop also stops when `N_out` boxes are kept.
# (A `jax.lax.fori_loop` over `N_out` iterations would work too, but always runs `N_out` times, while
# most calls keep far fewer boxes than `N_out` allows.)
#
# **Static arguments.** `N_out = max_output_size` sets the length of `keep (N_out,)`, an output shape, so
# `jit` must know it while tracing. `jax.jit(nms_fixed, static_argnames="max_output_size")` says
# so: that argument is passed as an ordinary Python int (not traced), and `jit` compiles one
# program per distinct value it sees (a static argument must be hashable). Everything that is
# traced may change freely without recompiling; everything that shapes an array must be static.
# In this notebook `N` is the number of candidate boxes and `N_out` this output cap (later
# notebooks use `K` for the number of classes, as the Mask R-CNN paper does).

# %%
def nms_fixed(boxes, scores, iou_threshold, max_output_size, valid=None):
    n = scores.shape[0]
    order = jnp.argsort(-scores, stable=True)  # (N,)
    sorted_boxes = boxes[order]  # (N, 4)
    alive = jnp.ones(n, bool) if valid is None else jnp.asarray(valid, bool)[order]  # (N,)
    keep = jnp.zeros(max_output_size, jnp.int32)  # (N_out,)

    def cond(state):
        count, alive, _ = state
        return (count < max_output_size) & jnp.any(alive)

    def body(state):
        count, alive, keep = state
        best = jnp.argmax(alive)
        iou = mrcnn_jax.box_iou(sorted_boxes[best][None], sorted_boxes)[0]  # (N,)
        alive = alive & (iou <= iou_threshold)
        alive = alive.at[best].set(False)  # also for a zero-area box, whose IoU with itself is 0
        keep = keep.at[count].set(order[best].astype(jnp.int32))
        return count + 1, alive, keep

    count, _, keep = jax.lax.while_loop(cond, body, (jnp.int32(0), alive, keep))
    valid_out = jnp.arange(max_output_size) < count  # (N_out,)
    return jnp.where(valid_out, keep, 0), valid_out


# max_output_size fixes an output shape, so it must be known at trace time: a static argument
nms_fixed_jit = jax.jit(nms_fixed, static_argnames="max_output_size")
indices, valid = nms_fixed_jit(jnp.asarray(boxes6), jnp.asarray(scores6), 0.5, max_output_size=6)
print("indices:", indices, " valid:", valid)
assert indices.tolist() == [0, 4, 3, 5, 0, 0] and valid.tolist() == [True] * 4 + [False] * 2

# %% [markdown]
# With `max_output_size=2` the loop stops after two kept boxes: the result is the first two of
# the greedy list. Now the package's `mrcnn_jax.nms`, on the six boxes and on random clusters of
# boxes for several thresholds and output sizes.

# %%
indices2, valid2 = nms_fixed_jit(jnp.asarray(boxes6), jnp.asarray(scores6), 0.5, max_output_size=2)
assert indices2.tolist() == [0, 4] and bool(valid2.all())

pkg_indices, pkg_valid = mrcnn_jax.nms(boxes6, scores6, 0.5, max_output_size=6)
assert pkg_indices.tolist() == indices.tolist() and pkg_valid.tolist() == valid.tolist()


def random_clusters(rng, n, image_size=(480, 640), num_objects=None):
    """``n`` boxes jittered around random objects, scores in (0, 1): a realistic NMS input."""
    num_objects = num_objects or max(1, n // 20)
    hw = rng.uniform(20, 200, (num_objects, 2))  # (objects, 2)
    centre = rng.uniform(0, 1, (num_objects, 2)) * np.array(image_size[::-1])
    gt = np.concatenate([centre - hw / 2, centre + hw / 2], axis=1)  # (objects, 4)
    owner = rng.integers(0, num_objects, n)
    boxes = np.concatenate([noisy_boxes(rng, gt[o], 1, spread=0.15) for o in owner])  # (n, 4)
    return boxes.astype(np.float32), rng.uniform(0, 1, n).astype(np.float32)


rand_boxes, rand_scores = random_clusters(np.random.default_rng(0), NUM_RANDOM)
for threshold in (0.3, 0.5, 0.7):
    for k in (10, 100, NUM_RANDOM):
        expected = greedy_nms(rand_boxes, rand_scores, threshold, max_output_size=k)
        for fn in (nms_fixed_jit, mrcnn_jax.nms):
            idx, ok = fn(jnp.asarray(rand_boxes), jnp.asarray(rand_scores), threshold, max_output_size=k)
            assert np.asarray(idx)[np.asarray(ok)].tolist() == expected, (threshold, k)
            assert np.all(np.asarray(idx)[~np.asarray(ok)] == 0)  # padding is index 0
    print(f"IoU threshold {threshold}: {len(greedy_nms(rand_boxes, rand_scores, threshold))} of "
          f"{NUM_RANDOM} kept; greedy_nms, nms_fixed and mrcnn_jax.nms agree for N_out = 10, 100, {NUM_RANDOM}")

# %% [markdown]
# ## 5. Padded candidates: the `valid` input
#
# Static shapes bite at the input too. The RPN keeps a *fixed* number of top-scoring anchors
# per level, a batch pads each image's proposals to the same count, and detections are padded
# to a maximum. Padding rows are typically the box `[0, 0, 0, 0]` with score 0. What does NMS
# make of them? A zero-area box has IoU 0 with everything, so **nothing ever suppresses it**:
# if there is room in the output, padding comes out as a "detection".

# %%
padded_boxes = np.concatenate([boxes6, np.zeros((2, 4), np.float32)])  # (8, 4): two padding rows
padded_scores = np.concatenate([scores6, np.zeros(2, np.float32)])  # (8,)
padded_valid = np.arange(8) < 6  # (8,) the real candidates

idx, ok = nms_fixed_jit(jnp.asarray(padded_boxes), jnp.asarray(padded_scores), 0.5, max_output_size=8)
print("without valid:", np.asarray(idx)[np.asarray(ok)], " <- boxes 6 and 7 are padding")
idx, ok = nms_fixed_jit(jnp.asarray(padded_boxes), jnp.asarray(padded_scores), 0.5, max_output_size=8,
                        valid=jnp.asarray(padded_valid))
print("with valid:   ", np.asarray(idx)[np.asarray(ok)])
assert np.asarray(idx)[np.asarray(ok)].tolist() == [0, 4, 3, 5]
pkg_idx, pkg_ok = mrcnn_jax.nms(padded_boxes, padded_scores, 0.5, 8, valid=padded_valid)
assert pkg_idx.tolist() == idx.tolist() and pkg_ok.tolist() == ok.tolist()

# %% [markdown]
# Setting the padding score to `-inf` would not be enough: the padding would come last, but it
# still fills the free slots. `valid=False` candidates start dead (`alive = valid[order]`) and
# are never kept. (This is also why `body` marks `best` dead explicitly: a zero-area box's IoU
# with itself is 0, so the IoU test alone would never retire it.)

# %% [markdown]
# ## 6. Per-class (batched) NMS
#
# The box head scores every proposal for every class, and a person on a horse gives a
# person box and a horse box that overlap a lot. They must not suppress each other: NMS runs
# **per class**. torchvision's `batched_nms` does it with a trick: shift each class's boxes by
# `class * (max coordinate + 1)`, then run one ordinary NMS. That keeps classes apart only when
# every coordinate is at least 0 (true for boxes clipped to the image): class `c + 1` starts at
# `min + (c + 1)(max + 1)`, which overlaps class `c` as soon as `min < -1`. Our random test boxes
# below are not clipped and do go negative, so we shift by the whole **span** of the
# coordinates instead: with `span = max - min + 1`, class `c` lies in `[min + c span,
# max + c span]` and class `c + 1` begins beyond it, whatever the signs. Shapes stay static, so
# the trick works under `jit` as is.

# %%
class_names = ["person", "horse"]
rider_boxes = np.array([[40, 10, 80, 80],     # person
                        [43, 13, 84, 82],     # person, duplicate
                        [35, 25, 90, 85],     # horse
                        [38, 28, 94, 88],     # horse, duplicate
                        [38, 4, 80, 70]],     # "horse": a confused box on the person
                       np.float32)
rider_scores = np.array([0.95, 0.70, 0.90, 0.60, 0.30], np.float32)
rider_classes = np.array([0, 0, 1, 1, 1], np.int32)


def batched_nms_offsets(boxes, scores, classes, iou_threshold, max_output_size, valid=None):
    span = jnp.max(boxes) - jnp.min(boxes) + 1.0  # wider than any box: also for negative coordinates
    offsets = classes.astype(jnp.float32) * span  # (N,) one disjoint region per class
    return nms_fixed(boxes + offsets[:, None], scores, iou_threshold, max_output_size, valid)


agnostic, agnostic_ok = nms_fixed(jnp.asarray(rider_boxes), jnp.asarray(rider_scores), 0.5, 5)
per_class, per_class_ok = batched_nms_offsets(jnp.asarray(rider_boxes), jnp.asarray(rider_scores),
                                              jnp.asarray(rider_classes), 0.5, 5)
agnostic, per_class = np.asarray(agnostic)[np.asarray(agnostic_ok)], np.asarray(per_class)[np.asarray(per_class_ok)]
print("IoU(person 0, horse 2) =", round(float(mrcnn_jax.box_iou(rider_boxes[:1], rider_boxes[2:3])[0, 0]), 3))
print("class-agnostic NMS keeps:", agnostic, "  per-class NMS keeps:", per_class)
assert agnostic.tolist() == [0] and per_class.tolist() == [0, 2, 4]

# %%
fig, axes = plotting.subplots(ncols=3, size=3.0)
canvas = np.full((100, 115, 3), 245, np.uint8)
for ax, idx, title in [(axes[0], np.arange(5), "candidates"), (axes[1], agnostic, "class-agnostic NMS"),
                       (axes[2], per_class, "per-class NMS")]:
    plotting.show_image(ax, canvas, title=title)
    plotting.draw_boxes(ax, rider_boxes[idx], labels=rider_classes[idx], scores=rider_scores[idx],
                        class_names=class_names)
fig.tight_layout()
plt.show()

# %% [markdown]
# The confused horse box 4 survives per-class NMS: it overlaps the person a lot but no
# better-scoring *horse* box (its IoU with horse box 2 is 0.45). Such low-score boxes are
# what the score threshold and the 100-detection cap take care of.
#
# `mrcnn_jax.batched_nms` does not shift boxes; it adds `same class as the kept box` to the
# suppression test inside the loop, which avoids a large offset eating float32 precision when
# coordinates are big. Both agree:

# %%
rng = np.random.default_rng(1)
rand_classes = rng.integers(0, 5, NUM_RANDOM).astype(np.int32)
rand_valid = rng.uniform(size=NUM_RANDOM) < 0.9  # 10 % padded candidates
print(f"random boxes: coordinates from {rand_boxes.min():.1f} to {rand_boxes.max():.1f}")
assert rand_boxes.min() < -1  # the case where torchvision's (max + 1) offset would not separate classes
for threshold in (0.3, 0.5):
    mine = batched_nms_offsets(jnp.asarray(rand_boxes), jnp.asarray(rand_scores), jnp.asarray(rand_classes),
                               threshold, 100, valid=jnp.asarray(rand_valid))
    pkg = mrcnn_jax.batched_nms(rand_boxes, rand_scores, rand_classes, threshold, 100, valid=rand_valid)
    np.testing.assert_array_equal(mine[0], pkg[0])
    np.testing.assert_array_equal(mine[1], pkg[1])
    kept = np.asarray(pkg[0])[np.asarray(pkg[1])]
    assert rand_valid[kept].all()  # padded candidates never come out
print("batched_nms_offsets and mrcnn_jax.batched_nms agree (with 10 % padded candidates)")

# %% [markdown]
# ## 7. How fast is it?
#
# The jitted NMS does `kept x N` IoUs in as many loop iterations as boxes it keeps; the Python
# loop does the same arithmetic in numpy but pays interpreter overhead per box. Times are the
# best of a few repeats after a warm-up call (so compilation is excluded), on whatever device
# this notebook runs on; on a shared CPU they are noisy. `max_output_size` is 100, the box
# head's detection cap.

# %%
def best_time(fn, *args, **kwargs):
    """Best of ``TIMING_REPEATS`` calls of ``fn(*args, **kwargs)`` in milliseconds, after a warm-up."""
    jax.block_until_ready(fn(*args, **kwargs))  # warm-up: compiles a jitted function
    times = []
    for _ in range(TIMING_REPEATS):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args, **kwargs))  # wait for the device, not just the dispatch
        times.append(time.perf_counter() - start)
    return 1e3 * min(times)


nms_jit = jax.jit(mrcnn_jax.nms, static_argnames="max_output_size")
try:
    import torch
    import torchvision
except ImportError:
    torch = torchvision = None
    print("torchvision is not installed: no torchvision.ops.nms column")

rows = []
for n in TIMING_SIZES:
    b, s = random_clusters(np.random.default_rng(n), n)
    jb, js = jnp.asarray(b), jnp.asarray(s)
    row = {"N": n, "kept": len(greedy_nms(b, s, 0.5, 100)),
           "python loop": best_time(greedy_nms, b, s, 0.5, 100),
           "mrcnn_jax.nms (jit)": best_time(nms_jit, jb, js, 0.5, max_output_size=100)}
    if torchvision is not None:
        tb, ts = torch.from_numpy(b), torch.from_numpy(s)
        row["torchvision.ops.nms"] = best_time(torchvision.ops.nms, tb, ts, 0.5)
    rows.append(row)

print(f"device: {jax.devices()[0].platform}; times in ms")
print("  ".join(f"{k:>20}" for k in rows[0]))
for row in rows:
    print("  ".join(f"{v:>20}" if isinstance(v, int) else f"{v:>20.3f}" for v in row.values()))

# %% [markdown]
# Read the table with care: the numbers depend on the machine and its load. Both of our loops
# stop after `N_out = 100` kept boxes and do the same `kept x N` IoUs; the Python loop pays
# interpreter overhead for every box it visits, the compiled loop a fixed cost per iteration of
# XLA's `while_loop` (small on an accelerator, noticeable on a CPU). `torchvision.ops.nms` always
# processes all `N` boxes (we would slice its result afterwards), so with a cap and a large `N`
# it is not necessarily the fastest. The real point of the jitted version is not
# speed on a CPU, though: NMS can live **inside** the one compiled `predict` program on a GPU or
# TPU, with no round trip to Python between the box head and the mask head.

# %% [markdown]
# ## 8. Optional: the same indices as torchvision
#
# torchvision is not a dependency of `mrcnn_jax`; if it is installed, `mrcnn_jax.nms` and
# `batched_nms` must give exactly `torchvision.ops.nms(...)[:N_out]` and
# `torchvision.ops.batched_nms(...)[:N_out]`.

# %%
if torchvision is None:
    print("torchvision is not installed: skipping the comparison")
else:
    tb, ts, tc = torch.from_numpy(rand_boxes), torch.from_numpy(rand_scores), torch.from_numpy(rand_classes)
    for threshold in (0.3, 0.5, 0.7):
        for k in (50, NUM_RANDOM):
            idx, ok = mrcnn_jax.nms(rand_boxes, rand_scores, threshold, k)
            expected = torchvision.ops.nms(tb, ts, threshold)[:k].numpy()
            np.testing.assert_array_equal(np.asarray(idx)[np.asarray(ok)], expected)
            idx, ok = mrcnn_jax.batched_nms(rand_boxes, rand_scores, rand_classes, threshold, k)
            expected = torchvision.ops.batched_nms(tb, ts, tc, threshold)[:k].numpy()
            np.testing.assert_array_equal(np.asarray(idx)[np.asarray(ok)], expected)
    print(f"torchvision {torchvision.__version__}: nms and batched_nms indices agree")

# %% [markdown]
# ## Summary
#
# - Detectors output clusters of near-duplicate boxes; greedy NMS keeps the best box of each
#   cluster: visit boxes by descending score, keep a box unless a **kept** box overlaps it with
#   IoU > threshold. Our six boxes keep `[0, 4, 3, 5]`; box 3 survives because the box that
#   overlaps it was itself suppressed.
# - A jitted function cannot return a data-dependent number of boxes (tracer errors), and new
#   input shapes recompile. So `mrcnn_jax.nms` returns `max_output_size` indices plus `valid`,
#   padded with index 0, valid ones first in descending score, equal to
#   `torchvision.ops.nms(...)[:N_out]`.
# - The fixed-shape algorithm: sort once, keep an `alive` mask, `argmax(alive)` is the next box
#   to keep, one vector IoU suppresses its overlaps, `jax.lax.while_loop` until `N_out` kept or none
#   alive.
# - Padded candidates must be passed as `valid=False`: a `[0, 0, 0, 0]` box is never suppressed.
# - Per-class NMS: offset boxes by class (torchvision) or test the class in the loop
#   (`mrcnn_jax.batched_nms`).
#
# Next: **04 · RoIAlign**, which crops a fixed-size feature for every kept proposal.

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
# **Core exercise A: fixed-shape greedy NMS.** Write `your_nms(boxes (N, 4), scores (N,),
# iou_threshold, max_output_size) -> (indices (K,), valid (K,))` with the semantics of
# `mrcnn_jax.nms`: kept boxes in descending score order (ties: lower index first), a box
# suppressed when a *kept* box overlaps it with IoU > threshold, `K = max_output_size` slots, and
# it must run under `jax.jit` (no Python `if` on array values; `jax.lax.fori_loop` or
# `while_loop`).

# %%
import jax
import jax.numpy as jnp

from mrcnn_jax.course import check_nms


def your_nms(boxes, scores, iou_threshold, max_output_size):
    # BEGIN SOLUTION
    order = jnp.argsort(-scores, stable=True)  # (N,) descending, ties by index
    iou = mrcnn_jax.box_iou(boxes, boxes)  # (N, N)

    def visit(i, state):
        alive, keep, count = state
        box = order[i]
        take = alive[box] & (count < max_output_size)
        slot = jnp.minimum(count, max_output_size - 1)
        keep = jnp.where(take, keep.at[slot].set(box), keep)
        alive = jnp.where(take, alive & (iou[box] <= iou_threshold), alive)
        return alive, keep, count + take

    state = (jnp.ones(scores.shape, bool), jnp.zeros(max_output_size, jnp.int32), jnp.int32(0))
    _, keep, count = jax.lax.fori_loop(0, scores.shape[0], visit, state)
    return keep, jnp.arange(max_output_size) < count
    # END SOLUTION


check_nms(your_nms)


# %% [markdown]
# ### Extension exercises
#
# **Exercise 1: the threshold by hand.** Without running NMS, write down the boxes greedy NMS
# keeps on the six boxes of section 2 at IoU threshold **0.25** and at **0.7**, as lists of
# indices in descending score order (use the IoU matrix printed in section 2).

# %%
def check_kept_by_hand(answers):
    assert set(answers) == {0.25, 0.7}, f"expected a dict with keys 0.25 and 0.7, got {sorted(answers)}"
    expected = {0.25: [0, 4, 5], 0.7: [0, 4, 1, 3, 2, 5]}
    for threshold, kept in answers.items():
        assert list(kept) == expected[threshold], (
            f"threshold {threshold}: got {list(kept)}; visit boxes in the order 0, 4, 1, 3, 2, 5 and "
            "suppress a box only when a *kept* box overlaps it with IoU strictly above the threshold")


my_kept = None  # e.g. {0.25: [...], 0.7: [...]}

try:
    if my_kept is None:
        raise NotImplementedError
    check_kept_by_hand(my_kept)
    print("correct!")
except NotImplementedError:
    print("not attempted yet")

# %% [markdown]
# **Exercise 2: Fast NMS.** YOLACT (Bolya et al. 2019) drops the sequential loop: a box is
# suppressed if **any** higher-scoring box overlaps it with IoU > threshold, suppressed or not.
# That is one `(N, N)` IoU matrix, a mask of "higher-scoring" pairs, and a max over a column: no
# loop at all. Write `my_fast_nms(boxes (N, 4), scores (N,), iou_threshold) -> keep (N,) bool`.
# (Which box of section 2 does it lose compared with greedy NMS, and why?)

# %%
def check_fast_nms(fn):
    got = np.asarray(fn(jnp.asarray(boxes6), jnp.asarray(scores6), 0.5))
    assert got.shape == (6,) and got.dtype == bool, f"expected a (6,) bool mask, got {got.shape} {got.dtype}"
    assert np.flatnonzero(got).tolist() == [0, 4, 5], (
        f"six boxes: expected boxes [0, 4, 5] kept, got {np.flatnonzero(got).tolist()}")
    keep = np.asarray(fn(jnp.asarray(rand_boxes), jnp.asarray(rand_scores), 0.5))
    iou = np.asarray(mrcnn_jax.box_iou(rand_boxes, rand_boxes))
    better = rand_scores[None, :] > rand_scores[:, None]  # better[i, j]: box j scores higher than box i
    suppressed = np.any((iou > 0.5) & better, axis=1)
    np.testing.assert_array_equal(keep, ~suppressed, err_msg="random boxes: keep = no better box overlaps")
    assert set(np.flatnonzero(keep)) <= set(greedy_nms(rand_boxes, rand_scores, 0.5)), \
        "Fast NMS keeps a subset of what greedy NMS keeps"


def my_fast_nms(boxes, scores, iou_threshold):
    raise NotImplementedError


try:
    check_fast_nms(my_fast_nms)
    print("correct!")
except NotImplementedError:
    print("not attempted yet")

# %% [markdown]
# **Exercise 3: Soft-NMS.** Soft-NMS (Bodla et al. 2017) never deletes a box; it lowers the
# scores of overlapping boxes instead. Gaussian version: repeatedly pick the highest-scoring box
# `M` not yet picked, and multiply the score of every box not yet picked by
# `exp(-IoU(M, box)^2 / sigma)`. Write `my_soft_nms(boxes (N, 4), scores (N,), sigma=0.5) ->
# new_scores (N,)` in the original box order (a Python loop over `N` picks is fine here; a
# fixed-shape `while_loop` version is a bonus).

# %%
def check_soft_nms(fn):
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 5], [20, 0, 30, 10], [0, 5, 10, 10]], np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.6], np.float32)
    # box 0 is picked first; IoU(0, 1) = IoU(0, 3) = 0.5, so both lose a factor exp(-0.25 / 0.5);
    # boxes 1 and 3 do not overlap each other, box 2 overlaps nothing
    expected = [0.9, 0.8 * np.exp(-0.5), 0.7, 0.6 * np.exp(-0.5)]
    got = np.asarray(fn(boxes, scores, sigma=0.5), np.float64)
    np.testing.assert_allclose(got, expected, rtol=1e-5, err_msg="hand-checked Gaussian soft-NMS scores")
    got = np.asarray(fn(boxes, scores, sigma=0.1), np.float64)
    np.testing.assert_allclose(got, [0.9, 0.8 * np.exp(-2.5), 0.7, 0.6 * np.exp(-2.5)], rtol=1e-5,
                               err_msg="sigma = 0.1 decays more")
    # Re-ranking: after box 0 decays box 1 (IoU 1/3), box 2 (untouched, 0.8) outscores it and is
    # picked next, so box 2 decays box 1 again and keeps its own score. A version that sorts
    # once and visits 0, 1, 2 would let box 1 decay box 2 instead.
    chain = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [10, 0, 20, 10]], np.float32)
    decay = np.exp(-(1 / 3) ** 2 / 0.5)
    got = np.asarray(fn(chain, np.array([0.9, 0.85, 0.8], np.float32), sigma=0.5), np.float64)
    np.testing.assert_allclose(got, [0.9, 0.85 * decay ** 2, 0.8], rtol=1e-5, err_msg=(
        "re-rank after every pick: the next box is the highest *current* score, not the next in "
        "the original order"))
    got = np.asarray(fn(rand_boxes[:50], rand_scores[:50], sigma=0.5))
    assert np.all(got <= rand_scores[:50] + 1e-6), "soft-NMS never raises a score"
    top = int(np.argmax(rand_scores[:50]))
    assert abs(got[top] - rand_scores[top]) < 1e-6, "the best box keeps its score"


def my_soft_nms(boxes, scores, sigma=0.5):
    raise NotImplementedError


try:
    check_soft_nms(my_soft_nms)
    print("correct!")
except NotImplementedError:
    print("not attempted yet")

# %% [markdown]
# **Exercise 4: fixed-shape post-processing.** Put the pieces together as the box head's
# post-processing does: candidates scoring at most `score_threshold` count as padding, then
# per-class NMS keeps at most `K` boxes. Write `my_postprocess(boxes (N, 4), scores (N,),
# classes (N,), score_threshold, iou_threshold, K)` returning `(boxes (K, 4), scores (K,),
# classes (K,), valid (K,))`, with zeros in every padded slot, that works under
# `jax.jit(..., static_argnames="K")` (use `mrcnn_jax.batched_nms`).

# %%
def check_postprocess(fn):
    jitted = jax.jit(fn, static_argnames="K")
    out_boxes, out_scores, out_classes, out_valid = jitted(
        jnp.asarray(rider_boxes), jnp.asarray(rider_scores), jnp.asarray(rider_classes),
        score_threshold=0.5, iou_threshold=0.5, K=4)
    assert out_boxes.shape == (4, 4) and out_scores.shape == out_classes.shape == out_valid.shape == (4,), \
        "outputs must have K rows"
    np.testing.assert_array_equal(out_valid, [True, True, False, False],
                                  err_msg="person 0.95 and horse 0.90 survive; the 0.30 box is below threshold")
    np.testing.assert_allclose(out_scores, [0.95, 0.90, 0, 0], rtol=1e-6, err_msg="scores, zero-padded")
    np.testing.assert_array_equal(out_classes, [0, 1, 0, 0], err_msg="classes, zero-padded")
    np.testing.assert_allclose(out_boxes, np.concatenate([rider_boxes[[0, 2]], np.zeros((2, 4))]),
                               err_msg="boxes, zero-padded")


def my_postprocess(boxes, scores, classes, score_threshold, iou_threshold, K):
    raise NotImplementedError


try:
    check_postprocess(my_postprocess)
    print("correct!")
except NotImplementedError:
    print("not attempted yet")
