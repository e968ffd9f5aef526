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
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/mrcnn-jax/mrcnn_jax/blob/v0.2.0/notebooks/10_inference_and_evaluation.ipynb)
#
# # 10 · Inference and evaluation
#
# *From the heads' raw outputs to scored detections with pasted masks, and from detections to
# COCO's mask AP, one step at a time.*
#
# **You will learn**
# - postprocessing: class scores, class-specific boxes, score threshold, per-class NMS, top-k
#   (`mrcnn_jax.postprocess.detect_boxes`), and `predict` / `predict_raw`;
# - pasting a `28x28` mask into the image (`paste_masks`) and thresholding it at 0.5; asking
#   the mask head a second time on the mirrored image (test-time flip);
# - the IoU of two masks, by hand and through COCO's run-length encoding (RLE);
# - average precision for one category: rank by score, match greedily, precision/recall,
#   101-point interpolation, the mean over IoU 0.5:0.95; checked against
#   `mrcnn_jax.coco_evaluate` and pycocotools' `COCOeval`.

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
import pathlib
import time

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
from flax import nnx
from pycocotools import mask as mask_utils

from mrcnn_jax import plotting
from mrcnn_jax.boxes import clip_boxes, decode_boxes
from mrcnn_jax.checkpoints import restore_model
from mrcnn_jax.config import small_config
from mrcnn_jax.coco_masks import mask_iou, masks_to_rle
from mrcnn_jax.coco_matching import IOU_THRESHOLDS, RECALL_THRESHOLDS
from mrcnn_jax.data import class_names, make_loader, shapes_source
from mrcnn_jax.evaluate import evaluate_model, pycocotools_stats
from mrcnn_jax.evaluation import coco_evaluate, print_table
from mrcnn_jax.inference import mask_probs, mirrored_mask_probs, predict, predict_raw
from mrcnn_jax.model import MaskRCNN
from mrcnn_jax.paste_masks import paste_masks
from mrcnn_jax.postprocess import detect_boxes
from mrcnn_jax.training import make_optimizer, to_device_batch, train_step

FAST = os.environ.get("MRCNN_JAX_FAST", "0") == "1"
# TPUs (and recent GPUs) run float32 matmuls and convolutions in bfloat16 or TF32 passes by default;
# this notebook's asserts compare with CPU references, so ask for full float32 (no change on a CPU).
jax.config.update("jax_default_matmul_precision", "highest")
logging.getLogger("absl").setLevel(logging.ERROR)  # hide TFDS's "custom config" notices
MAIN_JOB = pathlib.Path("../outputs/shapes")  # the README's main job, if it has been run
USE_MAIN_JOB = not FAST and (MAIN_JOB / "run.json").exists()
print(f"FAST={FAST}; model from {'the main job in ' + str(MAIN_JOB) if USE_MAIN_JOB else 'a short run here'}")

# %% [markdown]
# ## 1. A model
#
# With the README's main job done (`python -m mrcnn_jax.train --minutes 17 --workdir
# outputs/shapes`: `shapes_config`, mask AP 0.816 on its 500 held-out images), we load its latest
# checkpoint with `checkpoints.restore_model`. Otherwise, and always in the fast setting, we
# train `small_config` here with notebook 09's loop: 300 steps at 128x128 (50 at 64x64 in the
# fast setting). That model is weaker than the main job's; section 6 measures it. Every step
# below works the same on any model; only the numbers change, and the cell below says which
# model this run used.

# %%
if USE_MAIN_JOB:
    model, run = restore_model(MAIN_JOB)
    DATA, IMAGE, NUM_VAL = run["data"], run["data"]["image_size"], 104  # the first 104 held-out images
    print(f"loaded the latest checkpoint of {MAIN_JOB.resolve()}")
