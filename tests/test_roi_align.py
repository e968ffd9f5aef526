"""mrcnn_jax/roi_align.py: RoIAlign by gather equals torchvision's roi_align, forward and backward.

Besides torchvision (golden arrays from tools/make_golden.py, and live when torch is
importable), the values are checked against `_reference_roi_align`, a line-by-line numpy port of
torchvision's CPU kernel (csrc/ops/cpu/roi_align_kernel.cpp), in float32 like the kernel.
"""

import functools
import pathlib

import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mrcnn_jax import roi_align

GOLDEN = np.load(pathlib.Path(__file__).parent / "golden" / "geometry.npz")
N_BOXES = 16  # fixed in property tests, so the jitted roi_align compiles once per setting
PROPERTY = settings(max_examples=50, deadline=None)
F32 = np.float32

roi_align_jit = jax.jit(roi_align, static_argnames=("output_size", "sampling_ratio", "aligned"))


def _bilinear(feature, y, x):
    """torchvision's bilinear_interpolate on one (H, W, C) map, float32."""
    height, width = feature.shape[:2]
    if y < -1.0 or y > height or x < -1.0 or x > width:
        return np.zeros(feature.shape[2], F32)
    y, x = max(y, F32(0)), max(x, F32(0))
    y_low, x_low = int(y), int(x)
    if y_low >= height - 1:
        y_high = y_low = height - 1
        y = F32(y_low)
    else:
        y_high = y_low + 1
    if x_low >= width - 1:
        x_high = x_low = width - 1
        x = F32(x_low)
    else:
        x_high = x_low + 1
    ly, lx = F32(y - y_low), F32(x - x_low)
    hy, hx = F32(1) - ly, F32(1) - lx
    return (
        hy * hx * feature[y_low, x_low]
        + hy * lx * feature[y_low, x_high]
        + ly * hx * feature[y_high, x_low]
        + ly * lx * feature[y_high, x_high]
    )


def _reference_roi_align(features, boxes, batch_indices, output_size, scale, ratio, aligned):
    """torchvision roi_align_forward_kernel_impl for NHWC features, one sample at a time."""
    out_h, out_w = output_size
    offset = F32(0.5) if aligned else F32(0)
    out = np.zeros((len(boxes), out_h, out_w, features.shape[3]), F32)
    for k, (box, b) in enumerate(zip(boxes.astype(F32), batch_indices, strict=True)):
        x1, y1, x2, y2 = (c * F32(scale) - offset for c in box)
        roi_w, roi_h = x2 - x1, y2 - y1
        if not aligned:
            roi_w, roi_h = max(roi_w, F32(1)), max(roi_h, F32(1))
        bin_h, bin_w = roi_h / F32(out_h), roi_w / F32(out_w)
        for ph in range(out_h):
            for pw in range(out_w):
                acc = np.zeros(features.shape[3], F32)
                for iy in range(ratio):
                    y = y1 + F32(ph) * bin_h + F32(iy + 0.5) * bin_h / F32(ratio)
                    for ix in range(ratio):
                        x = x1 + F32(pw) * bin_w + F32(ix + 0.5) * bin_w / F32(ratio)
                        acc += _bilinear(features[b], y, x)
                out[k, ph, pw] = acc / F32(ratio * ratio)
    return out


def _box_strategy(low, high, side):
    corners = hnp.arrays(F32, (N_BOXES, 2), elements=st.floats(low, high, width=32))
    sides = hnp.arrays(F32, (N_BOXES, 2), elements=side)
    return st.tuples(corners, sides).map(lambda t: np.concatenate([t[0], t[0] + t[1]], 1))


# around and beyond an 8 x 10 map at scale 1/2 (a 16 x 20 image); zero-size and inverted boxes
any_boxes = _box_strategy(
    -14, 26, st.one_of(st.sampled_from([0.0, -1.5]), st.floats(0.125, 24, width=32))
)
batch_index_arrays = hnp.arrays(np.int32, (N_BOXES,), elements=st.integers(0, 1))
settings_ = st.sampled_from([(1, False), (2, False), (2, True), (3, True)])


def _golden_inputs():
    return (
        GOLDEN["roi_align/features"],
        GOLDEN["roi_align/boxes"],
        GOLDEN["roi_align/batch_indices"],
        tuple(int(v) for v in GOLDEN["roi_align/output_size"]),
        float(GOLDEN["roi_align/spatial_scale"]),
    )


