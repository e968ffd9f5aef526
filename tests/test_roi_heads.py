"""mrcnn_jax/roi_heads.py: RoI sampling, box and mask losses, mask targets and both heads
against hand values, numpy references and torchvision's ``roi_heads``."""

import dataclasses

import jax
import numpy as np
import pytest
from flax import nnx

from mrcnn_jax.config import RoIHeadsConfig
from mrcnn_jax.roi_heads import (
    BoxHead,
    MaskHead,
    box_losses,
    mask_loss,
    mask_targets,
    sample_rois,
)
from mrcnn_jax.weights import load_torchvision_state

CFG = dataclasses.replace(RoIHeadsConfig(), batch_size_per_image=16)  # at most 4 positives
P, G = 24, 3
sample_jit = jax.jit(sample_rois, static_argnames="cfg")
targets_jit = jax.jit(mask_targets, static_argnames=("image_size", "mask_size",
                                                      "sampling_ratio", "binary", "aligned"))


def np_iou(a, b):
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=-1)
    return inter / (area(a)[:, None] + area(b)[None] - inter)


def np_encode(boxes, rois, weights=(10.0, 10.0, 5.0, 5.0)):
    def centre_size(x):
        w, h = x[:, 2] - x[:, 0], x[:, 3] - x[:, 1]
        return x[:, 0] + 0.5 * w, x[:, 1] + 0.5 * h, w, h

    gx, gy, gw, gh = centre_size(boxes.astype(np.float64))
    ax, ay, aw, ah = centre_size(rois.astype(np.float64))
    wx, wy, ww, wh = weights
    return np.stack([wx * (gx - ax) / aw, wy * (gy - ay) / ah, ww * np.log(gw / aw),
                     wh * np.log(gh / ah)], -1)


def copy_torchvision_weights(model, prefix, state_dict, roi_size=7):
    """Load ``state_dict`` ({full torchvision name: tensor}) into ``model`` in place."""
    load_torchvision_state(model, state_dict, prefix, roi_size)


def _gt():
    boxes = np.float32([[4, 6, 30, 28], [34, 10, 60, 50], [0, 0, 1, 1]])  # last one padded
    return boxes, np.int32([2, 3, 0]), np.array([True, True, False])


def test_sample_rois_with_no_valid_proposals_samples_the_ground_truth():
    gt_boxes, gt_labels, gt_valid = _gt()
    proposals = np.tile(gt_boxes[:1], (P, 1))  # identical to gt 0, but marked invalid
    out = {k: np.asarray(v) for k, v in sample_jit(
        jax.random.key(0), proposals, np.zeros(P, bool), gt_boxes, gt_labels, gt_valid,
        cfg=CFG).items()}
    assert out["rois"].shape == (16, 4)
    np.testing.assert_array_equal(out["valid"], [True, True] + [False] * 14)
    np.testing.assert_array_equal(out["positive"], out["valid"])
    np.testing.assert_array_equal(out["rois"][:2], gt_boxes[:2])
    np.testing.assert_array_equal(out["labels"][:2], [2, 3])
    np.testing.assert_array_equal(out["labels"][2:], 0)
    np.testing.assert_array_equal(out["matched_gt"][:2], [0, 1])
    np.testing.assert_allclose(out["box_targets"][:2], 0.0, atol=1e-6)


def _proposals(rng):
    gt_boxes, _, _ = _gt()
    near = gt_boxes[rng.integers(0, 2, P)] + rng.normal(0, 3, (P, 4))  # many IoU >= 0.5
    far = rng.uniform(0, 40, (P, 2))
    far = np.concatenate([far, far + rng.uniform(4, 20, (P, 2))], 1)
    boxes = np.where(rng.random((P, 1)) < 0.5, near, far).astype(np.float32)
    boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 1)
    valid = rng.random(P) < 0.8
    boxes[~valid] = [500, 500, 600, 600]  # recognisable: must never be sampled
    return boxes, valid