else:
    IMAGE, NUM_TRAIN, NUM_VAL, STEPS = (64, 64, 16, 50) if FAST else (128, 1000, 100, 300)
    DATA = {"num_train": NUM_TRAIN, "num_val": NUM_VAL, "image_size": IMAGE, "seed": 0}
    train_source = shapes_source("train", **DATA)
    loader = make_loader(train_source, 4, image_size=IMAGE, max_instances=6, seed=0, num_epochs=None)
    model = MaskRCNN(small_config(image_size=(IMAGE, IMAGE)), rngs=nnx.Rngs(0))
    optimizer = make_optimizer(model, 0.02, warmup_steps=10, total_steps=STEPS)
    began = time.perf_counter()
    for step in range(STEPS):
        terms = train_step(model, optimizer, to_device_batch(loader.dataset[step]),
                           jax.random.fold_in(jax.random.key(0), step))
        if step == 0 or (step + 1) % (STEPS // 5) == 0:
            print(f"step {step + 1:4d}  loss {float(terms['loss']):.3f}  ({time.perf_counter() - began:.0f} s)")
    print(f"trained here: {STEPS} steps of 4 images at {IMAGE}x{IMAGE} ({'a weak' if FAST else 'a short'} run)")

NUM_VAL = NUM_VAL // 8 * 8  # whole batches of 8: the loader below drops a partial last batch
val_source = shapes_source(f"validation[:{NUM_VAL}]", **DATA)
NAMES = class_names(val_source)
val_loader = make_loader(val_source, 8, image_size=IMAGE, max_instances=8, train=False)
batch = next(iter(val_loader))
images = jnp.asarray(batch["images"])
print("classes:", NAMES, "; validation images:", len(val_source), "; a batch:", images.shape)

# %% [markdown]
# ## 2. Postprocessing, step by step
#
# At test time the RPN gives `P` proposals per image, and the box head gives, for each, `K`
# class logits (`K` classes, background first, as in the Mask R-CNN paper) and `K`
# class-specific box deltas. We jit the model up to there, and `predict_raw` (the whole of
# inference before mask pasting) beside it: one compile. The last line printed is the
# postprocessing settings of this model's config, which the steps below use: `small_config`
# keeps torchvision's score threshold 0.05 and NMS IoU 0.5 (at most 20 detections), while
# `shapes_config` uses 0.01, 0.6 and 50.

# %%
def heads_and_raw(model, images):
    cfg = model.config
    features = model.features(images)
    rpn = model.proposals(features, training=False)
    b, p = rpn["proposals"].shape[:2]
    logits, deltas = model.box_head(model.pool(features, rpn["proposals"], cfg.roi_heads.box_roi_size))
    heads = {"class_logits": logits.reshape(b, p, -1), "box_deltas": deltas.reshape(b, p, -1, 4),
             "proposals": rpn["proposals"], "proposal_valid": rpn["proposal_valid"]}
    return heads, predict_raw(model, images)


start = time.perf_counter()
heads, raw = jax.tree.map(np.asarray, nnx.jit(heads_and_raw)(model, images))
print(f"compiled and ran in {time.perf_counter() - start:.0f} s")
print({k: v.shape for k, v in heads.items()})
print({k: v.shape for k, v in raw.items()})
cfg = model.config.roi_heads
print(f"score_threshold {cfg.score_threshold}, nms_threshold {cfg.nms_threshold}, "
      f"detections_per_image {cfg.detections_per_image}, min_size {cfg.min_size}")

# %% [markdown]
# **Class scores**: a softmax over the `K` logits; column 0 (background) is dropped. Every
# (proposal, class) pair becomes a candidate detection, so an ambiguous proposal can yield
# a square *and* a circle.

# %%
i = 0  # the image we follow
logits, deltas = heads["class_logits"][i], heads["box_deltas"][i]  # (P, K), (P, K, 4)
proposals, proposal_valid = heads["proposals"][i], heads["proposal_valid"][i]
probs = np.exp(logits - logits.max(axis=1, keepdims=True))
probs /= probs.sum(axis=1, keepdims=True)  # (P, K)
np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
print("proposal 0: probabilities", probs[0].round(3), "over", ["background", *NAMES[1:]])

# %% [markdown]
# **Class-specific boxes**: proposal `p` decoded with the deltas of class `k` (weights
# `10, 10, 5, 5`, notebook 01), then clipped to the image.

# %%
boxes = np.asarray(clip_boxes(decode_boxes(deltas, proposals[:, None, :], cfg.box_weights),
                              (IMAGE, IMAGE)))  # (P, K, 4)
K = logits.shape[1]
cand_boxes = boxes[:, 1:].reshape(-1, 4)  # (P*(K-1), 4) background dropped
cand_scores = probs[:, 1:].reshape(-1)
cand_labels = np.tile(np.arange(1, K), len(proposals))
print(f"{len(cand_scores)} candidates = {len(proposals)} proposals x {K - 1} classes")

# %% [markdown]
# **Score threshold and size**: keep candidates of valid proposals with a score above
# `score_threshold` and boxes at least `min_size` (0.01 px) wide and high.

# %%
w, h = cand_boxes[:, 2] - cand_boxes[:, 0], cand_boxes[:, 3] - cand_boxes[:, 1]
ok = np.repeat(proposal_valid, K - 1) & (cand_scores > cfg.score_threshold) & (w >= cfg.min_size) & (h >= cfg.min_size)
print(f"{ok.sum()} of {len(ok)} candidates pass the score threshold {cfg.score_threshold}")

# %% [markdown]
# **Per-class NMS, then the top `D`**: in descending score order, keep a candidate unless a kept
# box **of the same class** overlaps it with IoU above `nms_threshold` (notebook 03); stop at
# `D = detections_per_image` kept.

# %%
def iou_one_to_many(box, others):
    lt, rb = np.maximum(box[:2], others[:, :2]), np.minimum(box[2:], others[:, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=1)
    area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    union = area(box) + area(others) - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0)


def my_detect(boxes, scores, labels, ok, iou_threshold, top_k):
    order = [j for j in np.argsort(-scores, kind="stable") if ok[j]]
    kept = []
    for j in order:
        same = [m for m in kept if labels[m] == labels[j]]
        if not same or iou_one_to_many(boxes[j], boxes[same]).max() <= iou_threshold:
            kept.append(j)
        if len(kept) == top_k:
            break
    return {"boxes": boxes[kept], "scores": scores[kept], "labels": labels[kept]}


mine = my_detect(cand_boxes, cand_scores, cand_labels, ok, cfg.nms_threshold, cfg.detections_per_image)
print(f"{len(mine['scores'])} detections (NMS IoU {cfg.nms_threshold}, at most {cfg.detections_per_image}); the best five:")
for b, s, lab in zip(mine["boxes"][:5], mine["scores"][:5], mine["labels"][:5], strict=False):
    print(f"  {NAMES[lab]:8s} {s:.3f}  box {b.round(1)}")

# %% [markdown]
# The package's `detect_boxes` on the same raw outputs, and `predict_raw` (which runs it inside
# the jitted model for every image): the same detections, padded to `D` with `valid`.

# %%
theirs = jax.jit(detect_boxes, static_argnums=(4, 5))(logits, deltas, proposals, proposal_valid,
                                                      (IMAGE, IMAGE), cfg)
theirs = {k: np.asarray(v) for k, v in theirs.items()}
n = int(theirs["valid"].sum())
assert n == len(mine["scores"]), (n, len(mine["scores"]))
for k in ("boxes", "scores", "labels"):
    np.testing.assert_allclose(theirs[k][:n], mine[k], rtol=1e-5, atol=1e-4, err_msg=k)
    np.testing.assert_allclose(raw[k][i][:n], mine[k], rtol=1e-5, atol=1e-4, err_msg=k)
print(f"inline postprocessing == detect_boxes == predict_raw: {n} detections")

# %% [markdown]
# ## 3. Pasting masks
#
# The mask head then runs on the **detected** boxes and returns, for each, a `28x28` probability
# map of its own class, in the box's frame (`raw["mask_probs"]`). `paste_masks` puts it back in
# the image (torchvision's rule: pad with a border of zeros, grow the box by `30/28`, resize
# bilinearly, write at the box); threshold at 0.5 for a binary mask.
#
# By hand first: a mask of ones pasted into the box `(8, 8, 24, 24)` of a 32x32 image. The grown
# box is `16 · 30/28 ≈ 17.1` px wide, truncated to pixels 7..24, and the zero border fades the
# edge pixels 7 and 24 to about 1/3, so the binary mask is exactly the box's pixels 8..23.

# %%
ones = paste_masks(jnp.ones((1, 28, 28)), jnp.array([[8.0, 8.0, 24.0, 24.0]]), (32, 32))[0]
binary = np.asarray(ones) > 0.5
print("row 16, columns 6..25:", np.asarray(ones)[16, 6:26].round(2))
expected = np.zeros((32, 32), bool)
expected[8:24, 8:24] = True
np.testing.assert_array_equal(binary, expected)
print("binary mask == the box's pixels")

# %% [markdown]
# Truncating the grown box to whole pixels costs up to a pixel at each edge, which matters for
# shapes only a dozen pixels wide. `paste_masks(..., rule="exact")` is detectron2's rule instead:
# the 28 cells cover the box's float extent exactly and each pixel centre reads the mask
# bilinearly, a cell beyond the edge counting as 0. The same mask of ones in the box
# `(8.6, 8.6, 20.4, 20.4)`, 11.8 px wide: the grown box `[8.18, 20.82]` truncates to pixels
# 8..20, so torchvision's rule gives 13 pixels per row of the binary mask, while the exact rule
# gives the 11 pixels 9..19 whose centres lie inside the box. `RoIHeadsConfig.paste_rule`
# chooses; every preset keeps torchvision's, so imported weights give torchvision's masks and the
# benchmark against torchvision compares models, not paste rules. (How each rule scores on the
# main job's model is in `docs/tuning_notes.md`, a note for instructors.)

# %%
box = jnp.array([[8.6, 8.6, 20.4, 20.4]])
rows = {rule: np.asarray(paste_masks(jnp.ones((1, 28, 28)), box, (32, 32), rule=rule))[0, 14] > 0.5
        for rule in ("torchvision", "exact")}
for rule, row in rows.items():
    print(f"{rule:>11}: foreground columns {np.flatnonzero(row).min()}..{np.flatnonzero(row).max()}")
assert np.flatnonzero(rows["torchvision"]).tolist() == list(range(8, 21))
assert np.flatnonzero(rows["exact"]).tolist() == list(range(9, 20))

# %%
rule = model.config.roi_heads.paste_rule
masks = np.asarray(paste_masks(raw["mask_probs"][i], raw["boxes"][i], (IMAGE, IMAGE), rule))  # (D, H, W)
d = 0  # the best detection
fig, axes = plotting.subplots(ncols=3, size=3.2)
plotting.show_image(axes[0], raw["mask_probs"][i][d], f"28x28 mask of '{NAMES[raw['labels'][i][d]]}'")
plotting.show_image(axes[1], masks[d], "pasted into the image")
plotting.draw_boxes(axes[1], raw["boxes"][i][d:d + 1], colours=["white"])
plotting.show_image(axes[2], plotting.overlay_masks(batch["images"][i], masks[d:d + 1] > 0.5,
                                                    raw["labels"][i][d:d + 1]), "thresholded at 0.5")
plotting.draw_boxes(axes[2], raw["boxes"][i][d:d + 1], raw["labels"][i][d:d + 1],
                    raw["scores"][i][d:d + 1], class_names=NAMES)
fig.tight_layout()
plt.show()

# %% [markdown]
# `predict` is `predict_raw` plus this pasting, in one jitted call; its masks are ours (zero in
# padded slots).

# %%
out = jax.tree.map(np.asarray, predict(model, images))
np.testing.assert_allclose(out["masks"][i], masks * raw["valid"][i][:, None, None], atol=1e-5)
print("predict's masks == paste_masks(predict_raw's mask_probs):", out["masks"].shape)

# %% [markdown]
# ### Masks seen twice: the mirrored image
#
# A shape looks the same in a mirror, so the mask head can be asked twice: once on the image,
# once on the left-right mirrored image at the mirrored box, whose `28x28` answer is mirrored back
# into the box's frame. Averaging the two probabilities cancels part of each view's error; part
# of that error is geometric: with `aligned=False` RoIAlign reads the features half a cell off,
# and the mirror turns that offset around (with `aligned=True` the average gained much less).
# This is test-time augmentation, as detectron2's `GeneralizedRCNNWithTTA` does for masks; it
# costs one more backbone pass. `RoIHeadsConfig.mask_flip_test` turns it on inside
# `predict_raw`; `shapes_config` uses it, `small_config` does not (what it gained on the main
# job: `docs/tuning_notes.md`).
#
# Two functions of `mrcnn_jax.inference` do the work, and we use them below:
# `mask_probs(model, features, boxes, labels)` runs RoIAlign and the mask head on given boxes and
# returns each box's `28x28` probabilities for its own label, `(B, D, 28, 28)`;
# `mirrored_mask_probs(model, images, boxes, labels)` does the same on the mirrored images at the
# mirrored boxes and mirrors each answer back into the original box's frame. By hand, for the
# best detection of the image above:

# %%
boxes_i, labels_i = jnp.asarray(raw["boxes"][i:i + 1]), jnp.asarray(raw["labels"][i:i + 1])
W = model.config.image_size[1]
mirrored_box = jnp.stack([W - boxes_i[..., 2], boxes_i[..., 1], W - boxes_i[..., 0], boxes_i[..., 3]], -1)
print("box", np.asarray(boxes_i[0, d]).round(1), "-> mirrored", np.asarray(mirrored_box[0, d]).round(1))
mirror_view = mask_probs(model, model.features(images[i:i + 1, :, ::-1]), mirrored_box, labels_i)[..., ::-1]
np.testing.assert_allclose(np.asarray(mirror_view), np.asarray(mirrored_mask_probs(model, images[i:i + 1], boxes_i, labels_i)), atol=1e-4)
plain_view = mask_probs(model, model.features(images[i:i + 1]), boxes_i, labels_i)
averaged = 0.5 * (plain_view + mirror_view)  # (1, D, 28, 28)
if model.config.roi_heads.mask_flip_test:  # then predict_raw's masks are this average
    np.testing.assert_allclose(np.asarray(averaged[0]), raw["mask_probs"][i], atol=1e-4)  # jitted vs not
print(f"mean |plain - mirrored view| on detection {d}: {float(jnp.abs(plain_view - mirror_view)[0, d].mean()):.3f}")
fig, axes = plotting.subplots(ncols=3, size=2.6)
for ax, view, title in zip(axes, (plain_view, mirror_view, averaged), ("image", "mirrored image, mirrored back", "average"), strict=True):
    plotting.show_image(ax, np.asarray(view[0, d]), title)
fig.tight_layout()
plt.show()

# %% [markdown]
# ## 4. Mask IoU, by hand and with RLE
#
# The IoU of two masks counts pixels: `|A ∩ B| / |A ∪ B|`. Two small masks:

# %%
a = np.zeros((4, 5), bool)
a[0:3, 0:3] = True  # 9 pixels
b = np.zeros((4, 5), bool)
b[1:4, 1:5] = True  # 12 pixels
inter, union = (a & b).sum(), (a | b).sum()
print(a.astype(int), "\n", b.astype(int))
print(f"intersection {inter}, union {union}, IoU {inter / union:.4f}")
assert (inter, union) == (4, 17)

# %% [markdown]
# COCO stores masks as **run-length encodings**: walk the mask column by column (column-major)
# and write the lengths of alternating runs of 0s and 1s, starting with 0s. Mask `a`, column by
# column, is `1110 1110 1110 0000 0000`: runs `0, 3, 1, 3, 1, 3, 9`.

# %%
def my_rle(mask):
    flat = mask.flatten(order="F").astype(int)
    counts, current, run = [], 0, 0
    for v in flat:
        if v != current:
            counts.append(run)
            current, run = v, 0
        run += 1
    return counts + [run]


print("a:", my_rle(a), " b:", my_rle(b))
assert my_rle(a) == [0, 3, 1, 3, 1, 3, 9]
rle_a, rle_b = masks_to_rle(np.stack([a, b]))
print("compressed (COCO's string form):", rle_a)
ours = mask_utils.frPyObjects({"size": [4, 5], "counts": my_rle(a)}, 4, 5)
assert ours["counts"].decode() == rle_a["counts"]
np.testing.assert_array_equal(mask_utils.decode(rle_a), a)
iou_rle = mask_iou([rle_a], [rle_b], [False])[0, 0]
print(f"coco_masks.mask_iou on the RLEs: {iou_rle:.4f}; pycocotools: "
      f"{mask_utils.iou([rle_a], [rle_b], [0])[0, 0]:.4f}")
assert iou_rle == inter / union

# %% [markdown]
# ## 5. Average precision, by hand
#
# For one category: rank all detections (of all images) by score; going down the list, a
# detection is a **true positive** if it overlaps a ground-truth object not yet taken by a
# higher-scored detection with IoU ≥ the threshold (it takes the best such one), otherwise a
# **false positive**. After `n` detections, precision = TP / n and recall = TP / (number of
# objects). A toy: 3 objects, 5 detections, already matched at IoU 0.5.

# %%
toy_tp = np.array([True, False, True, False, True])  # scores 0.9, 0.8, 0.7, 0.6, 0.5
tp_sum = np.cumsum(toy_tp)
toy_precision = tp_sum / np.arange(1, 6)
toy_recall = tp_sum / 3
print("precision", toy_precision.round(3), "\nrecall   ", toy_recall.round(3))

# %% [markdown]
# COCO makes precision non-increasing (each point takes the best precision at any higher
# recall: the "envelope"), then reads it at 101 recall levels `0, 0.01, ..., 1`: the envelope at
# the first rank whose recall reaches the level. AP is their mean. By hand: the envelope is
# `1, 2/3, 2/3, 3/5, 3/5`; levels 0..0.33 (34 of them) read 1, levels 0.34..0.66 (33) read 2/3,
# levels 0.67..1 (34) read 3/5: AP = `(34 + 33 · 2/3 + 34 · 3/5) / 101 ≈ 0.7564`.

# %%
def my_interpolated_ap(tp, num_gt):
    """101-point interpolated AP of detections already in score order (tp: bools)."""
    if num_gt == 0:
        return -1.0
    tp = np.asarray(tp, bool)
    tp_sum, fp_sum = np.cumsum(tp), np.cumsum(~tp)
    recall = tp_sum / num_gt
    precision = tp_sum / (tp_sum + fp_sum + np.spacing(1))
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    values = np.zeros(len(RECALL_THRESHOLDS))
    for r, level in enumerate(RECALL_THRESHOLDS):
        reached = np.flatnonzero(recall >= level)
        values[r] = envelope[reached[0]] if len(reached) else 0.0
    return values.mean()


toy_ap = my_interpolated_ap(toy_tp, 3)
print(f"AP of the toy: {toy_ap:.4f}")
assert abs(toy_ap - (34 + 33 * 2 / 3 + 34 * 3 / 5) / 101) < 1e-9

# %% [markdown]
# ## 6. COCO AP of the model, step by step
#
# `evaluate_model` runs `predict` over the validation split and turns ground truth and
# detections into COCO dicts (masks as RLE, boxes `[x, y, w, h]`), then scores them with
# `coco_evaluate`. We take its COCO dicts and compute the mask AP ourselves.

# %%
start = time.perf_counter()
results, gt, dets = evaluate_model(model, val_loader, NAMES, progress=False)
print(f"{len(gt['images'])} images, {len(gt['annotations'])} objects, {len(dets)} detections "
      f"({time.perf_counter() - start:.0f} s)")
print("a detection:", {k: (v if k != "segmentation" else "RLE ...") for k, v in dets[0].items()})

# %% [markdown]
# For one category and one IoU threshold: per image, that category's detections sorted by
# score (at most 100), their mask IoU with its objects, greedy matching; then all images' results
# ranked by score together. The mean over the ten thresholds `0.5, 0.55, ..., 0.95` is the
# category's AP, and COCO's AP is the mean over categories. A category with no object in the
# evaluated images has no recall to speak of: `my_interpolated_ap` returns -1 for it, and it is
# left out of the mean, as pycocotools leaves out its -1 entries (a -1 in the mean would drag it
# down by a made-up amount).

# %%
def dense(rle):
    return mask_utils.decode(rle).astype(bool)


def match_category(gt, dets, category, threshold):
    """(scores, tp) over all images, and the number of objects of ``category``."""
    scores, tps, num_gt = [], [], 0
    for image in gt["images"]:
        objects = [dense(g["segmentation"]) for g in gt["annotations"]
                   if g["image_id"] == image["id"] and g["category_id"] == category]
        found = [x for x in dets if x["image_id"] == image["id"] and x["category_id"] == category]
        found = [found[j] for j in np.argsort([-x["score"] for x in found], kind="stable")][:100]
        num_gt += len(objects)
        taken = [False] * len(objects)
        for x in found:
            m = dense(x["segmentation"])
            ious = [(m & o).sum() / max((m | o).sum(), 1) for o in objects]
            free = [g for g in range(len(objects)) if not taken[g] and ious[g] >= threshold]
            best = max(free, key=lambda g: ious[g], default=None)
            if best is not None:
                taken[best] = True
            scores.append(x["score"])
            tps.append(best is not None)
    order = np.argsort(-np.array(scores), kind="stable")
    return np.array(scores)[order], np.array(tps, bool)[order], num_gt


def my_category_ap(gt, dets, category):
    aps = [my_interpolated_ap(*match_category(gt, dets, category, t)[1:]) for t in IOU_THRESHOLDS]
    return float(np.mean(aps)), aps


per_category = {}
for category in range(1, len(NAMES)):
    ap, aps = my_category_ap(gt, dets, category)
    if aps[0] == -1.0:  # no object of this category in these images: AP is undefined
        print(f"{NAMES[category]:8s} no objects: left out of the mean")
        continue
    per_category[category] = ap
    print(f"{NAMES[category]:8s} mask AP {ap:.4f}  (AP50 {aps[0]:.4f}, AP75 {aps[5]:.4f})")
my_ap = float(np.mean(list(per_category.values())))
print(f"mean over the {len(per_category)} categories with objects: mask AP {my_ap:.4f}")

# %% [markdown]
# The package's `coco_evaluate` (its `precision` array holds the 101 interpolated values per
# threshold and category) and pycocotools' `COCOeval` on the same dicts agree with ours:

# %%
full = coco_evaluate(gt, dets, iou_types=("segm",), with_arrays=True)["segm"]
reference = pycocotools_stats(gt, dets)
for k, category in enumerate(full["category_ids"]):
    if category not in per_category:  # no objects: -1 everywhere, left out by both
        continue
    theirs_k = full["precision"][:, :, k, 0, 2].mean()  # all areas, 100 detections
    assert abs(theirs_k - per_category[category]) < 1e-9, (category, theirs_k, per_category[category])
assert abs(full["AP"] - my_ap) < 1e-9 and abs(results["segm"]["AP"] - my_ap) < 1e-9
assert abs(reference["segm"]["AP"] - my_ap) < 1e-9
print(f"mask AP: ours {my_ap:.6f}, coco_evaluate {full['AP']:.6f}, pycocotools {reference['segm']['AP']:.6f}")
print_table(results)
areas = np.array([g["area"] for g in gt["annotations"]])
print(f"object areas in these images: {areas.min():.0f} to {areas.max():.0f} px; small < 32² = 1024, "
      f"large > 96² = 9216: {(areas < 1024).sum()} small, {((areas >= 1024) & (areas <= 9216)).sum()} medium, "
      f"{(areas > 9216).sum()} large")

# %% [markdown]
# How to read the table: each row is one number of pycocotools' summary.
# - **AP** rows: the mean over IoU 0.5:0.95 (or at 0.5, 0.75 alone), over categories, with at
#   most 100 detections per image, the quantity computed above.
# - **area** restricts both objects and detections to a size range in pixels: small below
#   `32² = 1024`, medium `32²..96²`, large above `96² = 9216`. A range without any object in the
#   evaluated images has no AP; pycocotools prints **-1.000** for it. Shapes on 128x128 images
#   are never larger than 96x96, so the large rows read -1 here (the line printed above counts
#   the objects per range).
# - **AR** rows: average recall, the fraction of objects found at all (at any score), given at
#   most 1, 10 or 100 detections per image, averaged over IoU 0.5:0.95 and categories. AR1 is low
#   whenever images hold several objects: one detection per image can find only one of them.
#
# For scale: the README's main job (`shapes_config`, 2800 steps of 8 images at 128x128) reaches
# mask AP 0.816, AP50 0.956 and box AP 0.856 on all 500 held-out images. The figures above are
# for this notebook's model on the first `NUM_VAL` held-out images (printed in section 1), so
# they differ: a different model, or, with the main job's model, a subset of its images.
#
# The precision/recall curve of the category with the most detections, at IoU 0.5: the raw
# precision zig-zags down (each false positive lowers it), the envelope is its running maximum
# from the right, and the 101 points read the envelope at recall `0, 0.01, ..., 1`. The toy of
# section 5 beside it.

# %%
def pr_curve(tp, num_gt):
    tp = np.asarray(tp, bool)
    tp_sum, fp_sum = np.cumsum(tp), np.cumsum(~tp)
    precision = tp_sum / (tp_sum + fp_sum + np.spacing(1))
    return tp_sum / num_gt, precision, np.maximum.accumulate(precision[::-1])[::-1]


def interpolated_points(recall, envelope):
    idx = np.searchsorted(recall, RECALL_THRESHOLDS, side="left")
    return np.where(idx < len(recall), envelope[np.minimum(idx, len(recall) - 1)], 0.0)


shown = max(per_category, key=lambda c: sum(x["category_id"] == c for x in dets))
_, real_tp, real_gt = match_category(gt, dets, shown, 0.5)
fig, axes = plotting.subplots(ncols=2, size=4.0)
for ax, (tp, num_gt, title) in zip(axes, [(toy_tp, 3, "toy of section 5"),
                                          (real_tp, real_gt, f"'{NAMES[shown]}', IoU 0.5")], strict=True):
    recall, precision, envelope = pr_curve(tp, num_gt)
    ax.plot(recall, precision, "o-", color=plotting.colour(0), markersize=3, label="precision")
    ax.step(recall, envelope, where="post", color=plotting.colour(1), label="envelope")
    points = interpolated_points(recall, envelope)
    ax.plot(RECALL_THRESHOLDS, points, ".", color=plotting.colour(2), markersize=3, label="101 points")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.05)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title(f"{title}: AP50 {points.mean():.3f}", fontsize=10)
