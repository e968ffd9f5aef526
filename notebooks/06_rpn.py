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
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/mrcnn-jax/mrcnn_jax/blob/v0.2.0/notebooks/06_rpn.ipynb)
#
# # 06 · The region proposal network
#
# *How Mask R-CNN turns thousands of fixed anchors into a few hundred proposals: label the
# anchors against the ground truth, sample them, train a small head, and keep its best boxes.*
#
# **You will learn**
# - how each anchor is **matched** to a ground-truth box by IoU (positive at 0.7, negative below
#   0.3, ignored in between) and why each object's best anchor is positive even below 0.7;
# - **balanced sampling** of 256 anchors per image with an explicit PRNG key;
# - the **regression targets** of positive anchors (the box coder of notebook 01);
# - the RPN **head** (3x3 conv, then 1x1 convs for objectness and deltas), its output shapes and
#   why its flattening order must match the anchors' order;
# - the RPN **losses**: binary cross-entropy and smooth-L1 with `beta = 1/9`;
# - how **proposals** are selected: top-k per level, decode, clip, NMS at 0.7.
#
# Everything happens on **one** 128 x 128 shapes image with `small_config`. Each step is written
# inline first; the next cell imports the finished version from `mrcnn_jax` and asserts that
# both agree.

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
import functools
import logging
import os

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
from flax import nnx

import mrcnn_jax
from mrcnn_jax import plotting
from mrcnn_jax.config import small_config
from mrcnn_jax.data import CLASS_NAMES, parse_example, shapes_source
from mrcnn_jax.losses import smooth_l1
from mrcnn_jax.matcher import match
from mrcnn_jax.rpn import RPNHead, rpn_losses, rpn_targets, select_proposals
from mrcnn_jax.sampler import sample_balanced

FAST = os.environ.get("MRCNN_JAX_FAST", "0") == "1"
# TPUs (and recent GPUs) run float32 matmuls and convolutions in bfloat16 or TF32 passes by default;
# this notebook's asserts compare with CPU references, so ask for full float32 (no change on a CPU).
jax.config.update("jax_default_matmul_precision", "highest")
logging.getLogger("absl").setLevel(logging.ERROR)  # hide TFDS's "custom config" notices
cfg = small_config()
rpn = cfg.rpn
G = 8  # padded ground-truth slots, as the data loader gives them (notebook 00)
print(f"FAST={FAST}; anchor sizes {rpn.anchor_sizes}, ratios {rpn.aspect_ratios[0]}")
print(f"IoU thresholds {rpn.fg_iou_threshold}/{rpn.bg_iou_threshold}, "
      f"{rpn.batch_size_per_image} sampled anchors, {rpn.positive_fraction:.0%} positive at most")

# %% [markdown]
# ## 1. The image and its anchors (recap of notebook 02)
#
# Image 1 of the shapes training split, with its ground truth padded to `G = 8` slots and a
# `valid` mask.

# %%
train = shapes_source("train", num_train=200, num_val=20, image_size=128, seed=0)
example = parse_example(train[1])
image = example["image"]  # (128, 128, 3) uint8
n = len(example["boxes"])
gt_boxes = jnp.zeros((G, 4)).at[:n].set(example["boxes"])  # (G, 4)
gt_labels = jnp.zeros((G,), jnp.int32).at[:n].set(example["labels"])  # (G,)
gt_valid = jnp.arange(G) < n  # (G,)
names = ["background", *CLASS_NAMES]
print(gt_boxes[:n], [names[k] for k in gt_labels[:n]], gt_valid.astype(int))

# %% [markdown]
# `small_config` has one anchor size per level (16 on P2 to 256 on P6) and three aspect ratios,
# so 3 anchors per feature-map position. The feature sizes follow from the strides
# (notebook 05): 32, 16, 8, 4 and 2.

