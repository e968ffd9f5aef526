"""The synthetic shapes written as a COCO-format folder: images plus one COCO JSON, offline.

What an annotation tool (CVAT, Label Studio, labelme, Roboflow) exports, made here so that the
own-data path (``python -m mrcnn_jax.train --train_annotations ...``), its tests and
notebooks/13_your_own_dataset need no download::

    write_shapes_coco("data/my_shapes", "train", count=200)          # the native shapes images
    write_shapes_coco("data/my_shapes", "train", count=200, vary=True)  # sizes 96-192, any aspect
    # -> data/my_shapes/train/000001.png ... and data/my_shapes/train.json

Each instance's visible mask is written as **polygons** (its outline traced at half a pixel by
``contourpy``, which matplotlib ships: one polygon per connected part), or as RLE when occlusion
has cut a hole in it (COCO polygons cannot hold holes). ``bbox`` is the tight ``[x, y, w, h]``
of the mask, ``area`` its pixel count, categories ``1 square, 2 circle, 3 triangle``.

With ``vary=False`` image ``i`` of a split is exactly image ``i`` of the native shapes data
(``shapes.py``: ``default_rng([seed, split_index, i])``), so the two paths train on the same
pixels; polygons rasterised by pycocotools differ from the drawn masks only along the outline.
With ``vary=True`` each image is drawn at a random side in ``size_range`` and cut to a random
aspect between 3:4 and 4:3 (instances left under ``min_visible`` pixels are dropped).
"""

import json
import pathlib

import contourpy
import numpy as np
from PIL import Image

from mrcnn_jax.data.examples import tight_boxes
from mrcnn_jax.data.shapes import CLASS_NAMES, draw_shapes

SPLIT_INDEX = {"train": 0, "validation": 1}


def mask_polygons(mask):
    """COCO polygons ``[[x0, y0, x1, y1, ...], ...]`` of a boolean ``(H, W)`` mask, or ``None``
    if it has a hole. Vertices lie on pixel edges or cut pixel corners (COCO coordinates: pixel
    ``(i, j)`` covers ``[j, j + 1) x [i, i + 1)``)."""
    padded = np.pad(mask.astype(np.float32), 1)
    generator = contourpy.contour_generator(z=padded, fill_type="OuterOffset")
    outers, offsets = generator.filled(0.5, 2.0)
    polygons = []
    for points, offset in zip(outers, offsets, strict=True):
        if len(offset) > 2:  # an outer boundary plus at least one hole
            return None
        ring = points[:-1] - 0.5  # drop the repeated closing point; padded grid -> COCO
        if len(ring) >= 3:
            polygons.append([round(float(v), 2) for v in ring.reshape(-1)])
    return polygons


def _rle(mask):
    """Uncompressed COCO RLE (column-major run lengths, starting with a run of zeros)."""
    flat = np.asfortranarray(mask).reshape(-1, order="F").astype(np.uint8)
    changes = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
    counts = np.diff(np.concatenate([[0], changes]))
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": [int(c) for c in counts]}


def _varied(drawn, rng, min_visible):
    """Cut a drawn square image to a random aspect; drop instances left too small."""
    size = drawn["image"].shape[0]
    aspect = rng.uniform(0.75, 4 / 3)
    height, width = (size, round(size / aspect)) if aspect > 1 else (round(size * aspect), size)
    top, left = int(rng.integers(0, size - height + 1)), int(rng.integers(0, size - width + 1))
    masks = drawn["masks"][:, top:top + height, left:left + width]
    keep = masks.reshape(len(masks), -1).sum(1) >= min_visible
    masks = masks[keep]
    return {"image": drawn["image"][top:top + height, left:left + width], "masks": masks,
            "boxes": tight_boxes(masks), "labels": drawn["labels"][keep]}


def shapes_image(split, index, *, image_size=128, max_objects=6, seed=0, vary=False,
                 size_range=(96, 192), min_visible=16):
    """Image ``index`` of a split: ``draw_shapes`` output (``image``, ``masks``, ``boxes``,
    ``labels`` 0..2), exactly the native image when ``vary`` is False."""
    rng = np.random.default_rng([seed, SPLIT_INDEX[split], index])
    if not vary:
        return draw_shapes(rng, image_size, max_objects)
    side = int(rng.integers(size_range[0], size_range[1] + 1))
    return _varied(draw_shapes(rng, side, max_objects), rng, min_visible)


ROUND_OR_ANGULAR = {"square": "angular", "circle": "round", "triangle": "angular"}


def coco_annotations(drawn, image_id, first_annotation_id, category_of=None):
    """The COCO ``annotations`` entries of one drawn image; ``category_of[k]`` is the category
    id of native label ``k`` (default ``k + 1``)."""
    entries = []
    for k, (mask, box, label) in enumerate(
            zip(drawn["masks"], drawn["boxes"], drawn["labels"], strict=True)):
        polygons = mask_polygons(mask)
        x1, y1, x2, y2 = (float(v) for v in box)
        entries.append({
            "id": first_annotation_id + k, "image_id": image_id,
            "category_id": int(label) + 1 if category_of is None else category_of[int(label)],
            "iscrowd": 0, "area": int(mask.sum()),
            "bbox": [x1, y1, x2 - x1, y2 - y1],
            "segmentation": polygons if polygons else _rle(mask),
        })
    return entries


def write_shapes_coco(out_dir, split="train", count=100, *, image_size=128, max_objects=6,
                      seed=0, vary=False, classes=None):
    """Write ``out_dir/<split>/NNNNNN.png`` and ``out_dir/<split>.json``; returns the JSON path.

    Image ids are ``1..count`` (image ``i`` has id ``i + 1``); nothing is written again if the
    JSON already exists with the same settings. ``classes`` renames or merges the categories,
    ``{native name: new name}`` (e.g. ``ROUND_OR_ANGULAR``: a two-class dataset of the same
    pictures, for fine-tuning a shapes model onto other classes); new ids ``1..`` in order of
    first appearance.
    """
    out_dir = pathlib.Path(out_dir)
    annotation_file = out_dir / f"{split}.json"
    settings = {"split": split, "count": count, "image_size": image_size,
                "max_objects": max_objects, "seed": seed, "vary": vary, "classes": classes}
    names = list(dict.fromkeys(classes[n] for n in CLASS_NAMES)) if classes else list(CLASS_NAMES)
    category_of = [names.index(classes[n]) + 1 for n in CLASS_NAMES] if classes else None
    if annotation_file.exists():
        if json.loads(annotation_file.read_text()).get("info", {}).get("settings") == settings:
            return annotation_file
    image_dir = out_dir / split
    image_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i in range(count):
        drawn = shapes_image(split, i, image_size=image_size, max_objects=max_objects,
                             seed=seed, vary=vary)
        name = f"{i + 1:06d}.png"
        Image.fromarray(drawn["image"]).save(image_dir / name)
        height, width = drawn["image"].shape[:2]
        images.append({"id": i + 1, "file_name": name, "width": width, "height": height})
        annotations += coco_annotations(drawn, i + 1, len(annotations) + 1, category_of)
    coco = {"info": {"description": "mrcnn_jax synthetic shapes", "settings": settings},
            "images": images, "annotations": annotations,
            "categories": [{"id": k + 1, "name": name, "supercategory": "shape"}
                           for k, name in enumerate(names)]}
    annotation_file.write_text(json.dumps(coco))
    return annotation_file
