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
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/mrcnn-jax/mrcnn_jax/blob/v0.2.0/notebooks/07_roi_heads.ipynb)
#
# # 07 · RoI heads: sampling, box head, mask head and their targets
#
# *From a few hundred proposals to a fixed, balanced set of RoIs, and what the box head and the
# mask head are asked to predict for each of them.*
#
# **You will learn**
# - RoI sampling (Mask R-CNN section 3.1): ground truth appended to the proposals, matching at
#   IoU 0.5, a fixed number of RoIs per image with at most 25 % positives, drawn with an explicit
#   PRNG key;
# - the box head's targets: class labels (0 = background) and deltas with weights
#   `(10, 10, 5, 5)`; the box head itself (`TwoMLPHead` + predictor) and its shapes;
# - mask targets: each positive RoI cuts its ground-truth mask out with RoIAlign at 28 x 28;
#   soft targets (torchvision) versus thresholded ones (detectron2);
# - the mask head (four 3x3 convs, a 2x2 transposed conv, a 1x1 conv to one mask per class) and
#   why only the ground-truth class's channel enters the loss;
# - the box and mask losses, written inline and checked against `mrcnn_jax`.
#
# Every step is written here first in plain `numpy` / `jax.numpy`; the cell after it imports the
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
import logging
import math
import os

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
from flax import nnx

import mrcnn_jax
from mrcnn_jax import plotting
from mrcnn_jax.config import small_config
from mrcnn_jax.data import class_names, make_loader, shapes_source
from mrcnn_jax.losses import binary_cross_entropy_with_logits, smooth_l1, softmax_cross_entropy
from mrcnn_jax.model import MaskRCNN
from mrcnn_jax.roi_heads import box_losses, mask_loss, mask_targets, sample_rois

FAST = os.environ.get("MRCNN_JAX_FAST", "0") == "1"
# TPUs (and recent GPUs) run float32 matmuls and convolutions in bfloat16 or TF32 passes by default;
# this notebook's asserts compare with CPU references, so ask for full float32 (no change on a CPU).
jax.config.update("jax_default_matmul_precision", "highest")
logging.getLogger("absl").setLevel(logging.ERROR)  # hide TFDS's "custom config" notices
NUM_KEYS = 3 if FAST else 20  # PRNG keys on which the inline sampler is compared with the package
IMAGE = 128
config = small_config(image_size=(IMAGE, IMAGE))  # 4 classes: background, square, circle, triangle
heads = config.roi_heads
print(f"FAST={FAST}; RoIs per image S={heads.batch_size_per_image}, positive fraction "
      f"{heads.positive_fraction}, box weights {heads.box_weights}, mask size {heads.mask_size}")

# %% [markdown]
# ## 1. One batch of shapes
#
# Two 128 x 128 images from the shapes data of notebook 00, ground truth padded to `G = 8`
# slots with `valid`. Image 0 is our running example.

# %%
train = shapes_source("train", num_train=200, num_val=20, image_size=IMAGE, seed=0)
names = class_names(train)
loader = make_loader(train, batch_size=2, image_size=IMAGE, max_instances=8, train=False)
batch = next(b for b in loader if b["num_instances"][0] >= 4)  # an image with 4+ objects
gt_boxes, gt_labels = batch["boxes"], batch["labels"]  # (B, G, 4), (B, G)
gt_valid, gt_masks = batch["valid"], batch["masks"]  # (B, G), (B, G, H, W) uint8
image = batch["images"][0]
n_gt = int(gt_valid[0].sum())
print({k: batch[k].shape for k in ("images", "boxes", "labels", "masks", "valid")})
print("image 0 labels:", [names[k] for k in gt_labels[0][: n_gt]])

fig, axes = plotting.subplots(ncols=2, size=3.2)
for b, ax in enumerate(axes):
    plotting.show_image(ax, plotting.overlay_masks(batch["images"][b], gt_masks[b], gt_labels[b],
                                                   valid=gt_valid[b]), f"image {b}")
    plotting.draw_boxes(ax, gt_boxes[b], labels=gt_labels[b], class_names=names, valid=gt_valid[b])
fig.tight_layout()
plt.show()

# %% [markdown]
# ## 2. Proposals
#
# In the detector the proposals come from the RPN (notebook 06), `P` per image, padded with
# `valid`. An untrained RPN proposes nearly random boxes, so here we stand in for a half-trained
# one: each object gets a few jittered copies of its box, plus random boxes across the image.
# Only the geometry matters for sampling, so nothing below depends on this choice.

# %%
P = 64  # proposals per image (the small config keeps 300 after NMS; 64 keep the figures legible)


def fake_proposals(rng, boxes, valid, num=P, jitter=0.15):
    """``(num, 4)`` proposals: 6 jittered copies of each valid box and random boxes, shuffled."""
    out = []
    for box in boxes[valid]:
        wh = np.tile(box[2:] - box[:2], 2)  # (4,) width, height, width, height
        out.append(box + rng.normal(0, jitter, (6, 4)) * wh)  # (6, 4)
    xy = rng.uniform(0, IMAGE, (num, 2, 2))
    out.append(np.concatenate([xy.min(axis=1), xy.max(axis=1)], axis=1))  # (num, 4) random
    props = np.clip(np.concatenate(out)[:num], 0, IMAGE).astype(np.float32)
    return rng.permutation(props), np.ones(num, bool)  # shuffled, like an untrained RPN's score order


rng = np.random.default_rng(0)
proposals, proposal_valid = map(np.stack, zip(*[fake_proposals(rng, gt_boxes[b], gt_valid[b])
                                                 for b in range(2)], strict=True))
print("proposals", proposals.shape, "valid", proposal_valid.shape)

