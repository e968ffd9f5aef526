# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.16.0
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/mrcnn-jax/mrcnn_jax/blob/v0.2.0/notebooks/00_data.ipynb)
#
# # 00 · Data: instance-segmentation examples in fixed-shape batches
#
# *What Mask R-CNN learns from, and how `mrcnn_jax.data` serves it to a jitted train step.*
#
# **You will learn**
# - what one instance-segmentation example holds: an image, and per object a box, a class
#   label and a mask;
# - the pixel and box conventions used everywhere in this course;
# - how the synthetic `shapes` dataset is drawn and written with tensorflow-datasets (no
#   TensorFlow needed) and read back with `tfds.data_source`;
# - why batches are padded to a fixed size with a `valid` flag, and what resize, flip and mask
#   crops do to boxes and masks;
# - how to point the same pipeline at COCO or at your own COCO-format data.

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
import json
import logging
import os
import tempfile
import time

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from mrcnn_jax import plotting
from mrcnn_jax.data import (CLASS_NAMES, class_names, coco_source, draw_shapes, make_loader,
                            parse_example, prepare_coco, prepare_shapes, shapes_source,
                            tight_box)

FAST = os.environ.get("MRCNN_JAX_FAST", "0") == "1"
NUM_TRAIN, NUM_VAL = (200, 20) if FAST else (1000, 100)
tfds.display_progress_bar(False)
logging.getLogger("absl").setLevel(logging.ERROR)  # hide TFDS's "custom config" notices
print("fast setting" if FAST else "full setting", NUM_TRAIN, NUM_VAL)

# %% [markdown]
# ## 1. Pixels and boxes: the conventions
#
# Images are `(H, W, 3)` uint8 (batches NHWC). Pixel `(row i, column j)` covers the square
# `[j, j+1) x [i, i+1)`. A box is `(x1, y1, x2, y2)` float32 in pixels, so the **tight box** of a
# mask is `(min x, min y, max x + 1, max y + 1)` of its pixels. Let us check by hand on a 5x6 mask.

# %%
mask = np.zeros((5, 6), bool)
mask[1:3, 2:5] = True  # rows 1..2, columns 2..4
print(mask.astype(int))
rows, cols = np.nonzero(mask)
mine = np.array([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1], np.float32)
print("tight box:", mine)
np.testing.assert_array_equal(mine, [2, 1, 5, 3])
np.testing.assert_array_equal(mine, tight_box(mask))  # the package agrees

# %% [markdown]
# ## 2. One synthetic example
#
# `draw_shapes` paints 1 to 6 squares, circles and triangles of random colour and size; later
# shapes hide parts of earlier ones. Each object keeps only its **visible** pixels as its mask,
# its box is the tight box of that mask, and objects left with (almost) nothing visible are
# dropped. It is a pure function of a seeded `np.random.Generator`.

# %%
drawn = draw_shapes(np.random.default_rng(3), image_size=128, max_objects=6)
for key, value in drawn.items():
    print(f"{key:7s} {str(value.shape):16s} {value.dtype}")
print("classes:", [CLASS_NAMES[k] for k in drawn["labels"]])
np.testing.assert_array_equal(drawn["boxes"], [tight_box(m) for m in drawn["masks"]])
assert (drawn["masks"].sum(axis=0) <= 1).all()  # visible parts never overlap

# %%
fig, axes = plotting.subplots(3, size=3.2)
plotting.show_image(axes[0], drawn["image"], "image")
plotting.show_image(axes[1], plotting.overlay_masks(drawn["image"], drawn["masks"]),
                    "visible masks")
plotting.show_image(axes[2], drawn["image"], "boxes and labels")
plotting.draw_boxes(axes[2], drawn["boxes"], labels=drawn["labels"] + 1,
                    class_names=["background", *CLASS_NAMES])
fig.tight_layout()

# %% [markdown]
# Class ids: the drawing (and the stored TFDS `ClassLabel`) counts classes from 0, but the model
# reserves **label 0 for background**, so everything after `parse_example` uses
# `1 = square, 2 = circle, 3 = triangle`, and padded slots carry 0.
#
# ## 3. A TFDS dataset without TensorFlow
#
# `prepare_shapes` runs a TFDS `GeneratorBasedBuilder` that writes ArrayRecord files, one PNG per
# image and per instance mask (the layout of TFDS `lvis`). Example `i` of a split is drawn from
# `default_rng([seed, split, i])`, so the data are reproducible. Prepared data go to
# `<repo>/data` (ignored by git) unless you pass `data_dir`.

# %%
start = time.perf_counter()
builder = prepare_shapes(num_train=NUM_TRAIN, num_val=NUM_VAL, image_size=128, seed=0)
print(f"ready in {time.perf_counter() - start:.2f} s at {builder.data_dir}")
print({split: info.num_examples for split, info in builder.info.splits.items()})

