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
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/mrcnn-jax/mrcnn_jax/blob/v0.2.0/notebooks/11_pretrained_weights.ipynb)
#
# # 11 · Pretrained weights
#
# *Loading a torchvision Mask R-CNN into our JAX model: match the names, change the layouts,
# read the architecture from the shapes, and check that both models find the same objects.*
#
# **You will learn**
# - what a torchvision **state dict** is (dotted names → tensors) and how each name maps to one of
#   our variables (`mrcnn_jax.weights.torchvision_name`);
# - the four **layout changes** (conv OIHW → HWIO, linear transpose, `fc6`'s row permutation,
#   the 2x2 transposed conv), each shown on one tensor and checked by running the layer both ways;
# - reading depth, widths, norm and head sizes from names and shapes (`infer_architecture`), and
#   `from_torchvision`, which builds the model and copies every tensor;
# - online only: torchvision's COCO weights on a photo;
# - offline (the default, and CI): a tiny torchvision model trained on the shapes data, whose
#   detections we reproduce: same labels, box corners within a small fraction of a pixel (the run
#   prints the largest difference);
# - saving the imported model as a JAX checkpoint and loading it back.

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
import importlib.util
import json
import logging
import os
import pathlib
import tempfile
import time

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
from flax import nnx

from mrcnn_jax import checkpoints, plotting
from mrcnn_jax.boxes import box_iou
from mrcnn_jax.config import resnet50_fpn_config, small_config
from mrcnn_jax.data import class_names, make_loader, shapes_source
from mrcnn_jax.evaluate import evaluate_model
from mrcnn_jax.import_torchvision import COCO_CATEGORY_NAMES, import_weights, load_state_dict
from mrcnn_jax.inference import predict
from mrcnn_jax.layers import ConvTranspose2x2
from mrcnn_jax.model import MaskRCNN
from mrcnn_jax.weights import (
    config_for,
    from_torchvision,
    from_torchvision_layout,
    infer_architecture,
    torchvision_name,
    torchvision_shapes,
)

FAST = os.environ.get("MRCNN_JAX_FAST", "0") == "1"
# TPUs (and recent GPUs) run float32 matmuls and convolutions in bfloat16 or TF32 passes by default;
# this notebook's asserts compare with CPU references, so ask for full float32 (no change on a CPU).
jax.config.update("jax_default_matmul_precision", "highest")
HAVE_TORCH = importlib.util.find_spec("torch") is not None and importlib.util.find_spec("torchvision") is not None
ONLINE = os.environ.get("MRCNN_JAX_ONLINE", "0") == "1" and HAVE_TORCH
logging.getLogger("absl").setLevel(logging.ERROR)  # hide TFDS's "custom config" notices
EXAMPLE = pathlib.Path("../data/torchvision_shapes_example.npz")  # tools/export_torchvision_example.py
TABLES = pathlib.Path("../tests/golden/torchvision_maskrcnn_shapes.json")  # tools/make_torchvision_tables.py
rng = np.random.default_rng(0)
print(f"FAST={FAST}; torch importable: {HAVE_TORCH}; ONLINE={ONLINE} (set MRCNN_JAX_ONLINE=1 to download COCO weights)")

# %% [markdown]
# ## 1. A torchvision state dict
#
# A PyTorch model's `state_dict()` is a flat, ordered mapping from **dotted names** (the path of
# attributes from the model down to a tensor) to tensors. It is all a checkpoint file holds: the
# code that builds the model is not in it. The file we use offline,
# `data/torchvision_shapes_example.npz`, holds such a state dict saved as numpy arrays (torch is
# not needed to read it), plus the config it was trained with and torchvision's own predictions
# on four images. `tools/export_torchvision_example.py` made it on this project's CPU machine:
# a *tiny* torchvision `MaskRCNN` (ResNet-18 layout with widths 8-64, GroupNorm, FPN with 32
# channels) trained for 5 minutes on the shapes data. It is **not** a COCO model.