# %% [markdown]
# ## 3. Matching and balanced sampling, by hand
#
# As in Mask R-CNN (section 3.1) and torchvision, a proposal is **foreground** if its best IoU
# with a ground-truth box is at least 0.5, otherwise **background** (Fast R-CNN took background
# only from IoU in `[0.1, 0.5)`; torchvision has no "ignored" band and no low-quality rule here,
# unlike the RPN). The ground-truth boxes are **appended to the proposals** first, so every
# object has at least one perfect positive *candidate* even when the RPN misses it (the sampling
# below may still leave it out when more positives qualify than fit).
#
# From the labelled candidates, `S` RoIs are sampled per image: at most `S · 0.25` positives
# (all of them if fewer), the rest negatives, as many as there are. The loss then sees at most `S`
# RoIs per image in `S` fixed slots (an image short of negatives leaves some slots invalid, as
# image 0 does below), and background never swamps the objects (the paper's 1 : 3 ratio).
#
# A toy case: one ground-truth box `[0, 0, 10, 10]`, five candidates, `S = 8`.

# %%
toy_gt = np.array([[0, 0, 10, 10]], np.float32)
toy_candidates = np.array([[0, 0, 10, 10],    # IoU 1
                           [0, 0, 10, 5],     # IoU 50 / 100 = 0.5: foreground (>= 0.5)
                           [0, 0, 10, 20],    # IoU 100 / 200 = 0.5: foreground
                           [5, 0, 15, 10],    # IoU 50 / 150 = 0.33: background
                           [20, 20, 30, 30]],  # IoU 0: background
                          np.float32)
toy_iou = np.asarray(mrcnn_jax.box_iou(toy_gt, toy_candidates))[0]
print("IoU:", np.round(toy_iou, 3), " foreground:", toy_iou >= 0.5)
S_toy, fraction = 8, 0.25
max_pos = int(S_toy * fraction)  # 2
num_pos = min(int((toy_iou >= 0.5).sum()), max_pos)  # min(3, 2) = 2
num_neg = min(int((toy_iou < 0.5).sum()), S_toy - num_pos)  # min(2, 6) = 2
print(f"positives {num_pos}, negatives {num_neg}, padding {S_toy - num_pos - num_neg}")
assert (num_pos, num_neg) == (2, 2)

# %% [markdown]
# Three candidates qualify, only two positives fit: *which* two is random. With static shapes
# the choice cannot be `np.random.choice` on a variable-length list; the package instead gives
# every candidate a uniform random **priority** from an explicit key and keeps the highest
# ones. We do the same, with the key split into a positive key and a negative key.

# %%
def pick(key, eligible, count):
    """Indices of the ``count`` eligible entries with the highest random priority, ascending."""
    priority = np.asarray(jax.random.uniform(key, eligible.shape))  # (N,) in [0, 1)
    candidates = np.flatnonzero(eligible)
    best = candidates[np.argsort(-priority[candidates], kind="stable")[:count]]
    return np.sort(best)


pos_key, neg_key = jax.random.split(jax.random.key(0))
print("positives chosen:", pick(pos_key, toy_iou >= 0.5, 2), " negatives:", pick(neg_key, toy_iou < 0.5, 2))
print("another key:     ", pick(jax.random.key(7), toy_iou >= 0.5, 2))

# %% [markdown]
# ## 4. `sample_rois` inline
#
# Per image: append the ground truth, match, pick positives and negatives, and return them
# **positives first**, each with its label (the matched object's class, 0 for background), the
# matched ground-truth index and the box-regression target: the deltas that move the RoI onto
# its object, with the box head's weights `(10, 10, 5, 5)` (notebook 01). Here `numpy` with
# variable-length lists; padding to `S` comes at the end.

# %%
def my_sample_rois(key, proposals, proposal_valid, gt_boxes, gt_labels, gt_valid,
                   num_samples=heads.batch_size_per_image, positive_fraction=heads.positive_fraction,
                   fg_iou=heads.fg_iou_threshold, weights=heads.box_weights):
    boxes = np.concatenate([proposals, gt_boxes])  # (P+G, 4): ground truth appended
    valid = np.concatenate([proposal_valid, gt_valid])  # (P+G,)
    iou = np.array(mrcnn_jax.box_iou(gt_boxes, boxes))  # (G, P+G), a writable copy
    iou[~gt_valid] = -1.0  # padded ground truth never matches
    best_iou, owner = iou.max(axis=0), iou.argmax(axis=0)  # (P+G,) each
    foreground = valid & (best_iou >= fg_iou)
    background = valid & (best_iou < fg_iou)  # padded proposals are neither
    pos_key, neg_key = jax.random.split(key)
    n_pos = min(int(foreground.sum()), int(num_samples * positive_fraction))
    n_neg = min(int(background.sum()), num_samples - n_pos)
    index = np.concatenate([pick(pos_key, foreground, n_pos), pick(neg_key, background, n_neg)])
    positive = np.arange(len(index)) < n_pos  # positives first
    rois, matched = boxes[index], owner[index]  # (n, 4), (n,)
    labels = np.where(positive, gt_labels[matched], 0)
    targets = np.asarray(mrcnn_jax.encode_boxes(gt_boxes[matched], rois, weights))  # (n, 4)
    return {"rois": rois, "labels": labels, "positive": positive, "matched_gt": matched,
            "box_targets": targets, "num_fg": int(foreground.sum()), "num_bg": int(background.sum())}


key = jax.random.key(42)
keys = jax.random.split(key, 2)  # one key per image, as MaskRCNN.train_forward does
mine = my_sample_rois(keys[0], proposals[0], proposal_valid[0], gt_boxes[0], gt_labels[0], gt_valid[0])
print(f"candidates: {mine['num_fg']} foreground, {mine['num_bg']} background (P + G = {P + 8})")
print(f"sampled: {int(mine['positive'].sum())} positives + {int((~mine['positive']).sum())} negatives")
print("labels:", mine["labels"])
assert int(mine["positive"].sum()) == min(mine["num_fg"], int(heads.batch_size_per_image * heads.positive_fraction))