@functools.partial(jax.jit, static_argnames=("output_size", "sampling_ratio", "aligned"))
def _pool_and_grad(features, boxes, batch_indices, cotangent, **kwargs):
    """roi_align and d/dfeatures of sum(roi_align(...) * cotangent), in one compiled call."""
    pooled, vjp = jax.vjp(lambda f: roi_align(f, boxes, batch_indices, **kwargs), features)
    return pooled, vjp(cotangent)[0]


# (a) hand-computed cases


def test_linear_map_by_hand():
    # f(y, x) = 4 y + x is reproduced exactly by bilinear interpolation, and the mean of the
    # samples of a bin is f at the bin centre.
    features = (4 * np.arange(4)[:, None] + np.arange(4)[None, :]).astype(F32)[None, :, :, None]
    box = np.float32([[1, 1, 3, 3]])
    # aligned=True: start 1 - 0.5, bins of 1 -> centres y, x in {1, 2}
    out = roi_align_jit(features, box, np.int32([0]), (2, 2), 1.0, 2, aligned=True)
    np.testing.assert_allclose(np.asarray(out)[0, :, :, 0], [[5, 6], [9, 10]], rtol=1e-6)
    # aligned=False: start 1 -> centres 1.5, 2.5
    out = roi_align_jit(features, box, np.int32([0]), (2, 2), 1.0, 4, aligned=False)
    np.testing.assert_allclose(np.asarray(out)[0, :, :, 0], [[7.5, 8.5], [11.5, 12.5]], rtol=1e-6)
    # spatial_scale 1/2: image box [2, 2, 6, 6] is the same map box as above
    out = roi_align_jit(features, box * 2, np.int32([0]), (2, 2), 0.5, 1, aligned=True)
    np.testing.assert_allclose(np.asarray(out)[0, :, :, 0], [[5, 6], [9, 10]], rtol=1e-6)


def test_single_peak_by_hand():
    features = np.zeros((1, 4, 4, 1), F32)
    features[0, 1, 1, 0] = 1.0
    box = np.float32([[0.5, 0.5, 1.5, 1.5]])  # one bin, centred on cell (1, 1)
    # one sample at (1, 1): reads the peak fully
    out = roi_align_jit(features, box, np.int32([0]), (1, 1), 1.0, 1, aligned=False)
    np.testing.assert_allclose(np.asarray(out).ravel(), [1.0])
    # 2 x 2 samples at 0.75 and 1.25 per axis: weight of cell 1 is 0.75 on each axis
    out = roi_align_jit(features, box, np.int32([0]), (1, 1), 1.0, 2, aligned=False)
    np.testing.assert_allclose(np.asarray(out).ravel(), [0.75 * 0.75], rtol=1e-6)


def test_samples_outside_the_map_by_hand():
    features = np.full((1, 3, 3, 1), 7.0, F32)
    features[0, 0, 0, 0] = 2.0

    def one(box):
        out = roi_align_jit(features, np.float32([box]), np.int32([0]), (1, 1), 1.0, 1)
        return float(np.asarray(out)[0, 0, 0, 0])

    assert one([-1, -1, 0, 0]) == 2.0  # sample at (-0.5, -0.5): clamped onto cell (0, 0)
    assert one([-3, -3, -2, -2]) == 0.0  # sample at -2.5 < -1: contributes 0
    assert one([3, 3, 4, 4]) == 0.0  # sample at 3.5 > H = 3
    assert one([2.2, 2.2, 2.4, 2.4]) == 7.0  # under one cell: grown to 1 x 1, sample 2.7 -> 2


def test_batch_indices_pick_the_image():
    features = np.stack([np.full((4, 4, 2), v, F32) for v in (1.0, 2.0, 3.0)])
    boxes = np.float32([[0, 0, 3, 3]] * 4)
    out = roi_align_jit(features, boxes, np.int32([2, 0, 1, 2]), (2, 3), 1.0, 2)
    assert out.shape == (4, 2, 3, 2)
    np.testing.assert_allclose(np.asarray(out)[:, 0, 0, 0], [3, 1, 2, 3])


# (b) invariants and properties


@PROPERTY
@given(
    _box_strategy(0, 8, st.one_of(st.just(0.0), st.floats(0, 3, width=32))),
    st.floats(-5, 5, width=32),
    settings_,
)
def test_constant_map_gives_the_constant_inside(boxes, value, setting):
    ratio, aligned = setting
    features = np.full((1, 12, 12, 2), value, F32)  # boxes stay inside [0, 11] x [0, 11]
    out = roi_align_jit(
        features,
        boxes,
        np.zeros(N_BOXES, np.int32),
        output_size=(3, 2),
        spatial_scale=1.0,
        sampling_ratio=ratio,
        aligned=aligned,
    )
    np.testing.assert_allclose(np.asarray(out), value, rtol=1e-5, atol=1e-6)


