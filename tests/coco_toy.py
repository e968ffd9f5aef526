"""A tiny COCO-format dataset of drawn shapes and a trained work directory, for the CLI tests.

``write_dataset`` paints squares, circles (32-gons) and triangles with PIL as polygons on
images of several sizes and aspects, writes the polygons (``segmentation``), their bounds
(``bbox``) and shoelace areas into a COCO JSON whose category ids are not contiguous
(``CATEGORIES``); ``trained_workdir`` imports the committed torchvision-trained shapes model
(``data/torchvision_shapes_example.npz``, 128 x 128 input) with ``import_torchvision``.
"""

import json
import pathlib

import numpy as np
from PIL import Image, ImageDraw

REPO = pathlib.Path(__file__).resolve().parents[1]
CATEGORIES = [{"id": 9, "name": "square"}, {"id": 2, "name": "circle"},
              {"id": 5, "name": "triangle"}]
SIZES = [(128, 96), (96, 128), (200, 150), (80, 64), (160, 160)]  # (width, height)


def _polygon(kind, cx, cy, r):
    if kind == "square":
        return [cx - r, cy - r, cx + r, cy - r, cx + r, cy + r, cx - r, cy + r]
    if kind == "triangle":
        return [cx, cy - r, cx + r, cy + r, cx - r, cy + r]
    angles = np.arange(32) * 2 * np.pi / 32
    return np.stack([cx + r * np.cos(angles), cy + r * np.sin(angles)], 1).ravel().tolist()


def _area(poly):
    x, y = np.asarray(poly[0::2]), np.asarray(poly[1::2])
    return float(0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


def write_dataset(root, seed=0, sizes=SIZES, categories=CATEGORIES):
    """Images in ``root/images`` and ``root/annotations.json``; returns the JSON path."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    kinds = [c["name"] for c in categories]
    for k, (w, h) in enumerate(sizes):
        canvas = Image.new("RGB", (w, h), tuple(int(v) for v in rng.integers(0, 90, 3)))
        draw = ImageDraw.Draw(canvas)
        cells = [(x, y) for x in (0.27, 0.73) for y in (0.27, 0.73)]  # no overlaps
        for j in rng.permutation(4)[: int(rng.integers(2, 5))]:
            kind = kinds[int(rng.integers(len(kinds)))]
            r = float(min(w, h) * rng.uniform(0.12, 0.2))
            cx, cy = cells[j][0] * w, cells[j][1] * h
            poly = [round(v, 2) for v in _polygon(kind, cx, cy, r)]
            draw.polygon(list(zip(poly[0::2], poly[1::2], strict=True)),
                         fill=tuple(int(v) for v in rng.integers(110, 256, 3)))
            x, y = poly[0::2], poly[1::2]
            annotations.append({
                "id": len(annotations) + 1, "image_id": 100 + k, "iscrowd": 0,
                "category_id": next(c["id"] for c in categories if c["name"] == kind),
                "bbox": [min(x), min(y), max(x) - min(x), max(y) - min(y)],
                "segmentation": [poly], "area": _area(poly)})
        name = f"img_{k}.png"
        canvas.save(root / "images" / name)
        images.append({"id": 100 + k, "file_name": name, "width": w, "height": h})
    path = root / "annotations.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": categories}))
    return path


def trained_workdir(root):
    """A work directory holding the committed torchvision-trained shapes model."""
    from mrcnn_jax import import_torchvision

    import_torchvision.main([str(REPO / "data" / "torchvision_shapes_example.npz"),
                             "--workdir", str(root)])
    return root