# %% [markdown]
# The package's `sample_rois` does the same with static shapes: a fixed `S` slots with a
# `valid` mask, padded slots at the end. For the same key it must choose **exactly** the same
# RoIs in the same order: the priorities are the same numbers, only the bookkeeping differs
# (`lax.top_k` with a static `k` instead of sorting a variable-length list).

# %%
def compare(mine, theirs):
    n = len(mine["rois"])
    theirs = jax.tree.map(np.asarray, theirs)
    assert int(theirs["valid"].sum()) == n and theirs["valid"][:n].all(), "same count, valid first"
    np.testing.assert_array_equal(theirs["rois"][:n], mine["rois"])
    np.testing.assert_array_equal(theirs["labels"][:n], mine["labels"])
    np.testing.assert_array_equal(theirs["positive"][:n], mine["positive"])
    pos = mine["positive"]  # targets matter only for positives (the loss masks the rest)
    np.testing.assert_array_equal(theirs["matched_gt"][:n][pos], mine["matched_gt"][pos])
    np.testing.assert_allclose(theirs["box_targets"][:n][pos], mine["box_targets"][pos], rtol=1e-5, atol=1e-5)
    assert not theirs["positive"][n:].any() and (theirs["labels"][n:] == 0).all(), "padding is background"


theirs = sample_rois(keys[0], proposals[0], proposal_valid[0], gt_boxes[0], gt_labels[0], gt_valid[0], heads)
print({k: v.shape for k, v in theirs.items()})
compare(mine, theirs)
for k in range(NUM_KEYS):  # more keys, both images
    for b in range(2):
        kb = jax.random.fold_in(jax.random.key(k), b)
        args = (kb, proposals[b], proposal_valid[b], gt_boxes[b], gt_labels[b], gt_valid[b])
        compare(my_sample_rois(*args), sample_rois(*args, heads))
print(f"inline sampler == mrcnn_jax.roi_heads.sample_rois on {NUM_KEYS} keys x 2 images")

# %% [markdown]
# Batched over images with `jax.vmap` (one key each), as in `MaskRCNN.train_forward`. `in_axes`
# says, per argument, which axis to map over: `0` for the keys and the per-image arrays (their
# leading `B` axis), `None` for `heads`, the config, which every image shares as it is. The
# outputs gain a leading `B` axis. Image 0 has fewer background candidates (printed in section
# 4) than the slots its positives leave free, so it fills fewer than `S` valid slots:

# %%
samples = jax.vmap(sample_rois, in_axes=(0, 0, 0, 0, 0, 0, None))(
    keys, proposals, proposal_valid, gt_boxes, gt_labels, gt_valid, heads)
samples = jax.tree.map(np.asarray, samples)
S = samples["rois"].shape[1]
print({k: v.shape for k, v in samples.items()})
print("positives per image:", samples["positive"].sum(axis=1), " valid per image:", samples["valid"].sum(axis=1))
np.testing.assert_array_equal(samples["rois"][0], np.asarray(theirs["rois"]))
assert samples["valid"][0].sum() < S  # image 0 is short of negatives (see the text above)

# %%
fig, axes = plotting.subplots(ncols=2, size=4.2)
plotting.show_image(axes[0], image, f"{P} proposals + {n_gt} ground truth")
plotting.draw_boxes(axes[0], proposals[0], colours=[plotting.colour(9)] * P, linewidth=0.8)
plotting.draw_boxes(axes[0], gt_boxes[0], labels=gt_labels[0], class_names=names, valid=gt_valid[0],
                    linewidth=2)
plotting.show_image(axes[1], image)
neg = samples["valid"][0] & ~samples["positive"][0]
plotting.draw_boxes(axes[1], samples["rois"][0], colours=[plotting.colour(9)] * S, linestyle="--",
                    linewidth=0.8, valid=neg)
plotting.draw_boxes(axes[1], samples["rois"][0], colours=[plotting.colour(k) for k in samples["labels"][0]],
                    linewidth=1.2, valid=samples["positive"][0])
axes[1].set_title("sampled: positives (class colour), negatives (grey, dashed)", fontsize=9)
fig.tight_layout()
plt.show()

# %% [markdown]
# ## 5. Box targets
#
# Each positive RoI regresses towards its matched object. The appended ground-truth box is its
# own perfect RoI, target `(0, 0, 0, 0)`; a jittered copy has small deltas that the weights
# `(10, 10, 5, 5)` scale back to order 1. By hand for one positive RoI:

# %%
pos_idx = np.flatnonzero(samples["positive"][0])
r = int(pos_idx[np.argmax(np.abs(samples["box_targets"][0][pos_idx]).sum(axis=1))])  # a clearly off one
roi, gt = samples["rois"][0, r], gt_boxes[0, samples["matched_gt"][0, r]]
(rx, ry), (rw, rh) = (roi[:2] + roi[2:]) / 2, roi[2:] - roi[:2]
(gx, gy), (gw, gh) = (gt[:2] + gt[2:]) / 2, gt[2:] - gt[:2]
by_hand = [10 * (gx - rx) / rw, 10 * (gy - ry) / rh, 5 * math.log(gw / rw), 5 * math.log(gh / rh)]
print("RoI", np.round(roi, 1), "-> its object", gt)
print("by hand:", np.round(by_hand, 4), "\npackage:", np.round(samples["box_targets"][0, r], 4))
np.testing.assert_allclose(samples["box_targets"][0, r], by_hand, rtol=1e-4, atol=1e-4)
exact = np.all(samples["rois"][0][pos_idx] == gt_boxes[0][samples["matched_gt"][0][pos_idx]], axis=1)
print(f"{exact.sum()} positives are appended ground-truth boxes, targets",
      np.abs(samples["box_targets"][0][pos_idx][exact]).max())
