"""mrcnn_jax/rpn.py: anchor targets, RPN losses, proposal selection and the head's layout
against numpy references and torchvision's ``RegionProposalNetwork``."""

import dataclasses

import jax
import numpy as np
import pytest
from flax import nnx

from mrcnn_jax import generate_anchors
from mrcnn_jax.config import RPNConfig
from mrcnn_jax.rpn import RPNHead, rpn_losses, rpn_targets, select_proposals
from mrcnn_jax.weights import load_torchvision_state

IMAGE = (64, 64)
FEATURES = [(16, 16), (8, 8), (4, 4)]
SIZES = ((16,), (32,), (64,))
RATIOS = ((0.5, 1.0, 2.0),) * 3
LEVEL_SIZES = tuple(h * w * 3 for h, w in FEATURES)  # (768, 192, 48)
ANCHORS = np.asarray(generate_anchors(IMAGE, FEATURES, SIZES, RATIOS), np.float32)  # (1008, 4)
CFG = RPNConfig()  # 256 per image, half positive, 0.7 / 0.3

targets_jit = jax.jit(rpn_targets, static_argnames="cfg")
select_jit = jax.jit(select_proposals,
                     static_argnames=("level_sizes", "image_size", "cfg", "training"))


def np_iou(a, b):
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=-1)
    return inter / (area(a)[:, None] + area(b)[None] - inter)


def np_encode(boxes, anchors):
    def centre_size(x):
        w, h = x[:, 2] - x[:, 0], x[:, 3] - x[:, 1]
        return x[:, 0] + 0.5 * w, x[:, 1] + 0.5 * h, w, h

    gx, gy, gw, gh = centre_size(boxes.astype(np.float64))
    ax, ay, aw, ah = centre_size(anchors.astype(np.float64))
    return np.stack([(gx - ax) / aw, (gy - ay) / ah, np.log(gw / aw), np.log(gh / ah)], -1)


def np_rpn_labels(anchors, gt, valid):
    """torchvision ``assign_targets_to_anchors``: 1 / 0 / -1 labels and matched gt index."""
    quality = np_iou(gt[valid], anchors)  # (G', A)
    index = np.flatnonzero(valid)
    best = quality.max(0)
    matched = index[quality.argmax(0)]
    labels = np.where(best >= 0.7, 1, np.where(best < 0.3, 0, -1))
    _, low_quality = np.nonzero(quality == quality.max(1, keepdims=True))
    labels[low_quality] = 1
    return labels, matched


def _gt_case(rng, crowded):
    """Four ground-truth slots, the last padded (with a box that would match if it counted)."""
    xy = rng.uniform(0, 40, (4, 2))
    wh = rng.uniform(12, 40, (4, 2))
    gt = np.concatenate([xy, np.minimum(xy + wh, 64)], 1).astype(np.float32)
    valid = np.array([True, True, True, False])
    anchors = ANCHORS.copy()
    if crowded:  # hundreds of near-copies of the ground truth: more positives than 128
        jitter = rng.uniform(-0.5, 0.5, (300, 4)).astype(np.float32)
        anchors[:300] = gt[np.arange(300) % 3] + jitter
    return anchors, gt, valid


@pytest.mark.parametrize("crowded", [False, True])
def test_rpn_targets_match_numpy_reference(crowded):
    rng = np.random.default_rng(int(crowded))
    for seed in range(3):
        anchors, gt, valid = _gt_case(rng, crowded)
        out = {k: np.asarray(v) for k, v in
               targets_jit(jax.random.key(seed), anchors, gt, valid, cfg=CFG).items()}
        labels, matched = np_rpn_labels(anchors, gt, valid)
        np.testing.assert_array_equal(out["labels"], (labels == 1).astype(np.float32))
        positive, sampled = out["positive"], out["sampled"]
        assert (labels[positive] == 1).all()
        assert (labels[sampled & ~positive] == 0).all()  # ignored anchors never sampled
        num_pos, num_neg = (labels == 1).sum(), (labels == 0).sum()
        assert positive.sum() == min(num_pos, 128) <= 128
        assert sampled.sum() == positive.sum() + min(num_neg, 256 - positive.sum()) <= 256
        if crowded:
            assert num_pos > 128 and positive.sum() == 128
        pos = labels == 1
        np.testing.assert_allclose(out["deltas"][pos], np_encode(gt[matched[pos]], anchors[pos]),
                                   rtol=1e-4, atol=1e-5)


