"""mrcnn_jax/poolers.py: FPN level mapping and multi-scale RoIAlign equal torchvision's
LevelMapper and MultiScaleRoIAlign."""

import pathlib

import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mrcnn_jax import map_levels, multiscale_roi_align, roi_align
from mrcnn_jax.poolers import infer_scale

GOLDEN = np.load(pathlib.Path(__file__).parent / "golden" / "geometry.npz")
N_BOXES = 16  # fixed in property tests, so the jitted pooler compiles once
PROPERTY = settings(max_examples=50, deadline=None)
F32 = np.float32
IMAGE = (128, 160)
SHAPES = [(32, 40), (16, 20), (8, 10), (4, 5)]  # P2-P5 of IMAGE

pool_jit = jax.jit(
    multiscale_roi_align,
    static_argnames=("image_size", "output_size", "sampling_ratio", "aligned"),
)
map_levels_jit = jax.jit(map_levels)
roi_align_jit = jax.jit(roi_align, static_argnames=("output_size", "sampling_ratio", "aligned"))


def _square(side, x=0.0, y=0.0):
    return [x, y, x + side, y + side]


def _golden_features():
    return [GOLDEN[f"multiscale/features_{i}"] for i in range(4)]


# (a) hand-computed cases


def test_level_mapper_table():
    boxes = np.float32(
        [
            _square(224),  # canonical: P4
            _square(112),  # P3
            _square(448),  # P5
            _square(1),  # tiny: clamped to P2
            _square(4000),  # huge: clamped to P5
            [0, 0, 56, 56],  # P2 exactly
            [0, 0, 200, 250.88],  # sqrt(area) = 224 from a non-square box: P4
            _square(223),  # just below the P4 boundary: P3
            _square(111),  # P2
            [5, 5, 5, 9],  # zero area: P2, not NaN
            [9, 0, 1, 9],  # inverted: zero area, P2
        ]
    )
    expected = np.int32([4, 3, 5, 2, 5, 2, 4, 3, 2, 2, 2]) - 2  # counted from P2
    np.testing.assert_array_equal(np.asarray(map_levels(boxes)), expected)
    # another pyramid, P3-P6: counted from P3, clamped to [3, 6]
    # floor(4 + log2(side / 224)) before clamping: 4, 3, 5, -4, 8, 2, 4, 3, 2, -inf, -inf
    expected = np.int32([4, 3, 5, 3, 6, 3, 4, 3, 3, 3, 3]) - 3
    np.testing.assert_array_equal(np.asarray(map_levels(boxes, k_min=3, k_max=6)), expected)


def test_infer_scale_by_hand():
    assert infer_scale((200, 264), (800, 1056)) == 0.25
    assert infer_scale((13, 17), (800, 1056)) == 1 / 64  # rounded to a power of two
    assert infer_scale((4, 5), IMAGE) == 1 / 32


def test_each_box_pools_from_its_level_by_hand():
    # level l filled with the constant l: the pooled value names the level used
    features = [np.full((1, h, w, 1), float(i), F32) for i, (h, w) in enumerate(SHAPES)]
    boxes = np.float32([_square(20, 4, 4), _square(112, 8, 8), _square(120, 4, 0)])
    out = pool_jit(features, boxes, np.int32([0, 0, 0]), IMAGE, (2, 2))
    np.testing.assert_allclose(np.asarray(out)[:, 0, 0, 0], [0, 1, 1])


# (b) properties


@PROPERTY
@given(hnp.arrays(F32, (N_BOXES,), elements=st.floats(0, 5000, width=32)))
def test_levels_are_monotone_and_clamped(sides):
    sides = np.sort(sides)
    boxes = np.stack([np.zeros_like(sides), np.zeros_like(sides), sides, sides], 1)
    levels = np.asarray(map_levels_jit(boxes))
    assert levels.min() >= 0 and levels.max() <= 3
    assert (np.diff(levels) >= 0).all()