print("std of the positives' targets (dx, dy, dw, dh):", np.round(samples["box_targets"][0][pos_idx].std(axis=0), 2))

# %% [markdown]
# ## 6. The box head
#
# Each sampled RoI is pooled from its FPN level at 7 x 7 (notebook 04) and goes through
# torchvision's `TwoMLPHead` (flatten, `fc6`, ReLU, `fc7`, ReLU) and the predictor: `cls_score`
# gives `K = config.num_classes` logits (the number of classes, background included: 4 here) and
# `bbox_pred` **class-specific** deltas, 4 per class.
# The features come from an untrained `MaskRCNN` backbone + FPN, jitted once (eager op-by-op
# execution of a ResNet is slow on a CPU).

# %%
model = MaskRCNN(config, rngs=nnx.Rngs(0))
features = nnx.jit(lambda m, x: m.features(x))(model, jnp.asarray(batch["images"]))  # P2..P6
print("FPN levels:", [f.shape for f in features])
box_features = model.pool(features, jnp.asarray(samples["rois"]), heads.box_roi_size)  # (B*S, 7, 7, F)
print("pooled for the box head:", box_features.shape)
for name in ("fc6", "fc7", "cls_score", "bbox_pred"):
    layer = getattr(model.box_head, name)
    print(f"  {name:9s} kernel {layer.kernel.shape}")

# %%
class_logits, box_deltas = nnx.jit(lambda head, x: head(x))(model.box_head, box_features)
K = config.num_classes
class_logits = class_logits.reshape(2, S, K)  # (B, S, K)
box_deltas = box_deltas.reshape(2, S, K, 4)  # (B, S, K, 4)
print("class logits", class_logits.shape, " box deltas", box_deltas.shape)
print("untrained logits are small (std 0.01 init of cls_score):", np.round(np.asarray(class_logits[0, :3]), 4))
assert class_logits.shape == (2, S, K) and box_deltas.shape == (2, S, K, 4)

# %% [markdown]
# ## 7. Mask targets, by hand
#
# The mask head predicts an `M x M = 28 x 28` mask **inside each positive RoI**, so its target
# is the RoI's matched ground-truth mask **cut out by the RoI** and resampled to `M x M`.
# torchvision does exactly this with RoIAlign on the 0/1 mask (spatial scale 1,
# `aligned=False`). Toy case: an 8 x 8 mask with a 4 x 4 square in rows and columns 2..5 (it
# covers `[2, 6) x [2, 6)`), `M = 2` and 2 x 2 samples per bin. With `aligned=False` the value of
# pixel `i` sits at coordinate `i` (notebook 04), so a sample at `x` interpolates pixels
# `floor(x)` and `floor(x) + 1`. The mask is a product of a row profile and a column profile,
# so each bin is the product of two 1-D averages.
#
# - RoI `[2, 2, 6, 6]`, the square's own box: bins 2 pixels wide, samples at 2.5, 3.5 (bin 0:
#   values 1, 1) and 4.5, 5.5 (bin 1: 1 and, halfway between pixel 5 = 1 and pixel 6 = 0, 0.5).
#   Profiles `(1, 0.75)`, target `[[1, 0.75], [0.75, 0.5625]]`: **soft** even for a perfect RoI,
#   and shifted by half a pixel.
# - RoI `[1, 1, 5, 5]`: samples 1.5, 2.5 (0.5, 1) and 3.5, 4.5 (1, 1): profiles `(0.75, 1)`,
#   target `[[0.5625, 0.75], [0.75, 1]]`.
# - With `aligned=True` (detectron2) every sample moves by -0.5 pixel, onto pixel centres: the
#   square's own box reads 2, 3, 4, 5, all ones.

# %%
toy_mask = np.zeros((8, 8), np.float32)
toy_mask[2:6, 2:6] = 1.0
toy_rois = np.array([[2, 2, 6, 6], [1, 1, 5, 5]], np.float32)


def toy_roi_align(aligned):
    return mrcnn_jax.roi_align(toy_mask[None, :, :, None], toy_rois, np.zeros(2, np.int32), (2, 2),
                               1.0, 2, aligned)[..., 0]  # (2, 2, 2)


print("aligned=False:\n", np.asarray(toy_roi_align(False)))
print("aligned=True, the square's own box:\n", np.asarray(toy_roi_align(True)[0]))
np.testing.assert_allclose(toy_roi_align(False), [[[1, 0.75], [0.75, 0.5625]], [[0.5625, 0.75], [0.75, 1]]])
np.testing.assert_allclose(toy_roi_align(True)[0], np.ones((2, 2)))

# %% [markdown]
# ## 8. Mask targets for the sampled RoIs
#
# Only positives get a mask loss. Positives come first, and at most `S · 0.25` of them exist,
# so torchvision's rule fits in a static shape: the mask head looks at the first
# `S_m = S · 0.25` slots, with `valid = positive`. The mask head is the most expensive part per
# RoI, so the config can cap `S_m` lower (`mask_rois_per_image`; the small config takes 8):
# then only the first `S_m` positives are kept, which for the RPN's score-sorted proposals are
# the best-scoring ones (ours are in random order). For each slot: take the mask of its matched
# object (image `b`, slot `matched_gt`), treat the `B · G` masks as a batch of one-channel
# "feature maps" and RoIAlign the RoI from it at 28 x 28.