axes[0].legend(fontsize=8)
fig.tight_layout()
plt.show()

# %% [markdown]
# ## 7. Predictions on validation images
#
# Masks (thresholded at 0.5), boxes, class names and scores, next to the ground truth. A trained
# model is shown at score 0.5; the fast setting's weak model is rarely that sure of anything, so
# there we show its detections above 0.25 (expect wrong classes and loose masks).

# %%
SHOW = 0.25 if FAST else 0.5
fig, axes = plotting.subplots(ncols=4, nrows=2, size=2.6)
for j in range(4):
    keep = out["valid"][j] & (out["scores"][j] >= SHOW)
    plotting.show_image(axes[j], plotting.overlay_masks(batch["images"][j], out["masks"][j][keep],
                                                        out["labels"][j][keep]), f"prediction {j}")
    plotting.draw_boxes(axes[j], out["boxes"][j][keep], out["labels"][j][keep],
                        out["scores"][j][keep], class_names=NAMES)
    gv = batch["valid"][j].astype(bool)
    plotting.show_image(axes[4 + j], plotting.overlay_masks(batch["images"][j], batch["masks"][j][gv],
                                                            batch["labels"][j][gv]), "ground truth")
    plotting.draw_boxes(axes[4 + j], batch["boxes"][j][gv], batch["labels"][j][gv], class_names=NAMES)