_corners = hnp.arrays(F32, (N_BOXES, 2), elements=st.floats(-50, 200, width=32))
_sides = hnp.arrays(
    F32, (N_BOXES, 2), elements=st.one_of(st.just(0.0), st.floats(1, 500, width=32))
)
boxes_all_levels = st.tuples(_corners, _sides).map(lambda t: np.concatenate([t[0], t[0] + t[1]], 1))


@PROPERTY
@given(
    boxes_all_levels,
    hnp.arrays(np.int32, (N_BOXES,), elements=st.integers(0, 1)),
    st.booleans(),
)
def test_equals_roi_align_on_the_mapped_level(boxes, batch_indices, aligned):
    features = [
        np.random.default_rng(i).normal(size=(2, h, w, 2)).astype(F32)
        for i, (h, w) in enumerate(SHAPES)
    ]
    kwargs = dict(output_size=(3, 3), sampling_ratio=2, aligned=aligned)
    out = np.asarray(pool_jit(features, boxes, batch_indices, image_size=IMAGE, **kwargs))
    assert np.isfinite(out).all()
    levels = np.asarray(map_levels(boxes))
    per_level = [
        np.asarray(roi_align_jit(f, boxes, batch_indices, spatial_scale=2.0 ** -(i + 2), **kwargs))
        for i, f in enumerate(features)
    ]
    expected = np.stack(per_level)[levels, np.arange(N_BOXES)]
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)


# (c) golden parity


def test_matches_torchvision_golden():
    boxes, batch_indices = GOLDEN["multiscale/boxes"], GOLDEN["multiscale/batch_indices"]
    np.testing.assert_array_equal(np.asarray(map_levels(boxes)), GOLDEN["multiscale/levels"])
    assert set(GOLDEN["multiscale/levels"].tolist()) == {0, 1, 2, 3}  # every level is used
    image_size = tuple(int(v) for v in GOLDEN["multiscale/image_size"])
    out = pool_jit(
        _golden_features(), boxes, batch_indices, image_size=image_size, output_size=(5, 5)
    )
    np.testing.assert_allclose(np.asarray(out), GOLDEN["multiscale/pooled"], atol=1e-4)


# (d) live parity


def test_matches_torchvision_live():
    torch = pytest.importorskip("torch")
    pytest.importorskip("torchvision")
    from torchvision.ops import MultiScaleRoIAlign

    rng = np.random.default_rng(31)
    image = (96, 128)
    shapes = [(24, 32), (12, 16), (6, 8), (3, 4)]
    features = [rng.normal(size=(3, h, w, 2)).astype(F32) for h, w in shapes]
    sides = np.exp(rng.uniform(np.log(10), np.log(600), (30, 1))) * rng.uniform(0.6, 1.5, (30, 2))
    centres = rng.uniform(0, 128, (30, 2))
    boxes = np.concatenate([centres - sides / 2, centres + sides / 2], 1).astype(F32)
    batch_indices = np.sort(rng.integers(0, 3, 30)).astype(np.int32)
    pooler = MultiScaleRoIAlign(["a", "b", "c", "d"], output_size=(7, 7), sampling_ratio=2)
    feats = {
        k: torch.tensor(f.transpose(0, 3, 1, 2).copy())
        for k, f in zip("abcd", features, strict=True)
    }
    per_image = [torch.tensor(boxes[batch_indices == b]) for b in range(3)]
    expected = pooler(feats, per_image, [image] * 3).numpy().transpose(0, 2, 3, 1)
    out = pool_jit(features, boxes, batch_indices, image_size=image, output_size=(7, 7))
    np.testing.assert_allclose(np.asarray(out), expected, atol=1e-4)


# (e) jit


