"""Per-example transforms to fixed shapes: resize, horizontal flip, mask crops, padding.

Pure numpy functions on the dicts of ``examples.parse_example`` (``image (H, W, 3) uint8``,
``boxes (N, 4)`` xyxy pixels, ``labels (N,)`` 1..K, ``masks (N, H, W) uint8``, ``is_crowd``),
composed by ``transform_example`` and run by the grain pipeline (``pipeline.py``).

- **Resize** (torchvision ``GeneralizedRCNNTransform`` rule): ``scale = min(min_size / short
  side, max_size / long side)``; the new size is ``floor(side * scale)``, boxes are scaled per
  axis by ``new / old``. The image is resampled bilinearly (PIL), full masks by nearest
  neighbour: output pixel ``i`` reads input pixel ``floor((i + 0.5) * old / new)``. With
  ``min_size == max_size == S`` an image is fitted into ``S x S`` (the shapes setting).
  Upscaling reads every source pixel, so a box stays the tight box of its mask (exactly at
  integer scales, within half a pixel otherwise); downscaling may skip thin parts, so the mask
  can only shrink inside its box. Boxes are never recomputed from masks (as in torchvision).
- **Pad** the resized image at the bottom and right to ``max_size x max_size`` (zeros); boxes
  are unchanged. Ground truth is padded to ``G = max_instances`` slots with ``valid``; slots past
  ``G`` are truncated (the first ``G`` in stored order are kept) and counted in
  ``num_truncated``, never silently.
- **Flip** horizontally (before padding): ``x -> width - x`` so ``(x1, x2) -> (w - x2, w - x1)``
  under the pixel-covers-``[j, j + 1)`` convention; masks are mirrored with the image, so a box
  stays the tight box of its mask.
- **Mask crops** (``mask_size = M``): instead of ``(G, S, S)`` full masks, each ground-truth
  mask is sampled inside its own box at ``M x M`` (nearest neighbour at the cell centres, in the
  original image, so resizing never touches it; a flip mirrors the crop). This is how large
  images stay small (DESIGN.md "Data": 100 x 1024^2 full masks would not).

Shape shorthand: ``N`` instances, ``G`` padded slots, ``H, W`` input size, ``S`` padded size
(``max_size``), ``M`` mask crop size. Taught in notebooks/00_data.
"""

import numpy as np
from PIL import Image


def resized_size(height, width, min_size, max_size):
    """``(new_h, new_w)`` under the torchvision rule above (each side at least 1)."""
    scale = min(min_size / min(height, width), max_size / max(height, width))
    new_h = min(max(int(np.floor(height * scale + 1e-6)), 1), max_size)
    new_w = min(max(int(np.floor(width * scale + 1e-6)), 1), max_size)
    return new_h, new_w


def nearest_indices(n_out, n_in):
    """Input index read by each of ``n_out`` output pixels (nearest, centre-aligned)."""
    return np.minimum(((np.arange(n_out) + 0.5) * (n_in / n_out)).astype(np.int64), n_in - 1)


def crop_masks(masks, boxes, size):
    """Sample each of ``masks (N, H, W)`` inside its box ``(N, 4)`` at ``size x size``.

    Cell ``(a, b)`` reads the pixel under the point ``(x1 + (b + 0.5) w / M, y1 + (a + 0.5) h / M)``
    of its box. Returns ``(N, M, M)`` of the masks' dtype.
    """
    n, height, width = masks.shape
    steps = (np.arange(size, dtype=np.float32) + 0.5) / size  # (M,)
    x1, y1, x2, y2 = (boxes[:, k : k + 1] for k in range(4))  # each (N, 1)
    cols = np.clip(np.floor(x1 + steps * (x2 - x1)), 0, width - 1).astype(np.int64)  # (N, M)
    rows = np.clip(np.floor(y1 + steps * (y2 - y1)), 0, height - 1).astype(np.int64)  # (N, M)
    return masks[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]  # (N, M, M)