fig.tight_layout()
plt.show()
print("detections shown:", [int((out["valid"][j] & (out["scores"][j] >= SHOW)).sum()) for j in range(4)])

# %% [markdown]
# ## Summary
#
# - Postprocessing turns `P` proposals x `K-1` classes into candidates (softmax scores,
#   class-specific decoded and clipped boxes), drops those under the config's score threshold
#   (torchvision: 0.05), runs NMS per class and keeps the best `D`: `detect_boxes`, inside
#   `predict_raw`.
# - The mask head runs on the detected boxes; `paste_masks` resizes each `28x28` map into its box
#   (zero border, grown box, bilinear), thresholded at 0.5; `predict` does all of it in one jit.
#   With `mask_flip_test` each mask is the average of the image's and the mirrored image's.
# - Mask IoU counts pixels; COCO stores masks as column-major run lengths (RLE).
# - AP for one category and threshold: rank by score, match greedily, precision and recall,
#   the non-increasing envelope read at 101 recall levels; COCO's AP is the mean over IoU
#   0.5:0.95 and over the categories that have objects. Ours equals `coco_evaluate` and
#   pycocotools.
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
# **Core exercise A: paste masks, torchvision's rule.** Write `your_paste_masks(masks (D, M, M),
# boxes (D, 4), image_size) -> (D, H, W)` as `mrcnn_jax.paste_masks`: pad each mask with one zero
# cell, grow its box by `(M + 2) / M` about the centre, truncate to integers `(x0, y0, x1, y1)`,
# resize bilinearly (half-pixel centres, `align_corners=False`) to `(y1 - y0 + 1, x1 - x0 + 1)`
# and write it there, clipped to the image.

