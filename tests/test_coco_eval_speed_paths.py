"""The fast paths of COCO evaluation (issue 19) against pycocotools: RLE runs read from the
strings, mask IoU on runs, matching of all area ranges at once, and a dense many-category case.
"""

import warnings

import numpy as np
import pytest

pytest.importorskip("pycocotools")
from pycocotools import mask as mask_utils  # noqa: E402
from test_evaluation import _pycocotools  # noqa: E402

from mrcnn_jax.coco_masks import mask_iou_pairs, masks_to_rle, rle_runs  # noqa: E402
from mrcnn_jax.coco_matching import AREA_RANGES, match_image, match_image_ranges  # noqa: E402
from mrcnn_jax.evaluation import STAT_NAMES, coco_evaluate  # noqa: E402


def _random_masks(rng, num, height, width):
    """Noise, rectangles, full and empty masks: long and short runs, both signs of delta."""
    masks = np.zeros((num, height, width), bool)
    for i in range(num):
        kind = i % 4
        if kind == 0:
            masks[i] = rng.random((height, width)) < rng.uniform(0.05, 0.95)
        elif kind == 1:
            y, x = rng.integers(0, height), rng.integers(0, width)
            masks[i, y:y + rng.integers(1, height + 1), x:x + rng.integers(1, width + 1)] = True
        elif kind == 2:
            masks[i] = True
    return masks


def _decode(rles):
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "__array__ implementation", DeprecationWarning)
        return mask_utils.decode(rles).transpose(2, 0, 1).astype(bool)  # (N, H, W)


@pytest.mark.parametrize("size", [(1, 1), (7, 300), (211, 97)])
def test_rle_runs_paint_the_masks_pycocotools_decodes(size):
    rng = np.random.default_rng(size[0])
    masks = _random_masks(rng, 12, *size)
    rles = masks_to_rle(masks)  # str counts
    rles[1] = dict(rles[1], counts=rles[1]["counts"].encode("ascii"))  # bytes work too
    starts, lengths, owner = rle_runs(rles)
    painted = np.zeros((len(rles), size[0] * size[1]), bool)
    for s, n, i in zip(starts, lengths, owner, strict=True):
        painted[i, s:s + n] = True
    expected = _decode(rles).reshape(len(rles), -1, order="F")
    np.testing.assert_array_equal(painted, expected.reshape(len(rles), -1))


def test_mask_iou_pairs_equal_pycocotools_iou():
    rng = np.random.default_rng(3)
    rles = masks_to_rle(_random_masks(rng, 16, 60, 45))
    crowd = rng.random(16) < 0.4
    as_bytes = [dict(r, counts=r["counts"].encode("ascii")) for r in rles]
    expected = mask_utils.iou(as_bytes, as_bytes, crowd.astype(np.uint8))  # (16, 16)
    dt_index, gt_index = (i.reshape(-1) for i in np.indices((16, 16)))
    got = mask_iou_pairs(rles, rles, dt_index, gt_index, crowd[gt_index])
    np.testing.assert_allclose(got.reshape(16, 16), expected, atol=1e-15)


def test_match_image_ranges_equals_one_range_at_a_time():
    rng = np.random.default_rng(5)
    for _ in range(20):
        num_d, num_g = rng.integers(0, 12), rng.integers(0, 6)
        ious = np.round(rng.random((num_d, num_g)), 2)  # ties on purpose
        gt_area = rng.choice([100.0, 1024.0, 5000.0, 9216.0, 20000.0], num_g)
        gt_crowd = rng.random(num_g) < 0.3
        dt_area = rng.choice([100.0, 1024.0, 5000.0, 20000.0], num_d)
        tp, fp, num_gt = match_image_ranges(ious, gt_area, gt_crowd, dt_area)
        for a, area_range in enumerate(AREA_RANGES):
            one = match_image(ious, gt_area, gt_crowd, dt_area, area_range)
            np.testing.assert_array_equal(tp[a], one[0])
            np.testing.assert_array_equal(fp[a], one[1])
            assert num_gt[a] == one[2]


def _many_categories_case(seed):
    """12 images, 30 categories, boxes in all sizes, crowd, tied scores, >100 per group."""
    rng = np.random.default_rng(seed)
    images = [{"id": 10 * i + 3, "height": 120, "width": 160} for i in range(12)]
    anns, dets = [], []
    for image in images:
        for _ in range(rng.integers(0, 15)):
            x, y = rng.uniform(0, 140), rng.uniform(0, 100)
            w, h = rng.choice([rng.uniform(2, 20), rng.uniform(35, 60), rng.uniform(100, 150)], 2)
            poly = [x, y, x + w, y, x + w, y + h, x, y + h]
            rle = mask_utils.frPyObjects([poly], 120, 160)[0]
            anns.append({"id": len(anns) + 1, "image_id": image["id"],
                         "category_id": int(rng.integers(1, 31)), "segmentation": [poly],
                         "area": float(mask_utils.area(rle)), "bbox": [x, y, w, h],
                         "iscrowd": int(rng.random() < 0.1)})
            for _ in range(rng.integers(0, 4)):
                box = np.array([x, y, w, h]) + rng.normal(0, 2, 4)
                dets.append({"image_id": image["id"], "category_id": anns[-1]["category_id"],
                             "bbox": np.maximum(box, 0.5).tolist(),
                             "score": round(float(rng.random()), 1)})
        many = 110 if image["id"] == 3 else int(rng.integers(0, 30))
        for _ in range(many):
            x, y, w, h = rng.uniform(0, 100, 4)
            dets.append({"image_id": image["id"], "score": round(float(rng.random()), 1),
                         "category_id": 1 if image["id"] == 3 else int(rng.integers(1, 31)),
                         "bbox": [x, y, w + 1, h + 1]})
    for det in dets:  # masks from the boxes, so "segm" has its own IoU
        x, y, w, h = det["bbox"]
        rle = mask_utils.frPyObjects([[x, y, x + w, y, x + w, y + h, x, y + h]], 120, 160)[0]
        det["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
    order = rng.permutation(len(dets))
    ground_truth = {"images": images, "annotations": anns,
                    "categories": [{"id": c} for c in range(1, 31)]}
    return ground_truth, [dets[i] for i in order]


@pytest.mark.parametrize("seed", [0, 1])
def test_many_categories_equal_to_pycocotools(seed):
    ground_truth, dets = _many_categories_case(seed)
    ours = coco_evaluate(ground_truth, dets, with_arrays=True)
    for iou_type in ("bbox", "segm"):
        stats, precision, recall = _pycocotools(ground_truth, dets, iou_type)
        got = [ours[iou_type][name] for name in STAT_NAMES]
        np.testing.assert_allclose(got, stats, atol=1e-12, err_msg=iou_type)
        np.testing.assert_allclose(ours[iou_type]["precision"], precision, atol=1e-12)
        np.testing.assert_allclose(ours[iou_type]["recall"], recall, atol=1e-12)
        assert ours[iou_type]["AP"] > 0