# %%
example = np.load(EXAMPLE)
state = load_state_dict(EXAMPLE)  # every array but those under reference/
NAMES = [str(n) for n in example["reference/class_names"]]
trained = json.loads(str(example["reference/training"]))
print(f"{len(state)} tensors, {sum(v.size for v in state.values()):,} numbers, stored as {state['backbone.body.conv1.weight'].dtype}")
print(f"trained by torchvision {example['reference/torchvision']}: {trained['steps']} steps in {trained['minutes']:.1f} min; "
      f"on {trained['num_eval']} held-out images mask AP {trained['results']['segm']['AP']:.3f}, box AP {trained['results']['bbox']['AP']:.3f}")
for name in list(state)[:6] + ["backbone.fpn.inner_blocks.0.0.weight", "rpn.head.cls_logits.weight",
                               "roi_heads.box_head.fc6.weight", "roi_heads.mask_predictor.conv5_mask.weight"]:
    print(f"  {name:45s} {state[name].shape}")

# %% [markdown]
# torchvision's `maskrcnn_resnet50_fpn` has the same names, more of them (a ResNet-50 has 16
# bottleneck blocks with three convs each) and bigger shapes. Its table of names and shapes was
# written once by `tools/make_torchvision_tables.py`; frozen BatchNorm layers bring four tensors
# each (`weight`, `bias`, `running_mean`, `running_var`) where GroupNorm has two.

# %%
tables = json.loads(TABLES.read_text())
r50 = {k: tuple(v) for k, v in tables["maskrcnn_resnet50_fpn"].items()}
print(f"maskrcnn_resnet50_fpn: {len(r50)} tensors, {sum(int(np.prod(s)) for s in r50.values()):,} numbers")
for prefix in ("backbone.body", "backbone.fpn", "rpn.head", "roi_heads.box_head", "roi_heads.box_predictor",
               "roi_heads.mask_head", "roi_heads.mask_predictor"):
    count = sum(k.startswith(prefix + ".") for k in r50)
    print(f"  {prefix:26s} {count:4d} tensors")
print("  e.g.", {k: r50[k] for k in ("backbone.body.layer1.0.conv3.weight", "backbone.body.layer1.0.bn3.running_var")})

# %% [markdown]
# **Names.** Our model's variables have paths too, from `MaskRCNN` down to the array:
# `('body', 'layer1', 0, 'conv1', 'kernel')`. `torchvision_name` rewrites a path into the
# torchvision name of the same tensor with a few rules: our `body`/`fpn` live under
# `backbone.`, our `box_head` holds torchvision's `box_head` *and* `box_predictor`, `kernel` and
# GroupNorm's `scale` are called `weight`. We build the tiny model abstractly (`nnx.eval_shape`:
# shapes only, no numbers) to list its paths.

# %%
tiny_config = checkpoints.config_from_dict(json.loads(str(example["reference/config"])))
abstract = nnx.eval_shape(lambda: MaskRCNN(tiny_config, rngs=nnx.Rngs(0)))
paths = [path for path, _ in nnx.to_flat_state(nnx.state(abstract))]
for path in [paths[0], paths[1], *[p for p in paths if p[0] in ("fpn", "rpn_head", "box_head", "mask_head")][::6]]:
    print(f"  {'.'.join(map(str, path)):38s} -> {torchvision_name(path)}")

# %% [markdown]
# Every one of our variables has a tensor in the state dict, with the same number of entries,
# and nothing is left over. `torchvision_shapes` gives the shapes our variables would have *in
# torchvision's layout*: they equal the file's, for the tiny model and for ResNet-50 (whose
# table has four BatchNorm tensors per norm; `num_batches_tracked` counters have no use here).

# %%
ours_tiny = torchvision_shapes(abstract)
assert ours_tiny == {k: v.shape for k, v in state.items()}
abstract_r50 = nnx.eval_shape(lambda: MaskRCNN(resnet50_fpn_config(), rngs=nnx.Rngs(0)))
assert torchvision_shapes(abstract_r50) == r50
print(f"tiny: {len(ours_tiny)} variables, ResNet-50-FPN: {len(r50)} variables; names and shapes equal torchvision's")