# %%
S_m = heads.mask_rois_per_image or int(S * heads.positive_fraction)  # as MaskRCNN.train_forward
mask_rois = samples["rois"][:, :S_m]  # (B, S_m, 4)
mask_matched = samples["matched_gt"][:, :S_m]  # (B, S_m)
mask_valid = samples["positive"][:, :S_m]  # (B, S_m)
print(f"S_m = {S_m} (S · 0.25 = {int(S * heads.positive_fraction)}); positives per image",
      samples["positive"].sum(axis=1), "-> mask RoIs per image", mask_valid.sum(axis=1))
assert (mask_valid.sum(axis=1) == np.minimum(samples["positive"].sum(axis=1), S_m)).all()


def my_mask_targets(gt_masks, rois, matched_gt, mask_size=heads.mask_size, sampling_ratio=2):
    b, g, h, w = gt_masks.shape
    r = rois.shape[1]
    flat = gt_masks.reshape(b * g, h, w, 1).astype(np.float32)  # (B*G, H, W, 1): one "map" per mask
    which = (np.arange(b)[:, None] * g + matched_gt).reshape(-1)  # (B*R,) the matched mask of each RoI
    out = mrcnn_jax.roi_align(flat, rois.reshape(-1, 4), which, (mask_size, mask_size), 1.0,
                              sampling_ratio, False)  # (B*R, M, M, 1)
    return np.asarray(out).reshape(b, r, mask_size, mask_size)


my_targets = my_mask_targets(gt_masks, mask_rois, mask_matched)
print("mask targets", my_targets.shape, " values in", [float(my_targets.min()), float(my_targets.max())])
theirs_targets = mask_targets(jnp.asarray(gt_masks), jnp.asarray(gt_boxes), jnp.asarray(mask_rois),
                              jnp.asarray(mask_matched), config.image_size, heads.mask_size,
                              heads.mask_target_sampling_ratio)
np.testing.assert_allclose(my_targets, theirs_targets, atol=1e-6)
print("inline mask targets == mrcnn_jax.roi_heads.mask_targets")

# %% [markdown]
# **Soft or thresholded?** RoIAlign averages 0/1 pixels, so a target is fractional along the
# object's edges. torchvision trains on these soft values (binary cross-entropy accepts any target
# in `[0, 1]`); detectron2 thresholds them at 0.5 and samples with `aligned=True`, without the
# half-pixel shift of section 7. `mrcnn_jax` defaults to torchvision's choice
# (`binary_mask_targets=False`) and offers detectron2's threshold as `binary=True`.

# %%
binary_targets = np.asarray(mask_targets(jnp.asarray(gt_masks), jnp.asarray(gt_boxes), jnp.asarray(mask_rois),
                                         jnp.asarray(mask_matched), config.image_size, heads.mask_size,
                                         heads.mask_target_sampling_ratio, binary=True))
# the same threshold, except within float32 rounding of 0.5, where two compilations may differ
decided = np.abs(my_targets - 0.5) > 1e-5
np.testing.assert_array_equal(binary_targets[decided], (my_targets >= 0.5)[decided])
soft_pixels = (my_targets > 0) & (my_targets < 1)
print(f"fractional target pixels in positive RoIs: {soft_pixels[mask_valid].mean():.1%}")

# %%
def mask_target_grid(b, rows):
    """One row per positive RoI: RoI on the image, on its gt mask, soft target, binary target."""
    fig, axes = plotting.subplots(ncols=4, nrows=len(rows), size=2.1)
    axes = axes.reshape(len(rows), 4)
    for row, r in zip(axes, rows, strict=True):
        g, label = int(mask_matched[b, r]), int(samples["labels"][b, r])
        roi_colour = [plotting.colour(label)]
        plotting.show_image(row[0], image if b == 0 else batch["images"][b])
        plotting.draw_boxes(row[0], gt_boxes[b, g], colours=["white"], linestyle="--")
        plotting.draw_boxes(row[0], mask_rois[b, r], colours=roi_colour, linewidth=2)
        row[0].set_ylabel(f"RoI {r}: {names[label]}", fontsize=9)
        row[1].imshow(gt_masks[b, g], cmap="gray", vmin=0, vmax=1)
        plotting.draw_boxes(row[1], mask_rois[b, r], colours=roi_colour, linewidth=2)
        row[2].imshow(my_targets[b, r], cmap="gray", vmin=0, vmax=1)
        row[3].imshow(binary_targets[b, r], cmap="gray", vmin=0, vmax=1)
        for ax in row[1:]:
            ax.set_xticks([])
            ax.set_yticks([])
    for ax, title in zip(axes[0], ["RoI (gt box dashed)", "matched gt mask + RoI",
                                   "soft target 28x28\n(torchvision)", "thresholded at 0.5\n(detectron2)"],
                         strict=True):
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


# show a spread of positives: the most off-centre ones first, one per object where possible
pos0 = np.flatnonzero(mask_valid[0])
off = np.abs(samples["box_targets"][0][pos0]).sum(axis=1)
order = pos0[np.argsort(-off)]
rows = list(dict.fromkeys([order[np.flatnonzero(mask_matched[0][order] == g)[0]]
                           for g in np.unique(mask_matched[0][order])]))[:4]
rows += [r for r in order if r not in rows][: 5 - len(rows)]
mask_target_grid(0, rows)
plt.show()

# %% [markdown]
# A RoI shifted off its object gets a target that is shifted the *other* way inside the 28 x 28
# frame: the mask head learns to draw the object where it really is relative to the RoI, not
# to fill the box. RoIs that overlap another object still get only **their own** object's mask
# (the other object is background for them).
#
# ## 9. The mask head
#
# Positive RoIs are pooled at 14 x 14 and go through four 3x3 convs with ReLU (64 channels in
# the small config, 256 in torchvision's), a 2x2 stride-2 transposed conv to 28 x 28, and a 1x1
# conv to **one mask per class**: `K` channels.

