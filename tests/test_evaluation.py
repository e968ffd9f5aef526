"""Tests for mrcnn_jax.evaluation: hand-computed COCO numbers, then parity with pycocotools."""

import contextlib
import copy
import io
import json

import numpy as np
import pytest

pytest.importorskip("pycocotools")
from pycocotools import mask as mask_utils  # noqa: E402
from pycocotools.coco import COCO  # noqa: E402
from pycocotools.cocoeval import COCOeval  # noqa: E402

from mrcnn_jax.coco_masks import box_iou_xywh, mask_iou, segmentation_to_rle  # noqa: E402
from mrcnn_jax.evaluation import (  # noqa: E402
    STAT_NAMES,
    coco_evaluate,
    detections_to_coco,
    masks_to_rle,
    print_table,
)


def _pycocotools(ground_truth, detections, iou_type):
    """pycocotools' stats and precision array, its prints silenced, inputs left untouched."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = copy.deepcopy(ground_truth)
        coco.createIndex()
        evaluator = COCOeval(coco, coco.loadRes(copy.deepcopy(detections)), iou_type)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator.stats, evaluator.eval["precision"], evaluator.eval["recall"]


def _box_case(gt_boxes, dt_boxes, scores, crowd=None, size=200):
    """One image, category 1, boxes [x, y, w, h]; gt area = box area."""
    crowd = crowd or [0] * len(gt_boxes)
    anns = [{"id": i + 1, "image_id": 1, "category_id": 1, "bbox": b, "area": b[2] * b[3],
             "iscrowd": c} for i, (b, c) in enumerate(zip(gt_boxes, crowd, strict=True))]
    ground_truth = {"images": [{"id": 1, "height": size, "width": size}], "annotations": anns,
                    "categories": [{"id": 1, "name": "thing"}]}
    dets = [{"image_id": 1, "category_id": 1, "bbox": b, "score": s}
            for b, s in zip(dt_boxes, scores, strict=True)]
    return ground_truth, dets


def _check_equal_to_pycocotools(ground_truth, dets, iou_types=("bbox", "segm")):
    before = copy.deepcopy((ground_truth, dets))
    ours = coco_evaluate(ground_truth, dets, iou_types, with_arrays=True)
    assert (ground_truth, dets) == before, "coco_evaluate must not modify its inputs"
    for iou_type in iou_types:
        stats, precision, recall = _pycocotools(ground_truth, dets, iou_type)
        got = [ours[iou_type][name] for name in STAT_NAMES]
        np.testing.assert_allclose(got, stats, atol=1e-4, err_msg=iou_type)
        np.testing.assert_allclose(ours[iou_type]["precision"], precision, atol=1e-12)
        np.testing.assert_allclose(ours[iou_type]["recall"], recall, atol=1e-12)
    return ours


# --- hand-computed cases ----------------------------------------------------------------------

def test_perfect_detection_is_ap_1():
    # A 40x40 box: area 1600 is "medium" (32^2 <= 1600 <= 96^2); no small or large objects.
    ground_truth, dets = _box_case([[10, 10, 40, 40]], [[10, 10, 40, 40]], [0.9])
    stats = coco_evaluate(ground_truth, dets, ("bbox",))["bbox"]
    expected = dict.fromkeys(STAT_NAMES, 1.0) | dict.fromkeys(["APs", "APl", "ARs", "ARl"], -1.0)
    assert stats == pytest.approx(expected)


def test_iou_0_62_counts_at_three_of_ten_thresholds():
    # gt 100x100, detection 100x62 inside it: IoU 6200 / 10000 = 0.62 >= 0.5, 0.55, 0.6 only.
    ground_truth, dets = _box_case([[0, 0, 100, 100]], [[0, 0, 100, 62]], [0.8])
    stats = coco_evaluate(ground_truth, dets, ("bbox",))["bbox"]
    assert stats["AP"] == pytest.approx(3 / 10)
    assert (stats["AP50"], stats["AP75"]) == pytest.approx((1.0, 0.0))
    assert stats["APl"] == pytest.approx(0.3)  # area 10000 > 96^2 = 9216
    assert stats["APm"] == stats["APs"] == -1.0
    assert stats["AR1"] == stats["AR100"] == pytest.approx(0.3)
    _check_equal_to_pycocotools(ground_truth, dets, ("bbox",))


def test_interpolated_precision_by_hand():
    # Ranked TP, FP, TP over 2 gt: precision 1, 1/2, 2/3 -> made non-increasing: 1, 2/3, 2/3;
    # recall 0.5, 0.5, 1. Recall levels 0.00..0.50 (51 of them) read 1, 0.51..1.00 (50) 2/3.
    gt = [[0, 0, 50, 50], [100, 100, 50, 50]]
    dt = [[0, 0, 50, 50], [60, 0, 20, 20], [100, 100, 50, 50]]
    ground_truth, dets = _box_case(gt, dt, [0.9, 0.8, 0.7])
    stats = coco_evaluate(ground_truth, dets, ("bbox",))["bbox"]
    assert stats["AP"] == pytest.approx((51 * 1 + 50 * 2 / 3) / 101)
    assert stats["AR1"] == pytest.approx(0.5)  # one detection per image: recall 1 of 2
    assert stats["AR10"] == pytest.approx(1.0)
    _check_equal_to_pycocotools(ground_truth, dets, ("bbox",))


def test_area_ranges_include_both_ends():
    # gt area 32^2 is small and medium; the unmatched 96x96 detection (area 96^2, ranked first)
    # is a false positive for medium and ignored for small, whose range ends at 32^2.
    ground_truth, dets = _box_case([[0, 0, 32, 32]], [[100, 100, 96, 96], [0, 0, 32, 32]],
                                   [0.95, 0.9])
    stats = _check_equal_to_pycocotools(ground_truth, dets, ("bbox",))["bbox"]
    assert stats["APs"] == pytest.approx(1.0)
    assert stats["APm"] == pytest.approx(0.5)  # ranks FP, TP: precision 1/2 at every recall
    assert stats["APl"] == -1.0


def test_iou_exactly_on_a_threshold_matches():
    # Ten images, each a 10x10 gt and a 10 x h detection with IoU h / 10 = 0.50, 0.55, ..., 0.95,
    # exactly the thresholds: detection j matches at thresholds 0..j. Recall at threshold i is
    # (10 - i) / 10, so AR100 = (10 + 9 + ... + 1) / 100.
    anns, dets = [], []
    for j in range(10):
        anns.append({"id": j + 1, "image_id": j, "category_id": 1, "bbox": [0, 0, 10, 10],
                     "area": 100.0, "iscrowd": 0})
        dets.append({"image_id": j, "category_id": 1, "bbox": [0, 0, 10, 5 + 0.5 * j],
                     "score": 0.05 + j / 10})
    ground_truth = {"images": [{"id": j, "height": 20, "width": 20} for j in range(10)],
                    "annotations": anns, "categories": [{"id": 1}]}
    stats = _check_equal_to_pycocotools(ground_truth, dets, ("bbox",))["bbox"]
    assert stats["AR100"] == pytest.approx(0.55)
    assert stats["AP50"] == pytest.approx(1.0)


def test_iou_tie_goes_to_the_later_ground_truth():
    # d1 has IoU 90/110 with both g1 and g2 and takes g2 (the later one, as pycocotools), so
    # d2 (IoU 1 with g1, 80/120 with g2) still finds g1. Up to IoU 0.8 both are true positives;
    # at 0.85..0.95 only d2 is (precision 1/2 up to recall 1/2: 51 recall levels of 101).
    ground_truth, dets = _box_case([[0, 0, 10, 10], [2, 0, 10, 10]],
                                   [[1, 0, 10, 10], [0, 0, 10, 10]], [0.9, 0.8])
    stats = _check_equal_to_pycocotools(ground_truth, dets, ("bbox",))["bbox"]
    assert stats["AP75"] == pytest.approx(1.0)  # taking g1 first would leave d2 at 0.667
    assert stats["AP"] == pytest.approx((7 + 3 * 51 * 0.5 / 101) / 10)


def test_detection_on_crowd_region_is_ignored():
    # The 0.9 detection lies inside the crowd box: IoU = intersection / its own area = 1, so it
    # matches the crowd region and is neither a true nor a false positive.
    gt = [[0, 0, 50, 50], [100, 0, 90, 90]]
    ground_truth, dets = _box_case(gt, [[120, 10, 20, 20], [0, 0, 50, 50]], [0.9, 0.5],
                                   crowd=[0, 1])
    assert coco_evaluate(ground_truth, dets, ("bbox",))["bbox"]["AP"] == pytest.approx(1.0)
    _check_equal_to_pycocotools(ground_truth, dets, ("bbox",))
    ground_truth["annotations"][1]["iscrowd"] = 0  # now it is an ordinary miss: lower AP
    assert coco_evaluate(ground_truth, dets, ("bbox",))["bbox"]["AP"] < 0.6


def test_box_iou_crowd_rule_and_mask_iou_agree_on_rectangles():
    dt, gt = np.array([[0.0, 0, 10, 10]]), np.array([[5.0, 0, 10, 10], [0, 0, 40, 40]])
    np.testing.assert_allclose(box_iou_xywh(dt, gt, [0, 0]), [[50 / 150, 100 / 1600]])
    np.testing.assert_allclose(box_iou_xywh(dt, gt, [1, 1]), [[0.5, 1.0]])
    masks = np.zeros((3, 40, 40), bool)
    masks[0, :10, :10] = masks[1, :10, 5:15] = masks[2] = True
    rles = masks_to_rle(masks)
    np.testing.assert_allclose(mask_iou(rles[:1], rles[1:], [0, 0]), [[50 / 150, 100 / 1600]])
    np.testing.assert_allclose(mask_iou(rles[:1], rles[1:], [1, 1]), [[0.5, 1.0]])


def test_empty_detections_give_zero_where_there_is_ground_truth():
    ground_truth, _ = _box_case([[10, 10, 40, 40]], [], [])
    ground_truth["categories"].append({"id": 2, "name": "never"})
    stats = coco_evaluate(ground_truth, [], ("bbox",))["bbox"]
    assert stats["AP"] == stats["AR100"] == stats["APm"] == 0.0
    assert stats["APs"] == stats["ARl"] == -1.0
    # pycocotools cannot load an empty list; one detection of a category without ground truth
    # changes nothing, so it must give the same numbers.
    dummy = [{"image_id": 1, "category_id": 2, "bbox": [0, 0, 5, 5], "score": 0.5}]
    np.testing.assert_allclose([stats[n] for n in STAT_NAMES],
                               _pycocotools(ground_truth, dummy, "bbox")[0])
    no_gt = {"images": [{"id": 1}], "annotations": [], "categories": [{"id": 1}]}
    assert set(coco_evaluate(no_gt, [], ("bbox",))["bbox"].values()) == {-1.0}


def test_unknown_image_or_category_raises():
    ground_truth, dets = _box_case([[10, 10, 40, 40]], [[10, 10, 40, 40]], [0.9])
    with pytest.raises(ValueError, match="image_id 5"):
        coco_evaluate(ground_truth, [dets[0] | {"image_id": 5}], ("bbox",))
    with pytest.raises(ValueError, match="category_id 9"):
        coco_evaluate(ground_truth, [dets[0] | {"category_id": 9}], ("bbox",))
    with pytest.raises(ValueError, match="max_dets"):
        coco_evaluate(ground_truth, dets, ("bbox",), max_dets=(10, 1, 100))


def test_annotation_id_zero_counts_as_a_match():
    # pycocotools marks a match by the gt id, so a gt with id 0 looks unmatched there.
    ground_truth, dets = _box_case([[10, 10, 40, 40]], [[10, 10, 40, 40]], [0.9])
    ground_truth["annotations"][0]["id"] = 0
    assert coco_evaluate(ground_truth, dets, ("bbox",))["bbox"]["AP"] == pytest.approx(1.0)


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
def test_masks_to_rle_round_trips_and_is_json():
    rng = np.random.default_rng(0)
    masks = rng.random((3, 7, 9)) > 0.5
    rles = masks_to_rle(masks)
    json.dumps(rles)
    np.testing.assert_array_equal(mask_utils.decode(rles).transpose(2, 0, 1), masks)
    assert masks_to_rle(np.zeros((0, 7, 9), bool)) == []


def test_detections_to_coco_converts_boxes_and_drops_padding():
    boxes = np.array([[1.0, 2, 11, 22], [0, 0, 4, 4], [5, 5, 6, 6]], np.float32)
    masks = np.zeros((3, 30, 30), np.float32)
    masks[0, 2:22, 1:11] = 0.9
    results = detections_to_coco(np.int64(7), boxes, [0.9, 0.8, 0.1], [1, 2, 1], masks=masks,
                                 valid=[True, True, False], label_to_category_id={1: 18, 2: 3})
    json.dumps(results)
    assert [r["category_id"] for r in results] == [18, 3]
    assert results[0]["bbox"] == [1.0, 2.0, 10.0, 20.0] and results[0]["image_id"] == 7
    assert mask_utils.area(results[0]["segmentation"]) == 200
    assert mask_utils.area(results[1]["segmentation"]) == 0


def test_print_table_prints_twelve_lines_per_type(capsys):
    ground_truth, dets = _box_case([[10, 10, 40, 40]], [[10, 10, 40, 40]], [0.9])
    print_table(coco_evaluate(ground_truth, dets, ("bbox",)))
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "IoU type: bbox" and len(lines) == 13
    assert lines[1] == (" Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | "
                        "maxDets=100 ] = 1.000")


# --- randomised parity with pycocotools ------------------------------------------------------

def _shape_mask(rng, height, width, radius, center=None):
    """A random axis-aligned rectangle or ellipse of about ``radius``, as ``(H, W)`` bool."""
    cy, cx = center if center is not None else (rng.uniform(0, height), rng.uniform(0, width))
    ry, rx = radius * rng.uniform(0.6, 1.4, size=2)
    yy, xx = np.mgrid[:height, :width] + 0.5
    if rng.random() < 0.5:
        return (np.abs(yy - cy) <= ry) & (np.abs(xx - cx) <= rx)
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1


def _uncompressed_rle(mask):
    """COCO's uncompressed RLE: run lengths of 0s and 1s in column-major order."""
    flat = mask.reshape(-1, order="F").astype(np.int8)
    changes = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
    counts = np.diff(np.concatenate([[0], changes]))
    return {"size": list(mask.shape), "counts": [int(c) for c in counts]}