# %% [markdown]
# ## 2. Layouts
#
# Same numbers, different order. Four kinds of tensors change layout:
#
# | tensor | torchvision | ours | change |
# |---|---|---|---|
# | conv kernel | `(out, in, kh, kw)` OIHW, for NCHW images | `(kh, kw, in, out)` HWIO, for NHWC | `transpose(2, 3, 1, 0)` |
# | linear weight | `(out, in)`, `y = x W^T + b` | `(in, out)` kernel `= W^T`, `y = x · kernel + b` | `.T` |
# | `fc6` weight | `(out, C·7·7)`, input flattened as `(c, y, x)` | `(7·7·C, out)`, input flattened as `(y, x, c)` | reshape, permute, `.T` |
# | 2x2 transposed conv | `(in, out, a, b)` | `(a, b, in, out)` | `transpose(2, 3, 0, 1)` |
#
# Vectors (biases, norm weights, BatchNorm statistics) keep their layout. Each change below is
# checked by running the layer both ways: torchvision's layout on NCHW inputs, ours on NHWC.
#
# **Convolution.** The stem conv: 8 filters of 3 channels, 7x7, stride 2, padding 3.

# %%
name = "backbone.body.conv1.weight"
w_oihw = state[name].astype(np.float32)  # (8, 3, 7, 7)
w_hwio = from_torchvision_layout(name, w_oihw)  # (7, 7, 3, 8)
np.testing.assert_array_equal(w_hwio, w_oihw.transpose(2, 3, 1, 0))
x_nhwc = rng.normal(size=(2, 32, 32, 3)).astype(np.float32)
conv = lambda x, w, dims: jax.lax.conv_general_dilated(x, w, (2, 2), ((3, 3), (3, 3)), dimension_numbers=dims)
y_theirs = conv(x_nhwc.transpose(0, 3, 1, 2), w_oihw, ("NCHW", "OIHW", "NCHW"))  # (2, 8, 16, 16)
y_ours = conv(x_nhwc, w_hwio, ("NHWC", "HWIO", "NHWC"))  # (2, 16, 16, 8)
np.testing.assert_allclose(np.asarray(y_ours), np.asarray(y_theirs).transpose(0, 2, 3, 1), atol=1e-4)
print(f"{name}: {w_oihw.shape} -> {w_hwio.shape}; NCHW/OIHW conv == NHWC/HWIO conv, output {y_ours.shape}")
if HAVE_TORCH:
    import torch

    y_torch = torch.nn.functional.conv2d(torch.from_numpy(x_nhwc.transpose(0, 3, 1, 2).copy()),
                                         torch.from_numpy(w_oihw), stride=2, padding=3).numpy()
    np.testing.assert_allclose(np.asarray(y_ours), y_torch.transpose(0, 2, 3, 1), atol=1e-4)
    print("  and == torch.nn.functional.conv2d")

# %% [markdown]
# **Linear.** `fc7` of the box head: torchvision stores `W (out, in)` and computes `x W^T`; we
# store the transpose as the layer's `kernel`, `(in, out)`, and compute `x · kernel`.

# %%
name = "roi_heads.box_head.fc7.weight"
w = state[name].astype(np.float32)
k = from_torchvision_layout(name, w)
x = rng.normal(size=(5, w.shape[1])).astype(np.float32)
np.testing.assert_allclose(x @ k, x @ w.T, rtol=1e-6)
print(f"{name}: {w.shape} -> {k.shape}")

# %% [markdown]
# **`fc6`: the flattening order.** The box head flattens each pooled RoI, `7x7` cells of `C`
# channels (`C` is the FPN width that notebooks 05 and 07 call `F`), into one vector.
# torchvision's pooled RoI is `(C, 7, 7)`, so entry `c·49 + y·7 + x` of the vector is channel `c`
# at cell `(y, x)`; ours is `(7, 7, C)`, entry `(y·7 + x)·C + c`.
# The same number sits at a different position, so `fc6`'s input rows must be permuted, not
# only transposed. A plain transpose gives a wrong answer:

# %%
name = "roi_heads.box_head.fc6.weight"
w6 = state[name].astype(np.float32)  # (64, 32*7*7) columns in (c, y, x) order
k6 = from_torchvision_layout(name, w6)  # (7*7*32, 64) rows in (y, x, c) order
C = tiny_config.fpn_channels
pooled_nhwc = rng.normal(size=(3, 7, 7, C)).astype(np.float32)  # 3 RoIs
theirs = pooled_nhwc.transpose(0, 3, 1, 2).reshape(3, -1) @ w6.T  # flatten (c, y, x)
ours = pooled_nhwc.reshape(3, -1) @ k6  # flatten (y, x, c)
np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4)
wrong = pooled_nhwc.reshape(3, -1) @ w6.T
print(f"{name}: {w6.shape} -> {k6.shape}; permuted rows: max difference {np.abs(ours - theirs).max():.1e}; "
      f"plain transpose: {np.abs(wrong - theirs).max():.1f}")
