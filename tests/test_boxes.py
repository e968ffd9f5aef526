"""mrcnn_jax/boxes.py: area, IoU, box coder and clipping, by hand, by property, against torchvision.

Golden arrays come from tools/make_golden.py (torchvision); live parity tests run when torch is
importable.
"""

import math
import pathlib

import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mrcnn_jax import box_area, box_iou, clip_boxes, decode_boxes, encode_boxes
from mrcnn_jax.boxes import BBOX_XFORM_CLIP, ROI_BOX_WEIGHTS, RPN_BOX_WEIGHTS, mirror_boxes

GOLDEN = np.load(pathlib.Path(__file__).parent / "golden" / "geometry.npz")
N = 16  # fixed box count in property tests, so jitted functions compile once
PROPERTY = settings(max_examples=50, deadline=None)

box_iou_jit = jax.jit(box_iou)
encode_jit = jax.jit(encode_boxes, static_argnames="weights")
decode_jit = jax.jit(decode_boxes, static_argnames="weights")


def _boxes(side):
    """(N, 4) float32 boxes: corners in [-50, 150], sides drawn from ``side``."""
    corners = hnp.arrays(np.float32, (N, 2), elements=st.floats(-50, 150, width=32))
    sides = hnp.arrays(np.float32, (N, 2), elements=side)
    return st.tuples(corners, sides).map(lambda t: np.concatenate([t[0], t[0] + t[1]], 1))


positive_side = st.floats(0.5, 60, width=32)
# zero width/height and inverted boxes (x2 < x1) mixed with ordinary ones
any_side = st.one_of(st.sampled_from([0.0, -0.5, -7.0]), positive_side)
any_boxes = _boxes(any_side)
# sides in [1, 60]: size ratios stay below 1000/16, so decode's clamp never fires
coder_boxes = _boxes(st.floats(1, 60, width=32))


def _close_rel(actual, expected, rtol=1e-5):
    """Equal to ``rtol`` relative to the largest magnitude (deltas cross zero)."""
    expected = np.asarray(expected)
    np.testing.assert_allclose(
        np.asarray(actual), expected, rtol=rtol, atol=rtol * np.abs(expected).max()
    )


def _torch():
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    return torch, torchvision


# (a) hand-computed cases


def test_iou_by_hand():
    # two 2x2 squares overlapping in a 1x1 corner: 1 / (4 + 4 - 1) = 1/7
    a = np.float32([[0, 0, 2, 2]])
    b = np.float32([[1, 1, 3, 3], [0, 0, 2, 2], [2, 0, 4, 2], [5, 5, 6, 6], [0, 0, 1, 2]])
    iou = np.asarray(box_iou(a, b))
    np.testing.assert_allclose(iou, [[1 / 7, 1.0, 0.0, 0.0, 0.5]], rtol=1e-6)
    assert iou.shape == (1, 5) and iou.dtype == np.float32


def test_area_by_hand():
    boxes = np.float32([[0, 0, 2, 3], [1, 1, 1, 5], [4, 0, 2, 2], [0, 5, 3, 1]])
    np.testing.assert_array_equal(np.asarray(box_area(boxes)), [6, 0, 0, 0])
    assert box_area(np.zeros((2, 3, 4), np.float32)).shape == (2, 3)


def test_encode_decode_by_hand():
    anchor = np.float32([[0, 0, 10, 20]])  # centre (5, 10), size 10 x 20
    box = np.float32([[2, 4, 22, 24]])  # centre (12, 14), size 20 x 20
    expected = [0.7, 0.2, math.log(2), 0.0]  # (12-5)/10, (14-10)/20, log(20/10), log(20/20)
    np.testing.assert_allclose(np.asarray(encode_boxes(box, anchor)), [expected], rtol=1e-6)
    weighted = [7.0, 2.0, 5 * math.log(2), 0.0]
    deltas = encode_boxes(box, anchor, ROI_BOX_WEIGHTS)
    np.testing.assert_allclose(np.asarray(deltas), [weighted], rtol=1e-6)
    np.testing.assert_allclose(
        np.asarray(decode_boxes(deltas, anchor, ROI_BOX_WEIGHTS)), box, rtol=1e-6
    )