# %%
mask_features = model.pool(features, jnp.asarray(mask_rois), heads.mask_roi_size)  # (B*S_m, 14, 14, F)
for k, conv in enumerate(model.mask_head.convs):
    print(f"  conv{k + 1}       kernel {conv.kernel.shape}  (3x3, HWIO)")
print(f"  conv5_mask  kernel {model.mask_head.conv5_mask.kernel.shape}  (2x2 transposed, stride 2)")
print(f"  mask_fcn_logits kernel {model.mask_head.mask_fcn_logits.kernel.shape}  (1x1 to K)")
mask_logits = nnx.jit(lambda head, x: head(x))(model.mask_head, mask_features)
mask_logits = mask_logits.reshape(2, S_m, *mask_logits.shape[1:])  # (B, S_m, 28, 28, K)
print("pooled", mask_features.shape, "-> mask logits", mask_logits.shape)
assert mask_logits.shape == (2, S_m, heads.mask_size, heads.mask_size, K)

# %% [markdown]
# ### Why only the ground-truth class's channel enters the loss
#
# The head predicts `K` masks per RoI but the loss reads **one**: the channel of the RoI's own
# class, with a per-pixel **sigmoid** and binary cross-entropy. The other channels get no
# gradient from this RoI. The paper (section 3, "Mask Representation" and Table 2b) contrasts this
# with a per-pixel **softmax** over the classes, as in FCN semantic segmentation: there the
# classes *compete* for every pixel, so learning "this pixel is a square" pushes "circle" down.
# With independent sigmoids the mask branch only answers "is this pixel part of the object?",
# and *which* class it is stays the box classifier's job. Decoupling gave +5.5 mask AP
# (30.3 vs 24.8, ResNet-50-C4).
#
# One pixel, four classes, ground-truth class 1, target 1: the gradient of each loss with
# respect to the four logits.

# %%
pixel_logits = jnp.array([0.5, 2.0, -1.0, 0.3])  # one pixel's K = 4 mask logits
sigmoid_grad = jax.grad(lambda z: binary_cross_entropy_with_logits(z[1], 1.0))(pixel_logits)
softmax_grad = jax.grad(lambda z: softmax_cross_entropy(z, jnp.array(1)))(pixel_logits)
print("per-class sigmoid, gt channel only:", np.round(np.asarray(sigmoid_grad), 4))
print("softmax over classes:              ", np.round(np.asarray(softmax_grad), 4))
np.testing.assert_allclose(sigmoid_grad, [0, jax.nn.sigmoid(2.0) - 1, 0, 0], rtol=1e-5)
np.testing.assert_allclose(softmax_grad, jax.nn.softmax(pixel_logits) - jnp.eye(4)[1], rtol=1e-5)

# %% [markdown]
# With the sigmoid only channel 1 moves (`σ(2) - 1`); with the softmax every other class's logit is
# pushed *down* in proportion to its probability. At test time the box head's class picks the
# channel to paste (notebook 10).
#
# ## 10. The losses
#
# **Box classifier**: softmax cross-entropy over all `S` valid samples per image, averaged.
# Untrained, the logits are small (within ±0.3 in the rows printed in section 6), so every class
# has a probability near `1/K` and the loss is near `log K = log 4 ≈ 1.386`: a number to check by
# hand (the assert below allows 0.05).
#
# **Box regression**: smooth-L1 (`beta = 1/9`, torchvision) between the **ground-truth class's**
# four deltas and the targets, summed over positives and divided by the number of **all**
# samples (torchvision's `fastrcnn_loss`), so that it is weighted like the classifier.
#
# **Mask**: per-pixel binary cross-entropy on the ground-truth class's channel, averaged over the
# 28 x 28 pixels and over the positive RoIs.

# %%
def my_box_losses(class_logits, box_deltas, samples, beta=heads.smooth_l1_beta):
    valid, labels, positive = samples["valid"], samples["labels"], samples["positive"]
    log_probs = jax.nn.log_softmax(class_logits, axis=-1)  # (B, S, K)
    ce = -np.take_along_axis(np.asarray(log_probs), labels[..., None], axis=-1)[..., 0]  # (B, S)
    own = np.take_along_axis(np.asarray(box_deltas), labels[..., None, None], axis=2)[:, :, 0]  # (B, S, 4)
    diff = np.abs(own - samples["box_targets"])
    sl1 = np.where(diff < beta, 0.5 * diff**2 / beta, diff - 0.5 * beta).sum(axis=-1)  # (B, S)
    count = max(valid.sum(), 1)
    return {"box_classifier": ce[valid].sum() / count, "box_regression": sl1[positive].sum() / count}


mine_box = my_box_losses(class_logits, box_deltas, samples)
theirs_box = box_losses(class_logits, box_deltas, jax.tree.map(jnp.asarray, samples), heads.smooth_l1_beta)
print({k: round(float(v), 5) for k, v in mine_box.items()}, "log 4 =", round(math.log(4), 5))
for name in mine_box:
    np.testing.assert_allclose(mine_box[name], theirs_box[name], rtol=1e-5)
assert abs(float(mine_box["box_classifier"]) - math.log(4)) < 0.05  # untrained: uniform over 4 classes

# %%
def my_mask_loss(mask_logits, labels, targets, valid):
    own = np.take_along_axis(np.asarray(mask_logits), labels[:, :, None, None, None], axis=-1)[..., 0]
    p = jax.nn.sigmoid(own)  # (B, S_m, M, M) probabilities of the gt class
    eps = 1e-12
    bce = -(targets * np.log(p + eps) + (1 - targets) * np.log(1 - p + eps))  # naive, fine for small logits
    return bce.mean(axis=(2, 3))[valid].mean()


