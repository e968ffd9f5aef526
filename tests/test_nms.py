"""mrcnn_jax/nms.py: fixed-size greedy NMS equals torchvision's nms / batched_nms."""

import pathlib

import hypothesis.extra.numpy as hnp
import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mrcnn_jax import batched_nms, box_iou, nms
from mrcnn_jax.nms import class_grid_nms

GOLDEN = np.load(pathlib.Path(__file__).parent / "golden" / "geometry.npz")
N = 16  # fixed box count in property tests, so the jitted NMS compiles once per K
PROPERTY = settings(max_examples=50, deadline=None)

nms_jit = jax.jit(nms, static_argnames="max_output_size")
batched_nms_jit = jax.jit(batched_nms, static_argnames="max_output_size")

_corners = hnp.arrays(np.float32, (N, 2), elements=st.floats(0, 40, width=32))
# crowded boxes, with zero-size and inverted ones mixed in
_sides = hnp.arrays(
    np.float32,
    (N, 2),
    elements=st.one_of(st.sampled_from([0.0, -2.0]), st.floats(1, 30, width=32)),
)
crowded_boxes = st.tuples(_corners, _sides).map(lambda t: np.concatenate([t[0], t[0] + t[1]], 1))
# few distinct values, so ties happen (broken by the lower index)
scores_with_ties = hnp.arrays(np.float32, (N,), elements=st.sampled_from([0.1, 0.2, 0.5, 0.9]))
thresholds = st.sampled_from([0.0, 0.3, 0.5, 0.7, 1.0])


def _kept(result):
    indices, valid = (np.asarray(a) for a in result)
    return indices[valid]


def _check_greedy(boxes, scores, classes, threshold, indices, valid):
    """The invariants of greedy NMS with K >= N; ``classes`` None means one class."""
    indices, valid = np.asarray(indices), np.asarray(valid)
    count = int(valid.sum())
    assert valid[:count].all() and not valid[count:].any()  # valid is a prefix
    assert (indices[count:] == 0).all()  # padding is index 0
    kept = indices[:count]
    assert len(set(kept.tolist())) == count  # unique
    order = sorted(range(N), key=lambda i: (-scores[i], i))  # descending score, ties by index
    rank = {i: r for r, i in enumerate(order)}
    assert [rank[i] for i in kept] == sorted(rank[i] for i in kept)
    same = np.ones((N, N), bool) if classes is None else classes[:, None] == classes[None, :]
    iou = np.asarray(box_iou(boxes, boxes))
    overlap = (iou > threshold) & same
    for a in range(count):  # no two kept boxes of one class overlap above the threshold
        assert not overlap[kept[a], kept[a + 1 :]].any()
    for i in sorted(set(range(N)) - set(kept.tolist())):  # suppressed by a higher kept box
        assert any(overlap[k, i] and rank[k] < rank[i] for k in kept)


# (a) hand-computed cases


def _four_boxes():
    boxes = np.float32([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [21, 21, 31, 31]])
    scores = np.float32([0.9, 0.8, 0.7, 0.95])  # IoU(0, 1) = IoU(2, 3) = 81 / 119 = 0.68
    return boxes, scores


def test_four_boxes_by_hand():
    boxes, scores = _four_boxes()
    indices, valid = nms_jit(boxes, scores, 0.5, 4)
    np.testing.assert_array_equal(np.asarray(indices), [3, 0, 0, 0])
    np.testing.assert_array_equal(np.asarray(valid), [True, True, False, False])
    np.testing.assert_array_equal(_kept(nms_jit(boxes, scores, 0.7, 4)), [3, 0, 1, 2])
    np.testing.assert_array_equal(_kept(nms_jit(boxes, scores, 0.5, 1)), [3])  # truncated to K
    np.testing.assert_array_equal(_kept(nms_jit(boxes, scores, 0.5, 6)), [3, 0])  # K > N
    # per class: box 1 is class 1, so box 0 no longer suppresses it
    classes = np.int32([0, 1, 0, 0])
    np.testing.assert_array_equal(_kept(batched_nms_jit(boxes, scores, classes, 0.5, 4)), [3, 0, 1])


def test_threshold_is_strict_and_ties_go_to_lower_index():
    boxes = np.float32([[0, 0, 1, 1], [0, 0, 2, 1], [0, 0, 2, 1]])  # IoU(0, 1) = 1/2 exactly
    scores = np.float32([0.5, 0.5, 0.5])
    np.testing.assert_array_equal(_kept(nms_jit(boxes, scores, 0.5, 3)), [0, 1])  # 1/2 not > 1/2
    np.testing.assert_array_equal(_kept(nms_jit(boxes, scores, 0.49, 3)), [0])
    np.testing.assert_array_equal(_kept(nms_jit(boxes[::-1], scores, 0.5, 3)), [0, 2])