def _polygon(rng, height, width, radius):
    cy, cx = rng.uniform(0, height), rng.uniform(0, width)
    angles = np.sort(rng.uniform(0, 2 * np.pi, size=rng.integers(3, 9)))
    points = np.stack([cx + radius * np.cos(angles), cy + radius * np.sin(angles)], axis=1)
    return [np.clip(points, 0, [width, height]).reshape(-1).tolist()]


def _ground_truth_annotation(rng, ann_id, image_id, height, width):
    radius = rng.choice([rng.uniform(2, 14), rng.uniform(18, 45), rng.uniform(55, 90)])
    crowd = int(rng.random() < 0.15)
    form = "uncompressed" if crowd else rng.choice(["polygon", "compressed", "uncompressed"])
    if form == "polygon":
        segmentation = _polygon(rng, height, width, radius)
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    else:
        mask = _shape_mask(rng, height, width, radius)
        rle = masks_to_rle(mask[None])[0]
        segmentation = rle if form == "compressed" else _uncompressed_rle(mask)
    return {"id": ann_id, "image_id": image_id, "category_id": int(rng.choice([1, 2, 5])),
            "segmentation": segmentation, "area": float(mask_utils.area(rle)),
            "bbox": mask_utils.toBbox(rle).tolist(), "iscrowd": crowd}