mask_labels = samples["labels"][:, :S_m]
mine_mask = my_mask_loss(mask_logits, mask_labels, my_targets, mask_valid)
theirs_mask = mask_loss(mask_logits, jnp.asarray(mask_labels), jnp.asarray(my_targets), jnp.asarray(mask_valid))
print(f"mask loss: mine {float(mine_mask):.5f}, mrcnn_jax {float(theirs_mask):.5f}")
np.testing.assert_allclose(mine_mask, theirs_mask, rtol=1e-4)

# %% [markdown]
# Padding and negatives add exactly zero: the package masks with `jnp.where` *before* summing
# (never multiplies a possible `nan` by 0), and it never divides by a zero count. An image with
# no objects has no positives, so its box-regression and mask losses are 0, not `0 / 0`. The
# cell below goes further and marks every slot invalid (no sample at all), so the classifier
# loss is 0 too.

# %%
empty = {k: np.zeros_like(v) for k, v in samples.items()}  # no valid sample, no positive
print({k: float(v) for k, v in box_losses(class_logits, box_deltas, empty, heads.smooth_l1_beta).items()},
      "mask:", float(mask_loss(mask_logits, jnp.asarray(mask_labels), jnp.asarray(my_targets),
                                jnp.zeros_like(jnp.asarray(mask_valid)))))

# %% [markdown]
# ## Summary
#
# - The RoI heads train on a fixed `S` RoIs per image: proposals plus the appended ground
#   truth, foreground at IoU ≥ 0.5, at most 25 % positives, chosen by random priorities from an
#   explicit key; positives come first, padding is marked by `valid`.
# - Each RoI's targets: a label (0 = background) and, for positives, the deltas to its object with
#   weights `(10, 10, 5, 5)`.
# - The box head (`fc6`, `fc7`, `cls_score`, `bbox_pred`) maps a 7 x 7 x F crop to `K` logits and
#   `K x 4` class-specific deltas; only the ground-truth class's deltas are regressed.
# - A mask target is the matched ground-truth mask cut out by the RoI with RoIAlign at 28 x 28:
#   soft (torchvision) or thresholded at 0.5 (detectron2).
# - The mask head (4 convs, 2x2 transposed conv, 1x1 conv) predicts one mask per class; the
#   per-pixel sigmoid BCE reads only the ground-truth class's channel, so classes never compete
#   for pixels.
#
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
# **Core exercise A: mask targets.** Write `your_mask_targets(gt_masks (B, G, Hm, Wm), gt_boxes
# (B, G, 4), rois (B, R, 4), matched_gt (B, R), image_size, mask_size, sampling_ratio,
# binary=False, aligned=False) -> (B, R, M, M)` as `mrcnn_jax.roi_heads.mask_targets`: each RoI's
# *matched* ground-truth mask cut out at `M x M` with `mrcnn_jax.roi_align`. Full-image masks
# (`(Hm, Wm) == image_size`) are cut at the RoI itself; masks cropped to their ground-truth box
# need the RoI in that crop's coordinates first, and a crop cell's value sits at the cell's centre
# (as with `aligned=True`), so with `aligned=False` shift the RoI by half an image pixel and read the
# crop aligned: the targets then match the full mask's. Soft targets unless `binary`.

# %%
from mrcnn_jax.course import check_mask_targets


def your_mask_targets(gt_masks, gt_boxes, rois, matched_gt, image_size, mask_size, sampling_ratio,
                    binary=False, aligned=False):
    # BEGIN SOLUTION
    b, g, hm, wm = gt_masks.shape
    owner = jnp.take_along_axis(gt_boxes, matched_gt[..., None], axis=1)  # (B, R, 4)
    if (hm, wm) == tuple(image_size):  # full-image masks: the frame is the image
        frame = jnp.broadcast_to(jnp.array([0.0, 0.0, wm, hm]), owner.shape)
        crop_aligned = aligned
    else:  # cropped masks: the frame is the ground-truth box, each cell's value at its centre
        frame = owner
        rois = rois if aligned else rois + 0.5  # read where aligned=False reads a full mask
        crop_aligned = True
    scale = jnp.array([wm, hm], jnp.float32) / jnp.maximum(frame[..., 2:] - frame[..., :2], 1e-3)
    local = (rois - jnp.tile(frame[..., :2], 2)) * jnp.tile(scale, 2)  # (B, R, 4) mask pixels
    which = (jnp.arange(b)[:, None] * g + matched_gt).reshape(-1)  # (B * R,)
    cut = mrcnn_jax.roi_align(jnp.asarray(gt_masks, jnp.float32).reshape(b * g, hm, wm, 1),
                              local.reshape(-1, 4), which, (mask_size, mask_size), 1.0,
                              sampling_ratio, crop_aligned)  # (B * R, M, M, 1)
    targets = cut.reshape(b, -1, mask_size, mask_size)
    return (targets >= 0.5).astype(jnp.float32) if binary else targets
    # END SOLUTION


check_mask_targets(your_mask_targets)


# %% [markdown]
# ### Extension exercises
#
# **Exercise 1: how many positives?** Write `my_sample_counts(num_fg, num_bg, num_samples,
# positive_fraction) -> (num_pos, num_neg)`: the numbers of positives and negatives the balanced
# sampler takes. What happens in an image with no objects at all (think of the appended ground
# truth)?

# %%
def check_sample_counts(fn):
    cases = [((3, 2, 8, 0.25), (2, 2)), ((1, 100, 64, 0.25), (1, 63)), ((40, 100, 64, 0.25), (16, 48)),
             ((40, 10, 64, 0.25), (16, 10)), ((0, 72, 64, 0.25), (0, 64)), ((5, 5, 512, 0.25), (5, 5))]
    for args, expected in cases:
        got = tuple(int(v) for v in fn(*args))
        assert got == expected, f"my_sample_counts{args}: expected {expected}, got {got}"
    for k in range(3):  # and the package's sampler on random labels
        labels = np.asarray(jax.random.randint(jax.random.key(k), (200,), -1, 2))
        pos, negs = mrcnn_jax.sampler.sample_balanced(jax.random.key(k), jnp.asarray(labels), 64, 0.25)
        got = tuple(int(v) for v in fn(int((labels == 1).sum()), int((labels == 0).sum()), 64, 0.25))
        assert got == (int(pos.sum()), int(negs.sum())), f"random labels {k}: got {got}"


