"""Tests for mrcnn_jax/data/coco.py on COCO JSON files written here (nothing downloads)."""

import contextlib
import io
import json

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from mrcnn_jax.data.coco import (
    annotation_mask,
    clip_coco_box,
    coco_source,
    load_annotations,
    lvis_source,
    prepare_coco,
)
from mrcnn_jax.data.examples import class_names, parse_example
from mrcnn_jax.data.pipeline import make_loader

H, W = 30, 40


def _rle_uncompressed(mask):
    """COCO uncompressed RLE (column-major run lengths starting with zeros)."""
    flat = mask.T.ravel()
    changes = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
    return {"size": [H, W], "counts": np.diff(np.concatenate([[0], changes])).tolist()}


def _coco_dict():
    block = np.zeros((H, W), np.uint8)
    block[5:12, 20:35] = 1
    compressed = mask_utils.encode(np.asfortranarray(block))
    compressed["counts"] = compressed["counts"].decode("ascii")
    crowd = np.zeros((H, W), np.uint8)
    crowd[20:28, 2:30] = 1
    ring = np.zeros((H, W), np.uint8)
    ring[15:25, 10:20] = 1
    ring[18:22, 13:17] = 0
    anns = [
        dict(id=1, image_id=1, category_id=1, iscrowd=0, bbox=[2, 3, 10, 8],
             segmentation=[[2, 3, 12, 3, 12, 11, 2, 11], [4, 20, 8, 20, 6, 26]]),
        dict(id=2, image_id=1, category_id=3, iscrowd=0, bbox=[10, 15, 10, 10],
             segmentation=_rle_uncompressed(ring)),
        dict(id=3, image_id=1, category_id=1, iscrowd=0, bbox=[20, 5, 15, 7],
             segmentation=compressed),
        dict(id=4, image_id=1, category_id=3, iscrowd=1, bbox=[2, 20, 28, 8],
             segmentation=_rle_uncompressed(crowd)),
        dict(id=5, image_id=1, category_id=1, iscrowd=0, bbox=[30, 20, 20, 20],  # partly out
             segmentation=[[30, 20, 45, 20, 45, 35, 30, 35]]),
        dict(id=6, image_id=1, category_id=1, iscrowd=0, bbox=[5, 5, 0, 4],  # zero area
             segmentation=[[5, 5, 5, 9, 5, 5]]),
        dict(id=7, image_id=1, category_id=99, iscrowd=0, bbox=[1, 1, 3, 3],  # unknown id
             segmentation=[[1, 1, 4, 1, 4, 4, 1, 4]]),
    ]
    images = [dict(id=1, file_name="a.png", height=H, width=W),
              dict(id=2, file_name="empty.png", height=H, width=W),
              dict(id=3, file_name="broken.jpg", height=H, width=W)]
    categories = [dict(id=3, name="dog"), dict(id=1, name="cat")]
    return {"images": images, "annotations": anns, "categories": categories}


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    root = tmp_path_factory.mktemp("coco")
    (root / "images").mkdir()
    rng = np.random.default_rng(0)
    for name in ("a.png", "empty.png"):
        Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(
            root / "images" / name)
    (root / "images" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    annotation_file = root / "instances.json"
    annotation_file.write_text(json.dumps(_coco_dict()))
    builder = prepare_coco(annotation_file, root / "images", root / "prepared", name="toy",
                           split="train")
    source = coco_source("toy", "train", root / "prepared")
    return {"root": root, "file": annotation_file, "builder": builder, "source": source}


def test_prepare_counts_bad_input(coco):
    assert dict(coco["builder"].skipped["train"]) == {
        "corrupt_images": 1, "zero_area": 1, "unknown_category": 1, "clipped_boxes": 1}
    assert len(coco["source"]) == 2  # the corrupt image is skipped, the empty one kept
    assert class_names(coco["source"]) == ["background", "cat", "dog"]  # sorted by id


def test_masks_equal_pycocotools_ann_to_mask(coco):
    with contextlib.redirect_stdout(io.StringIO()):
        reference = COCO(str(coco["file"]))
    records = {int(r["image/id"]): r for r in coco["source"]}
    record = records[1]
    ids = [int(i) for i in record["objects"]["id"]]
    assert ids == [1, 2, 3, 4, 5]
    example = parse_example(record)
    for k, ann_id in enumerate(ids):
        expected = reference.annToMask(reference.anns[ann_id])
        np.testing.assert_array_equal(example["masks"][k], expected, err_msg=f"annotation {ann_id}")
    # Labels: category 1 "cat" -> 1, category 3 "dog" -> 2 (0 is background).
    assert example["labels"].tolist() == [1, 2, 1, 2, 1]
    assert [int(c) for c in record["objects"]["category_id"]] == [1, 3, 1, 3, 1]
    assert example["is_crowd"].tolist() == [False, False, False, True, False]
    np.testing.assert_allclose(example["boxes"][0], [2, 3, 12, 11], atol=1e-4)
    np.testing.assert_allclose(example["boxes"][4], [30, 20, 40, 30], atol=1e-4)  # clipped
    np.testing.assert_array_equal(example["image"], np.asarray(
        Image.open(coco["root"] / "images" / "a.png")))
    empty = parse_example(records[2])
    assert empty["boxes"].shape == (0, 4) and empty["masks"].shape == (0, H, W)


def test_annotation_mask_and_box_helpers():
    square = annotation_mask([[1, 1, 3, 1, 3, 3, 1, 3]], 5, 5)
    assert square.dtype == np.uint8 and square.sum() == 4 and square[1:3, 1:3].all()
    box, clipped = clip_coco_box([-2, 1, 5, 10], 8, 6)
    np.testing.assert_array_equal(box, [0, 1, 3, 8])
    assert clipped and not clip_coco_box([0, 0, 6, 8], 8, 6)[1]


def test_pipeline_on_coco_drops_crowd_and_crops_masks(coco):
    source = coco["source"]
    batch = next(iter(make_loader(source, 2, min_size=60, max_size=80, max_instances=6,
                                  mask_size=14, train=False)))
    assert batch["images"].shape == (2, 80, 80, 3) and batch["masks"].shape == (2, 6, 14, 14)
    first = int(np.flatnonzero(batch["image_ids"] == 1)[0])
    assert batch["valid"][first].sum() == 4 and not batch["is_crowd"].any()  # crowd dropped
    np.testing.assert_array_equal(batch["image_sizes"][first], [60, 80])
    np.testing.assert_allclose(batch["boxes"][first, 0], np.array([2, 3, 12, 11]) * 2, atol=1e-3)
    assert batch["masks"][first, 0].sum() > 0
    crowd = next(iter(make_loader(source, 2, image_size=40, max_instances=6, train=False,
                                  include_crowd=True)))
    assert crowd["is_crowd"].sum() == 1 and crowd["valid"].sum() == 5


def test_bad_annotation_files_give_clear_errors(tmp_path):
    empty = tmp_path / "empty.json"
    empty.write_text("")
    with pytest.raises(ValueError, match="is empty"):
        load_annotations(empty)
    no_images = tmp_path / "no_images.json"
    no_images.write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    with pytest.raises(ValueError, match="non-empty 'images'"):
        load_annotations(no_images)
    with pytest.raises(FileNotFoundError):
        load_annotations(tmp_path / "missing.json")
    missing_image = tmp_path / "missing_image.json"
    data = _coco_dict()
    missing_image.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"none of its 3 images is usable \(skipped or fixed: "
                       r"3 image files not found .*first is expected at .*a.png"):
        prepare_coco(missing_image, tmp_path, tmp_path / "prepared", name="bad")


def test_lvis_source_reads_tfds_lvis_without_downloading():
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=2, policy=tfds.testing.MockPolicy.USE_CODE):
        source = lvis_source("validation")
        record = source[0]
    assert len(source) == 2
    assert {"image", "image/id", "objects"} <= set(record)
    assert {"bbox", "label", "segmentation"} <= set(record["objects"])
    assert class_names(source)[0] == "background" and len(class_names(source)) == 1204
