"""mrcnn_jax/anchors.py: anchors equal torchvision's AnchorGenerator exactly, values and order."""

import hashlib
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mrcnn_jax import generate_anchors
from mrcnn_jax.anchors import (
    DEFAULT_ASPECT_RATIOS,
    DEFAULT_SIZES,
    cell_anchors,
    num_anchors_per_location,
)

GOLDEN = np.load(pathlib.Path(__file__).parent / "golden" / "geometry.npz")
PROPERTY = settings(max_examples=50, deadline=None)


def _sizes(key):
    return tuple(int(v) for v in GOLDEN[key])


def _feature_sizes(key):
    return [tuple(int(v) for v in fs) for fs in GOLDEN[key]]


# (a) hand-computed cases


def test_torchvision_example_size_32():
    # ratio 0.5: w = 32 * sqrt(2) = 45.25, h = 32 / sqrt(2) = 22.63; halves 22.6, 11.3 -> 23, 11
    expected = [[-23, -11, 23, 11], [-16, -16, 16, 16], [-11, -23, 11, 23]]
    base = cell_anchors((32,), (0.5, 1.0, 2.0))
    np.testing.assert_array_equal(base, expected)
    assert base.dtype == np.float32


def test_cell_anchors_are_ratio_major():
    base = cell_anchors((16, 32), (1.0, 4.0))  # ratio 4: w = s / 2, h = 2 s
    expected = [[-8, -8, 8, 8], [-16, -16, 16, 16], [-4, -16, 4, 16], [-8, -32, 8, 32]]
    np.testing.assert_array_equal(base, expected)


def test_small_grid_by_hand():
    # 8x8 image, 2x2 map: stride 4, shifts (0, 0), (4, 0), (0, 4), (4, 4), row-major (y, x)
    anchors = generate_anchors((8, 8), [(2, 2)], sizes=((4,),), aspect_ratios=((1.0,),))
    expected = [[-2, -2, 2, 2], [2, -2, 6, 2], [-2, 2, 2, 6], [2, 2, 6, 6]]
    np.testing.assert_array_equal(anchors, expected)


def test_uneven_strides_floor_like_torchvision():
    # 10 x 16 image on a 3 x 5 map: strides 10 // 3 = 3 and 16 // 5 = 3, no half-stride offset
    anchors = generate_anchors((10, 16), [(3, 5)], sizes=((2,),), aspect_ratios=((1.0,),))
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    xs, ys = np.meshgrid(np.arange(5) * 3, np.arange(3) * 3)
    np.testing.assert_array_equal(centres, np.stack([xs.ravel(), ys.ravel()], 1))


def test_default_config_is_p2_to_p6():
    assert DEFAULT_SIZES == ((32,), (64,), (128,), (256,), (512,))
    assert DEFAULT_ASPECT_RATIOS == ((0.5, 1.0, 2.0),) * 5
    assert num_anchors_per_location() == [3] * 5
    assert num_anchors_per_location(((16, 32),), ((0.5, 1.0, 2.0),)) == [6]


# (b) invariants and properties


@PROPERTY
@given(
    st.lists(st.integers(4, 600), min_size=1, max_size=3),
    st.lists(st.sampled_from([0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0]), min_size=1, max_size=4),
)
def test_cell_anchors_shape_centre_and_ratio(sizes, ratios):
    base = cell_anchors(tuple(sizes), tuple(ratios))
    assert base.shape == (len(sizes) * len(ratios), 4) and base.dtype == np.float32
    np.testing.assert_array_equal(base[:, :2], -base[:, 2:])  # centred on the origin
    np.testing.assert_array_equal(base, np.round(base))  # integers
    w, h = base[:, 2] - base[:, 0], base[:, 3] - base[:, 1]
    s = np.tile(np.float64(sizes), len(ratios))
    r = np.repeat(np.float64(ratios), len(sizes))
    # rounding moves each side by at most 1 from the exact s / sqrt(r), s * sqrt(r)
    assert np.all(np.abs(w - s / np.sqrt(r)) <= 1.0) and np.all(np.abs(h - s * np.sqrt(r)) <= 1.0)


@PROPERTY
@given(st.integers(1, 12), st.integers(1, 12), st.integers(1, 5), st.integers(1, 5))
def test_layout_positions_then_cell_anchors(grid_h, grid_w, stride_h, stride_w):
    image = (grid_h * stride_h, grid_w * stride_w)
    anchors = generate_anchors(image, [(grid_h, grid_w)], ((8, 16),), ((0.5, 2.0),))
    base = cell_anchors((8, 16), (0.5, 2.0))
    assert anchors.shape == (grid_h * grid_w * 4, 4)
    per_position = anchors.reshape(grid_h, grid_w, 4, 4) - base  # every position: shift + base
    shift_x = np.arange(grid_w) * stride_w
    shift_y = np.arange(grid_h) * stride_h
    shape = (grid_h, grid_w, 4)
    np.testing.assert_array_equal(per_position[..., 0], np.broadcast_to(shift_x[:, None], shape))
    np.testing.assert_array_equal(
        per_position[..., 1], np.broadcast_to(shift_y[:, None, None], shape)
    )
    np.testing.assert_array_equal(per_position[..., 2:], per_position[..., :2])


