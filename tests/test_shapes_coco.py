"""The shapes written as a COCO-format folder, and the splits a training run reads from it."""

import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from mrcnn_jax.data.shapes import draw_shapes
from mrcnn_jax.data.shapes_coco import mask_polygons, shapes_image, write_shapes_coco
from mrcnn_jax.data.splits import category_ids, coco_splits, split_sources


def _decode(segmentation, height, width):
    if isinstance(segmentation, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    else:
        rle = mask_utils.frPyObjects(segmentation, height, width)
    return mask_utils.decode(rle).astype(bool)


def test_polygon_of_a_square_lies_on_pixel_edges():
    mask = np.zeros((8, 8), bool)
    mask[2:5, 3:7] = True  # rows 2..4, columns 3..6: x in [3, 7), y in [2, 5)
    (polygon,) = mask_polygons(mask)
    xs, ys = np.array(polygon[0::2]), np.array(polygon[1::2])
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (3.0, 7.0, 2.0, 5.0)
    assert np.array_equal(_decode([polygon], 8, 8), mask)


def test_a_mask_with_a_hole_has_no_polygon():
    mask = np.zeros((9, 9), bool)
    mask[1:8, 1:8] = True
    mask[3:6, 3:6] = False
    assert mask_polygons(mask) is None


def test_native_images_and_exact_masks(tmp_path):
    path = write_shapes_coco(tmp_path, "train", 30)
    coco = json.loads(path.read_text())
    by_image = {}
    for ann in coco["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    assert [c["name"] for c in coco["categories"]] == ["square", "circle", "triangle"]
    count = 0
    for i in range(30):
        native = draw_shapes(np.random.default_rng([0, 0, i]), 128, 6)
        drawn = shapes_image("train", i)
        assert np.array_equal(drawn["image"], native["image"])
        anns = by_image.get(i + 1, [])
        assert len(anns) == len(native["masks"])
        for ann, mask, box, label in zip(anns, native["masks"], native["boxes"],
                                         native["labels"], strict=True):
            assert np.array_equal(_decode(ann["segmentation"], 128, 128), mask)  # exact here
            x, y, w, h = ann["bbox"]
            np.testing.assert_allclose([x, y, x + w, y + h], box, atol=1e-4)
            assert ann["category_id"] == label + 1 and ann["area"] == mask.sum()
            count += 1
    assert count == len(coco["annotations"]) > 30


def test_varied_sizes(tmp_path):
    coco = json.loads(write_shapes_coco(tmp_path, "validation", 12, vary=True).read_text())
    sizes = {(im["width"], im["height"]) for im in coco["images"]}
    assert len(sizes) > 6 and all(64 <= min(s) and max(s) <= 192 for s in sizes)
    assert any(w != h for w, h in sizes)
    for ann in coco["annotations"]:
        image = coco["images"][ann["image_id"] - 1]
        mask = _decode(ann["segmentation"], image["height"], image["width"])
        assert mask.sum() == ann["area"] >= 16


def test_held_out_fraction_and_category_ids(tmp_path):
    folder = tmp_path / "coco"
    path = write_shapes_coco(folder, "train", 40)
    data, report = coco_splits(path, folder / "train", val_fraction=0.25, data_dir=tmp_path)
    train, val = split_sources(data, tmp_path)
    assert (len(train), len(val)) == (30, 10)
    ids = {int(r["image/id"]) for r in (train[i] for i in range(30))}
    assert ids.isdisjoint(int(val[i]["image/id"]) for i in range(10))
    assert report["train"].startswith("kept 40 images") and "nothing skipped" in report["train"]
    assert category_ids(data, 4) == [1, 2, 3]
    assert data["class_names"] == ["background", "square", "circle", "triangle"]
    again, report_again = coco_splits(path, folder / "train", val_fraction=0.25,
                                      data_dir=tmp_path)
    assert again == data and report_again == report  # prepared once; the counts are kept


def test_bad_arguments(tmp_path):
    with pytest.raises(FileNotFoundError, match="--train_annotations"):
        coco_splits(tmp_path / "missing.json", tmp_path)
    path = write_shapes_coco(tmp_path, "train", 2)
    with pytest.raises(ValueError, match="both --val_annotations and --val_images"):
        coco_splits(path, tmp_path / "train", val_annotations=path)
    with pytest.raises(ValueError, match="--val_fraction"):
        coco_splits(path, tmp_path / "train", val_fraction=1.5)