def my_sample_counts(num_fg, num_bg, num_samples, positive_fraction):
    raise NotImplementedError


try:
    check_sample_counts(my_sample_counts)
    print("correct!")
except NotImplementedError:
    print("not attempted yet")

# %% [markdown]
# **Exercise 2: smooth-L1.** Write `my_smooth_l1(x, beta)`: `0.5 x² / beta` where `|x| < beta`,
# else `|x| - 0.5 beta`, and plain `|x|` when `beta = 0`. Then explain why the box head uses a
# small `beta = 1/9`: where does the loss stop being quadratic, in pixels, for a 40-pixel RoI and
# `dx` weighted by 10?

# %%
def check_smooth_l1(fn):
    x = np.linspace(-2, 2, 81).astype(np.float32)
    for beta in (1 / 9, 1.0):
        np.testing.assert_allclose(np.asarray(fn(jnp.asarray(x), beta)), smooth_l1(jnp.asarray(x), beta),
                                   rtol=1e-6, atol=1e-7, err_msg=f"beta = {beta}")
    np.testing.assert_allclose(np.asarray(fn(jnp.asarray(x), 0.0)), np.abs(x), err_msg="beta = 0 is L1")
    g = jax.grad(lambda v: fn(v, 1 / 9))(0.05)
    assert abs(float(g) - 0.45) < 1e-5, f"the slope at x = 0.05 should be x / beta = 0.45, got {float(g)}"


def my_smooth_l1(x, beta):
    raise NotImplementedError


try:
    check_smooth_l1(my_smooth_l1)
    print("correct!")
except NotImplementedError:
    print("not attempted yet")

# %% [markdown]
# **Exercise 3: detectron2's mask targets.** detectron2 cuts masks with `aligned=True` and
# thresholds at 0.5. Write `my_d2_mask_targets(gt_masks (B, G, H, W), rois (B, R, 4), matched_gt
# (B, R)) -> (B, R, 28, 28)` float 0/1 (sampling ratio 2). On how many pixels of our positive
# RoIs does it differ from `binary_targets` (torchvision's sampling, thresholded)? Why so few?

# %%
def check_d2_mask_targets(fn):
    got = np.asarray(fn(gt_masks, mask_rois, mask_matched))
    assert got.shape == my_targets.shape, f"expected {my_targets.shape}, got {got.shape}"
    assert set(np.unique(got)) <= {0.0, 1.0}, "targets must be thresholded to 0/1"
    b, g, h, w = gt_masks.shape
    flat = gt_masks.reshape(b * g, h, w, 1).astype(np.float32)
    which = (np.arange(b)[:, None] * g + mask_matched).reshape(-1)
    soft = mrcnn_jax.roi_align(flat, mask_rois.reshape(-1, 4), which, (28, 28), 1.0, 2, True)
    expected = (np.asarray(soft).reshape(got.shape) >= 0.5).astype(np.float32)
    wrong = got != expected
    assert not wrong.any(), f"{wrong.sum()} pixels differ from aligned=True, thresholded at 0.5"


def my_d2_mask_targets(gt_masks, rois, matched_gt):
    raise NotImplementedError


try:
    check_d2_mask_targets(my_d2_mask_targets)
    print("correct!")
except NotImplementedError:
    print("not attempted yet")

# %% [markdown]
# **Exercise 4: the multinomial mask loss.** Write `my_softmax_mask_loss(mask_logits (B, R, M, M,
# K), labels (B, R), targets (B, R, M, M), valid (B, R))`: the paper's rejected alternative, a
# per-pixel softmax over the `K` channels where a pixel with target ≥ 0.5 should be class
# `labels` and every other pixel class 0 (background); average over the pixels of valid RoIs.
# Check that its gradient reaches **every** channel, unlike `mask_loss`.

# %%
def check_softmax_mask_loss(fn):
    logits = jax.random.normal(jax.random.key(3), (2, 3, 4, 4, 4))
    labels = jnp.array([[1, 2, 0], [3, 1, 1]])
    targets = (jax.random.uniform(jax.random.key(4), (2, 3, 4, 4)) > 0.5).astype(jnp.float32)
    valid = jnp.array([[True, True, False], [True, False, True]])
    pixel_class = jnp.where(targets >= 0.5, labels[:, :, None, None], 0)  # (B, R, M, M)
    ce = softmax_cross_entropy(logits, pixel_class).mean(axis=(2, 3))  # (B, R)
    expected = float(jnp.sum(jnp.where(valid, ce, 0.0)) / jnp.sum(valid))
    got = float(fn(logits, labels, targets, valid))
    assert abs(got - expected) < 1e-5, f"expected {expected:.6f}, got {got:.6f}"
    grads = jax.grad(lambda z: fn(z, labels, targets, valid))(logits)
    assert float(jnp.abs(grads[0, 0, ..., 3]).sum()) > 0, "softmax: a non-gt channel gets gradient too"
    assert float(jnp.abs(grads[0, 2]).sum()) == 0, "an invalid RoI must get no gradient"


def my_softmax_mask_loss(mask_logits, labels, targets, valid):
    raise NotImplementedError


try:
    check_softmax_mask_loss(my_softmax_mask_loss)
    print("correct!")
except NotImplementedError:
    print("not attempted yet")