def test_invalid_boxes_are_never_kept_and_suppress_nothing():
    boxes, scores = _four_boxes()
    valid_in = np.array([True, True, True, False])  # box 3 is padding
    np.testing.assert_array_equal(_kept(nms_jit(boxes, scores, 0.5, 4, valid=valid_in)), [0, 2])
    indices, valid = nms_jit(boxes, scores, 0.5, 4, valid=np.zeros(4, bool))
    assert not np.asarray(valid).any() and not np.asarray(indices).any()


def test_degenerate_boxes_are_all_kept():
    boxes = np.float32([[5, 5, 5, 5], [5, 5, 5, 5], [3, 0, 1, 4], [0, 0, 0, 10]])
    kept = _kept(nms_jit(boxes, np.float32([0.1, 0.2, 0.3, 0.4]), 0.0, 4))
    np.testing.assert_array_equal(kept, [3, 2, 1, 0])  # IoU 0 with anything: nothing suppressed


# (b) properties


@PROPERTY
@given(crowded_boxes, scores_with_ties, thresholds)
def test_greedy_invariants(boxes, scores, threshold):
    indices, valid = nms_jit(boxes, scores, threshold, max_output_size=N)
    _check_greedy(boxes, scores, None, threshold, indices, valid)
    short = nms_jit(boxes, scores, threshold, max_output_size=5)
    np.testing.assert_array_equal(_kept(short), np.asarray(indices)[np.asarray(valid)][:5])


@PROPERTY
@given(
    crowded_boxes,
    scores_with_ties,
    hnp.arrays(np.int32, (N,), elements=st.integers(0, 2)),
    thresholds,
)
def test_batched_is_per_class_nms(boxes, scores, classes, threshold):
    indices, valid = batched_nms_jit(boxes, scores, classes, threshold, max_output_size=N)
    _check_greedy(boxes, scores, classes, threshold, indices, valid)
    # the same set as NMS on each class alone
    per_class = set()
    for c in range(3):
        kept = _kept(nms_jit(boxes, scores, threshold, max_output_size=N, valid=classes == c))
        per_class |= set(kept.tolist())
    assert set(_kept((indices, valid)).tolist()) == per_class


# (c) golden parity: identical indices


@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.7])
def test_matches_torchvision_golden(threshold):
    boxes, scores, classes = GOLDEN["nms/boxes"], GOLDEN["nms/scores"], GOLDEN["nms/classes"]
    expected = GOLDEN[f"nms/keep_{threshold}"]
    np.testing.assert_array_equal(_kept(nms_jit(boxes, scores, threshold, 500)), expected)
    np.testing.assert_array_equal(_kept(nms_jit(boxes, scores, threshold, 20)), expected[:20])
    expected = GOLDEN[f"nms/batched_keep_{threshold}"]
    kept = _kept(batched_nms_jit(boxes, scores, classes, threshold, 500))
    np.testing.assert_array_equal(kept, expected)


# (d) live parity


def test_matches_torchvision_live():
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    rng = np.random.default_rng(11)
    xy = rng.uniform(0, 200, (400, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(2, 60, (400, 2))], 1).astype(np.float32)
    scores = rng.uniform(size=400).astype(np.float32)
    classes = rng.integers(0, 3, 400).astype(np.int32)
    tb, ts, tc = torch.tensor(boxes), torch.tensor(scores), torch.tensor(classes)
    for threshold in (0.4, 0.6):
        expected = torchvision.ops.nms(tb, ts, threshold).numpy()
        np.testing.assert_array_equal(_kept(nms_jit(boxes, scores, threshold, 400)), expected)
        expected = torchvision.ops.batched_nms(tb, ts, tc, threshold).numpy()
        kept = _kept(batched_nms_jit(boxes, scores, classes, threshold, 400))
        np.testing.assert_array_equal(kept, expected)


# (e) jit