# %%
import jax.numpy as jnp

from mrcnn_jax.course import check_average_precision, check_coco_match, check_paste_masks


def your_paste_masks(masks, boxes, image_size):
    # BEGIN SOLUTION
    m = masks.shape[1]
    padded = jnp.pad(masks, ((0, 0), (1, 1), (1, 1)))  # (D, M+2, M+2)
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    half = (boxes[:, 2:] - boxes[:, :2]) / 2 * (m + 2) / m
    grown = jnp.trunc(jnp.concatenate([centre - half, centre + half], axis=1)).astype(jnp.int32)

    def weights(start, end, out_size):  # (D, out_size, M+2) bilinear resize matrix
        length = jnp.maximum(end - start + 1, 1)
        pixels = jnp.arange(out_size)
        u = pixels[None, :] - start[:, None]  # (D, P)
        inside = (u >= 0) & (pixels[None, :] <= end[:, None])
        src = jnp.maximum((u + 0.5) * ((m + 2) / length[:, None]) - 0.5, 0.0)
        low = jnp.floor(src).astype(jnp.int32)
        frac = src - low
        high, low = jnp.minimum(low + 1, m + 1), jnp.minimum(low, m + 1)
        cells = jnp.arange(m + 2)
        w = ((1 - frac)[..., None] * (cells == low[..., None])
             + frac[..., None] * (cells == high[..., None]))
        return jnp.where(inside[..., None], w, 0.0)

    rows = weights(grown[:, 1], grown[:, 3], image_size[0])  # (D, H, M+2)
    cols = weights(grown[:, 0], grown[:, 2], image_size[1])  # (D, W, M+2)
    return jnp.einsum("dhi,dij,dwj->dhw", rows, padded, cols,
                      precision=jax.lax.Precision.HIGHEST)
    # END SOLUTION


