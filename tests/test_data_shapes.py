"""Tests for mrcnn_jax/data/shapes.py and examples.py: drawing, the TFDS builder, parsing."""

import numpy as np
import pytest

from mrcnn_jax.data.examples import class_names, parse_example, tight_box, tight_boxes
from mrcnn_jax.data.shapes import CLASS_NAMES, _shape_mask, draw_shapes, shapes_source


def test_tight_box_pixel_covers_half_open_cell():
    mask = np.zeros((5, 6), bool)
    mask[2, 3] = True
    np.testing.assert_array_equal(tight_box(mask), [3, 2, 4, 3])
    mask[4, 0] = True
    np.testing.assert_array_equal(tight_box(mask), [0, 2, 4, 5])
    np.testing.assert_array_equal(tight_box(np.zeros((3, 3))), [0, 0, 0, 0])
    assert tight_boxes(np.zeros((0, 3, 3))).shape == (0, 4)


def test_shape_masks_by_hand():
    # Square of half-size 2 centred at (5, 5): pixel centres 3.5..6.5 inside -> pixels 3..6.
    square = _shape_mask(0, 5.0, 5.0, 2.0, 10)
    np.testing.assert_array_equal(tight_box(square), [3, 3, 7, 7])
    assert square.sum() == 16
    circle = _shape_mask(1, 5.0, 5.0, 1.0, 10)  # centres within 1 of (5, 5): the 2x2 block
    assert circle.sum() == 4 and circle[4:6, 4:6].all()
    triangle = _shape_mask(2, 5.0, 5.0, 4.0, 10)
    assert triangle[8, 5] and not triangle[1, 2]  # wide base, narrow apex
    assert triangle[1:9].sum(axis=1)[0] < triangle[1:9].sum(axis=1)[-1]


def test_draw_shapes_invariants():
    for seed in range(20):
        drawn = draw_shapes(np.random.default_rng(seed), image_size=64, max_objects=6)
        image, masks, boxes, labels = (drawn[k] for k in ("image", "masks", "boxes", "labels"))
        assert image.shape == (64, 64, 3) and image.dtype == np.uint8
        assert masks.dtype == bool and masks.shape[1:] == (64, 64)
        assert len(masks) == len(boxes) == len(labels) <= 6
        assert labels.dtype == np.int32 and set(labels) <= {0, 1, 2}
        np.testing.assert_array_equal(boxes, tight_boxes(masks))
        assert (masks.sum(axis=0) <= 1).all()  # visible parts never overlap
        assert (masks.sum(axis=(1, 2)) >= 16).all()  # min_visible
        sides = np.stack([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], axis=1)
        assert (sides >= 4).all()  # min_side: no slivers
        for mask in masks:  # one colour per visible part, never the background colour
            colours = np.unique(image[mask], axis=0)
            assert len(colours) == 1 and colours[0].min() >= 110
        background = ~masks.any(axis=0)
        if background.any():
            assert image[background].max() < 90


def test_draw_shapes_is_seeded_and_handles_zero_objects():
    a = draw_shapes(np.random.default_rng(7))
    b = draw_shapes(np.random.default_rng(7))
    c = draw_shapes(np.random.default_rng(8))
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    assert not np.array_equal(a["image"], c["image"])
    empty = draw_shapes(np.random.default_rng(0), image_size=32, min_visible=10**6)
    assert empty["masks"].shape == (0, 32, 32) and empty["boxes"].shape == (0, 4)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("shapes_data")


def test_builder_round_trip_equals_drawing(data_dir):
    config = dict(num_train=12, num_val=4, image_size=48, max_objects=5, seed=3)
    train = shapes_source("train", data_dir, **config)
    val = shapes_source("validation", data_dir, **config)
    assert (len(train), len(val)) == (12, 4)
    assert class_names(train) == ["background", *CLASS_NAMES]
    for split_index, source in enumerate((train, val)):
        ids = set()
        for record in source:
            example = parse_example(record)
            ids.add(example["image_id"])
            rng = np.random.default_rng([3, split_index, example["image_id"]])
            drawn = draw_shapes(rng, image_size=48, max_objects=5)
            np.testing.assert_array_equal(example["image"], drawn["image"])
            np.testing.assert_array_equal(example["masks"], drawn["masks"].astype(np.uint8))
            np.testing.assert_array_equal(example["boxes"], drawn["boxes"])
            np.testing.assert_array_equal(example["labels"], drawn["labels"] + 1)  # 0 = bg
            assert not example["is_crowd"].any()
        assert ids == set(range(len(source)))
    again = shapes_source("train", data_dir, **config)  # already prepared: same records
    np.testing.assert_array_equal(again[5]["image"], train[5]["image"])


def test_parse_example_zero_objects_and_bad_records():
    image = np.zeros((8, 10, 3), np.uint8)
    empty = {"image": image, "image/id": 4,
             "objects": {"bbox": [], "label": [], "segmentation": []}}
    parsed = parse_example(empty)
    assert parsed["boxes"].shape == (0, 4) and parsed["masks"].shape == (0, 8, 10)
    assert parsed["labels"].dtype == np.int32
    mask = np.zeros((8, 10, 1), np.uint8)
    mask[2:4, 5:10] = 255
    one = {"image": image, "image/id": 5, "objects": {
        "bbox": [np.array([0.25, 0.5, 0.5, 1.0], np.float32)], "label": [2],
        "segmentation": [mask]}}
    parsed = parse_example(one)
    np.testing.assert_allclose(parsed["boxes"], [[5, 2, 10, 4]])
    np.testing.assert_array_equal(parsed["boxes"][0], tight_box(parsed["masks"][0]))
    assert parsed["labels"].tolist() == [3] and parsed["masks"].max() == 1
    bad = {"image": image, "objects": {"bbox": one["objects"]["bbox"], "label": [1, 2],
                                       "segmentation": [mask]}}
    with pytest.raises(ValueError, match="disagree"):
        parse_example(bad)
    wrong_size = {"image": image, "objects": dict(one["objects"],
                                                  segmentation=[np.zeros((4, 4, 1), np.uint8)])}
    with pytest.raises(ValueError, match="segmentation"):
        parse_example(wrong_size)