def test_decode_clamps_dw_dh_at_log_1000_over_16():
    anchor = np.float32([[0, 0, 16, 16]])  # centre (8, 8)
    for dw in (BBOX_XFORM_CLIP, 10.0, 100.0):  # exp(100) would be inf without the clamp
        box = np.asarray(decode_boxes(np.float32([[0, 0, dw, dw]]), anchor))
        np.testing.assert_allclose(box, [[8 - 500, 8 - 500, 8 + 500, 8 + 500]], rtol=1e-5)
    # the clamp applies after dividing by the weights: 5 * 4 = 20 < 5 * log(62.5) passes
    box = np.asarray(decode_boxes(np.float32([[0, 0, 20, 20]]), anchor, ROI_BOX_WEIGHTS))
    half = 8 * math.exp(4.0)
    np.testing.assert_allclose(box, [[8 - half, 8 - half, 8 + half, 8 + half]], rtol=1e-5)
    assert math.isclose(BBOX_XFORM_CLIP, math.log(1000 / 16))
    assert RPN_BOX_WEIGHTS == (1.0, 1.0, 1.0, 1.0) and ROI_BOX_WEIGHTS == (10.0, 10.0, 5.0, 5.0)


def test_clip_by_hand():
    boxes = np.float32([[-5, -3, 50, 20], [10, 70, 30, 90], [1, 2, 3, 4]])
    clipped = np.asarray(clip_boxes(boxes, (60, 40)))  # image H=60, W=40
    np.testing.assert_array_equal(clipped, [[0, 0, 40, 20], [10, 60, 30, 60], [1, 2, 3, 4]])


def test_degenerate_boxes_documented_behaviour():
    good = np.float32([[0, 0, 4, 4]])
    degenerate = np.float32(
        [[1, 1, 1, 3], [1, 1, 3, 1], [2, 2, 2, 2], [3, 0, 1, 4], [0, 3, 4, 1], [5, 5, 5, 5]]
    )
    np.testing.assert_array_equal(np.asarray(box_area(degenerate)), np.zeros(6))
    iou = np.asarray(box_iou(degenerate, np.concatenate([good, degenerate])))
    np.testing.assert_array_equal(iou, np.zeros((6, 7)))  # 0, and 0 (not NaN) for 0 / 0
    # a zero-size box encodes to large finite log-sizes, not -inf
    deltas = np.asarray(encode_boxes(degenerate[:3], np.repeat(good, 3, 0)))
    assert np.isfinite(deltas).all() and (deltas[[0, 1, 2], [2, 3, 2]] < -10).all()
    deltas = np.asarray(encode_boxes(np.repeat(good, 3, 0), degenerate[:3]))
    assert np.isfinite(deltas).all()


# (b) invariants and properties


@PROPERTY
@given(any_boxes, any_boxes)
def test_iou_symmetric_bounded_no_nan(a, b):
    ab, ba = np.asarray(box_iou_jit(a, b)), np.asarray(box_iou_jit(b, a))
    assert np.isfinite(ab).all()
    assert (ab >= 0).all() and (ab <= 1).all()
    np.testing.assert_array_equal(ab, ba.T)
    empty = np.asarray(box_area(a)) == 0
    assert (ab[empty] == 0).all()  # zero-area or inverted: IoU 0 with anything


@PROPERTY
@given(any_boxes)
def test_iou_with_itself_is_one_for_positive_area(a):
    iou = np.asarray(box_iou_jit(a, a))
    positive = np.asarray(box_area(a)) > 0
    np.testing.assert_array_equal(np.diag(iou)[positive], 1.0)
    np.testing.assert_array_equal(np.diag(iou)[~positive], 0.0)


@PROPERTY
@given(coder_boxes, coder_boxes, st.sampled_from([RPN_BOX_WEIGHTS, ROI_BOX_WEIGHTS]))
def test_decode_inverts_encode(boxes, anchors, weights):
    deltas = encode_jit(boxes, anchors, weights)
    assert np.isfinite(np.asarray(deltas)).all()
    decoded = np.asarray(decode_jit(deltas, anchors, weights))
    np.testing.assert_allclose(decoded, boxes, rtol=1e-5, atol=2e-4)