def test_rpn_targets_with_no_ground_truth_are_all_negative():
    gt = np.zeros((4, 4), np.float32)
    out = targets_jit(jax.random.key(0), ANCHORS, gt, np.zeros(4, bool), cfg=CFG)
    assert not np.asarray(out["labels"]).any() and not np.asarray(out["positive"]).any()
    assert np.asarray(out["sampled"]).sum() == 256
    assert np.isfinite(np.asarray(out["deltas"])).all()


def test_rpn_losses_hand_case():
    logits = np.float32([[0.0, 2.0, -1.0], [3.0, -2.0, 5.0]])  # (B=2, A=3)
    deltas = np.zeros((2, 3, 4), np.float32)
    deltas[0, 0] = [0.05, -0.5, 0.0, 2.0]
    deltas[1, 2] = [9.0, 9.0, 9.0, 9.0]  # negative anchor: its deltas must not count
    targets = {
        "labels": np.float32([[1, 0, 0], [1, 0, 0]]),
        "deltas": np.zeros((2, 3, 4), np.float32),
        "positive": np.array([[True, False, False], [True, False, False]]),
        "sampled": np.array([[True, True, False], [True, True, True]]),
    }
    targets["deltas"][1, 0] = [0.0, 0.0, 0.0, 1.0]
    beta = 1.0 / 9
    softplus = lambda x: np.log1p(np.exp(x))  # BCE of label 1: softplus(-x); label 0: softplus(x)
    bce = softplus(-0.0) + softplus(2.0) + softplus(-3.0) + softplus(-2.0) + softplus(5.0)
    # smooth-L1: 0.05 < 1/9 -> 0.5 * 0.05^2 * 9; 0.5 -> 0.5 - 1/18; 2 -> 2 - 1/18; 1 -> 1 - 1/18
    box = 0.5 * 0.05**2 / beta + (0.5 - beta / 2) + (2 - beta / 2) + (1 - beta / 2)
    got = rpn_losses(logits, deltas, targets, beta)
    np.testing.assert_allclose(got["rpn_objectness"], bce / 5, rtol=1e-5)
    np.testing.assert_allclose(got["rpn_box"], box / 5, rtol=1e-5)


def test_rpn_losses_with_nothing_sampled_are_zero():
    targets = {"labels": np.zeros((1, 3), np.float32), "deltas": np.zeros((1, 3, 4), np.float32),
               "positive": np.zeros((1, 3), bool), "sampled": np.zeros((1, 3), bool)}
    got = rpn_losses(np.full((1, 3), 100.0, np.float32), np.ones((1, 3, 4), np.float32), targets,
                     1.0 / 9)
    assert float(got["rpn_objectness"]) == 0.0 and float(got["rpn_box"]) == 0.0


def _proposal_inputs(seed):
    rng = np.random.default_rng(seed)
    logits = (rng.normal(size=ANCHORS.shape[0]) * 3).astype(np.float32)  # distinct scores
    deltas = (rng.normal(size=ANCHORS.shape) * 0.3).astype(np.float32)
    return logits, deltas


def _torchvision_proposals(logits, deltas, cfg):
    import torch
    from torchvision.models.detection._utils import BoxCoder
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.image_list import ImageList
    from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead

    rpn = RegionProposalNetwork(
        AnchorGenerator(SIZES, RATIOS), RPNHead(4, 3), cfg.fg_iou_threshold,
        cfg.bg_iou_threshold, cfg.batch_size_per_image, cfg.positive_fraction,
        pre_nms_top_n={"training": cfg.pre_nms_top_n_train, "testing": cfg.pre_nms_top_n_test},
        post_nms_top_n={"training": cfg.post_nms_top_n_train, "testing": cfg.post_nms_top_n_test},
        nms_thresh=cfg.nms_threshold, score_thresh=cfg.score_threshold,
    ).eval()
    images = ImageList(torch.zeros(1, 3, *IMAGE), [IMAGE])
    decoded = BoxCoder((1.0, 1.0, 1.0, 1.0)).decode(torch.from_numpy(deltas),
                                                   [torch.from_numpy(ANCHORS)])
    boxes, scores = rpn.filter_proposals(decoded.view(1, -1, 4), torch.from_numpy(logits)[:, None],
                                         images.image_sizes, list(LEVEL_SIZES))
    return boxes[0].numpy(), scores[0].numpy()