check_paste_masks(your_paste_masks)

# %% [markdown]
# **Core exercise B: COCO matching (not VOC's).** Write `your_coco_match(ious (D, G),
# iou_threshold) -> tp (D,) bool`: detections come in descending score order; each takes the
# ground truth with the highest IoU among those *still free* with IoU >= the threshold (ties: the
# later one), which is then taken. VOC-style matching (take the best ground truth; if it is
# already taken, a false positive) gives a different answer: the check knows the difference.

# %%
def your_coco_match(ious, iou_threshold):
    # BEGIN SOLUTION
    taken = np.zeros(ious.shape[1], bool)
    tp = np.zeros(ious.shape[0], bool)
    for d in range(ious.shape[0]):
        best, best_iou = -1, iou_threshold
        for g in range(ious.shape[1]):
            if not taken[g] and ious[d, g] >= best_iou:  # >= keeps the later one on ties
                best, best_iou = g, ious[d, g]
        if best >= 0:
            taken[best] = tp[d] = True
    return tp
    # END SOLUTION


check_coco_match(your_coco_match)

# %% [markdown]
# **Core exercise C: AP from a precision-recall curve, COCO's 101-point rule.** Write
# `your_average_precision(recall (N,), precision (N,)) -> float` for one ranked list: make precision
# non-increasing from the right, read it at recall levels 0, 0.01, ..., 1 at the first rank whose
# recall reaches the level (0 if none does), and average the 101 values.

