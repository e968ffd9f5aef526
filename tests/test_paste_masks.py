"""mrcnn_jax/paste_masks.py: pasting M x M masks into the image equals torchvision's
paste_masks_in_image (rule "torchvision") and detectron2's grid_sample paste (rule "exact")."""

import pathlib

import hypothesis.extra.numpy as hnp
import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mrcnn_jax import paste_masks

GOLDEN = np.load(pathlib.Path(__file__).parent / "golden" / "geometry.npz")
D = 6  # fixed detection count in property tests, so the jitted paste compiles once
PROPERTY = settings(max_examples=50, deadline=None)
F32 = np.float32
IMAGE = (24, 28)

paste_jit = jax.jit(paste_masks, static_argnames=("image_size", "rule"))


# (a) hand-computed cases


def test_one_cell_mask_by_hand():
    # M = 1: the padded mask is 3x3 with the value at the centre and the box grows 3x about its
    # centre: [2, 2, 4, 4] -> [0, 0, 6, 6], resized to 7 pixels. Pixel p reads the padded mask
    # at (p + 0.5) * 3 / 7 - 0.5 = (3 p - 2) / 7: weights 0, 1/7, 4/7, 1, 4/7, 1/7, 0 on the
    # centre cell, and nothing beyond pixel 6.
    pasted = np.asarray(paste_jit(np.full((1, 1, 1), 0.8, F32), np.float32([[2, 2, 4, 4]]), (8, 9)))
    profile = np.float32([0, 1, 4, 7, 4, 1, 0, 0]) / 7
    expected = 0.8 * profile[:, None] * np.append(profile, 0)[None, :]
    assert pasted.shape == (1, 8, 9) and pasted.dtype == np.float32
    np.testing.assert_allclose(pasted[0], expected, rtol=1e-5, atol=1e-7)


def test_exact_rule_by_hand():
    # M = 2, all ones, box [2, 2, 6, 6]: pixel p (centre p + 0.5) reads mask coordinate
    # (p + 0.5 - 2) / 4 * 2 - 0.5 = (p - 2.5) / 2, bilinear, cells -1 and 2 counting as 0:
    # p = 0..7 -> -1.25, -0.75, -0.25, 0.25, 0.75, 1.25, 1.75, 2.25
    #          -> 0,     0.25,  0.75,  1,    1,    0.75, 0.25, 0.
    profile = np.float32([0, 0.25, 0.75, 1, 1, 0.75, 0.25, 0])
    pasted = np.asarray(paste_jit(np.ones((1, 2, 2), F32), np.float32([[2, 2, 6, 6]]), (8, 8),
                                  rule="exact"))
    np.testing.assert_allclose(pasted[0], np.outer(profile, profile), atol=1e-6)
    # a half-pixel move of the box moves the paste by half a pixel: no rounding to integers
    moved = np.asarray(paste_jit(np.ones((1, 2, 2), F32), np.float32([[2.5, 2, 6.5, 6]]), (8, 8),
                                 rule="exact"))
    np.testing.assert_allclose(moved[0, 4], [0, 0, 0.5, 1, 1, 1, 0.5, 0], atol=1e-6)


def _exact_reference(masks, boxes, image_size):
    """Per pixel, with Python loops: bilinear read at the pixel centre's place in the mask,
    cells outside the mask counting as 0 (detectron2's grid_sample paste)."""
    d, m, _ = masks.shape
    out = np.zeros((d, *image_size), np.float64)
    for k in range(d):
        x0, y0, x1, y1 = (float(v) for v in boxes[k])
        for y in range(image_size[0]):
            v = (y + 0.5 - y0) / max(y1 - y0, 1e-6) * m - 0.5
            for x in range(image_size[1]):
                u = (x + 0.5 - x0) / max(x1 - x0, 1e-6) * m - 0.5
                total = 0.0
                fy = v - np.floor(v)
                for cy, wy in ((np.floor(v), 1 - fy), (np.floor(v) + 1, fy)):
                    for cx, wx in ((np.floor(u), 1 - (u - np.floor(u))),
                                   (np.floor(u) + 1, u - np.floor(u))):
                        if 0 <= cy < m and 0 <= cx < m:
                            total += wy * wx * masks[k, int(cy), int(cx)]
                out[k, y, x] = total
    return out