def resize_example(example, min_size, max_size, full_masks=True):
    """Resize image, boxes and (if ``full_masks``) masks; adds ``scale (2,)`` as (sy, sx)."""
    image = example["image"]
    height, width = image.shape[:2]
    new_h, new_w = resized_size(height, width, min_size, max_size)
    out = dict(example, orig_size=np.array([height, width], np.int32))
    out["scale"] = np.array([new_h / height, new_w / width], np.float32)
    if (new_h, new_w) != (height, width):
        out["image"] = np.asarray(Image.fromarray(image).resize((new_w, new_h),
                                                                 Image.Resampling.BILINEAR))
        if full_masks:
            rows, cols = nearest_indices(new_h, height), nearest_indices(new_w, width)
            out["masks"] = example["masks"][:, rows][:, :, cols]  # (N, new_h, new_w)
    sx, sy = out["scale"][1], out["scale"][0]
    out["boxes"] = example["boxes"] * np.array([sx, sy, sx, sy], np.float32)  # (N, 4)
    return out


def hflip_example(example):
    """Mirror image, boxes and masks (full masks or box crops) left to right."""
    width = example["image"].shape[1]
    boxes = example["boxes"]
    flipped = np.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]],
                       axis=1).astype(np.float32)  # (N, 4)
    return dict(example, image=example["image"][:, ::-1], boxes=flipped,
                masks=example["masks"][..., ::-1], flipped=True)


def pad_example(example, size, max_instances, full_masks=True):
    """Pad the image to ``size x size`` and the ground truth to ``max_instances`` slots.

    Full masks ``(N, h, w)`` are padded like the image; crops ``(N, M, M)`` (``full_masks``
    False) keep their size.
    """
    image = example["image"]
    height, width = image.shape[:2]
    canvas = np.zeros((size, size, 3), np.uint8)
    canvas[:height, :width] = image
    count = len(example["labels"])
    keep = min(count, max_instances)
    masks = example["masks"]
    mask_shape = (size, size) if full_masks else masks.shape[1:]
    out_masks = np.zeros((max_instances, *mask_shape), np.uint8)  # (G, S, S) or (G, M, M)
    out_masks[:keep, : masks.shape[1], : masks.shape[2]] = masks[:keep]
    boxes = np.zeros((max_instances, 4), np.float32)
    boxes[:keep] = example["boxes"][:keep]
    labels = np.zeros(max_instances, np.int32)
    labels[:keep] = example["labels"][:keep]
    is_crowd = np.zeros(max_instances, bool)
    is_crowd[:keep] = example["is_crowd"][:keep]
    return {
        "image": canvas, "boxes": boxes, "labels": labels, "masks": out_masks,
        "valid": np.arange(max_instances) < keep, "is_crowd": is_crowd,
        "image_id": np.int64(example["image_id"]),
        "image_size": np.array([height, width], np.int32),
        "orig_size": example.get("orig_size", np.array([height, width], np.int32)),
        "scale": example.get("scale", np.ones(2, np.float32)),
        "flipped": np.bool_(example.get("flipped", False)),
        "num_instances": np.int32(count), "num_truncated": np.int32(count - keep),
    }


def transform_example(example, rng, *, min_size, max_size, max_instances, flip_prob=0.0,
                      mask_size=None, include_crowd=False):
    """Parsed example -> fixed-shape example (see the module docstring for each step).

    Args:
      example: output of ``examples.parse_example``.
      rng: ``np.random.Generator`` deciding the flip (probability ``flip_prob``).
      min_size, max_size: resize rule; the output image is ``max_size x max_size``.
      max_instances: ``G``, ground-truth slots.
      mask_size: ``None`` for full masks ``(G, S, S)``, else crops ``(G, M, M)``.
      include_crowd: keep crowd regions (flagged in ``is_crowd``); dropped by default, as
        torchvision's and detectron2's COCO training do.
    """
    if not include_crowd and example["is_crowd"].any():
        keep = ~example["is_crowd"]
        example = dict(example, **{k: example[k][keep]
                                   for k in ("boxes", "labels", "masks", "is_crowd")})
    if mask_size is not None:
        example = dict(example, masks=crop_masks(example["masks"], example["boxes"], mask_size))
    example = resize_example(example, min_size, max_size, full_masks=mask_size is None)
    if flip_prob > 0 and rng.random() < flip_prob:
        example = hflip_example(example)
    return pad_example(example, max_size, max_instances, full_masks=mask_size is None)