# %% [markdown]
# `tfds.data_source` gives random access to decoded records, as numpy. Note that sequence
# features (one entry per object) come back as **Python lists**, empty when an image has no
# objects; `parse_example` stacks them and converts boxes to pixels.

# %%
train = shapes_source("train", num_train=NUM_TRAIN, num_val=NUM_VAL, image_size=128, seed=0)
record = train[0]
print(len(train), "records;", "objects/segmentation is a", type(record["objects"]["segmentation"]))
print("stored bbox (ymin, xmin, ymax, xmax) in [0, 1]:", record["objects"]["bbox"][0])
example = parse_example(record)
print("as pixels (x1, y1, x2, y2):", example["boxes"][0], "label", example["labels"][0])
print("class names:", class_names(train))
rng = np.random.default_rng([0, 0, example["image_id"]])  # the recipe of this record
np.testing.assert_array_equal(example["image"], draw_shapes(rng)["image"])

# %%
fig, axes = plotting.subplots(4, 2, size=2.4)
names = class_names(train)
for ax, k in zip(axes, range(8), strict=True):
    ex = parse_example(train[k])
    plotting.show_image(ax, plotting.overlay_masks(ex["image"], ex["masks"], ex["labels"]))
    plotting.draw_boxes(ax, ex["boxes"], labels=ex["labels"], class_names=names)
fig.tight_layout()

# %% [markdown]
# ## 4. Fixed-shape batches: padding and `valid`
#
# Images hold different numbers of objects, but `jax.jit` compiles one program per input shape.
# So every batch has the same shapes: ground truth is padded to `G = max_instances` slots and a
# boolean `valid` says which slots are real. Let us pad one image's labels by hand first.

# %%
G = 8
labels = example["labels"]  # (N,)
padded = np.zeros(G, np.int32)
padded[: len(labels)] = labels
valid = np.arange(G) < len(labels)
print("labels", padded, "\nvalid ", valid.astype(int))

loader = make_loader(train, batch_size=8, image_size=128, max_instances=G, train=False)
batch = next(iter(loader))
for key, value in batch.items():
    print(f"{key:14s} {str(value.shape):20s} {value.dtype}")
first = int(np.flatnonzero(batch["image_ids"] == example["image_id"])[0])
np.testing.assert_array_equal(batch["labels"][first], padded)
np.testing.assert_array_equal(batch["valid"][first], valid)

# %% [markdown]
# Padded slots are zeros everywhere (box, label 0 = background, empty mask). When an image has
# more than `G` objects the extra ones are **truncated and counted**, never silently: each batch
# has `num_truncated`, and the loader keeps totals (and logs a warning the first time).

# %%
small = make_loader(train, batch_size=8, image_size=128, max_instances=2, train=False)
for _ in small:
    pass
print(small.stats)
assert small.stats["truncated"] > 0
print(f"{small.stats['truncated'] / small.stats['instances']:.0%} of the instances did not fit"
      " in 2 slots")

# %% [markdown]
# ## 5. Resize, flip, and masks cropped to their boxes
#
# Real images have many sizes. The resize rule is torchvision's: `scale = min(min_size / short
# side, max_size / long side)`, then the image is padded at the bottom and right to
# `max_size x max_size`; boxes scale with it. For training, a random horizontal flip mirrors
# image, boxes and masks together: a box `(x1, x2)` becomes `(w - x2, w - x1)`. Let us flip by
# hand and compare with the pipeline (`shuffle=False`, so both see the same images).

# %%
flipped = next(iter(make_loader(train, batch_size=8, image_size=128, max_instances=G,
                                shuffle=False, flip=True, seed=1)))
b = int(np.flatnonzero(flipped["flipped"])[0])
x1, y1, x2, y2 = batch["boxes"][b].T
mine = np.stack([128 - x2, y1, 128 - x1, y2], axis=1) * batch["valid"][b][:, None]
np.testing.assert_allclose(flipped["boxes"][b], mine)
np.testing.assert_array_equal(flipped["images"][b], batch["images"][b, :, ::-1])
for g in np.flatnonzero(flipped["valid"][b]):  # boxes stay tight around their masks
    np.testing.assert_array_equal(flipped["boxes"][b, g], tight_box(flipped["masks"][b, g]))
print("flips in this batch:", flipped["flipped"].astype(int))

# %% [markdown]
# Full-size masks cost `G x H x W` per image: fine at 128x128, far too much at COCO sizes
# (100 slots x 1333², about 178 million mask pixels per image). With `mask_size=M` each mask is
# instead sampled **inside its own box** at `M x M` (28 here; the COCO example in section 6 uses
# 112), which is all a mask head needs.