@PROPERTY
@given(any_boxes, batch_index_arrays, st.floats(-3, 3), st.floats(-3, 3), settings_)
def test_linear_in_features_and_finite(boxes, batch_indices, a, b, setting):
    ratio, aligned = setting
    rng = np.random.default_rng(0)
    f, g = rng.normal(size=(2, 2, 8, 10, 3)).astype(F32)
    pool = functools.partial(
        roi_align_jit,
        boxes=boxes,
        batch_indices=batch_indices,
        output_size=(3, 3),
        spatial_scale=0.5,
        sampling_ratio=ratio,
        aligned=aligned,
    )
    combined = np.asarray(pool(F32(a) * f + F32(b) * g))
    assert np.isfinite(combined).all()
    np.testing.assert_allclose(
        combined, a * np.asarray(pool(f)) + b * np.asarray(pool(g)), rtol=1e-4, atol=1e-4
    )


@PROPERTY
@given(any_boxes, batch_index_arrays, settings_)
def test_matches_numpy_port_of_torchvision_kernel(boxes, batch_indices, setting):
    ratio, aligned = setting
    features = np.random.default_rng(1).normal(size=(2, 8, 10, 3)).astype(F32)
    out = roi_align_jit(
        features,
        boxes,
        batch_indices,
        output_size=(3, 3),
        spatial_scale=0.5,
        sampling_ratio=ratio,
        aligned=aligned,
    )
    expected = _reference_roi_align(features, boxes, batch_indices, (3, 3), 0.5, ratio, aligned)
    np.testing.assert_allclose(np.asarray(out), expected, atol=1e-4)


# (c) golden parity with torchvision, forward and backward


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("ratio", [1, 2, 4])
def test_matches_torchvision_golden(aligned, ratio):
    features, boxes, batch_indices, output_size, scale = _golden_inputs()
    key = f"roi_align/aligned{int(aligned)}_ratio{ratio}"
    kwargs = dict(
        output_size=output_size, spatial_scale=scale, sampling_ratio=ratio, aligned=aligned
    )
    cotangent = GOLDEN["roi_align/cotangent"]
    out, grad = _pool_and_grad(features, boxes, batch_indices, cotangent, **kwargs)
    np.testing.assert_allclose(np.asarray(out), GOLDEN[f"{key}/pooled"], atol=1e-4)
    np.testing.assert_allclose(np.asarray(grad), GOLDEN[f"{key}/grad"], atol=1e-4)


def test_golden_cases_cover_the_edges():
    # the golden boxes include ones wholly outside (all zeros) and several images
    features, boxes, batch_indices, output_size, scale = _golden_inputs()
    pooled = GOLDEN["roi_align/aligned0_ratio2/pooled"]
    assert not pooled[0].any() and not pooled[1].any()
    assert set(batch_indices.tolist()) == {0, 1}


# (d) live parity on fresh inputs


@pytest.mark.parametrize("aligned", [False, True])
def test_matches_torchvision_live(aligned):
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    rng = np.random.default_rng(23)
    features = rng.normal(size=(3, 10, 14, 4)).astype(F32)
    xy = rng.uniform(-10, 60, (24, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(0, 30, (24, 2))], 1).astype(F32)
    batch_indices = rng.integers(0, 3, 24).astype(np.int32)
    cotangent = rng.normal(size=(24, 7, 6, 4)).astype(F32)
    rois = torch.tensor(np.concatenate([batch_indices[:, None], boxes], 1).astype(F32))
    ratio = 3 if aligned else 2
    feats = torch.tensor(features.transpose(0, 3, 1, 2).copy(), requires_grad=True)
    expected = torchvision.ops.roi_align(feats, rois, (7, 6), 0.25, ratio, aligned)
    (expected * torch.tensor(cotangent.transpose(0, 3, 1, 2))).sum().backward()
    kwargs = dict(output_size=(7, 6), spatial_scale=0.25, sampling_ratio=ratio, aligned=aligned)
    out, grad = _pool_and_grad(features, boxes, batch_indices, cotangent, **kwargs)
    np.testing.assert_allclose(
        np.asarray(out), expected.detach().numpy().transpose(0, 2, 3, 1), atol=1e-4
    )
    np.testing.assert_allclose(
        np.asarray(grad), feats.grad.numpy().transpose(0, 2, 3, 1), atol=1e-4
    )


