"""mrcnn_jax/postprocess.py: detections equal torchvision ``RoIHeads.postprocess_detections``."""

import dataclasses

import jax
import numpy as np
import pytest

from mrcnn_jax.config import RoIHeadsConfig
from mrcnn_jax.postprocess import detect_boxes, select_mask_channel

IMAGE = (48, 64)
P, K = 40, 4  # proposals, classes with background: 120 candidates
detect_jit = jax.jit(detect_boxes, static_argnames=("image_size", "cfg"))


def test_hand_case_two_classes():
    proposals = np.float32([
        [0, 0, 10, 10],  # score sigmoid(3) = 0.953: kept
        [1, 0, 11, 10],  # IoU 0.82 with the first, lower score: suppressed
        [20, 20, 30, 30],  # score sigmoid(-5) = 0.0067 < 0.05: dropped
        [5, 0, 15, 10],  # IoU 1/3 with the first: kept
        [28, 28, 40, 40],  # clipped to the 32 x 32 image; best score
    ])
    logits = np.float32([[0, 3], [0, 2], [0, -5], [0, 1], [0, 4]])  # softmax == sigmoid(x)
    deltas = np.zeros((5, 2, 4), np.float32)
    cfg = dataclasses.replace(RoIHeadsConfig(), detections_per_image=5)
    out = {k: np.asarray(v) for k, v in detect_boxes(
        logits, deltas, proposals, np.ones(5, bool), (32, 32), cfg).items()}
    sigmoid = lambda x: 1 / (1 + np.exp(-x))
    np.testing.assert_array_equal(out["valid"], [True, True, True, False, False])
    np.testing.assert_allclose(out["boxes"][:3], [[28, 28, 32, 32], [0, 0, 10, 10],
                                                   [5, 0, 15, 10]], atol=1e-5)
    np.testing.assert_allclose(out["scores"], [sigmoid(4), sigmoid(3), sigmoid(1), 0, 0],
                               rtol=1e-6)
    np.testing.assert_array_equal(out["labels"], [1, 1, 1, 0, 0])
    np.testing.assert_array_equal(out["boxes"][3:], 0.0)
    assert out["labels"].dtype == np.int32


def _random_inputs(seed):
    rng = np.random.default_rng(seed)
    xy = rng.uniform(-5, 55, (P, 2))
    proposals = np.concatenate([xy, xy + rng.uniform(2, 30, (P, 2))], 1).astype(np.float32)
    logits = (rng.normal(size=(P, K)) * 3).astype(np.float32)  # peaked: many scores > 0.05
    deltas = (rng.normal(size=(P, K, 4)) * 2).astype(np.float32)
    valid = rng.random(P) < 0.8
    logits[~valid, 1:] = 20.0  # invalid proposals would win everything if they counted
    return logits, deltas, proposals, valid


def _torchvision_detections(logits, deltas, proposals, cfg):
    import torch
    from torchvision.models.detection.roi_heads import RoIHeads

    heads = RoIHeads(None, None, None, cfg.fg_iou_threshold, cfg.bg_iou_threshold,
                     cfg.batch_size_per_image, cfg.positive_fraction, cfg.box_weights,
                     cfg.score_threshold, cfg.nms_threshold, cfg.detections_per_image)
    boxes, scores, labels = heads.postprocess_detections(
        torch.from_numpy(logits), torch.from_numpy(deltas.reshape(len(logits), -1)),
        [torch.from_numpy(proposals)], [IMAGE])
    return boxes[0].numpy(), scores[0].numpy(), labels[0].numpy()


@pytest.mark.parametrize("detections", [10, 200])  # 200: more than there are candidates
def test_detect_boxes_matches_torchvision(detections):
    pytest.importorskip("torchvision")
    cfg = dataclasses.replace(RoIHeadsConfig(), detections_per_image=detections)
    for seed in range(3):
        logits, deltas, proposals, valid = _random_inputs(seed)
        out = {k: np.asarray(v) for k, v in detect_jit(
            logits, deltas, proposals, valid, image_size=IMAGE, cfg=cfg).items()}
        boxes, scores, labels = _torchvision_detections(logits[valid], deltas[valid],
                                                        proposals[valid], cfg)
        n = len(scores)
        assert n > 5  # the score threshold left something to compare
        assert out["valid"].sum() == n and out["valid"][:n].all()
        if detections == 10:
            assert n == 10
        np.testing.assert_allclose(out["boxes"][:n], boxes, atol=1e-4)
        np.testing.assert_allclose(out["scores"][:n], scores, rtol=1e-5)
        np.testing.assert_array_equal(out["labels"][:n], labels)
        assert (out["scores"][n:] == 0).all() and (out["labels"][n:] == 0).all()


def test_invalid_proposals_never_detected():
    logits, deltas, proposals, _ = _random_inputs(0)
    cfg = RoIHeadsConfig()
    out = detect_jit(logits, deltas, proposals, np.zeros(P, bool), image_size=IMAGE, cfg=cfg)
    assert not np.asarray(out["valid"]).any()
    assert (np.asarray(out["scores"]) == 0).all() and (np.asarray(out["labels"]) == 0).all()
    assert out["boxes"].shape == (100, 4)


def test_select_mask_channel():
    logits = np.zeros((2, 3, 3, 4), np.float32)
    logits[0, ..., 2] = 2.0
    logits[1, ..., 1] = -1.0
    got = select_mask_channel(logits, np.int32([2, 1]))
    np.testing.assert_allclose(got[0], 1 / (1 + np.exp(-2.0)), rtol=1e-6)
    np.testing.assert_allclose(got[1], 1 / (1 + np.exp(1.0)), rtol=1e-6)