@PROPERTY
@given(any_boxes, any_boxes)
def test_encode_decode_never_nan_on_degenerate_boxes(boxes, anchors):
    deltas = np.asarray(encode_jit(boxes, anchors, ROI_BOX_WEIGHTS))
    assert np.isfinite(deltas).all()
    decoded = np.asarray(decode_jit(deltas, anchors, ROI_BOX_WEIGHTS))
    assert not np.isnan(decoded).any()


@PROPERTY
@given(any_boxes)
def test_clip_stays_inside_and_is_idempotent(boxes):
    clipped = np.asarray(clip_boxes(boxes, (40, 70)))
    assert (clipped[:, 0::2] >= 0).all() and (clipped[:, 0::2] <= 70).all()
    assert (clipped[:, 1::2] >= 0).all() and (clipped[:, 1::2] <= 40).all()
    np.testing.assert_array_equal(np.asarray(clip_boxes(clipped, (40, 70))), clipped)


def test_encode_broadcasts_over_leading_dims():
    rng = np.random.default_rng(0)
    boxes = rng.uniform(10, 50, (2, 5, 4)).astype(np.float32)
    boxes[..., 2:] += boxes[..., :2]
    anchors = boxes[0] + 1.0  # (5, 4) broadcast against (2, 5, 4)
    deltas = np.asarray(encode_boxes(boxes, anchors))
    assert deltas.shape == (2, 5, 4)
    _close_rel(deltas[1], encode_boxes(boxes[1], anchors))
    np.testing.assert_allclose(np.asarray(decode_boxes(deltas, anchors)), boxes, rtol=1e-5)


# (c) golden parity with torchvision