def test_sample_rois_targets_match_numpy_reference():
    gt_boxes, gt_labels, gt_valid = _gt()
    rng = np.random.default_rng(0)
    for seed in range(5):
        proposals, valid = _proposals(rng)
        out = {k: np.asarray(v) for k, v in sample_jit(
            jax.random.key(seed), proposals, valid, gt_boxes, gt_labels, gt_valid,
            cfg=CFG).items()}
        rois, pos, ok = out["rois"], out["positive"], out["valid"]
        assert not (rois[ok] == 500).any()
        iou = np_iou(gt_boxes[:2], rois[ok])  # (2, n) valid ground truth only
        best, best_gt = iou.max(0), iou.argmax(0)
        np.testing.assert_array_equal(pos[ok], best >= 0.5)
        candidates = np.concatenate([proposals[valid], gt_boxes[:2]])  # gt appended
        fg = np_iou(gt_boxes[:2], candidates).max(0) >= 0.5
        n_pos = min(fg.sum(), 4)  # 25% of 16
        assert pos.sum() == n_pos and ok.sum() == n_pos + min((~fg).sum(), 16 - n_pos)
        assert pos[:n_pos].all() and not pos[n_pos:].any()  # positives first
        np.testing.assert_array_equal(out["matched_gt"][pos], best_gt[pos[ok]])
        np.testing.assert_array_equal(out["labels"][pos], gt_labels[best_gt[pos[ok]]])
        np.testing.assert_array_equal(out["labels"][~pos], 0)
        np.testing.assert_allclose(out["box_targets"][pos],
                                   np_encode(gt_boxes[out["matched_gt"][pos]], rois[pos]),
                                   rtol=1e-4, atol=1e-4)


def test_box_losses_hand_case():
    logits = np.zeros((1, 3, 3), np.float32)
    logits[0, 0] = [1.0, 0.0, 3.0]
    logits[0, 1] = [2.0, 0.0, 0.0]
    logits[0, 2] = [50.0, -50.0, 0.0]  # invalid slot: ignored
    deltas = np.zeros((1, 3, 3, 4), np.float32)
    deltas[0, 0, 2] = [0.05, 1.0, 0.0, 0.0]  # class 2 deltas of the positive
    deltas[0, 0, 1] = [7.0, 7.0, 7.0, 7.0]  # another class: ignored
    deltas[0, 1, 0] = [9.0, 9.0, 9.0, 9.0]  # background sample: ignored
    samples = {
        "valid": np.array([[True, True, False]]),
        "labels": np.int32([[2, 0, 0]]),
        "positive": np.array([[True, False, False]]),
        "box_targets": np.zeros((1, 3, 4), np.float32),
    }
    lse = lambda v: np.log(np.exp(v).sum())
    ce = (lse([1.0, 0.0, 3.0]) - 3.0) + (lse([2.0, 0.0, 0.0]) - 2.0)
    beta = 1.0 / 9
    box = 0.5 * 0.05**2 / beta + (1.0 - 0.5 * beta)
    got = box_losses(logits, deltas, samples, beta)
    np.testing.assert_allclose(got["box_classifier"], ce / 2, rtol=1e-6)
    np.testing.assert_allclose(got["box_regression"], box / 2, rtol=1e-6)


def test_box_losses_with_no_positive_are_finite_and_zero_box():
    samples = {
        "valid": np.array([[True, True], [False, False]]),
        "labels": np.zeros((2, 2), np.int32),
        "positive": np.zeros((2, 2), bool),
        "box_targets": np.full((2, 2, 4), np.nan, np.float32),  # garbage must not leak
    }
    got = box_losses(np.zeros((2, 2, 4), np.float32), np.ones((2, 2, 4, 4), np.float32),
                     samples, 1.0 / 9)
    np.testing.assert_allclose(got["box_classifier"], np.log(4.0), rtol=1e-6)
    assert float(got["box_regression"]) == 0.0


def test_box_losses_match_torchvision_fastrcnn_loss():
    pytest.importorskip("torchvision")
    import torch
    from torchvision.models.detection.roi_heads import fastrcnn_loss

    rng = np.random.default_rng(0)
    b, s, k = 2, 8, 4
    logits = rng.normal(size=(b, s, k)).astype(np.float32)
    deltas = rng.normal(size=(b, s, k, 4)).astype(np.float32)
    labels = rng.integers(0, k, (b, s)).astype(np.int32)
    box_targets = rng.normal(size=(b, s, 4)).astype(np.float32)
    samples = {"valid": np.ones((b, s), bool), "labels": labels, "positive": labels > 0,
               "box_targets": box_targets}
    got = box_losses(logits, deltas, samples, 1.0 / 9)
    cls, reg = fastrcnn_loss(torch.from_numpy(logits.reshape(b * s, k)),
                             torch.from_numpy(deltas.reshape(b * s, 4 * k)),
                             list(torch.from_numpy(labels).long()),
                             list(torch.from_numpy(box_targets)))
    np.testing.assert_allclose(got["box_classifier"], cls.item(), rtol=1e-5)
    np.testing.assert_allclose(got["box_regression"], reg.item(), rtol=1e-5)