def test_exact_rule_matches_a_per_pixel_reference():
    rng = np.random.default_rng(5)
    masks = rng.uniform(size=(D, 5, 5)).astype(F32)
    xy = rng.uniform(-6, 20, (D, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(0.3, 15, (D, 2))], 1).astype(F32)
    boxes[0] = [4, 4, 4, 4]  # empty: nothing
    pasted = np.asarray(paste_jit(masks, boxes, IMAGE, rule="exact"))
    np.testing.assert_allclose(pasted, _exact_reference(masks, boxes, IMAGE), atol=1e-5)
    assert not pasted[0].any() and pasted[1:].any()


def test_inverted_box_pastes_nothing_and_point_box_one_pixel():
    masks = np.random.default_rng(0).uniform(size=(2, 4, 4)).astype(F32)
    boxes = np.float32([[10, 10, 5, 5], [5, 5, 5, 5]])
    pasted = np.asarray(paste_jit(masks, boxes, IMAGE))
    assert not pasted[0].any()
    # a zero-size box is one pixel, the mask resized to 1 x 1: the mean of the middle 2x2 cells
    assert np.count_nonzero(pasted[1]) == 1
    np.testing.assert_allclose(pasted[1, 5, 5], masks[1, 1:3, 1:3].mean(), rtol=1e-6)


# (b) properties


_masks = hnp.arrays(F32, (D, 4, 4), elements=st.floats(0, 1, width=32))
# multiples of 1/4 and M = 4 (growth 6/4): every box computation is exact in float32. Corners
# >= 3 keep the grown box positive: truncation toward zero is not shift-invariant across 0.
_quarters = st.integers(0, 48).map(lambda v: v / 4)
_boxes = hnp.arrays(F32, (D, 4), elements=_quarters).map(
    lambda b: np.concatenate([3 + b[:, :2] * 0.75, 3 + b[:, :2] * 0.75 + b[:, 2:]], 1)
)


@PROPERTY
@given(_masks, _boxes, st.integers(0, 8), st.integers(0, 8))
def test_integer_shift_of_the_box_shifts_the_paste(masks, boxes, dx, dy):
    pasted = np.asarray(paste_jit(masks, boxes, image_size=IMAGE))
    moved = np.asarray(paste_jit(masks, boxes + np.float32([dx, dy, dx, dy]), image_size=IMAGE))
    h, w = IMAGE
    np.testing.assert_allclose(moved[:, dy:, dx:], pasted[:, : h - dy, : w - dx], atol=1e-6)


@PROPERTY
@given(
    _masks,
    hnp.arrays(F32, (D, 4), elements=st.floats(-20, 40, width=32)),  # any order, any size
)
def test_bounded_finite_and_zero_outside_the_grown_box(masks, boxes):
    pasted = np.asarray(paste_jit(masks, boxes, image_size=IMAGE))
    assert np.isfinite(pasted).all()
    assert (pasted >= 0).all()
    assert (pasted <= masks.max(axis=(1, 2))[:, None, None] + 1e-6).all()
    half = (boxes[:, 2:] - boxes[:, :2]) / 2 * F32(1.5)  # growth (M + 2) / M = 6 / 4
    centre = (boxes[:, 2:] + boxes[:, :2]) / 2
    low, high = np.trunc(centre - half), np.trunc(centre + half)
    ys, xs = np.arange(IMAGE[0]), np.arange(IMAGE[1])
    for d in range(D):
        inside_y = (ys >= low[d, 1]) & (ys <= high[d, 1])
        inside_x = (xs >= low[d, 0]) & (xs <= high[d, 0])
        assert not pasted[d][~(inside_y[:, None] & inside_x[None, :])].any()


# (c) golden parity


def test_matches_torchvision_golden():
    image_size = tuple(int(v) for v in GOLDEN["paste/image_size"])
    pasted = paste_jit(GOLDEN["paste/masks"], GOLDEN["paste/boxes"], image_size)
    np.testing.assert_allclose(np.asarray(pasted), GOLDEN["paste/pasted"], atol=1e-3)
    assert (GOLDEN["paste/pasted"] > 0).sum(axis=(1, 2)).min() > 0  # every mask lands somewhere