def test_iou_matches_torchvision_golden():
    iou = box_iou(GOLDEN["iou/boxes1"], GOLDEN["iou/boxes2"])
    np.testing.assert_allclose(np.asarray(iou), GOLDEN["iou/iou"], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", ["rpn", "roi"])
def test_box_coder_matches_torchvision_golden(name):
    weights = tuple(float(w) for w in GOLDEN[f"coder_{name}/weights"])
    anchors = GOLDEN[f"coder_{name}/anchors"]
    encoded = encode_boxes(GOLDEN[f"coder_{name}/gt"], anchors, weights)
    _close_rel(encoded, GOLDEN[f"coder_{name}/encoded"])
    decoded = decode_boxes(GOLDEN[f"coder_{name}/deltas"], anchors, weights)
    _close_rel(decoded, GOLDEN[f"coder_{name}/decoded"])
    # the golden deltas include dw, dh past the clamp: the decoded sizes reach 1000/16 x
    widths = GOLDEN[f"coder_{name}/decoded"][:, 2] - GOLDEN[f"coder_{name}/decoded"][:, 0]
    ratio = widths / (anchors[:, 2] - anchors[:, 0])
    assert np.isclose(ratio.max(), 1000 / 16, rtol=1e-4)


# (d) live parity with torchvision on fresh inputs


def _random_boxes(rng, n, low=-10, high=100):
    xy = rng.uniform(low, high, (n, 2))
    return np.concatenate([xy, xy + rng.uniform(0.5, 60, (n, 2))], 1).astype(np.float32)


def test_iou_and_box_coder_match_torchvision_live():
    torch, torchvision = _torch()
    from torchvision.models.detection._utils import BoxCoder

    rng = np.random.default_rng(7)
    a, b = _random_boxes(rng, 30), _random_boxes(rng, 45)
    expected = torchvision.ops.box_iou(torch.tensor(a), torch.tensor(b)).numpy()
    np.testing.assert_allclose(np.asarray(box_iou(a, b)), expected, rtol=1e-5, atol=1e-7)
    for weights in (RPN_BOX_WEIGHTS, ROI_BOX_WEIGHTS):
        coder = BoxCoder(weights)
        anchors = _random_boxes(rng, 30)
        expected = coder.encode_single(torch.tensor(a), torch.tensor(anchors)).numpy()
        _close_rel(encode_boxes(a, anchors, weights), expected)
        deltas = (rng.normal(0, 3, (30, 4)) * np.float32(weights)).astype(np.float32)
        expected = coder.decode_single(torch.tensor(deltas), torch.tensor(anchors)).numpy()
        _close_rel(decode_boxes(deltas, anchors, weights), expected)


# (e) jit


# A few float32 ulps: jit and eager are different compilations, and XLA may fuse or contract
# them differently (and differently again on another CPU generation or backend).
ULPS = 4 * np.finfo(np.float32).eps


def test_jit_gives_the_same_results():
    a, b = GOLDEN["iou/boxes1"], GOLDEN["iou/boxes2"]
    np.testing.assert_allclose(np.asarray(box_iou_jit(a, b)), np.asarray(box_iou(a, b)),
                               rtol=ULPS, atol=ULPS)
    g, anchors = GOLDEN["coder_roi/gt"], GOLDEN["coder_roi/anchors"]
    deltas = GOLDEN["coder_roi/deltas"]
    _close_rel(encode_jit(g, anchors, ROI_BOX_WEIGHTS), encode_boxes(g, anchors, ROI_BOX_WEIGHTS))
    _close_rel(
        decode_jit(deltas, anchors, ROI_BOX_WEIGHTS), decode_boxes(deltas, anchors, ROI_BOX_WEIGHTS)
    )
    clip_jit = jax.jit(clip_boxes, static_argnames="image_size")
    np.testing.assert_allclose(
        np.asarray(clip_jit(g, image_size=(50, 60))), np.asarray(clip_boxes(g, (50, 60))),
        rtol=ULPS,
    )
    area = jax.jit(box_area)(jnp.asarray(g))
    np.testing.assert_allclose(np.asarray(area), np.asarray(box_area(g)), rtol=ULPS)


# (g) clear errors


@pytest.mark.parametrize("shape", [(5, 3), (5,), (4, 5)])
def test_iou_rejects_wrong_shapes(shape):
    good = np.zeros((2, 4), np.float32)
    with pytest.raises(ValueError, match=r"boxes1 must have shape \(N, 4\).*" + str(shape[0])):
        box_iou(np.zeros(shape, np.float32), good)
    with pytest.raises(ValueError, match=r"boxes2 must have shape \(N, 4\)"):
        box_iou(good, np.zeros(shape, np.float32))


def test_coder_and_area_reject_wrong_last_dim():
    good, bad = np.zeros((3, 4), np.float32), np.zeros((3, 3), np.float32)
    with pytest.raises(ValueError, match=r"boxes must have shape \(\.\.\., 4\).*\(3, 3\)"):
        encode_boxes(bad, good)
    with pytest.raises(ValueError, match=r"anchors must have shape \(\.\.\., 4\)"):
        encode_boxes(good, bad)
    with pytest.raises(ValueError, match=r"deltas must have shape \(\.\.\., 4\)"):
        decode_boxes(bad, good)
    with pytest.raises(ValueError, match=r"anchors must have shape \(\.\.\., 4\)"):
        decode_boxes(good, bad)
    with pytest.raises(ValueError, match=r"boxes must have shape \(\.\.\., 4\)"):
        box_area(bad)
    with pytest.raises(ValueError, match=r"boxes must have shape \(\.\.\., 4\)"):
        clip_boxes(bad, (10, 10))
    with pytest.raises(ValueError, match=r"boxes must have shape \(\.\.\., 4\)"):
        mirror_boxes(bad, 10)


def test_mirror_boxes_hand_case():
    boxes = jnp.float32([[1, 2, 4, 5], [0, 0, 10, 3]])
    np.testing.assert_array_equal(mirror_boxes(boxes, 10), [[6, 2, 9, 5], [0, 0, 10, 3]])
    np.testing.assert_array_equal(mirror_boxes(mirror_boxes(boxes, 10), 10), boxes)  # involution