# %%
def your_average_precision(recall, precision):
    # BEGIN SOLUTION
    interpolated = np.maximum.accumulate(np.asarray(precision)[::-1])[::-1]
    index = np.searchsorted(recall, np.linspace(0, 1, 101), side="left")  # first rank >= level
    reached = index < len(recall)
    return float(np.sum(interpolated[index[reached]]) / 101)
    # END SOLUTION


check_average_precision(your_average_precision)


# %% [markdown]
# ### Extension exercises
#
# **Exercise 1: all mask IoUs at once.** Section 4 computes the IoU of two masks; COCO needs every
# detection against every object. Write `my_mask_iou_matrix(masks1 (D, H, W), masks2 (G, H, W))
# -> (D, G)` for boolean masks, 0 where both masks are empty, without a Python loop over pairs:
# flatten the masks, and all intersections are one matrix product.

# %%
def check_mask_iou_matrix(fn):
    def pairwise(m1, m2):  # the reference, one pair at a time
        out = np.zeros((len(m1), len(m2)))
        for i, x in enumerate(m1):
            for j, y in enumerate(m2):
                union = np.sum(x | y)
                out[i, j] = np.sum(x & y) / union if union else 0.0
        return out

    empty = np.zeros_like(a)
    hand1, hand2 = np.stack([a, b, empty]), np.stack([a, b, ~a, empty])
    got = np.asarray(fn(hand1, hand2), np.float64)
    assert got.shape == (3, 4), f"3 x 4 masks: expected shape (3, 4), got {got.shape}"
    np.testing.assert_allclose(got[:2, :2], [[1, 4 / 17], [4 / 17, 1]], rtol=1e-6,
                               err_msg="a and b: IoU 4/17, each with itself 1")
    np.testing.assert_allclose(got, pairwise(hand1, hand2), rtol=1e-6, atol=1e-12,
                               err_msg="all pairs, with an empty mask (IoU 0, never NaN)")
    rng = np.random.default_rng(0)
    m1, m2 = rng.uniform(size=(5, 12, 16)) < 0.3, rng.uniform(size=(4, 12, 16)) < 0.6
    np.testing.assert_allclose(np.asarray(fn(m1, m2), np.float64), pairwise(m1, m2), rtol=1e-6,
                               err_msg="random masks")