# (d) live parity


def test_matches_torchvision_live():
    torch = pytest.importorskip("torch")
    pytest.importorskip("torchvision")
    from torchvision.models.detection.roi_heads import paste_masks_in_image

    rng = np.random.default_rng(41)
    masks = rng.uniform(size=(12, 28, 28)).astype(F32)
    # torchvision raises a RuntimeError for a (grown) box that starts below the image's bottom
    # edge, e.g. [10, 55, 20, 70] in a 50 x 64 image, where ours pastes nothing: keep starts in
    xy = rng.uniform(-10, 45, (12, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(0.5, 40, (12, 2))], 1).astype(F32)
    boxes[0] = [7, 9, 7, 9]  # a point
    boxes[1] = [-30, -20, 2, 1]  # mostly off the image
    expected = paste_masks_in_image(torch.tensor(masks[:, None]), torch.tensor(boxes), (50, 64))
    pasted = paste_jit(masks, boxes, image_size=(50, 64))
    np.testing.assert_allclose(np.asarray(pasted), expected.numpy()[:, 0], atol=1e-3)


def test_exact_rule_matches_grid_sample_live():
    # detectron2's paste: sampling grid at pixel centres normalised to the float box,
    # grid_sample(align_corners=False, zero padding)
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(43)
    masks = rng.uniform(size=(12, 28, 28)).astype(F32)
    xy = rng.uniform(-10, 45, (12, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(0.5, 40, (12, 2))], 1).astype(F32)
    b = torch.tensor(boxes)
    gy = (torch.arange(50, dtype=torch.float32) + 0.5 - b[:, 1:2]) / (b[:, 3:4] - b[:, 1:2]) * 2 - 1
    gx = (torch.arange(64, dtype=torch.float32) + 0.5 - b[:, 0:1]) / (b[:, 2:3] - b[:, 0:1]) * 2 - 1
    grid = torch.stack([gx[:, None, :].expand(-1, 50, -1), gy[:, :, None].expand(-1, -1, 64)], 3)
    expected = torch.nn.functional.grid_sample(torch.tensor(masks[:, None]), grid,
                                               align_corners=False)[:, 0]
    pasted = paste_jit(masks, boxes, image_size=(50, 64), rule="exact")
    np.testing.assert_allclose(np.asarray(pasted), expected.numpy(), atol=1e-5)


# (e) jit


def test_jit_gives_the_same_results():
    masks, boxes = GOLDEN["paste/masks"], GOLDEN["paste/boxes"]
    image_size = tuple(int(v) for v in GOLDEN["paste/image_size"])
    np.testing.assert_allclose(
        np.asarray(paste_jit(masks, boxes, image_size=image_size)),
        np.asarray(paste_masks(masks, boxes, image_size)),
        atol=1e-6,  # XLA may fuse the interpolation weights differently under jit
    )


# (g) clear errors


def test_rejects_unknown_rule():
    expected = r"rule must be one of \('torchvision', 'exact'\); got 'nearest'"
    with pytest.raises(ValueError, match=expected):
        paste_masks(np.zeros((1, 2, 2), F32), np.zeros((1, 4), F32), IMAGE, rule="nearest")


def test_rejects_wrong_shapes():
    masks, boxes = np.zeros((3, 7, 7), F32), np.zeros((3, 4), F32)
    with pytest.raises(ValueError, match=r"masks must have shape \(D, M, M\); got \(3, 7, 6\)"):
        paste_masks(masks[:, :, :6], boxes, IMAGE)
    with pytest.raises(ValueError, match=r"masks must have shape \(D, M, M\)"):
        paste_masks(masks[0], boxes, IMAGE)
    with pytest.raises(ValueError, match=r"boxes must have shape \(D, 4\) = \(3, 4\); got \(2,"):
        paste_masks(masks, boxes[:2], IMAGE)
    with pytest.raises(ValueError, match=r"boxes must have shape \(D, 4\)"):
        paste_masks(masks, boxes[:, :3], IMAGE)