assert np.abs(wrong - theirs).max() > 1.0
np.testing.assert_array_equal(k6, w6.reshape(-1, C, 7, 7).transpose(2, 3, 1, 0).reshape(-1, w6.shape[0]))

# %% [markdown]
# **The 2x2 transposed conv** of the mask head (`conv5_mask`, 14x14 → 28x28): with kernel and
# stride 2, input cell `(i, j)` writes its own output block `(2i + a, 2j + b)`:
# `y[o, 2i+a, 2j+b] = Σ_c x[c, i, j] · W[c, o, a, b] + bias[o]`. torchvision stores
# `W (in, out, a, b)`; our `ConvTranspose2x2` keeps `(a, b, in, out)`.

# %%
name = "roi_heads.mask_predictor.conv5_mask.weight"
wt = state[name].astype(np.float32)  # (32, 32, 2, 2)
bias = state["roi_heads.mask_predictor.conv5_mask.bias"].astype(np.float32)
layer = ConvTranspose2x2(wt.shape[0], wt.shape[1], rngs=nnx.Rngs(0))
layer.kernel[...] = from_torchvision_layout(name, wt)  # (2, 2, 32, 32)
layer.bias[...] = bias
x_nhwc = rng.normal(size=(2, 14, 14, wt.shape[0])).astype(np.float32)
x_nchw = x_nhwc.transpose(0, 3, 1, 2)
y_ref = np.zeros((2, wt.shape[1], 28, 28), np.float32)
for a in range(2):
    for b in range(2):
        y_ref[:, :, a::2, b::2] = np.einsum("ncij,co->noij", x_nchw, wt[:, :, a, b])
y_ref += bias[None, :, None, None]
y_ours = np.asarray(layer(jnp.asarray(x_nhwc)))  # (2, 28, 28, 32)
np.testing.assert_allclose(y_ours, y_ref.transpose(0, 2, 3, 1), atol=1e-4)
print(f"{name}: {wt.shape} -> {layer.kernel.shape}; output {y_ours.shape} == the formula")
if HAVE_TORCH:
    y_torch = torch.nn.functional.conv_transpose2d(torch.from_numpy(x_nchw.copy()), torch.from_numpy(wt),
                                                   torch.from_numpy(bias), stride=2).numpy()
    np.testing.assert_allclose(y_ours, y_torch.transpose(0, 2, 3, 1), atol=1e-4)
    print("  and == torch.nn.functional.conv_transpose2d")

# %% [markdown]
# ## 3. The architecture, read from names and shapes
#
# A state dict says a lot about the model that made it, and `infer_architecture` reads it:
# - blocks per stage: count the indices `layer{s}.{i}.`: `(2, 2, 2, 2)` is ResNet-18, `(3, 4, 6,
#   3)` ResNet-34 or -50, `(3, 4, 23, 3)` ResNet-101; a `conv3` in the blocks means bottlenecks;
# - widths: the output channels of each stage's first conv; the norm: `running_mean` means
#   (frozen) BatchNorm, its absence GroupNorm;
# - FPN channels, classes (`cls_score`'s rows), box head width and RoI size (`fc6` takes
#   `C · r · r` inputs), mask head widths, anchors per location (the RPN's `cls_logits` rows).
#
# It needs shapes only, so for ResNet-50 we pass zero-memory arrays of the table's shapes.

# %%
print("tiny shapes model:", infer_architecture(state))
shape_only = lambda table: {k: np.broadcast_to(np.float32(0), v) for k, v in table.items()}
arch50 = infer_architecture(shape_only(r50))
print("maskrcnn_resnet50_fpn:", arch50)
arch18 = infer_architecture(shape_only({k: tuple(v) for k, v in tables["maskrcnn_resnet18_fpn"].items()}))
assert (arch50["backbone"]["depth"], arch50["backbone"]["norm"], arch50["num_classes"]) == (50, "frozen_bn", 91)
assert (arch18["backbone"]["depth"], infer_architecture(state)["backbone"]["depth"]) == (18, 18)
assert infer_architecture(state)["backbone"]["norm"] == "group_norm"