# %%
feature_sizes = [(128 // 2**k, 128 // 2**k) for k in range(2, 7)]  # P2..P6
anchors = mrcnn_jax.generate_anchors(cfg.image_size, feature_sizes, rpn.anchor_sizes,
                                     rpn.aspect_ratios)  # (A, 4)
counts = [h * w * 3 for h, w in feature_sizes]  # anchors per level
starts = np.cumsum([0, *counts])  # level k's anchors are anchors[starts[k]:starts[k + 1]]
level_of = np.repeat(np.arange(5), counts)  # (A,) level index 0..4 = P2..P6
for k, ((h, w), c) in enumerate(zip(feature_sizes, counts, strict=True)):
    print(f"P{k + 2}: {h:2d} x {w:2d} positions x 3 = {c:5d} anchors, size {rpn.anchor_sizes[k][0]}")
print("all levels:", anchors.shape)
assert anchors.shape == (3 * (32**2 + 16**2 + 8**2 + 4**2 + 2**2), 4) == (4092, 4)

# %%
fig, axes = plotting.subplots(5, size=2.6)
for k, ax in enumerate(axes):
    level = anchors[starts[k]:starts[k + 1]]  # (h*w*3, 4)
    stride = 2 ** (k + 2)
    plotting.show_image(ax, image, f"P{k + 2}: stride {stride}, size {rpn.anchor_sizes[k][0]}")
    centres = (level[::3, :2] + level[::3, 2:]) / 2  # (h*w, 2) one per position
    plotting.draw_points(ax, centres, colour_index=9, size=2 if k == 0 else 6)
    pos = (feature_sizes[k][0] // 2) * feature_sizes[k][1] + feature_sizes[k][1] // 2  # a middle position
    plotting.draw_boxes(ax, level[3 * pos:3 * pos + 3], colours=[plotting.colour(k)] * 3)
    margin = 0.75 * rpn.anchor_sizes[k][0] + 4  # room for the anchors that stick out
    ax.set_xlim(-margin, 128 + margin)
    ax.set_ylim(128 + margin, -margin)
fig.suptitle("anchor positions of each level and the 3 anchors of one position", fontsize=10)
fig.tight_layout()
plt.show()

# %% [markdown]
# Anchors are not clipped to the image: the large ones stick out (P6's are 256 pixels on a
# 128-pixel image).
#
# ## 2. IoU of every anchor with every ground-truth box
#
# `box_iou(gt_boxes, anchors)` is a `(G, A)` matrix (notebook 01). Padded slots are all zeros and
# must never match anything: the matcher masks them with `valid`.

# %%
iou = mrcnn_jax.box_iou(gt_boxes, anchors)  # (G, A)
print("IoU matrix:", iou.shape)
for g in range(n):
    best = int(jnp.argmax(iou[g]))
    print(f"gt {g} ({names[gt_labels[g]]:8s}) best anchor {best:4d} on P{level_of[best] + 2} "
          f"IoU {float(iou[g, best]):.3f}; anchors with IoU >= 0.7: {int((iou[g] >= 0.7).sum())}")

# %%
best_iou = jnp.max(jnp.where(gt_valid[:, None], iou, -1.0), axis=0)  # (A,) best over gt
fig, axes = plotting.subplots(6, size=2.2)
plotting.show_image(axes[0], image, "image")
plotting.draw_boxes(axes[0], gt_boxes, labels=gt_labels, class_names=names, valid=gt_valid)
for k in range(5):
    h, w = feature_sizes[k]
    level_best = best_iou[starts[k]:starts[k + 1]].reshape(h, w, 3).max(axis=-1)  # (h, w)
    axes[k + 1].imshow(np.asarray(level_best), vmin=0, vmax=1, cmap="viridis")
    axes[k + 1].set_title(f"P{k + 2}: max {float(level_best.max()):.2f}", fontsize=9)
    axes[k + 1].set_xticks([])
    axes[k + 1].set_yticks([])
fig.suptitle("best IoU with any object, per position (max over the 3 ratios)", fontsize=10)
fig.tight_layout()
plt.show()

# %% [markdown]
# Objects of 30-40 pixels match P3 (size 32) and P4 (size 64) anchors best. Few anchors reach
# IoU 0.7: anchors lie on a grid with fixed sizes, and small objects are hard to cover well.
#
# ## 3. Matching with thresholds 0.7 / 0.3, by hand first
#
# Faster R-CNN's rule, per anchor: take its best ground truth; IoU `>= 0.7`: **positive** (that
# ground truth's index); below `0.3`: **negative** (`-1`); in between: **ignored** (`-2`), it
# does not enter the loss. Then the **low-quality** rule, so that an object without any anchor
# at 0.7 still teaches the RPN something: each ground truth's best anchors (all ties) become
# positive even below 0.7. Such an anchor is matched to **its own** best ground truth (the
# argmax over ground truths, as in torchvision's `Matcher`), which is usually, but not always,
# the object that promoted it: see the second toy below.
#
# By hand, two ground truths and four anchors:
#
# | IoU | a0 | a1 | a2 | a3 |
# |---|---|---|---|---|
# | gt0 | 0.80 | 0.50 | 0.10 | 0.00 |
# | gt1 | 0.00 | 0.20 | 0.60 | 0.25 |
#
# a0: 0.80 with gt0, positive → 0. a1: best 0.50 → ignored (-2). a2: best 0.60 with gt1 →
# ignored, *but* it is gt1's best anchor → positive, matched to its own best ground truth, gt1.
# a3: best 0.25 → negative (-1).

# %%
def my_match(iou, gt_valid, high, low, allow_low_quality):
    iou = jnp.where(gt_valid[:, None], iou, -1.0)  # (G, P): padding never wins
    best = iou.max(axis=0)  # (P,)
    best_gt = iou.argmax(axis=0)  # (P,)
    matches = jnp.where(best >= high, best_gt, jnp.where(best < low, -1, -2))
    if allow_low_quality:
        best_of_gt = iou.max(axis=1, keepdims=True)  # (G, 1)
        is_best = ((iou == best_of_gt) & gt_valid[:, None]).any(axis=0)  # (P,)
        matches = jnp.where(is_best, best_gt, matches)
    return matches


toy = jnp.array([[0.8, 0.5, 0.1, 0.0], [0.0, 0.2, 0.6, 0.25]])
print("without low-quality:", my_match(toy, jnp.array([True, True]), 0.7, 0.3, False))
print("with low-quality:   ", my_match(toy, jnp.array([True, True]), 0.7, 0.3, True))
np.testing.assert_array_equal(my_match(toy, jnp.array([True, True]), 0.7, 0.3, True), [0, -2, 1, -1])
np.testing.assert_array_equal(match(toy, jnp.array([True, True]), 0.7, 0.3, True), [0, -2, 1, -1])

# %% [markdown]
# The second toy: both ground truths have the same best anchor, a0 (0.50 for gt0, 0.55 for gt1).
# The rule promotes a0, and a0 goes to *its* best ground truth, gt1. gt0, which promoted it, ends
# with no positive anchor at all: the low-quality rule guarantees a positive per object only
# when objects do not compete for the same anchor.

# %%
toy2 = jnp.array([[0.50, 0.10], [0.55, 0.30]])  # (G=2, P=2)
print("toy 2, with low-quality:", my_match(toy2, jnp.array([True, True]), 0.7, 0.3, True))
np.testing.assert_array_equal(my_match(toy2, jnp.array([True, True]), 0.7, 0.3, True), [1, -2])
np.testing.assert_array_equal(match(toy2, jnp.array([True, True]), 0.7, 0.3, True), [1, -2])

# %% [markdown]
# Now on all 4092 anchors of our image, compared with `mrcnn_jax.matcher.match`.

# %%
matches = my_match(iou, gt_valid, rpn.fg_iou_threshold, rpn.bg_iou_threshold, True)  # (A,)
np.testing.assert_array_equal(matches, match(iou, gt_valid, 0.7, 0.3, allow_low_quality=True))
strict = my_match(iou, gt_valid, 0.7, 0.3, False)
for name, m in [("strict 0.7/0.3", strict), ("with low-quality", matches)]:
    print(f"{name:18s} positive {int((m >= 0).sum()):3d}  negative {int((m == -1).sum()):4d}  "
          f"ignored {int((m == -2).sum()):3d}")
print("identical to mrcnn_jax.matcher.match")
from_rule = int((matches >= 0).sum()) - int((strict >= 0).sum())
print(f"positives from the low-quality rule: {from_rule} of {int((matches >= 0).sum())}")
assert (from_rule, int((matches >= 0).sum())) == (2, 4)  # cited in the text below and the summary

# %% [markdown]
# ## 4. A low-quality match
#
# One object (gt 0 below) has no anchor at IoU 0.7. Its best anchors (two tie here) become
# positive anyway, and both are matched to gt 0 because it is also their own best ground truth.
# These are the 2 of the image's 4 positives that the rule adds: without it that object would
# teach the RPN nothing.

# %%
best_per_gt = jnp.max(iou[:n], axis=1)  # (n,)
low_gt = int(jnp.argmin(best_per_gt))
low_anchors = np.flatnonzero(np.asarray(iou[low_gt] == best_per_gt[low_gt]))
print(f"gt {low_gt}: best IoU {float(best_per_gt[low_gt]):.3f} < 0.7, best anchors {low_anchors}, "
      f"matched to {np.asarray(matches[low_anchors])} (strict rule: {np.asarray(strict[low_anchors])})")
assert float(best_per_gt[low_gt]) < 0.7 and np.all(np.asarray(matches[low_anchors]) == low_gt)
assert np.all(np.asarray(strict[low_anchors]) == -2)

fig, (ax,) = plotting.subplots(size=4.0)
plotting.show_image(ax, image, f"gt {low_gt} and its best anchor: IoU {float(best_per_gt[low_gt]):.2f}")
plotting.draw_boxes(ax, gt_boxes[low_gt:low_gt + 1], labels=gt_labels[low_gt:low_gt + 1],
                    class_names=names, linewidth=2)
plotting.draw_boxes(ax, anchors[low_anchors], colours=[plotting.colour(4)] * len(low_anchors),
                    linestyle="--", linewidth=2)
ax.plot([], [], "--", color=plotting.colour(4), label="best anchor: positive by the low-quality rule")
ax.legend(fontsize=7, loc="lower left")
plt.show()

# %% [markdown]
# ## 5. Anchor labels, level by level
#
# Labels for the loss: `1` positive, `0` negative, `-1` ignored. Positives are drawn solid,
# ignored anchors dashed (all of them), negatives dotted (a random 12 per level: there are
# thousands).

# %%
labels = jnp.where(matches >= 0, 1, jnp.where(matches == -1, 0, -1))  # (A,)
rng = np.random.default_rng(0)
fig, axes = plotting.subplots(5, size=2.8)
for k, ax in enumerate(axes):
    lv = np.asarray(labels[starts[k]:starts[k + 1]])
    level = anchors[starts[k]:starts[k + 1]]
    plotting.show_image(ax, image, f"P{k + 2}: {np.sum(lv == 1)} pos, {np.sum(lv == -1)} ign, "
                        f"{np.sum(lv == 0)} neg")
    neg = rng.choice(np.flatnonzero(lv == 0), 12, replace=False)
    plotting.draw_boxes(ax, level[neg], colours=[plotting.colour(2)] * 12, linestyle=":", linewidth=1)
    ign = np.flatnonzero(lv == -1)
    plotting.draw_boxes(ax, level[ign], colours=[plotting.colour(1)] * len(ign), linestyle="--", linewidth=0.8)
    pos = np.flatnonzero(lv == 1)
    plotting.draw_boxes(ax, level[pos], colours=[plotting.colour(0)] * len(pos), linewidth=2)
    ax.set_xlim(-30, 158)
    ax.set_ylim(158, -30)
for i, text in enumerate(["positive", "ignored", "negative (sample)"]):
    axes[0].plot([], [], ["-", "--", ":"][i], color=plotting.colour(i), label=text)
axes[0].legend(fontsize=7, loc="lower left")
fig.tight_layout()
plt.show()

# %% [markdown]
# ## 6. Balanced sampling of 256 anchors
#
# Thousands of negatives and a handful of positives: the loss would learn "always background".
# So each image contributes `256` anchors, at most half of them positive: take
# `min(#positive, 128)` positives at random, fill up with random negatives. The randomness comes
# from an explicit PRNG key, split in two named keys. Outside `jit` we may use data-dependent
# shapes (`flatnonzero`, `permutation`):

# %%
def my_sample(key, labels, num_samples, positive_fraction):
    pos_key, neg_key = jax.random.split(key)
    pos_idx, neg_idx = jnp.flatnonzero(labels == 1), jnp.flatnonzero(labels == 0)
    num_pos = min(len(pos_idx), int(num_samples * positive_fraction))
    num_neg = min(len(neg_idx), num_samples - num_pos)
    chosen_pos = jax.random.permutation(pos_key, pos_idx)[:num_pos]
    chosen_neg = jax.random.permutation(neg_key, neg_idx)[:num_neg]
    positive = jnp.zeros(labels.shape, bool).at[chosen_pos].set(True)
    negative = jnp.zeros(labels.shape, bool).at[chosen_neg].set(True)
    return positive, negative


key = jax.random.key(0)
my_pos, my_neg = my_sample(key, labels, 256, 0.5)
pkg_pos, pkg_neg = sample_balanced(key, labels, 256, 0.5)
print(f"mine:    {int(my_pos.sum())} positive + {int(my_neg.sum())} negative")
print(f"package: {int(pkg_pos.sum())} positive + {int(pkg_neg.sum())} negative")
assert int(my_pos.sum()) == int(pkg_pos.sum()) == int((labels == 1).sum())  # fewer than 128
assert int(my_neg.sum()) == int(pkg_neg.sum()) == 256 - int((labels == 1).sum())
assert not (pkg_pos & pkg_neg).any() and bool(jnp.all(labels[pkg_neg] == 0))

# %% [markdown]
# The counts agree; *which* negatives are chosen differs, because `my_sample` cannot run under
# `jit`: `flatnonzero` returns as many indices as there are positives, a length that depends on
# the data. The fixed-shape way: every candidate draws a uniform **priority** (ineligible ones
# get -1), `lax.top_k` with a static `k` returns the `k` highest, and the first `count` of them
# by rank are chosen, where `count` may be a traced number. Every shape depends only on `k`, and
# a uniform random subset comes out, because the top priorities of i.i.d. uniforms fall on a
# uniformly random set of candidates.

# %%
def my_take_random(key, eligible, count, k):
    priority = jnp.where(eligible, jax.random.uniform(key, eligible.shape), -1.0)  # (A,)
    index = jax.lax.top_k(priority, k)[1]  # (k,) the k highest priorities, a static shape
    chosen = jnp.arange(k) < count  # (k,) by rank: count may be traced
    return jnp.zeros(eligible.shape, bool).at[index].set(chosen)  # (A,)


@functools.partial(jax.jit, static_argnames=("num_samples", "positive_fraction"))
def my_sample_static(key, labels, num_samples, positive_fraction):
    pos_key, neg_key = jax.random.split(key)
    max_pos = int(num_samples * positive_fraction)  # a Python int: both arguments are static
    num_pos = jnp.minimum(jnp.sum(labels == 1), max_pos)  # traced
    num_neg = jnp.minimum(jnp.sum(labels == 0), num_samples - num_pos)  # traced
    return (my_take_random(pos_key, labels == 1, num_pos, max_pos),
            my_take_random(neg_key, labels == 0, num_neg, num_samples))


static_pos, static_neg = my_sample_static(key, labels, num_samples=256, positive_fraction=0.5)
np.testing.assert_array_equal(static_pos, pkg_pos)
np.testing.assert_array_equal(static_neg, pkg_neg)
print("my_sample_static (priorities + top_k, jitted) == mrcnn_jax.sampler.sample_balanced, anchor for anchor")

# %% [markdown]
# Same key, same choice; another key, another choice:

# %%
again, _ = sample_balanced(key, labels, 256, 0.5)
_, other_neg = sample_balanced(jax.random.key(1), labels, 256, 0.5)
print("same key, same negatives:", bool(jnp.all(sample_balanced(key, labels, 256, 0.5)[1] == pkg_neg)),
      "; another key shares", int((other_neg & pkg_neg).sum()), "of 252")
targets = rpn_targets(key, anchors, gt_boxes, gt_valid, rpn)  # the package's full target step
np.testing.assert_array_equal(targets["labels"], labels == 1)
np.testing.assert_array_equal(targets["sampled"], pkg_pos | pkg_neg)

fig, (ax,) = plotting.subplots(size=4.0)
plotting.show_image(ax, image, "sampled anchors: centres")
for k in range(5):
    on = np.asarray(pkg_neg) & (level_of == k)
    plotting.draw_points(ax, (anchors[on, :2] + anchors[on, 2:]) / 2, colour_index=k, size=8,
                         label=f"negative on P{k + 2}: {on.sum()}")
plotting.draw_boxes(ax, anchors[np.asarray(pkg_pos)], colours=[plotting.colour(0)] * int(pkg_pos.sum()),
                    linewidth=2)
ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1, 1))
ax.set_xlim(-40, 168)
ax.set_ylim(168, -40)
plt.show()

# %% [markdown]
# Negatives are drawn uniformly over **anchors**, and P2 has 3072 of the 4092: most sampled
# negatives are small P2 anchors.
#
# ## 7. Regression targets
#
# Each positive anchor learns the deltas that move it onto its ground truth:
# `encode_boxes(gt[matches], anchors)` with weights `(1, 1, 1, 1)` (notebook 01). The package
# computes them for every anchor, but only positives enter the loss.

# %%
pos_idx = np.flatnonzero(np.asarray(labels == 1))
matched = gt_boxes[matches[pos_idx]]  # (npos, 4)
deltas = mrcnn_jax.encode_boxes(matched, anchors[pos_idx])  # (npos, 4)
for a, d in zip(pos_idx, np.asarray(deltas), strict=True):
    print(f"anchor {a:4d} (P{level_of[a] + 2}) -> gt {int(matches[a])}: dx {d[0]:+.3f} dy {d[1]:+.3f} "
          f"dw {d[2]:+.3f} dh {d[3]:+.3f}")
np.testing.assert_allclose(deltas, targets["deltas"][pos_idx], atol=1e-6)
np.testing.assert_allclose(mrcnn_jax.decode_boxes(deltas, anchors[pos_idx]), matched, atol=1e-3)

# %%
fig, (ax,) = plotting.subplots(size=4.4)
plotting.show_image(ax, image, "positive anchors (dashed) -> their targets (solid)")
plotting.draw_boxes(ax, gt_boxes, valid=gt_valid, linewidth=2)  # colour of gt g: colour(g)
for j, a in enumerate(pos_idx):
    c = plotting.colour(int(matches[a]))
    plotting.draw_boxes(ax, anchors[a:a + 1], colours=[c], linestyle="--", linewidth=1)
    (ax1, ay1, ax2, ay2), (gx1, gy1, gx2, gy2) = np.asarray(anchors[a]), np.asarray(matched[j])
    ax.annotate("", ((gx1 + gx2) / 2, (gy1 + gy2) / 2), ((ax1 + ax2) / 2, (ay1 + ay2) / 2),
                arrowprops=dict(arrowstyle="->", color=c, linewidth=1.5))
ax.set_xlim(-10, 138)
ax.set_ylim(138, -10)
plt.show()

# %% [markdown]
# ## 8. The RPN head
#
# One small head is shared by all five levels (they all have `F = 64` channels): a 3x3 conv +
# ReLU, then a 1x1 conv with `3` outputs (one objectness logit per anchor of a position) and a
# 1x1 conv with `3 x 4` outputs (four deltas per anchor). Weights start at `N(0, 0.01)`, as in
# torchvision. A randomly initialised backbone would give it no more information than noise,
# so here we feed it random stand-ins for P2-P6 of the right shapes.

# %%
head = RPNHead(cfg.fpn_channels, 3, rngs=nnx.Rngs(0))
features = [jax.random.normal(jax.random.key(k), (1, h, w, cfg.fpn_channels))
            for k, (h, w) in enumerate(feature_sizes)]  # stand-in [P2..P6]
run_head = nnx.jit(lambda head, features: head(features))
logits, deltas_pred = run_head(head, features)  # (1, A), (1, A, 4)
for k, x in enumerate(features):
    t = jax.nn.relu(head.conv(x))
    print(f"P{k + 2} {tuple(x.shape)} -> cls {tuple(head.cls_logits(t).shape)}, "
          f"box {tuple(head.bbox_pred(t).shape)}")
print("flattened:", logits.shape, deltas_pred.shape)
assert logits.shape == (1, len(anchors)) and deltas_pred.shape == (1, len(anchors), 4)

# %% [markdown]
# **Flattening order.** Level `k`'s output `(1, h, w, 3)` is reshaped to `(1, h*w*3)`: row-major,
# so the flat index is `(y * w + x) * 3 + a`, position-major then anchor, exactly the order of
# `generate_anchors` (notebook 02). Box outputs `(1, h, w, 12)` become `(1, h*w*3, 4)`: four
# consecutive channels per anchor. Levels are concatenated P2 first. Check: the anchor at flat
# index `starts[k] + (y * w + x) * 3 + a` is centred on `(x * stride, y * stride)`, and its logit
# is the head's output at `(y, x, a)`.

# %%
for k, (y, x, a) in [(0, (5, 7, 2)), (1, (3, 11, 0)), (4, (1, 0, 1))]:
    h, w = feature_sizes[k]
    stride = 128 // w
    flat = starts[k] + (y * w + x) * 3 + a
    centre = (anchors[flat, :2] + anchors[flat, 2:]) / 2
    out = head.cls_logits(jax.nn.relu(head.conv(features[k])))  # (1, h, w, 3)
    box = head.bbox_pred(jax.nn.relu(head.conv(features[k])))  # (1, h, w, 12)
    print(f"P{k + 2} (y={y}, x={x}, a={a}) -> flat {flat}, anchor centre {centre}")
    np.testing.assert_allclose(centre, [x * stride, y * stride])
    np.testing.assert_allclose(logits[0, flat], out[0, y, x, a], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(deltas_pred[0, flat], box[0, y, x, 4 * a:4 * a + 4], rtol=1e-5, atol=1e-6)

# %% [markdown]
# ## 9. The RPN losses
#
# - **Objectness**: binary cross-entropy with logits on the 256 sampled anchors,
#   `max(z, 0) - z t + log(1 + exp(-|z|))` (the stable form of `-t log σ(z) - (1-t) log(1-σ(z))`).
# - **Box**: smooth-L1 of `pred - target` on the positives only, summed over the 4 deltas:
#   `0.5 x² / β` for `|x| < β`, else `|x| - 0.5 β`, with torchvision's `β = 1/9`.
# - Both are divided by the number of **sampled** anchors (256 here), not by the positives.
#
# By hand, smooth-L1 with `β = 1/9`: `x = 0.05` → `0.5 * 0.0025 * 9 = 0.01125`; `x = 0.5` →
# `0.5 - 1/18 = 0.4444`. BCE at logit 0 is `log 2 = 0.693` whatever the label; our random head
# outputs logits near 0.

# %%
def my_smooth_l1(x, beta):
    return jnp.where(jnp.abs(x) < beta, 0.5 * x**2 / beta, jnp.abs(x) - 0.5 * beta)


def my_bce(z, t):
    return jnp.maximum(z, 0) - z * t + jnp.log1p(jnp.exp(-jnp.abs(z)))


print(my_smooth_l1(jnp.array([0.05, 0.5, -0.5]), 1 / 9), my_bce(jnp.array([0.0, 0.0]), jnp.array([0.0, 1.0])))
np.testing.assert_allclose(my_smooth_l1(jnp.array([0.05, 0.5]), 1 / 9), [0.01125, 0.5 - 1 / 18], rtol=1e-5)
np.testing.assert_allclose(my_smooth_l1(jnp.linspace(-1, 1, 41), 1 / 9), smooth_l1(jnp.linspace(-1, 1, 41), 1 / 9),
                           rtol=1e-6)


def my_rpn_losses(logits, deltas, targets, beta):
    sampled, positive = targets["sampled"], targets["positive"]
    count = max(int(sampled.sum()), 1)
    bce = my_bce(logits, targets["labels"])  # (A,)
    box = my_smooth_l1(deltas - targets["deltas"], beta).sum(axis=-1)  # (A,)
    return bce[sampled].sum() / count, box[positive].sum() / count


mine = my_rpn_losses(logits[0], deltas_pred[0], targets, rpn.smooth_l1_beta)
batch_targets = jax.tree.map(lambda t: t[None], targets)  # the package works on a batch
theirs = rpn_losses(logits, deltas_pred, batch_targets, rpn.smooth_l1_beta)
print(f"objectness: mine {float(mine[0]):.5f}  package {float(theirs['rpn_objectness']):.5f}")
print(f"box:        mine {float(mine[1]):.5f}  package {float(theirs['rpn_box']):.5f}")
np.testing.assert_allclose(mine, [theirs["rpn_objectness"], theirs["rpn_box"]], rtol=1e-5)
assert abs(float(mine[0]) - np.log(2)) < 0.05  # logits near 0: about log 2

# %% [markdown]
# ## 10. From scores to proposals
#
# At inference (and to feed the box head during training) the RPN keeps its best boxes:
# 1. per level, the `pre_nms_top_n` anchors with the highest logits (300 per level at test time
#    here, 1000 in torchvision), so that the many P2 anchors do not crowd out the others;
# 2. decode their deltas onto the anchors, clip to the image, drop boxes narrower than
#    `min_size`;
# 3. NMS at IoU 0.7, **separately per level** (torchvision's `batched_nms` with the level as the
#    class), then keep the `post_nms_top_n` best overall (100 here).
#
# Inline, reusing `decode_boxes`, `clip_boxes` (notebook 01) and `batched_nms` (notebook 03).
#
# **A config as a static argument.** The anchor counts per level and the RPN config decide
# shapes (`k` of each `top_k`, the number of proposals) and Python control flow (the loop over
# levels), so `jit` must see them as plain Python values: `static_argnames=("counts", "cfg_rpn")`.
# A static argument must be hashable; `counts` is a tuple and `RPNConfig` is a frozen dataclass,
# so both are. `jit` compiles once per distinct value and reuses the program after that: a new
# config means one new compilation, never a silent mix-up. The function returns a dict, so the
# caller reads each output by name.

# %%
@functools.partial(jax.jit, static_argnames=("counts", "cfg_rpn"))
def my_select(logits, deltas, anchors, counts, cfg_rpn):
    picks, levels, start = [], [], 0
    for level, size in enumerate(counts):
        k = min(cfg_rpn.pre_nms_top_n_test, size)
        picks.append(jax.lax.top_k(logits[start:start + size], k)[1] + start)  # (k,)
        levels.append(jnp.full((k,), level))
        start += size
    picks, levels = jnp.concatenate(picks), jnp.concatenate(levels)  # (Nc,)
    boxes = mrcnn_jax.clip_boxes(mrcnn_jax.decode_boxes(deltas[picks], anchors[picks]), (128, 128))
    scores = jax.nn.sigmoid(logits[picks])
    wide = jnp.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) >= cfg_rpn.min_size
    keep, valid = mrcnn_jax.batched_nms(boxes, scores, levels, cfg_rpn.nms_threshold,
                                        cfg_rpn.post_nms_top_n_test, valid=wide)
    return {"candidates": boxes, "candidate_scores": scores,  # (Nc, 4), (Nc,) before NMS
            "boxes": boxes[keep], "scores": jnp.where(valid, scores[keep], 0.0), "valid": valid}


package_select = jax.jit(select_proposals,
                         static_argnames=("level_sizes", "image_size", "cfg", "training"))


def proposals(logits, deltas):
    """Inline proposals, checked against mrcnn_jax.rpn.select_proposals."""
    out = my_select(logits, deltas, jnp.asarray(anchors), counts=tuple(counts), cfg_rpn=rpn)
    boxes, scores, valid = package_select(logits, deltas, jnp.asarray(anchors),
                                          level_sizes=tuple(counts), image_size=cfg.image_size,
                                          cfg=rpn, training=False)
    np.testing.assert_array_equal(out["valid"], valid)
    np.testing.assert_allclose(out["boxes"], boxes, atol=1e-4)
    np.testing.assert_allclose(out["scores"], scores, atol=1e-6)
    return out


random_out = proposals(logits[0], deltas_pred[0])
print(f"random head: {len(random_out['candidates'])} candidates -> {int(random_out['valid'].sum())} "
      f"proposals, scores {float(random_out['scores'][random_out['valid']].min()):.3f}.."
      f"{float(random_out['scores'].max()):.3f}")
print("inline selection == mrcnn_jax.rpn.select_proposals")

# %% [markdown]
# A randomly initialised head scores every anchor about `σ(0) = 0.5` and barely moves it: its
# "proposals" are just anchors picked by noise.

# %%
def recall(boxes, valid, threshold=0.5):
    """Fraction of the objects with a proposal at IoU >= threshold."""
    best = jnp.where(valid[None], mrcnn_jax.box_iou(gt_boxes[:n], boxes), 0.0).max(axis=1)
    return float((best >= threshold).mean())


fig, (ax,) = plotting.subplots(size=4.0)
plotting.show_image(ax, image, f"random head: top 15 of {int(random_out['valid'].sum())} proposals")
plotting.draw_boxes(ax, random_out["boxes"][:15], colours=[plotting.colour(6)] * 15)
plt.show()
print(f"recall at IoU 0.5 of the random head's proposals: {recall(random_out['boxes'], random_out['valid']):.2f}")

# %% [markdown]
# **An oracle RPN.** To see what a *trained* RPN's proposals look like before we train one,
# we cheat, and say so: we build the outputs from the targets. The logit of each
# anchor is `12 * (its best IoU - 0.4)` plus noise (so anchors overlapping an object score high,
# the better the overlap the higher), and its deltas are the exact regression targets towards
# its best object plus noise of standard deviation 0.05. These are **not** outputs of a network.

# %%
noise_key, delta_key = jax.random.split(jax.random.key(42))
best_gt = jnp.argmax(jnp.where(gt_valid[:, None], iou, -1.0), axis=0)  # (A,)
oracle_logits = 12.0 * (best_iou - 0.4) + 0.5 * jax.random.normal(noise_key, best_iou.shape)
oracle_deltas = (mrcnn_jax.encode_boxes(gt_boxes[best_gt], anchors)
                 + 0.05 * jax.random.normal(delta_key, (len(anchors), 4)))
oracle_out = proposals(oracle_logits, oracle_deltas)
cand_boxes, cand_scores = oracle_out["candidates"], oracle_out["candidate_scores"]
prop_boxes, prop_scores, prop_valid = oracle_out["boxes"], oracle_out["scores"], oracle_out["valid"]
before = np.asarray(cand_scores >= 0.5)
after = np.asarray(prop_valid & (prop_scores >= 0.5))
print(f"candidates after top-k: {len(cand_boxes)}, of which scoring >= 0.5: {before.sum()}")
print(f"after NMS 0.7: {int(prop_valid.sum())} proposals, of which scoring >= 0.5: {after.sum()}")
print(f"recall at IoU 0.5: {recall(prop_boxes, prop_valid):.2f}")
assert after.sum() < before.sum() and recall(prop_boxes, prop_valid) == 1.0

# %%
fig, axes = plotting.subplots(2, size=4.2)
cand_levels = np.repeat(np.arange(5), [min(rpn.pre_nms_top_n_test, c) for c in counts])
for ax, boxes, keep, title in [
        (axes[0], cand_boxes, before, f"before NMS: {before.sum()} boxes scoring >= 0.5"),
        (axes[1], prop_boxes, after, f"after NMS 0.7: {after.sum()} boxes scoring >= 0.5")]:
    plotting.show_image(ax, image, title)
    if ax is axes[0]:
        colours = [plotting.colour(cand_levels[i]) for i in range(len(boxes))]
    else:  # level of each kept box, found by matching it among the candidates
        same = np.all(np.isclose(np.asarray(prop_boxes)[:, None], np.asarray(cand_boxes)[None]), axis=-1)
        colours = [plotting.colour(cand_levels[np.argmax(row)]) for row in same]
    plotting.draw_boxes(ax, boxes, colours=colours, valid=keep, linewidth=1)
    ax.set_xlim(0, 128)
    ax.set_ylim(128, 0)
for k in range(5):
    axes[1].plot([], [], color=plotting.colour(k), label=f"P{k + 2}")
axes[1].legend(fontsize=7, loc="lower left")
fig.tight_layout()
plt.show()

# %% [markdown]
# Before NMS each object is covered by a pile of near-duplicate boxes; NMS keeps one per object
# **per level** (NMS runs level by level, so an object seen well by two levels keeps two
# boxes; the box head sorts that out). The oracle covers every object (recall 1.0); a trained
# RPN gets close to that.
#
# ## 11. Optional: torchvision's `Matcher`
#
# If torchvision is installed, its `Matcher` (with `allow_low_quality_matches=True`) gives the
# same matches on the same IoU matrix (valid ground truth only: torchvision has no padding).

# %%
try:
    import torch
    from torchvision.models.detection._utils import Matcher
except ImportError:
    print("torchvision is not installed: skipping the comparison")
else:
    tv_matcher = Matcher(0.7, 0.3, allow_low_quality_matches=True)
    tv = tv_matcher(torch.from_numpy(np.array(iou[:n]))).numpy()
    np.testing.assert_array_equal(tv, matches)
    print(f"torchvision Matcher agrees on all {len(tv)} anchors")

# %% [markdown]
# ## Summary
#
# - Each anchor is matched to its best ground truth: positive at IoU >= 0.7, negative below
#   0.3, ignored in between, and each object's best anchors are positive anyway (low-quality
#   matches, matched to the anchor's own best ground truth; on this image the rule adds 2 of the
#   4 positives). Padded slots never match.
# - 256 anchors per image are sampled, at most half positive, with an explicit key; under `jit`
#   random priorities and `top_k` keep the shapes static.
# - Positives regress `encode_boxes(gt, anchor)`; the losses are BCE on sampled anchors and
#   smooth-L1 (beta 1/9) on positives, both divided by the number sampled.
# - The shared head gives `(B, h, w, 3)` logits and `(B, h, w, 12)` deltas per level, flattened
#   position-major then anchor, P2 first: the anchors' order.
# - Proposals: top-k per level, decode, clip, drop tiny boxes, NMS 0.7 per level, top-k overall.
#
# Next: **07 · RoI heads**, which classify and refine these proposals.

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
# **Core exercise A: anchor labels by IoU matching.** Write `your_match(iou (G, P), gt_valid (G,),
# high, low, allow_low_quality) -> (P,) int32` as `mrcnn_jax.matcher.match`: the best ground
# truth's index where its IoU is `>= high`, `-1` (background) below `low`, `-2` (ignored) in
# between; with `allow_low_quality`, every anchor tied at some ground truth's best IoU keeps its
# match; padded ground truth (`gt_valid` False) never matches.

# %%
import jax
import jax.numpy as jnp

from mrcnn_jax.course import check_match, check_sample_balanced


def your_match(iou, gt_valid, high, low, allow_low_quality):
    # BEGIN SOLUTION
    iou = jnp.where(gt_valid[:, None], iou, -1.0)  # (G, P) padding never wins
    best, best_gt = iou.max(axis=0), iou.argmax(axis=0)  # (P,)
    matches = jnp.where(best >= high, best_gt, jnp.where(best >= low, -2, -1))
    if allow_low_quality:  # a Python bool
        tied = (iou == iou.max(axis=1, keepdims=True)) & gt_valid[:, None]  # (G, P)
        matches = jnp.where(tied.any(axis=0), best_gt, matches)
    return matches.astype(jnp.int32)
    # END SOLUTION


check_match(your_match)

# %% [markdown]
# **Core exercise B: the balanced sampler.** Write `your_sample_balanced(key, labels (P,),
# num_samples, positive_fraction) -> (positive (P,) bool, negative (P,) bool)`: at most
# `int(num_samples * positive_fraction)` random positives (label 1), the rest random negatives
# (label 0), never an ignored one (-1); static shapes, randomness only from `key`.

# %%
def your_sample_balanced(key, labels, num_samples, positive_fraction):
    # BEGIN SOLUTION
    pos_key, neg_key = jax.random.split(key)
    positive, negative = labels == 1, labels == 0
    num_pos = jnp.minimum(positive.sum(), int(num_samples * positive_fraction))
    num_neg = jnp.minimum(negative.sum(), num_samples - num_pos)

    def take(k, eligible, count):
        priority = jnp.where(eligible, jax.random.uniform(k, eligible.shape), -1.0)
        rank = jnp.argsort(jnp.argsort(-priority))  # 0 for the highest priority
        return eligible & (rank < count)

    return take(pos_key, positive, num_pos), take(neg_key, negative, num_neg)
    # END SOLUTION


check_sample_balanced(your_sample_balanced)


# %% [markdown]
# ### Extension exercises
#
# **Exercise 1: anchors that cross the border.** The Faster R-CNN paper (section 3.1.3) ignores,
# during training, every anchor that crosses the image boundary (torchvision and detectron2 keep
# them). Write `my_rpn_labels(matches (A,), anchors (A, 4), image_size (H, W)) -> (A,)`: `1` for a
# matched anchor (index >= 0), `0` for background (`-1`), `-1` for ignored (`-2`) *and* `-1` for
# every anchor not inside `[0, W] x [0, H]`. How many anchors of our image does the rule drop?

# %%
def check_rpn_labels(fn):
    hand = jnp.array([[0.0, 0, 10, 10], [-5, 0, 5, 10], [90, 90, 100, 100], [95, 20, 105, 30],
                      [10, 10, 20, 20], [0, 0, 100, 100]])
    got = np.asarray(fn(jnp.array([0, 3, -1, -2, 1, -1]), hand, (100, 100)))
    np.testing.assert_array_equal(got, [1, -1, 0, -1, 1, 0], err_msg=(
        "hand example: anchors 1 and 3 cross the border (-1); anchor 0 touches it and stays"))
    tall = jnp.array([[40.0, 0, 60, 10], [0, 60, 10, 90]])
    got = np.asarray(fn(jnp.array([0, 0]), tall, (100, 50)))
    np.testing.assert_array_equal(got, [-1, 1], err_msg=(
        "image_size is (H, W) = (100, 50): x must stay within W = 50, y within H = 100"))
    height, width = cfg.image_size
    inside = np.asarray((anchors[:, 0] >= 0) & (anchors[:, 1] >= 0) & (anchors[:, 2] <= width)
                        & (anchors[:, 3] <= height))
    np.testing.assert_array_equal(np.asarray(fn(matches, anchors, cfg.image_size)),
                                  np.where(inside, labels, -1), err_msg="labels of our image")


def my_rpn_labels(matches, anchors, image_size):
    raise NotImplementedError


try:
    check_rpn_labels(my_rpn_labels)
    print("correct!")
except NotImplementedError:
    print("not attempted yet")

# %% [markdown]
# **Exercise 2: where is this anchor?** Write `my_anchor_index(level, y, x, a)`: the flat index
# into `anchors` (and into the head's flattened outputs) of anchor `a` (0..2) at position
# `(y, x)` of level `level` (2..6 for P2..P6), for our 128 x 128 image.

# %%
def check_anchor_index(fn):
    assert fn(2, 0, 0, 0) == 0, "the first anchor of P2"
    assert fn(2, 0, 1, 0) == 3, "the next position on P2 is 3 anchors later"
    assert fn(3, 0, 0, 0) == 3072, "P3 starts after the 32 x 32 x 3 anchors of P2"
    for level, y, x, a in [(2, 5, 7, 2), (4, 3, 6, 1), (6, 1, 1, 2)]:
        flat = fn(level, y, x, a)
        stride = 2**level
        centre = (anchors[flat, :2] + anchors[flat, 2:]) / 2
        np.testing.assert_allclose(centre, [x * stride, y * stride], err_msg=f"P{level} ({y}, {x}, {a})")
        side = anchors[flat, 2:] - anchors[flat, :2]
        assert (side[1] > side[0]) == (a == 2), f"anchor {a} of P{level}: ratio order is 0.5, 1, 2"


def my_anchor_index(level, y, x, a):
    raise NotImplementedError


try:
    check_anchor_index(my_anchor_index)
    print("correct!")
except NotImplementedError:
    print("not attempted yet")

# %% [markdown]
# **Exercise 3: detectron2's RPN box loss.** detectron2 uses plain L1 (`beta = 0`) for the RPN box
# loss. Write `my_rpn_box_loss(pred_deltas (A, 4), target_deltas (A, 4), positive (A,), sampled
# (A,), beta)` that handles `beta = 0` too, normalised like torchvision's. The check also takes
# its gradient: with `beta = 0`, the unused branch `0.5 * x**2 / beta` of a `jnp.where` still
# sends NaN into the gradient.

# %%
def check_rpn_box_loss(fn):
    for beta in (1 / 9, 0.0):
        got = float(fn(deltas_pred[0], targets["deltas"], targets["positive"], targets["sampled"], beta))
        expected = float(rpn_losses(logits, deltas_pred, batch_targets, beta)["rpn_box"])
        assert abs(got - expected) < 1e-5 * max(1.0, expected), f"beta={beta}: expected {expected}, got {got}"
    got = float(fn(jnp.zeros((2, 4)), jnp.ones((2, 4)), jnp.array([True, False]), jnp.array([True, True]), 0.0))
    assert abs(got - 2.0) < 1e-6, f"one positive off by 1 in each of 4 deltas, 2 sampled: expected 2.0, got {got}"
    single = {key: value[None] for key, value in targets.items()}
    for beta in (1 / 9, 0.0):
        grad = np.asarray(jax.grad(lambda d, b=beta: fn(d, targets["deltas"], targets["positive"], targets["sampled"], b))(
            deltas_pred[0]))
        expected = np.asarray(jax.grad(lambda d, b=beta: rpn_losses(logits[:1], d[None], single, b)["rpn_box"])(
            deltas_pred[0]))
        assert np.all(np.isfinite(grad)), (
            f"beta={beta}: NaN in the gradient; jnp.where differentiates both branches, so handle "
            "beta == 0 (a Python number) with a plain `if`")
        np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-6, err_msg=f"gradient, beta={beta}")