def my_mask_iou_matrix(masks1, masks2):
    raise NotImplementedError


try:
    check_mask_iou_matrix(my_mask_iou_matrix)
    print("correct!")
except NotImplementedError:
    print("not attempted yet")

# %% [markdown]
# **Exercise 2: decode an RLE.** Write `rle_decode(counts, height, width)` turning uncompressed
# run lengths (column-major, starting with 0s) back into a boolean mask.

# %%
def check_rle_decode(fn):
    np.testing.assert_array_equal(fn([0, 3, 1, 3, 1, 3, 9], 4, 5), a, err_msg="mask a of section 4")
    np.testing.assert_array_equal(fn(my_rle(b), 4, 5), b, err_msg="mask b of section 4")
    np.testing.assert_array_equal(fn([6], 2, 3), np.zeros((2, 3), bool), err_msg="all zeros")


def rle_decode(counts, height, width):
    raise NotImplementedError


try:
    check_rle_decode(rle_decode)
    print("correct!")
except NotImplementedError:
    print("not attempted yet")

# %% [markdown]
# **Exercise 3: AP50 from IoUs.** One image, one category: `ious (D, G)` between detections
# (already sorted by score) and objects. Write `ap50(ious)` doing greedy matching at IoU ≥ 0.5
# (each detection takes the best free object) and returning the 101-point interpolated AP (you may
# call `my_interpolated_ap`).

# %%
def check_ap50(fn):
    ious = np.array([[0.9, 0.0], [0.6, 0.1], [0.0, 0.55]])  # the second duplicates the first
    expected = my_interpolated_ap([True, False, True], 2)
    assert abs(fn(ious) - expected) < 1e-12, f"expected {expected:.4f}, got {fn(ious)}"
    assert abs(fn(np.array([[0.4], [0.7]])) - 0.5) < 1e-12, "a miss then a hit: AP 0.5"
    assert fn(np.array([[0.3, 0.2]])) == 0.0, "no match: AP 0"
    got = fn(np.array([[0.7, 0.0], [0.9, 0.6]]))
    assert abs(got - 1.0) < 1e-12, (
        f"expected AP 1.0, got {got}: object 0 is taken by the first detection, so the second takes "
        "the best *free* object (object 1, IoU 0.6) as COCO does; VOC-style matching (best object "
        "or nothing) would make it a false positive")


def ap50(ious):
    raise NotImplementedError


try:
    check_ap50(ap50)
    print("correct!")
except NotImplementedError:
    print("not attempted yet")

# %% [markdown]
# **Exercise 4: from the precision table to AP and AP50.** `coco_evaluate(...,
# with_arrays=True)` returns each IoU type's `precision` table of shape `(T, R, K, A, M)`: 10 IoU
# thresholds 0.5:0.95, 101 recall levels, `K` categories, 4 area ranges (all, small, medium,
# large) and 3 detection caps (1, 10, 100), with `-1` where a category has no objects. Write
# `my_ap_summary(precision) -> (AP, AP50)`: the means over the area range "all" and the last cap,
# over all thresholds (AP) or the first one (AP50), of the entries that are not `-1`; `-1` if
# every entry is.

# %%
def check_ap_summary(fn):
    from mrcnn_jax.evaluation import _summarize  # the package's own summary, as the oracle

    def table(values_for_category):
        precision = np.full((10, 101, len(values_for_category), 4, 3), 0.123)  # other slices
        for k, value in enumerate(values_for_category):
            precision[:, :, k, 0, 2] = value
        return precision

    got = fn(table([0.8, -1.0]))
    assert np.allclose(got, (0.8, 0.8)), (
        f"category 0 at 0.8, category 1 without objects (-1): expected (0.8, 0.8), got {got}; "
        "skip the -1 entries, and read area 'all' (index 0) and the last cap (index -1)")
    ramp = table([0.0])
    ramp[:, :, 0, 0, 2] = np.linspace(1.0, 0.1, 10)[:, None]  # precision falls with the threshold
    got = fn(ramp)
    assert np.allclose(got, (0.55, 1.0)), f"expected AP 0.55 (mean over thresholds), AP50 1.0; got {got}"
    got = fn(table([-1.0, -1.0]))
    assert np.allclose(got, (-1, -1)), f"no category has objects: expected (-1, -1), got {got}"
    rng = np.random.default_rng(0)
    precision = rng.uniform(size=(10, 101, 5, 4, 3))
    precision[:, :, 2] = -1.0
    stats = _summarize(precision, -np.ones((10, 5, 4, 3)))
    got = fn(precision)
    assert np.allclose(got, (stats["AP"], stats["AP50"])), (
        f"random table: expected {(stats['AP'], stats['AP50'])}, got {got}")


def my_ap_summary(precision):
    raise NotImplementedError


try:
    check_ap_summary(my_ap_summary)
    print("correct!")
except NotImplementedError:
    print("not attempted yet")
