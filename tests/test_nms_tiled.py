"""mrcnn_jax.nms.nms_tiled keeps exactly the greedy set (and torchvision's), in fewer loop
iterations: random, tied-score, all-overlapping and per-class inputs, every tile size."""

import functools

import jax
import numpy as np
import pytest

from mrcnn_jax.nms import batched_nms, nms, nms_tiled

greedy = jax.jit(nms, static_argnames=("max_output_size", "algorithm"))
greedy_batched = jax.jit(batched_nms, static_argnames=("max_output_size", "algorithm"))


@functools.partial(jax.jit, static_argnames=("max_output_size", "tile_size"))
def tiled(boxes, scores, iou_threshold, max_output_size, tile_size, valid=None, classes=None):
    return nms_tiled(boxes, scores, iou_threshold, max_output_size, valid, tile_size, classes,
                     return_iterations=True)


def random_boxes(rng, n, spread=200.0, size=(2, 60)):
    xy = rng.uniform(0, spread, (n, 2))
    return np.concatenate([xy, xy + rng.uniform(*size, (n, 2))], 1).astype(np.float32)


def check_same(boxes, scores, threshold, k, tile, valid=None, classes=None):
    """Tiled == greedy, indices and valid, element for element; returns tiled's iterations."""
    if classes is None:
        want = greedy(boxes, scores, threshold, max_output_size=k, valid=valid)
    else:
        want = greedy_batched(boxes, scores, classes, threshold, max_output_size=k, valid=valid)
    *got, iterations = tiled(boxes, scores, threshold, k, tile, valid, classes)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    return int(iterations), int(np.asarray(want[1]).sum())


@pytest.mark.parametrize("tile", [1, 64, 1000])
@pytest.mark.parametrize("threshold", [0.0, 0.5, 0.7, 1.0])
def test_random_boxes_equal_greedy(tile, threshold):
    rng = np.random.default_rng(int(threshold * 10) + tile)
    boxes, scores = random_boxes(rng, 300), rng.uniform(size=300).astype(np.float32)
    for k in (300, 17):  # all kept boxes, and truncated to K
        _, kept = check_same(boxes, scores, threshold, k, tile)
        assert 0 < kept <= k


@pytest.mark.parametrize("tile", [3, 64])
def test_tied_scores_keep_the_lower_index(tile):
    rng = np.random.default_rng(3)
    boxes = random_boxes(rng, 120, spread=60.0)
    scores = rng.choice(np.float32([0.1, 0.5, 0.9]), 120)  # many ties
    boxes[10:20] = boxes[0]  # exact duplicates with tied scores
    scores[10:20] = scores[0]
    check_same(boxes, scores, 0.5, 120, tile)
    all_tied = np.full(120, 0.5, np.float32)
    check_same(boxes, all_tied, 0.5, 120, tile)


@pytest.mark.parametrize("tile", [4, 100])
def test_all_overlapping_keeps_only_the_best(tile):
    rng = np.random.default_rng(5)
    boxes = np.tile(np.float32([[10, 10, 50, 50]]), (100, 1))
    boxes += rng.uniform(-0.5, 0.5, boxes.shape).astype(np.float32)  # IoU > 0.9 all pairs
    scores = rng.uniform(size=100).astype(np.float32)
    iterations, kept = check_same(boxes, scores, 0.5, 10, tile)
    assert kept == 1
    # a chain: box i overlaps only i - 1 and i + 1, so greedy keeps every other box
    chain = np.float32([[6 * i, 0, 6 * i + 10, 10] for i in range(64)])  # IoU(i, i+1) = 0.25
    iterations, kept = check_same(chain, np.linspace(1, 0, 64, dtype=np.float32), 0.2, 64,
                                  tile)
    assert kept == 32


