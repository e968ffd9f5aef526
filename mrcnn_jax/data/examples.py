"""The one example format shared by every dataset, and its conversion to numpy instances.

Every builder in ``mrcnn_jax.data`` (``shapes``, ``coco_instances``) writes the feature layout of
TFDS ``lvis``, so one parser reads all three through ``tfds.data_source``::

    image               (H, W, 3) uint8, stored as PNG or JPEG
    image/id            int64
    objects/bbox        (N, 4) float32, TFDS BBoxFeature: (ymin, xmin, ymax, xmax) in [0, 1]
    objects/label       (N,) int64, TFDS ClassLabel: 0..K-1 (no background class stored)
    objects/segmentation (N, H, W, 1) uint8 0/255, one PNG per instance (visible part)
    objects/is_crowd    (N,) bool   (coco_instances only; absent means False)

``parse_example`` turns one such record into the package conventions:

- boxes ``(x1, y1, x2, y2)`` float32 in absolute pixels; pixel ``(i, j)`` covers
  ``[j, j + 1) x [i, i + 1)``, so the tight box of a mask is
  ``(min x, min y, max x + 1, max y + 1)`` of its pixels (``tight_box``);
- labels int32 with **0 reserved for background**: ``label = stored ClassLabel + 1``, real
  classes are ``1..K`` and padded ground-truth slots carry 0 (Mask R-CNN convention);
- masks ``(N, H, W)`` uint8 0/1.

Shape shorthand: ``N`` instances of one image, ``H, W`` image size, ``K`` real classes.
Taught in notebooks/00_data.
"""

import io
import os
import pathlib

import numpy as np
from PIL import Image

_REPO = pathlib.Path(__file__).resolve().parents[2]


def default_data_dir():
    """Where prepared datasets live: ``$MRCNN_JAX_DATA`` if set; else ``<repo>/data`` when the
    package runs from a source checkout (editable install, notebooks, Colab's clone); else, for
    an installed copy, ``~/.cache/mrcnn_jax/data`` (never inside site-packages)."""
    if "MRCNN_JAX_DATA" in os.environ:
        return pathlib.Path(os.environ["MRCNN_JAX_DATA"])
    if (_REPO / "pyproject.toml").exists() and (_REPO / "mrcnn_jax").is_dir():
        return _REPO / "data"
    return pathlib.Path.home() / ".cache" / "mrcnn_jax" / "data"


def encode_png(array, compress_level=1):
    """PNG bytes of an ``(H, W)`` or ``(H, W, 3)`` uint8 array (level 1: fast, still small)."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(
        buffer, format="PNG", compress_level=compress_level)
    return buffer.getvalue()


def tight_box(mask):
    """The tight xyxy box ``(4,)`` float32 of the nonzero pixels of ``mask (H, W)``.

    Pixel ``(i, j)`` covers ``[j, j + 1) x [i, i + 1)``, so a single pixel at ``(2, 3)`` has box
    ``(3, 2, 4, 3)``. An empty mask gives ``(0, 0, 0, 0)``.
    """
    rows = np.flatnonzero(np.any(mask, axis=1))
    cols = np.flatnonzero(np.any(mask, axis=0))
    if rows.size == 0:
        return np.zeros(4, np.float32)
    return np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], np.float32)


def tight_boxes(masks):
    """``tight_box`` of each of ``masks (N, H, W)``; returns ``(N, 4)`` float32."""
    return np.stack([tight_box(m) for m in masks]) if len(masks) else np.zeros((0, 4), np.float32)


def _stack(values, shape, dtype, what):
    """``np.stack`` of a ``data_source`` Sequence field (a list, maybe empty) or an array."""
    if len(values) == 0:
        return np.zeros((0, *shape), dtype)
    array = np.stack([np.asarray(v) for v in values]).astype(dtype, copy=False)  # (N, ...)
    if array.shape[1:] != tuple(shape):
        raise ValueError(f"{what}: expected per-object shape {tuple(shape)}, got "
                         f"{array.shape[1:]} (dtype {array.dtype})")
    return array


def parse_example(raw):
    """One ``tfds.data_source`` record -> dict of numpy arrays in the package conventions.

    Returns ``image (H, W, 3) uint8``, ``boxes (N, 4) float32`` xyxy pixels, ``labels (N,)``
    int32 in 1..K, ``masks (N, H, W) uint8`` 0/1, ``is_crowd (N,) bool``, ``image_id`` int.
    Raises ``ValueError`` naming the image when fields disagree (counts, mask sizes).
    """
    image = np.asarray(raw["image"])
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8; got {image.shape} {image.dtype}")
    height, width = image.shape[:2]
    image_id = int(raw.get("image/id", -1))
    objects = raw["objects"]
    where = f"image {image_id}"
    yxyx = _stack(objects["bbox"], (4,), np.float32, f"{where} bbox")  # (N, 4) normalised
    labels = _stack(objects["label"], (), np.int32, f"{where} label") + 1  # (N,) 0 = bg
    masks = _stack(objects["segmentation"], (height, width, 1), np.uint8,
                   f"{where} segmentation")[..., 0]  # (N, H, W)
    crowd = objects.get("is_crowd")
    is_crowd = (np.zeros(len(labels), bool) if crowd is None
                else _stack(crowd, (), bool, f"{where} is_crowd"))  # (N,)
    counts = {len(yxyx), len(labels), len(masks), len(is_crowd)}
    if len(counts) != 1:
        raise ValueError(
            f"image {image_id}: objects fields disagree in length: bbox {len(yxyx)}, label "
            f"{len(labels)}, segmentation {len(masks)}, is_crowd {len(is_crowd)}")
    scale = np.array([width, height, width, height], np.float32)
    boxes = yxyx[:, [1, 0, 3, 2]] * scale  # (N, 4) xyxy pixels
    return {"image": image, "boxes": boxes, "labels": labels, "masks": (masks > 0).astype(
        np.uint8), "is_crowd": is_crowd, "image_id": image_id}


def class_names(source):
    """``["background", name_1, ..., name_K]`` of a ``tfds.data_source`` (index = label)."""
    names = source.dataset_info.features["objects"]["label"].names
    return ["background", *names]