def test_jit_gives_the_same_results():
    boxes, scores = GOLDEN["nms/boxes"][:60], GOLDEN["nms/scores"][:60]
    classes = GOLDEN["nms/classes"][:60]
    for eager, jitted in (
        (nms(boxes, scores, 0.5, 30), nms_jit(boxes, scores, 0.5, 30)),
        (
            batched_nms(boxes, scores, classes, 0.5, 30),
            batched_nms_jit(boxes, scores, classes, 0.5, 30),
        ),
    ):
        for a, b in zip(eager, jitted, strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# (g) clear errors


@pytest.mark.parametrize("size", [0, -3, 2.5, None, "8", True])
def test_rejects_bad_max_output_size(size):
    boxes, scores = _four_boxes()
    with pytest.raises(ValueError, match="max_output_size must be a positive Python int"):
        nms(boxes, scores, 0.5, size)
    with pytest.raises(ValueError, match="max_output_size must be a positive Python int"):
        batched_nms(boxes, scores, np.zeros(4, np.int32), 0.5, size)


def test_rejects_wrong_shapes_and_dtypes():
    boxes, scores = _four_boxes()
    with pytest.raises(ValueError, match=r"boxes must have shape \(N, 4\); got \(4, 3\)"):
        nms(boxes[:, :3], scores, 0.5, 4)
    with pytest.raises(ValueError, match=r"scores must have shape \(N,\) = \(4,\).*\(3,\)"):
        nms(boxes, scores[:3], 0.5, 4)
    with pytest.raises(ValueError, match="classes must be integers of shape"):
        batched_nms(boxes, scores, np.zeros(4, np.float32), 0.5, 4)
    with pytest.raises(ValueError, match="classes must be integers of shape"):
        batched_nms(boxes, scores, np.zeros(3, np.int32), 0.5, 4)
    # a valid mask of the wrong length used to be read out of bounds (clamped), silently
    with pytest.raises(ValueError, match=r"valid must have shape \(N,\) = \(4,\).*\(3,\)"):
        nms(boxes, scores, 0.5, 4, valid=np.ones(3, bool))
    with pytest.raises(ValueError, match=r"valid must have shape \(N,\) = \(4,\)"):
        batched_nms(boxes, scores, np.zeros(4, np.int32), 0.5, 4, valid=np.ones(1, bool))


# class_grid_nms: the box head's (proposal, class) grid, against the flat batched_nms
GRID_P, GRID_C = 8, 3
class_grid_nms_jit = jax.jit(class_grid_nms, static_argnames=("max_output_size", "algorithm"))
_grid_corners = hnp.arrays(np.float32, (GRID_P, GRID_C, 2), elements=st.floats(0, 40, width=32))
_grid_sides = hnp.arrays(np.float32, (GRID_P, GRID_C, 2), elements=st.one_of(
    st.sampled_from([0.0, -2.0]), st.floats(1, 30, width=32)))


@PROPERTY
@given(st.tuples(_grid_corners, _grid_sides),
       hnp.arrays(np.float32, (GRID_P, GRID_C), elements=st.sampled_from([0.1, 0.2, 0.5, 0.9])),
       hnp.arrays(np.bool_, (GRID_P, GRID_C)), thresholds, st.sampled_from([3, 24, 30]))
def test_class_grid_nms_equals_flat_batched_nms(corners_sides, scores, valid, threshold, k):
    corners, sides = corners_sides
    boxes = np.concatenate([corners, corners + sides], axis=-1)  # (P, C, 4)
    classes = np.broadcast_to(np.arange(GRID_C), (GRID_P, GRID_C)).reshape(-1)
    expected = batched_nms_jit(boxes.reshape(-1, 4), scores.reshape(-1), classes, threshold,
                               max_output_size=k, valid=valid.reshape(-1))
    for algorithm in ("greedy", "tiled"):
        got = class_grid_nms_jit(boxes, scores, threshold, max_output_size=k, valid=valid,
                                 algorithm=algorithm)
        np.testing.assert_array_equal(np.asarray(got[1]), np.asarray(expected[1]))
        np.testing.assert_array_equal(_kept(got), _kept(expected))  # same boxes, same order


def test_class_grid_nms_flat_index_orders_ties_both_ways():
    # one box per column, all tied at 0.5, no overlaps: the order is flat_index's
    boxes = np.array([[[0, 0, 1, 1], [10, 10, 11, 11], [20, 20, 21, 21]]], np.float32)
    scores = np.full((1, 3), 0.5, np.float32)
    flat_index = np.array([[7, 2, 5]], np.int32)
    for algorithm in ("greedy", "tiled"):
        indices, valid = class_grid_nms_jit(boxes, scores, 0.5, max_output_size=3,
                                            flat_index=flat_index, algorithm=algorithm)
        np.testing.assert_array_equal(np.asarray(indices), [2, 5, 7], err_msg=algorithm)
        assert np.asarray(valid).all()


def test_class_grid_nms_by_hand():
    # two proposals, two classes: (p, c) flat index p * 2 + c
    boxes = np.array([[[0, 0, 10, 10], [0, 0, 10, 10]],
                      [[1, 0, 11, 10], [20, 20, 30, 30]]], np.float32)
    scores = np.array([[0.9, 0.3], [0.8, 0.3]], np.float32)
    # class 0: (0,0) 0.9 suppresses (1,0) (IoU 9/11 > 0.5); class 1: both kept, the tie
    # at 0.3 goes to the lower flat index (0,1) = 1 before (1,1) = 3
    indices, valid = class_grid_nms_jit(boxes, scores, 0.5, max_output_size=4)
    np.testing.assert_array_equal(np.asarray(indices), [0, 1, 3, 0])
    np.testing.assert_array_equal(np.asarray(valid), [True, True, True, False])


def test_class_grid_nms_rejects_flat_boxes():
    with pytest.raises(ValueError, match=r"\(P, C, 4\)"):
        class_grid_nms(np.zeros((5, 4), np.float32), np.zeros((5,), np.float32), 0.5, 3)