# (e) jit


def test_jit_gives_the_same_results():
    features, boxes, batch_indices, output_size, scale = _golden_inputs()
    kwargs = dict(output_size=output_size, spatial_scale=scale, sampling_ratio=2, aligned=True)
    eager = roi_align(features, boxes, batch_indices, **kwargs)
    np.testing.assert_allclose(
        np.asarray(roi_align_jit(features, boxes, batch_indices, **kwargs)),
        np.asarray(eager),
        rtol=1e-6,
        atol=1e-6,
    )


# (f) gradients against finite differences, in float64


@pytest.mark.parametrize("aligned", [False, True])
def test_gradient_matches_finite_differences(aligned):
    rng = np.random.default_rng(5)
    boxes = np.float32([[-1.3, 0.4, 6.2, 5.1], [2.2, 1.7, 3.1, 2.0], [4.5, 3.5, 11.0, 9.0]])
    batch_indices = np.int32([0, 1, 1])
    with jax.enable_x64(True):
        features = jnp.asarray(rng.normal(size=(2, 4, 5, 2)))  # float64, 40 entries
        cotangent = jnp.asarray(rng.normal(size=(3, 3, 2, 2)))
        loss = lambda f: jnp.sum(
            roi_align(f, boxes, batch_indices, (3, 2), 1.0, 2, aligned) * cotangent
        )
        grad = jax.jit(jax.grad(loss))(features)
        assert grad.dtype == jnp.float64
        eps = 1e-4
        basis = jnp.eye(features.size, dtype=jnp.float64).reshape(-1, *features.shape)
        central = jax.jit(jax.vmap(lambda e: loss(features + eps * e) - loss(features - eps * e)))
        numeric = (central(basis) / (2 * eps)).reshape(features.shape)
        # the interpolation weights are float32 by design (positions from float32 boxes), and
        # grad and forward are compiled apart, so they agree to float32 rounding of the weights
        np.testing.assert_allclose(np.asarray(grad), np.asarray(numeric), rtol=1e-5, atol=1e-6)
        assert np.abs(np.asarray(grad)).sum() > 0


def test_gradient_is_finite_for_degenerate_boxes():
    boxes = np.float32([[5, 5, 5, 5], [6, 2, 1, 4], [-40, -40, -30, -30], [0, 0, 1e-7, 1e-7]])
    features = np.random.default_rng(2).normal(size=(1, 6, 6, 2)).astype(F32)
    for aligned in (False, True):
        _, grad = _pool_and_grad(
            features,
            boxes,
            np.zeros(4, np.int32),
            jnp.ones((4, 2, 2, 2)),
            output_size=(2, 2),
            spatial_scale=1.0,
            sampling_ratio=2,
            aligned=aligned,
        )
        assert np.isfinite(np.asarray(grad)).all()


# (g) clear errors


@pytest.mark.parametrize("ratio", [0, -1, 1.5, None])
def test_refuses_adaptive_or_non_int_sampling_ratio(ratio):
    features, boxes = np.zeros((1, 4, 4, 1), F32), np.zeros((2, 4), F32)
    with pytest.raises(ValueError, match=r"sampling_ratio must be a Python int > 0.*adaptive"):
        roi_align(features, boxes, np.zeros(2, np.int32), (2, 2), 1.0, ratio)


def test_rejects_wrong_shapes_and_dtypes():
    features, boxes, indices = np.zeros((1, 4, 4, 1), F32), np.zeros((2, 4), F32), np.zeros(2, int)
    with pytest.raises(ValueError, match=r"features must be NHWC \(N, H, W, C\); got shape"):
        roi_align(features[0], boxes, indices)
    with pytest.raises(ValueError, match=r"boxes must have shape \(R, 4\) xyxy; got \(2, 3\)"):
        roi_align(features, boxes[:, :3], indices)
    with pytest.raises(ValueError, match=r"batch_indices must be integers of shape \(R,\)"):
        roi_align(features, boxes, np.zeros(2, F32))
    with pytest.raises(ValueError, match=r"batch_indices must be integers of shape \(R,\)"):
        roi_align(features, boxes, np.zeros(3, int))
    with pytest.raises(ValueError, match=r"output_size must be a positive \(oh, ow\)"):
        roi_align(features, boxes, indices, output_size=(0, 7))
    with pytest.raises(ValueError, match=r"output_size must be a positive \(oh, ow\)"):
        roi_align(features, boxes, indices, output_size=(7, 7, 7))