# %%
crops = next(iter(make_loader(train, batch_size=8, image_size=128, max_instances=G,
                              train=False, mask_size=28)))
print("masks", crops["masks"].shape)
n = int(crops["valid"][0].sum())
fig, axes = plotting.subplots(n + 1, size=2.0)
plotting.show_image(axes[0], batch["images"][0], "image")
plotting.draw_boxes(axes[0], batch["boxes"][0], labels=batch["labels"][0], class_names=names,
                    valid=batch["valid"][0])
for g in range(n):
    white = np.repeat(crops["masks"][0, g][..., None] * 255, 3, axis=-1)  # (28, 28, 3) uint8
    plotting.show_image(axes[g + 1], white, f"slot {g}: {names[crops['labels'][0, g]]}")
fig.tight_layout()

# %% [markdown]
# `make_loader` is built on Google's [grain](https://github.com/google/grain) data loader, which
# draws each example's shuffle position and flip from a generator seeded per example. So the same
# seed gives the same batches and other seeds shuffle differently; `worker_count=2` would run the
# same work in two worker processes with the same result (not shown here).

# %%
def ids(seed):
    loader = make_loader(train, batch_size=8, image_size=128, max_instances=G, seed=seed)
    return next(iter(loader))["image_ids"]


print(ids(0), ids(0), ids(1), sep="\n")
np.testing.assert_array_equal(ids(0), ids(0))
assert not np.array_equal(ids(0), ids(1))

# %% [markdown]
# ## 6. COCO and your own COCO-format data
#
# The COCO annotation format (`images`, `annotations` with `bbox` `[x, y, w, h]` and
# `segmentation` as polygons or RLE, `categories`) is what most labelling tools export.
# `prepare_coco(annotation_file, image_dir, name=...)` writes it in the same record layout, with
# masks decoded by pycocotools, category ids mapped to labels 1, 2, ... in increasing id order
# (0 stays background; names kept), crowd regions flagged, and bad input (corrupt images,
# zero-area or out-of-image boxes, unknown categories) skipped and counted. Here we export three
# shapes images as a tiny COCO dataset, each mask as compressed RLE (exact; polygons would be
# approximations), and read it back.

# %%
from pycocotools import mask as mask_utils

folder = tempfile.mkdtemp()
coco = {"images": [], "annotations": [],
        "categories": [{"id": 10 * (k + 1), "name": name} for k, name in enumerate(CLASS_NAMES)]}