@pytest.mark.parametrize(
    "pre_n, post_n", [(50, 40), (50, 200), (2000, 1000)]  # 200: padded; 2000: whole levels
)
def test_select_proposals_matches_torchvision(pre_n, post_n):
    pytest.importorskip("torchvision")
    cfg = dataclasses.replace(CFG, pre_nms_top_n_test=pre_n, post_nms_top_n_test=post_n)
    for seed in range(2):
        logits, deltas = _proposal_inputs(seed)
        boxes, scores, valid = (np.asarray(a) for a in select_jit(
            logits, deltas, ANCHORS, level_sizes=LEVEL_SIZES, image_size=IMAGE, cfg=cfg,
            training=False))
        expected_boxes, expected_scores = _torchvision_proposals(logits, deltas, cfg)
        n = len(expected_boxes)
        assert boxes.shape == (post_n, 4) and valid.shape == (post_n,)
        assert valid.sum() == n and valid[:n].all()  # valid is a prefix
        np.testing.assert_allclose(boxes[:n], expected_boxes, atol=1e-4)
        np.testing.assert_allclose(scores[:n], expected_scores, rtol=1e-5)
        assert (scores[n:] == 0).all()
        if post_n == 200:
            assert n < post_n  # padding actually happened and is flagged


def test_select_proposals_training_sizes():
    cfg = dataclasses.replace(CFG, pre_nms_top_n_train=20, post_nms_top_n_train=30,
                              pre_nms_top_n_test=5, post_nms_top_n_test=7)
    logits, deltas = _proposal_inputs(0)
    boxes, scores, valid = select_jit(logits, deltas, ANCHORS, level_sizes=LEVEL_SIZES,
                                      image_size=IMAGE, cfg=cfg, training=True)
    assert boxes.shape == (30, 4)
    scores = np.asarray(scores)[np.asarray(valid)]
    assert (np.diff(scores) <= 0).all()  # best first
    boxes = np.asarray(boxes)
    assert (boxes >= 0).all() and (boxes[:, 2] <= 64).all() and (boxes[:, 3] <= 64).all()


def test_rpn_head_layout_matches_torchvision():
    pytest.importorskip("torchvision")
    import torch
    from torchvision.models.detection.rpn import RPNHead as TorchRPNHead
    from torchvision.models.detection.rpn import concat_box_prediction_layers

    torch.manual_seed(0)
    c, a = 8, 3
    torch_head = TorchRPNHead(c, a).eval()
    with torch.no_grad():
        for p in torch_head.parameters():
            p.normal_(0, 0.3)
    ours = RPNHead(c, a, rngs=nnx.Rngs(0))
    state = {"rpn.head." + k: v.numpy() for k, v in torch_head.state_dict().items()}
    load_torchvision_state(ours, state, prefix=("rpn_head",))

    rng = np.random.default_rng(0)
    feats = [rng.normal(size=(2, h, w + 1, c)).astype(np.float32) for h, w in FEATURES]
    logits, deltas = ours(feats)
    with torch.no_grad():
        cls, reg = torch_head([torch.from_numpy(f.transpose(0, 3, 1, 2).copy()) for f in feats])
        cls, reg = concat_box_prediction_layers(cls, reg)  # (B*A, 1), (B*A, 4)
    assert logits.shape == (2, sum(h * (w + 1) * a for h, w in FEATURES))
    np.testing.assert_allclose(logits, cls.numpy().reshape(2, -1), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(deltas, reg.numpy().reshape(2, -1, 4), rtol=1e-4, atol=1e-4)