def test_mask_loss_hand_case():
    logits = np.zeros((1, 2, 2, 2, 2), np.float32)  # (B, R, M, M, K)
    logits[0, 0, :, :, 1] = [[2.0, -2.0], [0.0, 100.0]]
    logits[0, 0, :, :, 0] = 50.0  # other class channel: ignored
    logits[0, 1] = -100.0  # not a positive: ignored
    targets = np.zeros((1, 2, 2, 2), np.float32)
    targets[0, 0] = [[1.0, 0.0], [0.5, 1.0]]
    softplus = lambda x: np.log1p(np.exp(x))
    expected = (softplus(-2.0) + softplus(-2.0) + np.log(2.0) + 0.0) / 4
    got = mask_loss(logits, np.int32([[1, 1]]), targets, np.array([[True, False]]))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)


def test_mask_loss_with_no_positive_is_zero():
    logits = np.full((2, 3, 4, 4, 2), 100.0, np.float32)
    got = mask_loss(logits, np.ones((2, 3), np.int32), np.zeros((2, 3, 4, 4), np.float32),
                    np.zeros((2, 3), bool))
    assert float(got) == 0.0


IMAGE = (32, 40)


def _rect_mask(box, size=IMAGE):
    mask = np.zeros(size, np.float32)
    x1, y1, x2, y2 = box
    mask[y1:y2, x1:x2] = 1.0
    return mask


def test_mask_targets_roi_equal_to_filled_box_is_ones_inside():
    box = (8, 4, 24, 20)
    masks = np.stack([_rect_mask(box), np.zeros(IMAGE, np.float32)])[None]  # (1, 2, H, W)
    gt_boxes = np.float32([[box, [0, 0, 10, 10]]])
    rois = np.float32([[box]])
    got = np.asarray(targets_jit(masks, gt_boxes, rois, np.int32([[0]]), image_size=IMAGE,
                                 mask_size=8, sampling_ratio=2))[0, 0]
    # aligned=False: the last sample of each row reads halfway into the empty pixel beyond
    np.testing.assert_allclose(got[:-1, :-1], 1.0, atol=1e-6)
    np.testing.assert_allclose(got[-1, :-1], 0.75, atol=1e-6)
    binary = targets_jit(masks, gt_boxes, rois, np.int32([[0]]), image_size=IMAGE, mask_size=8,
                         sampling_ratio=2, binary=True)
    np.testing.assert_array_equal(np.asarray(binary)[0, 0], 1.0)


def test_aligned_mask_targets_of_the_exact_box_are_all_ones():
    # aligned=True samples at 8 - 0.5 + (j + (k + 0.5) / 2) * 2 = 8 + 2j + k: pixel centres
    # 8..23, all inside the object, where aligned=False read half a pixel beyond it (0.75 above)
    box = (8, 4, 24, 20)
    masks = _rect_mask(box)[None, None]  # (1, 1, H, W)
    got = np.asarray(targets_jit(masks, np.float32([[box]]), np.float32([[box]]),
                                 np.int32([[0]]), image_size=IMAGE, mask_size=8,
                                 sampling_ratio=2, aligned=True))
    np.testing.assert_array_equal(got, 1.0)


@pytest.mark.parametrize("aligned", [False, True])
def test_mask_targets_match_torchvision_project_masks_on_boxes(aligned):
    pytest.importorskip("torchvision")
    import torch
    from torchvision.ops import roi_align

    rng = np.random.default_rng(0)
    b, g, r, m = 2, 3, 5, 14
    masks = (rng.random((b, g, 8, 10)) < 0.5).astype(np.float32)
    masks = np.kron(masks, np.ones((4, 4), np.float32))  # (B, G, 32, 40) blocky blobs
    gt_boxes = np.tile(np.float32([0, 0, 40, 32]), (b, g, 1))  # unused by full masks
    xy = rng.uniform(-4, 30, (b, r, 2))
    rois = np.concatenate([xy, xy + rng.uniform(2, 20, (b, r, 2))], -1).astype(np.float32)
    matched = rng.integers(0, g, (b, r)).astype(np.int32)
    got = targets_jit(masks, gt_boxes, rois, matched, image_size=IMAGE, mask_size=m,
                      sampling_ratio=2, aligned=aligned)
    for i in range(b):
        # torchvision project_masks_on_boxes with the sampling ratio pinned to 2 (aligned=True:
        # detectron2's crop_and_resize, which is the same roi_align call)
        index = torch.from_numpy(matched[i]).float()[:, None]
        boxes = torch.cat([index, torch.from_numpy(rois[i])], 1)
        expected = roi_align(torch.from_numpy(masks[i])[:, None], boxes, (m, m), 1.0,
                             sampling_ratio=2, aligned=aligned)[:, 0].numpy()
        np.testing.assert_allclose(got[i], expected, atol=1e-5)