# %% [markdown]
# What the tensors cannot say stays in the config: image size, anchor sizes (only their count
# per location is visible), GroupNorm's number of groups, thresholds, proposal and detection
# counts, the frozen BatchNorm `eps`. `from_torchvision(state_dict, config)` takes those from
# `config` (torchvision's eval defaults if none is given) and the layer sizes from the weights
# (`config_for`). Given `small_config()` (FPN 64, widths 32-256) for the tiny weights, the layer
# sizes follow the weights and everything else stays as given:

# %%
merged = config_for(state, small_config())
print("from the weights:", {"fpn_channels": merged.fpn_channels, "widths": merged.backbone.widths,
                            "representation_size": merged.roi_heads.representation_size})
print("from the config: ", {"image_size": merged.image_size, "anchor_sizes": merged.rpn.anchor_sizes,
                            "group_norm_groups": merged.backbone.group_norm_groups})
assert (merged.fpn_channels, merged.backbone.widths) == (32, (8, 16, 32, 64))
assert merged.backbone.group_norm_groups == 8 != tiny_config.backbone.group_norm_groups == 4

# %% [markdown]
# The number of GroupNorm groups is one of the things no shape reveals: `small_config()` says 8,
# the tiny model was trained with 4. With 8 the weights would load without complaint and compute
# a different function (not run here); the same goes for anchor sizes and the frozen BatchNorm
# `eps`. That is why the file ships the config it was trained with, and why COCO weights need
# `resnet50_fpn_config(frozen_bn_eps=0.0)`.

# %% [markdown]
# ## 4. Online: torchvision's COCO weights on a photo
#
# This section runs only with `MRCNN_JAX_ONLINE=1` and torchvision installed: it downloads
# torchvision's `maskrcnn_resnet50_fpn` COCO_V1 weights (170 MB) and a COCO photo. torchvision
# reports **37.9 box AP and 34.6 mask AP** on COCO val2017 for these weights; loaded into our
# model with `resnet50_fpn_config(frozen_bn_eps=0.0)` (they were trained with BatchNorm eps 0),
# they compute the same function.
#
# `predict` runs at the config's static `image_size`, so the photo is first resized the way
# torchvision does (shorter side 800, longer side at most 1333) and padded bottom/right into
# `800 x 1088` (`mrcnn_jax.predict.load_image`). torchvision gets the same padded canvas (at
# that size it neither resizes nor pads), so both see the same pixels; every confident
# torchvision detection should have one of ours with the same label at box IoU ≥ 0.9. On a CPU
# this takes a minute or two.