def _detection(rng, image_id, height, width, category_id, near=None):
    """A detection near a gt annotation (or anywhere); its box and mask jitter apart."""
    if near is None:
        mask = _shape_mask(rng, height, width, rng.uniform(3, 60))
    elif rng.random() < 0.5:  # the gt's own region, shifted by a pixel or two: high IoU
        gt_rle = segmentation_to_rle(near["segmentation"], height, width)
        shift = rng.integers(-2, 3, size=2)
        mask = np.roll(mask_utils.decode(gt_rle).astype(bool), shift, axis=(0, 1))
    else:  # a new shape around the gt box: any IoU
        x, y, w, h = near["bbox"]
        center = (y + h / 2 + rng.normal(0, 0.1 * h), x + w / 2 + rng.normal(0, 0.1 * w))
        mask = _shape_mask(rng, height, width, max(w, h) / 2 * rng.uniform(0.8, 1.2) + 1, center)
    rle = masks_to_rle(mask[None])[0]
    box = mask_utils.toBbox(rle) + rng.normal(0, 1.5, size=4) * (rng.random() < 0.7)
    return {"image_id": image_id, "category_id": category_id, "segmentation": rle,
            "bbox": np.maximum(box, 0).tolist(), "score": float(rng.random())}


def _random_case(seed):
    """Images with and without objects, crowd, all sizes, a gt-less category, >100 detections."""
    rng = np.random.default_rng(seed)
    images, anns, dets = [], [], []
    for image_id in (3, 8, 11, 12, 20, 31):  # 11: no gt; 12: nothing at all; 20: 130 detections
        height, width = (int(v) for v in rng.integers(120, 230, size=2))
        images.append({"id": image_id, "height": height, "width": width})
        num_gt = 0 if image_id in (11, 12) else int(rng.integers(1, 9))
        for _ in range(num_gt):
            anns.append(_ground_truth_annotation(rng, len(anns) + 1, image_id, height, width))
            if rng.random() < 0.8:
                gt = anns[-1]
                category = gt["category_id"] if rng.random() < 0.9 else 2
                dets.append(_detection(rng, image_id, height, width, category, gt))
        num_false = {12: 0, 20: 130}.get(image_id, int(rng.integers(0, 6)))
        for _ in range(num_false):
            category = 1 if image_id == 20 else int(rng.choice([1, 2, 5, 7]))
            dets.append(_detection(rng, image_id, height, width, category))
    if seed % 2:  # ties: scores on a coarse grid
        for det in dets:
            det["score"] = round(det["score"], 1)
    order = rng.permutation(len(dets))
    ground_truth = {"images": images, "annotations": anns,
                    "categories": [{"id": c, "name": f"c{c}"} for c in (1, 2, 5, 7)]}
    return ground_truth, [dets[i] for i in order]


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
@pytest.mark.parametrize("seed", range(6))
def test_equal_to_pycocotools_on_random_data(seed):
    ground_truth, dets = _random_case(seed)
    ours = _check_equal_to_pycocotools(ground_truth, dets)
    assert ours["bbox"]["AP"] > 0 and ours["segm"]["AP"] > 0  # the case is not degenerate


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
def test_equal_to_pycocotools_with_box_only_results_and_many_per_image():
    # Box-only results: for "segm" pycocotools (and we) use each box as a polygon mask.
    ground_truth, dets = _random_case(100)
    for det in dets:
        del det["segmentation"]
    _check_equal_to_pycocotools(ground_truth, dets)