@pytest.mark.parametrize("aligned", [False, True])
def test_mask_targets_cropped_masks_agree_with_full_masks(aligned):
    gt_box = (6, 6, 26, 22)  # 20 x 16
    shape = (10, 8, 20, 18)  # the object: a rectangle inside its box
    full = _rect_mask(shape)[None, None]  # (1, 1, 32, 40)
    crop = np.zeros((40, 40), np.float32)  # gt box at 2x (x) and 2.5x (y): exact pixels
    crop[(8 - 6) * 5 // 2:(18 - 6) * 5 // 2, (10 - 6) * 2:(20 - 6) * 2] = 1.0
    gt_boxes = np.float32([[gt_box]])
    rng = np.random.default_rng(1)
    rois = (np.float32(gt_box) + rng.normal(0, 2, (6, 4))).astype(np.float32)[None]  # (1, 6, 4)
    rois = np.concatenate([np.float32([[gt_box, shape]]), rois], 1)  # (1, 8, 4)
    matched = np.zeros((1, 8), np.int32)
    kwargs = dict(image_size=IMAGE, mask_size=28, sampling_ratio=2, aligned=aligned)
    from_full = np.asarray(targets_jit(full, gt_boxes, rois, matched, **kwargs))
    from_crop = np.asarray(targets_jit(crop[None, None], gt_boxes, rois, matched, **kwargs))
    assert from_crop.min() >= 0 and from_crop.max() <= 1 + 1e-6
    # The same edges in the same places: the crop path reads its cells where the full-mask path
    # reads the image's pixels, for either ``aligned`` (with aligned=False it once read them
    # half an image pixel off: 3% of the thresholded cells and 0.053 of the mean differed).
    # Not equal: bilinear ramps span one source pixel, 1 px on the full mask, 0.5 px on the 2x
    # crop, so soft values near an edge differ (by up to 0.028 of an RoI's mean, measured, on
    # the RoI equal to the object's box), thresholded ones almost never.
    binary_differ = (from_crop >= 0.5) != (from_full >= 0.5)
    np.testing.assert_allclose(from_crop.mean(axis=(2, 3)), from_full.mean(axis=(2, 3)),
                               atol=0.035)
    assert np.abs(from_crop - from_full).mean(axis=(2, 3)).max() < 0.035
    assert binary_differ.mean(axis=(2, 3)).max() < 0.01
    assert binary_differ.mean() < 0.003


def test_box_head_matches_torchvision():
    pytest.importorskip("torchvision")
    import torch
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead

    f, rep, k, r = 4, 32, 5, 6
    torch.manual_seed(0)
    mlp, predictor = TwoMLPHead(f * 49, rep).eval(), FastRCNNPredictor(rep, k).eval()
    state = {"roi_heads.box_head." + n: v for n, v in mlp.state_dict().items()}
    state.update({"roi_heads.box_predictor." + n: v for n, v in predictor.state_dict().items()})
    ours = BoxHead(f * 49, rep, k, rngs=nnx.Rngs(0))
    copy_torchvision_weights(ours, ("box_head",), state)
    x = np.random.default_rng(0).normal(size=(r, 7, 7, f)).astype(np.float32)  # NHWC
    logits, deltas = ours(x)
    with torch.no_grad():
        scores, box = predictor(mlp(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())))
    assert deltas.shape == (r, k, 4)
    np.testing.assert_allclose(logits, scores.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(deltas, box.numpy().reshape(r, k, 4), rtol=1e-4, atol=1e-5)


def test_mask_head_matches_torchvision():
    pytest.importorskip("torchvision")
    import torch
    from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor

    f, layers, k, r = 6, (8, 8), 3, 2
    torch.manual_seed(0)
    heads = MaskRCNNHeads(f, list(layers), 1).eval()
    predictor = MaskRCNNPredictor(layers[-1], layers[-1], k).eval()
    with torch.no_grad():  # nonzero biases, so a dropped one would show
        for name, p in list(heads.named_parameters()) + list(predictor.named_parameters()):
            if name.endswith("bias"):
                p.normal_()
    state = {"roi_heads.mask_head." + n: v for n, v in heads.state_dict().items()}
    state.update({"roi_heads.mask_predictor." + n: v for n, v in predictor.state_dict().items()})
    ours = MaskHead(f, layers, k, rngs=nnx.Rngs(0))
    copy_torchvision_weights(ours, ("mask_head",), state)
    x = np.random.default_rng(1).normal(size=(r, 14, 14, f)).astype(np.float32)
    got = ours(x)
    with torch.no_grad():
        expected = predictor(heads(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()))).numpy()
    assert got.shape == (r, 28, 28, k)
    np.testing.assert_allclose(got, expected.transpose(0, 2, 3, 1), rtol=1e-4, atol=1e-4)