# %%
if ONLINE:
    import urllib.request

    import torch
    import torchvision

    from mrcnn_jax.predict import load_image

    weights = torchvision.models.detection.MaskRCNN_ResNet50_FPN_Weights.COCO_V1
    tv_coco = torchvision.models.detection.maskrcnn_resnet50_fpn(weights=weights).eval()
    assert list(weights.meta["categories"]) == COCO_CATEGORY_NAMES
    COCO_NAMES = COCO_CATEGORY_NAMES  # 91 entries, "__background__" and "N/A" included
    coco_config = resnet50_fpn_config(frozen_bn_eps=0.0, image_size=(800, 1088))
    coco_model = from_torchvision(tv_coco.state_dict(), coco_config)
    photo = os.environ.get("MRCNN_JAX_PHOTO") or pathlib.Path(tempfile.gettempdir()) / "coco_000000039769.jpg"
    if not pathlib.Path(photo).exists():
        urllib.request.urlretrieve("http://images.cocodataset.org/val2017/000000039769.jpg", photo)
    canvas, (w, h) = load_image(photo, coco_config.image_size)
    start = time.perf_counter()
    coco_out = jax.tree.map(lambda v: np.asarray(v)[0], predict(coco_model, jnp.asarray(canvas[None])))
    print(f"ours: compiled and ran in {time.perf_counter() - start:.0f} s")
    with torch.no_grad():  # the same padded canvas: 800 x 1088 needs no resizing or padding there
        tv_out = {k: v.numpy() for k, v in tv_coco([torch.from_numpy(canvas).permute(2, 0, 1).float() / 255.0])[0].items()}
    SHOWN = 0.7
    keep = coco_out["valid"] & (coco_out["scores"] >= SHOWN)
    tv_keep = tv_out["scores"] >= SHOWN
    for box, lab, s in zip(coco_out["boxes"][keep], coco_out["labels"][keep], coco_out["scores"][keep], strict=True):
        print(f"  ours  {COCO_NAMES[lab]:14s} {s:.3f} {box.round(1)}")
    for box, lab, s in zip(tv_out["boxes"][tv_keep], tv_out["labels"][tv_keep], tv_out["scores"][tv_keep], strict=True):
        print(f"  torch {COCO_NAMES[lab]:14s} {s:.3f} {box.round(1)}")
    ious = np.asarray(box_iou(jnp.asarray(tv_out["boxes"][tv_keep]), jnp.asarray(coco_out["boxes"][keep])))
    same = ious * (tv_out["labels"][tv_keep][:, None] == coco_out["labels"][keep][None, :])
    found = (same >= 0.9).any(axis=1) if same.size else np.zeros(int(tv_keep.sum()), bool)
    print(f"{found.sum()} of {tv_keep.sum()} torchvision detections >= {SHOWN} have ours with the same label at IoU >= 0.9")
    assert found.mean() >= 0.9 if len(found) else True
    fig, axes = plotting.subplots(ncols=2, size=5.0)
    for ax, o, k, title in ((axes[0], coco_out, keep, "ours (JAX)"), (axes[1], tv_out, tv_keep, "torchvision")):
        masks = o["masks"][k] if o is coco_out else o["masks"][k][:, 0]
        plotting.show_image(ax, plotting.overlay_masks(canvas, masks, o["labels"][k])[:h, :w], title)
        plotting.draw_boxes(ax, o["boxes"][k], o["labels"][k], o["scores"][k], class_names=COCO_NAMES)
    fig.tight_layout()
    plt.show()
else:
    print("offline: skipped (set MRCNN_JAX_ONLINE=1 with torchvision installed to run it)")

# %% [markdown]
# ## 5. Offline: the tiny shapes model, ours against torchvision's own detections
#
# The rest of the notebook uses the file's tiny model (trained with torchvision on this
# project's machine by `tools/export_torchvision_example.py`, not COCO weights). `from_torchvision`
# with the file's config builds our `MaskRCNN` and copies every tensor; `predict` runs on the four
# images stored beside torchvision's predictions for them. The weights were rounded to float16
# *before* torchvision made those predictions, so both sides use exactly the same numbers.

# %%
model = from_torchvision(state, tiny_config)
images = example["reference/images"]  # (4, 128, 128, 3) uint8
start = time.perf_counter()
out = jax.tree.map(np.asarray, predict(model, jnp.asarray(images)))
print(f"predict compiled and ran in {time.perf_counter() - start:.0f} s; images {images.shape}")
reference = [{k: example[f"reference/{i}/{k}"] for k in ("boxes", "labels", "scores", "masks")}
             for i in range(len(images))]
print("torchvision's detections per image (score >= 0.05):", [len(r["scores"]) for r in reference])

# %% [markdown]
# Ours on top, torchvision's below, each at score > 0.5:

# %%
SCORE = 0.5
fig, axes = plotting.subplots(ncols=4, nrows=2, size=2.6)
for i in range(4):
    keep = out["valid"][i] & (out["scores"][i] > SCORE)
    plotting.show_image(axes[i], plotting.overlay_masks(images[i], out["masks"][i][keep], out["labels"][i][keep]), "ours (JAX)")
    plotting.draw_boxes(axes[i], out["boxes"][i][keep], out["labels"][i][keep], out["scores"][i][keep], class_names=NAMES)
    ref = reference[i]["scores"] > SCORE
    plotting.show_image(axes[4 + i], plotting.overlay_masks(images[i], reference[i]["masks"][ref].astype(bool),
                                                            reference[i]["labels"][ref]), "torchvision")
    plotting.draw_boxes(axes[4 + i], reference[i]["boxes"][ref], reference[i]["labels"][ref],
                        reference[i]["scores"][ref], class_names=NAMES)
fig.tight_layout()
plt.show()

# %% [markdown]
# And in numbers: per image the same detections above 0.5, in the same order, with the same
# labels; boxes and scores agree to float32 rounding, masks (thresholded at 0.5) pixel for pixel
# or nearly.