def my_rpn_box_loss(pred_deltas, target_deltas, positive, sampled, beta):
    raise NotImplementedError


try:
    check_rpn_box_loss(my_rpn_box_loss)
    print("correct!")
except NotImplementedError:
    print("not attempted yet")

# %% [markdown]
# **Exercise 4: average recall.** The `recall()` of the proposals section counts objects with a
# proposal at one IoU threshold. Proposal quality is usually reported as *average recall* (AR, Hosang et al. 2016;
# the FPN paper's table for the RPN): the recall averaged over the IoU thresholds 0.5, 0.55, ...,
# 0.95, which rewards proposals that fit tightly. Write `my_average_recall(proposals (P, 4),
# valid (P,), gt (n, 4))`.

# %%
def check_average_recall(fn):
    gt = jnp.array([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]])
    props = jnp.array([[0.0, 0.0, 10.0, 9.2], [20.0, 20.0, 30.0, 30.0], [50.0, 50.0, 60.0, 60.0]])
    # object 0's best IoU is 0.92 (recalled at 9 of the 10 thresholds), object 1's is 1.0
    got = float(fn(props, jnp.array([True, True, True]), gt))
    assert abs(got - 0.95) < 1e-6, f"hand example: expected (0.9 + 1.0) / 2 = 0.95, got {got}"
    got = float(fn(props, jnp.array([True, False, True]), gt))
    assert abs(got - 0.45) < 1e-6, f"invalid proposals do not count: expected 0.45, got {got}"
    expected = np.mean([recall(prop_boxes, prop_valid, t) for t in np.linspace(0.5, 0.95, 10)])
    got = float(fn(prop_boxes, prop_valid, gt_boxes[:n]))
    assert abs(got - expected) < 1e-6, f"our proposals: expected AR {expected:.4f}, got {got:.4f}"


def my_average_recall(proposals, valid, gt):
    raise NotImplementedError


try:
    check_average_recall(my_average_recall)
    print("correct!")
except NotImplementedError:
    print("not attempted yet")
