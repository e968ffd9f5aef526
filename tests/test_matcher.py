"""mrcnn_jax/matcher.py: IoU matching equals torchvision's ``_utils.Matcher``."""

import jax
import numpy as np
import pytest

from mrcnn_jax import box_iou
from mrcnn_jax.matcher import BELOW_LOW, BETWEEN, match

G, P = 4, 24  # fixed sizes in the random comparisons: one compilation per flag
match_jit = jax.jit(match, static_argnames=("high", "low", "allow_low_quality"))


def reference_match(iou, gt_valid, high, low, allow_low_quality):
    """torchvision ``Matcher.__call__`` in numpy, with padded rows dropped first.

    Each prediction takes its best ground truth (first on ties); IoU below ``low`` -> -1,
    in ``[low, high)`` -> -2; with low-quality matches, every prediction that attains some
    ground truth's best IoU gets back its own best ground truth.
    """
    iou = np.asarray(iou, np.float64)
    gt_index = np.flatnonzero(gt_valid)
    p = iou.shape[1]
    if gt_index.size == 0:
        return np.full((p,), -1, np.int64)
    quality = iou[gt_index]  # (G', P) real ground truth only
    best = quality.max(axis=0)
    all_matches = gt_index[quality.argmax(axis=0)]
    matches = all_matches.copy()
    matches[best < low] = -1
    matches[(best >= low) & (best < high)] = -2
    if allow_low_quality:
        best_per_gt = quality.max(axis=1)
        _, preds = np.nonzero(quality == best_per_gt[:, None])
        matches[preds] = all_matches[preds]
    return matches


# 3 ground-truth boxes against 5 hand-placed predictions.
HAND_IOU = np.array(
    [
        # p0    p1    p2    p3    p4
        [0.90, 0.50, 0.10, 0.00, 0.20],  # gt0: p0 clearly foreground
        [0.10, 0.60, 0.20, 0.00, 0.25],  # gt1: best is p1 at 0.6 (below 0.7)
        [0.00, 0.10, 0.25, 0.05, 0.25],  # gt2: best 0.25, attained by p2 and p4
    ],
    np.float32,
)


def test_hand_case_without_low_quality():
    got = match(HAND_IOU, np.ones(3, bool), 0.7, 0.3, allow_low_quality=False)
    # p0 -> gt0; p1 best 0.6 in [0.3, 0.7): between; p2, p3, p4 below 0.3: background
    np.testing.assert_array_equal(got, [0, BETWEEN, BELOW_LOW, BELOW_LOW, BELOW_LOW])
    assert got.dtype == np.int32


def test_hand_case_with_low_quality():
    got = match(HAND_IOU, np.ones(3, bool), 0.7, 0.3, allow_low_quality=True)
    # gt1's best (p1, 0.6) brings p1 back to its best gt (gt1); gt2's best 0.25 is attained
    # by p2 (own best gt2) and p4 (own best gt1 at 0.25 vs gt2 0.25 -> first max: gt1).
    np.testing.assert_array_equal(got, [0, 1, 2, BELOW_LOW, 1])
    np.testing.assert_array_equal(got, reference_match(HAND_IOU, np.ones(3, bool), 0.7, 0.3,
                                                       True))


def test_padded_ground_truth_never_matches():
    iou = np.concatenate([HAND_IOU, np.full((2, 5), 0.99, np.float32)])  # 2 padded rows win
    valid = np.array([True, True, True, False, False])
    for low_quality in (False, True):
        got = np.asarray(match(iou, valid, 0.7, 0.3, low_quality))
        expected = np.asarray(match(HAND_IOU, np.ones(3, bool), 0.7, 0.3, low_quality))
        np.testing.assert_array_equal(got, expected)
        assert got.max() < 3


def test_padded_ground_truth_with_zero_iou_adds_no_low_quality_matches():
    iou = np.zeros((2, 5), np.float32)
    iou[0, 2] = 0.8
    got = match(iou, np.array([True, False]), 0.7, 0.3, True)
    np.testing.assert_array_equal(got, [BELOW_LOW, BELOW_LOW, 0, BELOW_LOW, BELOW_LOW])


@pytest.mark.parametrize("low_quality", [False, True])
def test_no_valid_ground_truth_gives_all_background(low_quality):
    iou = np.random.default_rng(0).uniform(0, 1, (3, 5)).astype(np.float32)
    got = match(iou, np.zeros(3, bool), 0.7, 0.3, low_quality)
    np.testing.assert_array_equal(got, np.full(5, BELOW_LOW))


def test_thresholds_are_inclusive_at_high_and_exclusive_at_low():
    iou = np.array([[0.7, 0.3, 0.2999, 0.6999]], np.float32)
    got = match(iou, np.ones(1, bool), 0.7, 0.3, False)
    np.testing.assert_array_equal(got, [0, BETWEEN, BELOW_LOW, BETWEEN])


def test_roi_head_thresholds_have_no_between():
    iou = np.array([[0.5, 0.4999, 0.0]], np.float32)
    got = match(iou, np.ones(1, bool), 0.5, 0.5, False)
    np.testing.assert_array_equal(got, [0, BELOW_LOW, BELOW_LOW])


def _random_case(rng):
    """Boxes on a coarse grid so IoU ties (and exact best-per-gt ties) happen."""
    def boxes(n):
        xy = rng.integers(0, 8, (n, 2)) * 4.0
        wh = rng.integers(1, 5, (n, 2)) * 4.0
        return np.concatenate([xy, xy + wh], 1).astype(np.float32)

    gt, pred = boxes(G), boxes(P)
    valid = rng.random(G) < 0.75
    return np.asarray(box_iou(gt, pred)), valid


@pytest.mark.parametrize("low_quality", [False, True])
def test_random_boxes_match_numpy_reference(low_quality):
    rng = np.random.default_rng(1)
    for _ in range(40):
        iou, valid = _random_case(rng)
        got = np.asarray(match_jit(iou, valid, high=0.7, low=0.3, allow_low_quality=low_quality))
        np.testing.assert_array_equal(got, reference_match(iou, valid, 0.7, 0.3, low_quality))


@pytest.mark.parametrize("low_quality", [False, True])
def test_random_boxes_match_torchvision(low_quality):
    pytest.importorskip("torchvision")
    import torch
    from torchvision.models.detection._utils import Matcher

    matcher = Matcher(0.7, 0.3, allow_low_quality_matches=low_quality)
    rng = np.random.default_rng(2)
    compared = 0
    for _ in range(40):
        iou, valid = _random_case(rng)
        if not valid.any():  # torchvision raises on an empty ground truth
            continue
        index = np.flatnonzero(valid)
        expected = matcher(torch.from_numpy(iou[index])).numpy()
        expected = np.where(expected >= 0, index[np.maximum(expected, 0)], expected)
        got = np.asarray(match_jit(iou, valid, high=0.7, low=0.3, allow_low_quality=low_quality))
        np.testing.assert_array_equal(got, expected)
        compared += 1
    assert compared > 20