# %%
def mask_iou(a, b):
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else np.logical_and(a, b).sum() / union


worst = {"box": 0.0, "score": 0.0, "iou": 1.0}
for i in range(len(images)):
    keep = out["valid"][i] & (out["scores"][i] > SCORE)
    ref = reference[i]["scores"] > SCORE
    assert keep.sum() == ref.sum(), f"image {i}: {keep.sum()} detections here, {ref.sum()} in torchvision"
    np.testing.assert_array_equal(out["labels"][i][keep], reference[i]["labels"][ref])
    worst["box"] = max(worst["box"], np.abs(out["boxes"][i][keep] - reference[i]["boxes"][ref]).max(initial=0))
    worst["score"] = max(worst["score"], np.abs(out["scores"][i][keep] - reference[i]["scores"][ref]).max(initial=0))
    for m_ours, m_ref in zip(out["masks"][i][keep] > 0.5, reference[i]["masks"][ref], strict=True):
        worst["iou"] = min(worst["iou"], mask_iou(m_ours, m_ref))
    print(f"image {i}: {int(keep.sum())} detections, labels {[NAMES[k] for k in out['labels'][i][keep]]}")
print(f"largest box difference {worst['box']:.1e} px, largest score difference {worst['score']:.1e}, "
      f"smallest mask IoU {worst['iou']:.4f}")
assert worst["box"] < 0.5 and worst["score"] < 1e-3 and worst["iou"] >= 0.98

# %% [markdown]
# The same model scored on all 500 held-out shapes images (the file records torchvision's own
# score on them): the two evaluations agree. It runs the model on 500 images (the cell prints how
# long that took), so the fast setting skips it.

# %%
if not FAST:
    val = shapes_source("validation", num_train=2000, num_val=500, image_size=128, seed=0)
    assert class_names(val) == NAMES
    val_loader = make_loader(val, 5, image_size=128, max_instances=8, train=False)
    start = time.perf_counter()
    results = evaluate_model(model, val_loader, NAMES, progress=False)[0]
    theirs = trained["results"]
    print(f"{len(val)} images in {time.perf_counter() - start:.0f} s")
    for kind in ("segm", "bbox"):
        print(f"  {kind}: AP ours {results[kind]['AP']:.4f}, torchvision {theirs[kind]['AP']:.4f}; "
              f"AP50 ours {results[kind]['AP50']:.4f}, torchvision {theirs[kind]['AP50']:.4f}")
        assert abs(results[kind]["AP"] - theirs[kind]["AP"]) < 0.005
else:
    print("fast setting: evaluation on 500 images skipped")

# %% [markdown]
# ## 6. Saving the imported model as a JAX checkpoint
#
# Once imported, the model is an ordinary `MaskRCNN`, and the training code's checkpoints store
# it: `mrcnn_jax.import_torchvision.import_weights` runs `from_torchvision`, writes `run.json`
# (config and class names) and saves an Orbax checkpoint at step 0 with `checkpoints.save`
# (a checkpoint holds the optimizer state too: a fresh one, where fine-tuning would start).
# Then `checkpoints.restore_model`, `python -m mrcnn_jax.predict --workdir ...` and
# `python -m mrcnn_jax.evaluate --workdir ...` work on it without torch or the `.npz`. On the
# command line the same is `python -m mrcnn_jax.import_torchvision weights.pth --workdir ...`
# (torchvision's COCO weights: see the README).

# %%
workdir = pathlib.Path(tempfile.mkdtemp(prefix="imported_torchvision_"))
import_weights(state, workdir, tiny_config, NAMES)
print("saved:", sorted(p.name for p in workdir.iterdir()), "in", workdir)
print("run.json:", {k: (v if k != "config" else "...") for k, v in checkpoints.read_run(workdir).items()})

restored, run = checkpoints.restore_model(workdir)
before = dict(nnx.to_flat_state(nnx.state(model)))
after = dict(nnx.to_flat_state(nnx.state(restored)))
assert before.keys() == after.keys() and restored.config == model.config
for path in before:
    np.testing.assert_array_equal(np.asarray(before[path][...]), np.asarray(after[path][...]), err_msg=str(path))
again = jax.tree.map(np.asarray, predict(restored, jnp.asarray(images)))
for key in out:
    np.testing.assert_array_equal(again[key], out[key], err_msg=key)