def test_jit_gives_the_same_results():
    boxes, batch_indices = GOLDEN["multiscale/boxes"], GOLDEN["multiscale/batch_indices"]
    eager = multiscale_roi_align(_golden_features(), boxes, batch_indices, IMAGE, (5, 5))
    jitted = pool_jit(
        _golden_features(), boxes, batch_indices, image_size=IMAGE, output_size=(5, 5)
    )
    # sample positions up to ~40 cells carry float32 rounding of ~4e-6 that XLA may fuse
    # differently under jit
    np.testing.assert_allclose(np.asarray(jitted), np.asarray(eager), rtol=1e-5, atol=2e-5)
    levels = jax.jit(map_levels)(boxes)
    np.testing.assert_array_equal(np.asarray(levels), np.asarray(map_levels(boxes)))


# (g) clear errors


def test_rejects_inconsistent_levels():
    features = [np.zeros((2, h, w, 2), F32) for h, w in SHAPES]
    boxes, indices = np.zeros((3, 4), F32), np.zeros(3, np.int32)
    bad_channels = features[:3] + [np.zeros((2, 4, 5, 3), F32)]
    with pytest.raises(ValueError, match="same batch size and channels"):
        multiscale_roi_align(bad_channels, boxes, indices, IMAGE)
    bad_batch = features[:3] + [np.zeros((1, 4, 5, 2), F32)]
    with pytest.raises(ValueError, match="same batch size and channels"):
        multiscale_roi_align(bad_batch, boxes, indices, IMAGE)
    with pytest.raises(ValueError, match=r"not a power-of-two scale of image \(128, 160\)"):
        multiscale_roi_align(features[:3] + [np.zeros((2, 4, 10, 2), F32)], boxes, indices, IMAGE)
    with pytest.raises(ValueError, match=r"sampling_ratio must be a Python int > 0.*adaptive"):
        multiscale_roi_align(features, boxes, indices, IMAGE, sampling_ratio=0)
    with pytest.raises(ValueError, match=r"boxes must have shape \(R, 4\)"):
        multiscale_roi_align(features, boxes[:, :3], indices, IMAGE)


def test_infer_scale_rejects_unequal_axes():
    with pytest.raises(ValueError, match=r"feature map \(100, 66\) is not a power-of-two scale"):
        infer_scale((100, 66), (800, 1056))


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("size", [(7, 7), (14, 14)])
def test_dense_pooling_equals_the_gather_values_and_gradients(aligned, size):
    """The matrix-product RoIAlign (small maps, one image) against the flat gather, on boxes
    of every level, partly or wholly outside the image, tiny and huge."""
    rng = np.random.default_rng(3)
    maps = [jnp.asarray(rng.normal(size=(1, s, s, 16)).astype(np.float32))
            for s in (32, 16, 8, 4)]
    corner = rng.uniform(-20, 140, (60, 2))
    boxes = jnp.asarray(np.concatenate([corner, corner + rng.uniform(0.1, 120, (60, 2))], 1),
                        jnp.float32)
    zeros = jnp.zeros(60, jnp.int32)

    def pooled(features, method):
        return multiscale_roi_align(features, boxes, zeros, (128, 128), size, 2, aligned,
                                    method=method)

    gather, dense = pooled(maps, "gather"), pooled(maps, "dense")
    assert float(jnp.max(jnp.abs(gather))) > 1.0  # not all zeros
    np.testing.assert_allclose(dense, gather, atol=2e-6)
    np.testing.assert_allclose(pooled(maps, "auto"), dense, atol=1e-7)  # small maps: dense
    grads = [jax.grad(lambda f, m=m: jnp.sum(jnp.sin(pooled(f, m))))(maps)
             for m in ("gather", "dense")]
    for a, b in zip(*grads, strict=True):
        np.testing.assert_allclose(b, a, atol=5e-5 * float(jnp.max(jnp.abs(a))) + 1e-6)
    with pytest.raises(ValueError, match="method must be"):
        pooled(maps, "matmul")
    with pytest.raises(ValueError, match="pools one image"):
        multiscale_roi_align([jnp.concatenate([m, m]) for m in maps], boxes, zeros,
                             (128, 128), size, method="dense")