for image_id in range(3):
    ex = parse_example(train[image_id])
    Image.fromarray(ex["image"]).save(f"{folder}/{image_id}.png")
    coco["images"].append({"id": image_id, "file_name": f"{image_id}.png",
                           "height": 128, "width": 128})
    for box, label, m in zip(ex["boxes"], ex["labels"], ex["masks"], strict=True):
        rle = mask_utils.encode(np.asfortranarray(m))
        x1, y1, x2, y2 = box.tolist()
        coco["annotations"].append({
            "id": len(coco["annotations"]) + 1, "image_id": image_id, "iscrowd": 0,
            "category_id": 10 * int(label), "bbox": [x1, y1, x2 - x1, y2 - y1],
            "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()}})
with open(f"{folder}/instances.json", "w") as f:
    json.dump(coco, f)

coco_builder = prepare_coco(f"{folder}/instances.json", folder, data_dir=folder, name="mini",
                            split="train")
mini = coco_source("mini", "train", data_dir=folder)
print(len(mini), "images; classes", class_names(mini), "; skipped", dict(coco_builder.skipped["train"]))
back = parse_example(next(r for r in mini if int(r["image/id"]) == 0))
np.testing.assert_array_equal(back["masks"], parse_example(train[0])["masks"])
np.testing.assert_array_equal(back["labels"], parse_example(train[0])["labels"])

# %% [markdown]
# The same `make_loader` reads it; for real photos use the torchvision sizes and mask crops:
#
# ```python
# prepare_coco("annotations/instances_val2017.json", "val2017", name="coco2017",
#              split="validation")            # COCO 2017 from cocodataset.org, once
# source = coco_source("coco2017", "validation")
# loader = make_loader(source, batch_size=2, min_size=800, max_size=1333,
#                      max_instances=100, mask_size=112, seed=0)
# ```
#
# Why not `tfds.load("coco/2017")`? TFDS's COCO has **boxes only, no masks** (and its builder
# needs TensorFlow). TFDS `lvis` does store per-instance masks in this very layout; once it is
# prepared (TFDS downloads the COCO 2017 images and LVIS annotations for it, over 25 GB),
# `lvis_source("validation")` reads it with `download=False`, so nothing is ever fetched behind
# your back.

# %%
coco_batch = next(iter(make_loader(mini, batch_size=2, min_size=96, max_size=160,
                                   max_instances=G, mask_size=28, seed=0)))
print({k: coco_batch[k].shape for k in ("images", "boxes", "masks", "valid")})
print("content sizes", coco_batch["image_sizes"].tolist(), "scales", coco_batch["scales"][:, 0])

# %% [markdown]
# ## Summary
#
# - An instance-segmentation example is an image plus, per object, a box `(x1, y1, x2, y2)` in
#   pixels, a label (1, 2, ...; 0 is background) and a mask; boxes are tight around masks with
#   pixel `(i, j)` covering `[j, j+1) x [i, i+1)`.
# - `shapes` is a TFDS builder drawn in numpy and written as ArrayRecord in about a second per
#   500 images; `tfds.data_source` reads it without TensorFlow.
# - `make_loader` (grain) gives fixed-shape batches: images padded to `max_size x max_size`
#   (`image_size x image_size` for shapes), ground truth padded to `G` slots with `valid`,
#   truncation counted, seeded shuffling and flips, full masks or `M x M` crops in the boxes.
# - COCO and any COCO-format export go through `prepare_coco`, TFDS `lvis` through
#   `lvis_source`; the batches look the same.
#
# ## Exercises
#
# ### Core exercise
#
# Here you write the stage this notebook teaches, and `mrcnn_jax.course` checks it: a hand
# example, random inputs against the package, and named edge cases. The check prints "correct",
# or "not attempted" while your function raises `NotImplementedError`, or raises an
# `AssertionError` that names the case, the inputs, expected and got, the largest error and, for
# a common mistake, a hint. Your function takes the same arguments as the package's, so any
# correct version passes.
#
# **Core exercise A: fixed shapes.** Write `your_pad_example(example, size, max_instances,
# full_masks=True)`, the last step of the pipeline (`mrcnn_jax.data.transforms.pad_example`): from
# a parsed example (`image (H, W, 3)`, `boxes (N, 4)`, `labels (N,)`, `masks`) return a dict with
# `image (size, size, 3)` uint8 (the image at the top-left corner, zeros elsewhere), `boxes (G,
# 4)`, `labels (G,)` and `masks` padded to `G = max_instances` slots with zeros, `valid (G,)`, and
# `num_truncated`, the number of objects that did not fit (keep the first `G`). Full masks `(N, H,
# W)` are padded like the image; crops `(N, M, M)` (`full_masks=False`) keep their size.

# %%
from mrcnn_jax.course import check_pad_example


def your_pad_example(example, size, max_instances, full_masks=True):
    # BEGIN SOLUTION
    height, width = example["image"].shape[:2]
    image = np.zeros((size, size, 3), np.uint8)
    image[:height, :width] = example["image"]  # bottom and right padding: boxes do not move
    count = len(example["labels"])
    keep = min(count, max_instances)  # the first G objects, in stored order
    masks_in = example["masks"][:keep]
    mask_shape = (size, size) if full_masks else example["masks"].shape[1:]
    masks = np.zeros((max_instances, *mask_shape), np.uint8)  # (G, S, S) or (G, M, M)
    masks[:keep, : masks_in.shape[1], : masks_in.shape[2]] = masks_in
    boxes = np.zeros((max_instances, 4), np.float32)
    boxes[:keep] = example["boxes"][:keep]
    labels = np.zeros(max_instances, np.int32)  # padded slots: label 0, background
    labels[:keep] = example["labels"][:keep]
    return {"image": image, "boxes": boxes, "labels": labels, "masks": masks,
            "valid": np.arange(max_instances) < keep, "num_truncated": count - keep}
    # END SOLUTION


check_pad_example(your_pad_example)

# %% [markdown]
# ### Extension exercises
#
# 1. Draw 200 images with `draw_shapes` and plot the histogram of object counts and of mask
#    areas per class. Why are triangles smaller on average than squares of the same half-size?
# 2. Add a fourth shape (e.g. a diamond `|dx| + |dy| <= r`) to a copy of `_shape_mask` and check
#    that `tight_box` of its mask is `(cx - r, cy - r, cx + r, cy + r)` up to one pixel.
# 3. Make a loader with `image_size=96`. Show that boxes still match the tight boxes of the
#    masks to within half a pixel, and explain why at `image_size=48` a mask can be smaller
#    than its box.
# 4. Set `max_instances=3` and compute the fraction of instances truncated from
#    `loader.stats`. What `G` keeps 99 % of them?
# 5. Export one of your own images with a polygon annotation in COCO format, prepare it with
#    `prepare_coco`, and check its mask against `pycocotools.coco.COCO.annToMask`.
