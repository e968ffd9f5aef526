"""Tests for mrcnn_jax/data/transforms.py and pipeline.py: fixed shapes, geometry, seeds."""

import logging

import numpy as np
import pytest

from mrcnn_jax.data.examples import parse_example, tight_box
from mrcnn_jax.data.pipeline import make_loader
from mrcnn_jax.data.shapes import shapes_source
from mrcnn_jax.data.transforms import crop_masks, nearest_indices, resized_size

G = 6


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return shapes_source("train", tmp_path_factory.mktemp("pipe"), num_train=24, num_val=0,
                         image_size=64, max_objects=6, seed=1)


def _first(loader):
    return next(iter(loader))


def test_resize_rule_matches_torchvision():
    assert resized_size(480, 640, 800, 1333) == (800, 1066)
    assert resized_size(500, 2000, 800, 1333) == (333, 1333)  # long side caps the scale
    assert resized_size(64, 64, 128, 128) == (128, 128)
    assert resized_size(40, 80, 64, 64) == (32, 64)
    np.testing.assert_array_equal(nearest_indices(4, 2), [0, 0, 1, 1])
    np.testing.assert_array_equal(nearest_indices(2, 4), [1, 3])


def test_crop_masks_by_hand():
    mask = np.zeros((1, 6, 8), np.uint8)
    mask[0, 2:4, 4:8] = 1  # tight box (4, 2, 8, 4)
    box = np.array([[4.0, 2.0, 8.0, 4.0]], np.float32)
    np.testing.assert_array_equal(crop_masks(mask, box, 4), np.ones((1, 4, 4)))
    wide = np.array([[0.0, 0.0, 8.0, 4.0]], np.float32)  # cells read pixels 1,3,5,7 x 0,2
    np.testing.assert_array_equal(crop_masks(mask, wide, 4)[0], [[0, 0, 0, 0], [0, 0, 0, 0],
                                                                 [0, 0, 1, 1], [0, 0, 1, 1]])


def test_batch_shapes_dtypes_and_padding(source):
    batch = _first(make_loader(source, 4, image_size=64, max_instances=G, seed=0))
    expected = {"images": ((4, 64, 64, 3), np.uint8), "boxes": ((4, G, 4), np.float32),
                "labels": ((4, G), np.int32), "masks": ((4, G, 64, 64), np.uint8),
                "valid": ((4, G), np.bool_), "is_crowd": ((4, G), np.bool_),
                "image_ids": ((4,), np.int64), "image_sizes": ((4, 2), np.int32),
                "orig_sizes": ((4, 2), np.int32), "scales": ((4, 2), np.float32),
                "flipped": ((4,), np.bool_), "num_instances": ((4,), np.int32),
                "num_truncated": ((4,), np.int32)}
    assert set(batch) == set(expected)
    for key, (shape, dtype) in expected.items():
        assert batch[key].shape == shape and batch[key].dtype == dtype, key
    valid = batch["valid"]
    assert (valid.sum(1) == np.minimum(batch["num_instances"], G)).all()
    assert (batch["labels"][valid] >= 1).all() and (batch["labels"][~valid] == 0).all()
    assert (batch["boxes"][~valid] == 0).all() and (batch["masks"][~valid] == 0).all()
    assert set(np.unique(batch["masks"])) <= {0, 1}


def test_no_flip_no_resize_equals_record(source):
    batch = _first(make_loader(source, 3, image_size=64, max_instances=G, train=False))
    for b in range(3):
        example = parse_example(source[b])
        n = len(example["labels"])
        assert batch["image_ids"][b] == example["image_id"]
        np.testing.assert_array_equal(batch["images"][b], example["image"])
        np.testing.assert_array_equal(batch["boxes"][b, :n], example["boxes"][:G])
        np.testing.assert_array_equal(batch["masks"][b, :n], example["masks"][:G])


@pytest.mark.parametrize("size, tol", [(128, 0.0), (96, 0.5 + 1e-5)])
def test_boxes_are_tight_boxes_of_masks_after_resize_and_flip(source, size, tol):
    # Upscaling reads every source pixel: exact at integer scales, within half a pixel else.
    loader = make_loader(source, 8, image_size=size, max_instances=G, seed=2, num_epochs=3)
    flips = set()
    for batch in loader:
        flips.update(batch["flipped"].tolist())
        for b in range(8):
            for g in np.flatnonzero(batch["valid"][b]):
                np.testing.assert_allclose(batch["boxes"][b, g], tight_box(batch["masks"][b, g]),
                                           atol=tol)
    assert flips == {True, False}  # both branches were exercised


def test_downscaled_masks_stay_inside_their_scaled_boxes(source):
    # Downscaling may skip thin parts (nearest), so the mask's box can only shrink (by the
    # half-pixel of centre sampling at most outward); boxes are the exactly scaled originals.
    plain = _first(make_loader(source, 8, image_size=64, max_instances=G, train=False))
    small = _first(make_loader(source, 8, image_size=48, max_instances=G, train=False))
    np.testing.assert_allclose(small["boxes"], plain["boxes"] * 0.75)
    for b, g in zip(*np.nonzero(small["valid"]), strict=True):
        x1, y1, x2, y2 = tight_box(small["masks"][b, g])
        bx1, by1, bx2, by2 = small["boxes"][b, g]
        assert x1 >= bx1 - 0.5 and y1 >= by1 - 0.5 and x2 <= bx2 + 0.5 and y2 <= by2 + 0.5