print(f"restored {len(after)} variables, all equal; predictions identical")

# %% [markdown]
# ## Summary
#
# - A torchvision state dict is a flat mapping of dotted names to tensors; `torchvision_name`
#   maps each of our variable paths to one name, and `torchvision_shapes` shows that our models
#   have exactly torchvision's tensors (tiny model and ResNet-50-FPN).
# - Layouts: convs OIHW → HWIO, linears transposed, `fc6`'s rows permuted from `(c, y, x)` to
#   `(y, x, c)` order (a plain transpose is wrong), the 2x2 transposed conv `(in, out, a, b)` →
#   `(a, b, in, out)`; each checked by running the layer both ways.
# - `infer_architecture` reads depth, block type, widths, norm and head sizes from names and
#   shapes; the config supplies what weights cannot tell (image size, anchors, thresholds).
# - `from_torchvision` on a torchvision model trained on shapes reproduces torchvision's own
#   detections (identical labels, box corners within a small fraction of a pixel, masks with IoU
#   of at least 0.98; section 5 prints the largest differences) and its COCO AP; the imported
#   model saves and restores like any trained one.
#
# ## Exercises
#
# Each exercise has a stub that raises `NotImplementedError` and a check that runs when you
# replace it. A wrong answer raises an `AssertionError` that says what was expected.
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
# **Core exercise A: layouts.** Write `your_from_torchvision_layout(name, value, roi_size=7)`,
# as `mrcnn_jax.weights.from_torchvision_layout`: turn torchvision's array `value` of the tensor
# called `name` into our layout, following the table of section 2 (conv kernels, the 2x2
# transposed conv `...conv5_mask.weight`, linear weights, `...box_head.fc6.weight` with its
# `roi_size x roi_size` cells, and vectors).

# %%
from mrcnn_jax.course import check_from_torchvision_layout


def your_from_torchvision_layout(name, value, roi_size=7):
    # BEGIN SOLUTION
    value = np.asarray(value)
    if name.endswith("conv5_mask.weight"):  # transposed conv: (in, out, a, b) -> (a, b, in, out)
        return value.transpose(2, 3, 0, 1)
    if value.ndim == 4:  # conv: OIHW -> HWIO
        return value.transpose(2, 3, 1, 0)
    if "box_head.fc6" in name:  # columns (c, y, x) -> rows (y, x, c)
        out, channels = value.shape[0], value.shape[1] // (roi_size * roi_size)
        cells = value.reshape(out, channels, roi_size, roi_size).transpose(2, 3, 1, 0)
        return cells.reshape(roi_size * roi_size * channels, out)
    if value.ndim == 2:  # linear: (out, in) -> (in, out)
        return value.T
    return value  # vectors keep their layout
    # END SOLUTION


check_from_torchvision_layout(your_from_torchvision_layout)

# %% [markdown]
# ### Extension exercise
#
# **Exercise 1: ResNet depth from the names.** Write `my_resnet_depth(names)` for an iterable of
# state-dict names: count the blocks of `backbone.body.layer1` .. `layer4` (the distinct indices
# `i` in `backbone.body.layer{s}.{i}.`), decide basic or bottleneck (a `conv3` exists), and return
# 18, 34, 50 or 101.

# %%
def check_resnet_depth(fn):
    assert fn(state) == 18, f"the tiny model is a ResNet-18, got {fn(state)}"
    assert fn(r50) == 50, f"maskrcnn_resnet50_fpn is a ResNet-50, got {fn(r50)}"

    def fake(blocks, bottleneck):
        convs = ("conv1", "conv2", "conv3") if bottleneck else ("conv1", "conv2")
        return [f"backbone.body.layer{s}.{i}.{c}.weight" for s, n in enumerate(blocks, 1)
                for i in range(n) for c in convs]

    assert fn(fake((3, 4, 6, 3), False)) == 34, "basic blocks (3, 4, 6, 3): ResNet-34"
    assert fn(fake((3, 4, 23, 3), True)) == 101, "bottlenecks (3, 4, 23, 3): ResNet-101"


def my_resnet_depth(names):
    raise NotImplementedError


try:
    check_resnet_depth(my_resnet_depth)
    print("correct!")
except NotImplementedError:
    print("not attempted yet")