def test_padding_and_classes_equal_greedy():
    rng = np.random.default_rng(8)
    boxes, scores = random_boxes(rng, 250, spread=80.0), rng.uniform(size=250).astype(np.float32)
    valid = rng.uniform(size=250) < 0.8
    classes = rng.integers(0, 4, 250).astype(np.int32)
    for tile in (8, 64):
        check_same(boxes, scores, 0.5, 100, tile, valid=valid)
        check_same(boxes, scores, 0.5, 100, tile, valid=valid, classes=classes)
        check_same(boxes, scores, 0.6, 250, tile, classes=classes)
    _, kept = check_same(boxes, scores, 0.5, 50, 64, valid=np.zeros(250, bool))
    assert kept == 0


def test_far_fewer_iterations_than_greedy_on_spread_boxes():
    rng = np.random.default_rng(9)
    boxes = random_boxes(rng, 2000, spread=1000.0, size=(5, 40))
    scores = rng.uniform(size=2000).astype(np.float32)
    iterations, kept = check_same(boxes, scores, 0.5, 2000, 256)
    assert kept > 1000  # greedy loops once per kept box
    assert iterations < kept / 20, (iterations, kept)


def test_algorithm_switch_in_nms_and_batched_nms():
    rng = np.random.default_rng(10)
    boxes, scores = random_boxes(rng, 90), rng.uniform(size=90).astype(np.float32)
    classes = rng.integers(0, 3, 90).astype(np.int32)
    for algorithm in ("tiled", "auto"):
        for a, b in zip(greedy(boxes, scores, 0.5, max_output_size=40, algorithm=algorithm),
                        greedy(boxes, scores, 0.5, max_output_size=40), strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        for a, b in zip(greedy_batched(boxes, scores, classes, 0.5, max_output_size=40,
                                       algorithm=algorithm),
                        greedy_batched(boxes, scores, classes, 0.5, max_output_size=40),
                        strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(ValueError, match="algorithm must be"):
        nms(boxes, scores, 0.5, 4, algorithm="fast")
    with pytest.raises(ValueError, match="tile_size must be a positive"):
        nms_tiled(boxes, scores, 0.5, 4, tile_size=0)


def test_matches_torchvision_live():
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    rng = np.random.default_rng(12)
    boxes, scores = random_boxes(rng, 500), rng.uniform(size=500).astype(np.float32)
    scores[::7] = 0.5  # ties
    classes = rng.integers(0, 3, 500).astype(np.int32)
    tb, ts, tc = torch.tensor(boxes), torch.tensor(scores), torch.tensor(classes)
    for threshold in (0.3, 0.6):
        indices, valid, _ = tiled(boxes, scores, threshold, 500, 64)
        expected = torchvision.ops.nms(tb, ts, threshold).numpy()
        np.testing.assert_array_equal(np.asarray(indices)[np.asarray(valid)], expected)
        indices, valid, _ = tiled(boxes, scores, threshold, 500, 64, classes=classes)
        expected = torchvision.ops.batched_nms(tb, ts, tc, threshold).numpy()
        np.testing.assert_array_equal(np.asarray(indices)[np.asarray(valid)], expected)


def test_model_predicts_the_same_with_tiled_nms():
    """Proposals (per-level NMS, vmapped over images) and detections (per-class NMS) with
    ``nms_algorithm="tiled"`` equal the greedy ones, so accelerators may take either."""
    import dataclasses

    from flax import nnx

    from mrcnn_jax.config import small_config
    from mrcnn_jax.inference import predict_raw
    from mrcnn_jax.model import MaskRCNN

    config = small_config(image_size=(64, 64))
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (2, 64, 64, 3)).astype(np.uint8)
    outputs = {}
    for algorithm in ("greedy", "tiled"):
        cfg = config.replace(
            rpn=dataclasses.replace(config.rpn, nms_algorithm=algorithm),
            roi_heads=dataclasses.replace(config.roi_heads, nms_algorithm=algorithm,
                                          score_threshold=0.0))  # keep many detections
        model = MaskRCNN(cfg, rngs=nnx.Rngs(0))
        outputs[algorithm] = jax.tree.map(np.asarray, nnx.jit(predict_raw)(model, images))
    assert outputs["greedy"]["valid"].sum() > 10
    for key, value in outputs["greedy"].items():
        np.testing.assert_array_equal(outputs["tiled"][key], value, err_msg=key)