def test_flip_mirrors_image_boxes_and_masks(source):
    plain = _first(make_loader(source, 8, image_size=128, max_instances=G, train=False))
    flipped = _first(make_loader(source, 8, image_size=128, max_instances=G, shuffle=False,
                                 flip=True, seed=5))
    assert flipped["flipped"].any() and not plain["flipped"].any()
    for b in np.flatnonzero(flipped["flipped"]):
        np.testing.assert_array_equal(flipped["images"][b], plain["images"][b, :, ::-1])
        np.testing.assert_array_equal(flipped["masks"][b], plain["masks"][b, :, :, ::-1])
        x1, y1, x2, y2 = plain["boxes"][b].T
        mirrored = np.stack([128 - x2, y1, 128 - x1, y2], 1) * plain["valid"][b, :, None]
        np.testing.assert_allclose(flipped["boxes"][b], mirrored)


def test_mask_crops_equal_crops_of_full_masks(source):
    full = _first(make_loader(source, 8, image_size=128, max_instances=G, train=False))
    crops = _first(make_loader(source, 8, image_size=128, max_instances=G, train=False,
                               mask_size=28))
    assert crops["masks"].shape == (8, G, 28, 28)
    np.testing.assert_array_equal(crops["boxes"], full["boxes"])
    for b in range(8):
        n = int(full["valid"][b].sum())
        expected = crop_masks(full["masks"][b, :n], full["boxes"][b, :n], 28)
        np.testing.assert_array_equal(crops["masks"][b, :n], expected)  # exact at scale 2
        assert crops["masks"][b, :n].any(axis=(1, 2)).all()
    flipped = _first(make_loader(source, 8, image_size=128, max_instances=G, shuffle=False,
                                 flip=True, seed=5, mask_size=28))
    for b in np.flatnonzero(flipped["flipped"]):  # a flip mirrors each crop in its box
        np.testing.assert_array_equal(flipped["masks"][b], crops["masks"][b, :, :, ::-1])


def test_same_seed_same_batches_other_seed_other_order(source):
    def run(seed):
        return list(make_loader(source, 8, image_size=64, max_instances=G, seed=seed,
                                num_epochs=2))
    a, b, c = run(0), run(0), run(1)
    assert len(a) == 6
    for x, y in zip(a, b, strict=True):
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])
    assert [x["image_ids"].tolist() for x in a] != [x["image_ids"].tolist() for x in c]
    epoch1 = np.concatenate([x["image_ids"] for x in a[:3]])
    epoch2 = np.concatenate([x["image_ids"] for x in a[3:]])
    assert sorted(epoch1) == sorted(epoch2) == list(range(24)) and (epoch1 != epoch2).any()


def test_truncation_is_counted_and_logged(source, caplog):
    loader = make_loader(source, 8, image_size=64, max_instances=1, train=False)
    with caplog.at_level(logging.WARNING):
        batches = list(loader)
    total = sum(int(b["num_instances"].sum()) for b in batches)
    dropped = sum(int(b["num_truncated"].sum()) for b in batches)
    assert dropped == total - 24 > 0  # every image has >= 1 instance, one slot kept
    assert loader.stats == {"batches": 3, "images": 24, "instances": total, "truncated": dropped}
    assert "truncated" in caplog.text


def test_non_square_image_is_fitted_and_padded():
    image = np.full((40, 80, 3), 200, np.uint8)
    mask = np.zeros((40, 80, 1), np.uint8)
    mask[10:20, 40:60] = 255
    record = {"image": image, "image/id": 9, "objects": {
        "bbox": [np.array([10 / 40, 40 / 80, 20 / 40, 60 / 80], np.float32)], "label": [0],
        "segmentation": [mask]}}
    batch = _first(make_loader([record], 1, image_size=64, max_instances=2, train=False))
    np.testing.assert_array_equal(batch["image_sizes"][0], [32, 64])
    np.testing.assert_allclose(batch["scales"][0], [0.8, 0.8])
    np.testing.assert_allclose(batch["boxes"][0, 0], [32, 8, 48, 16])
    np.testing.assert_array_equal(tight_box(batch["masks"][0, 0]), [32, 8, 48, 16])
    assert (batch["images"][0, :32] == 200).all() and (batch["images"][0, 32:] == 0).all()
    assert batch["labels"][0].tolist() == [1, 0] and batch["valid"][0].tolist() == [True, False]


def test_bad_arguments_give_clear_errors(source):
    with pytest.raises(ValueError, match="batch_size"):
        make_loader(source, 100, image_size=64)
    with pytest.raises(ValueError, match="image_size"):
        make_loader(source, 4)
    with pytest.raises(ValueError, match="not both"):
        make_loader(source, 4, image_size=64, max_size=64)


def test_worker_processes_give_the_same_batches(source):
    kwargs = dict(image_size=64, max_instances=G, seed=3)
    local = list(make_loader(source, 8, **kwargs))
    workers = list(make_loader(source, 8, worker_count=2, **kwargs))
    assert len(workers) == len(local) == 3
    for x, y in zip(local, workers, strict=True):
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])