def test_levels_are_concatenated_in_order():
    feats = [(16, 20), (8, 10), (4, 5)]
    sizes, ratios = DEFAULT_SIZES[:3], DEFAULT_ASPECT_RATIOS[:3]
    anchors = generate_anchors((64, 80), feats, sizes, ratios)
    parts = [
        generate_anchors((64, 80), [f], (s,), (r,))
        for f, s, r in zip(feats, sizes, ratios, strict=True)
    ]
    np.testing.assert_array_equal(anchors, np.concatenate(parts))
    assert len(anchors) == 3 * (320 + 80 + 20)


# (c) golden parity: exactly equal


@pytest.mark.parametrize("case", ["anchors_fpn", "anchors_custom"])
def test_matches_torchvision_golden_exactly(case):
    if case == "anchors_fpn":
        sizes, ratios = DEFAULT_SIZES, DEFAULT_ASPECT_RATIOS
    else:  # the config tools/make_golden.py uses
        sizes = ((20, 40), (80,), (160, 320))
        ratios = ((0.5, 1.0, 2.0), (1.0,), (0.25, 0.5, 1.0, 2.0, 4.0))
    anchors = generate_anchors(
        _sizes(f"{case}/image_size"), _feature_sizes(f"{case}/feature_sizes"), sizes, ratios
    )
    assert anchors.dtype == np.float32
    np.testing.assert_array_equal(anchors, GOLDEN[f"{case}/anchors"])


def test_matches_torchvision_golden_800x1056_exactly():
    anchors = generate_anchors(
        _sizes("anchors_big/image_size"), _feature_sizes("anchors_big/feature_sizes")
    )
    assert anchors.shape == tuple(GOLDEN["anchors_big/shape"])
    np.testing.assert_array_equal(anchors[:40], GOLDEN["anchors_big/head"])
    np.testing.assert_array_equal(anchors[-40:], GOLDEN["anchors_big/tail"])
    np.testing.assert_array_equal(
        anchors[GOLDEN["anchors_big/sample_index"]], GOLDEN["anchors_big/sample"]
    )
    digest = hashlib.sha256(np.ascontiguousarray(anchors, "<f4").tobytes()).hexdigest()
    assert digest == str(GOLDEN["anchors_big/sha256"])


# (d) live parity


@pytest.mark.parametrize(
    "image_size, feature_sizes, sizes, ratios",
    [
        ((224, 320), [(56, 80), (28, 40), (14, 20), (7, 10), (4, 5)], None, None),
        ((100, 75), [(25, 19), (13, 10)], ((24, 48), (96,)), ((0.5, 1.0), (0.3, 1.0, 3.3))),
    ],
)
def test_matches_torchvision_live(image_size, feature_sizes, sizes, ratios):
    torch = pytest.importorskip("torch")
    pytest.importorskip("torchvision")
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.image_list import ImageList

    sizes = sizes or DEFAULT_SIZES
    ratios = ratios or DEFAULT_ASPECT_RATIOS
    generator = AnchorGenerator(sizes, ratios)
    images = ImageList(torch.zeros(1, 3, *image_size), [image_size])
    expected = generator(images, [torch.zeros(1, 1, h, w) for h, w in feature_sizes])[0]
    anchors = generate_anchors(image_size, feature_sizes, sizes, ratios)
    np.testing.assert_array_equal(anchors, expected.numpy())


# (e) jit: a constant inside a jitted function


def test_constant_under_jit():
    image_size, feats = (128, 160), _feature_sizes("anchors_fpn/feature_sizes")

    @jax.jit
    def shifted(offset):
        return jnp.asarray(generate_anchors(image_size, feats)) + offset

    np.testing.assert_array_equal(np.asarray(shifted(0.0)), GOLDEN["anchors_fpn/anchors"])


# (g) clear errors


def test_rejects_mismatched_level_counts():
    with pytest.raises(ValueError, match="one entry per level.*got 2, 5 and 5"):
        generate_anchors((64, 64), [(16, 16), (8, 8)])


def test_rejects_bad_feature_and_image_sizes():
    one = dict(sizes=((32,),), aspect_ratios=((1.0,),))
    with pytest.raises(ValueError, match=r"no larger than image_size \(64, 64\); got \(65, 8\)"):
        generate_anchors((64, 64), [(65, 8)], **one)
    with pytest.raises(ValueError, match=r"positive \(h, w\).*got \(0, 8\)"):
        generate_anchors((64, 64), [(0, 8)], **one)
    with pytest.raises(ValueError, match=r"image_size must be \(H, W\)"):
        generate_anchors((3, 64, 64), [(8, 8)], **one)
