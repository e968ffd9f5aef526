"""MaskRCNN wiring: torchvision parameter tables, presets, frozen layers, input checks."""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mrcnn_jax.anchors import generate_anchors
from mrcnn_jax.boxes import box_iou
from mrcnn_jax.config import BackboneConfig, resnet50_fpn_config, shapes_config, small_config
from mrcnn_jax.data.shapes import draw_shapes
from mrcnn_jax.layers import Frozen
from mrcnn_jax.model import MaskRCNN
from mrcnn_jax.weights import torchvision_shapes

TABLES = json.loads((pathlib.Path(__file__).parent / "golden/torchvision_maskrcnn_shapes.json")
                    .read_text())


def _abstract(config):
    return nnx.eval_shape(lambda: MaskRCNN(config, rngs=nnx.Rngs(0)))


def _compare(ours, reference):
    reference = {k: tuple(v) for k, v in reference.items()}
    assert sorted(set(reference) - set(ours)) == [], "missing from ours"
    assert sorted(set(ours) - set(reference)) == [], "not in torchvision"
    wrong = {k: (ours[k], reference[k]) for k in reference if ours[k] != reference[k]}
    assert wrong == {}


def test_resnet50_fpn_preset_has_torchvision_parameter_shapes():
    ours = torchvision_shapes(_abstract(resnet50_fpn_config()))
    assert len(ours) == 307
    _compare(ours, TABLES["maskrcnn_resnet50_fpn"])


def test_resnet18_fpn_has_torchvision_parameter_shapes():
    config = resnet50_fpn_config().replace(backbone=BackboneConfig(depth=18))
    _compare(torchvision_shapes(_abstract(config)), TABLES["maskrcnn_resnet18_fpn"])


def test_imported_backbone_freezes_stem_and_layer1_only():
    model = _abstract(resnet50_fpn_config())
    assert isinstance(model.body.conv1.kernel, Frozen)
    assert isinstance(model.body.layer1[0].conv2.kernel, Frozen)
    assert isinstance(model.body.layer2[0].conv2.kernel, nnx.Param)
    assert isinstance(model.body.bn1.running_var, Frozen)  # frozen BatchNorm never trains
    assert isinstance(model.fpn.inner_blocks[0].kernel, nnx.Param)


def test_small_preset_feature_sizes_and_anchor_count():
    model = MaskRCNN(small_config(), rngs=nnx.Rngs(0))
    images = jnp.zeros((1, 128, 128, 3), jnp.uint8)
    features = nnx.jit(lambda m, x: m.features(x))(model, images)
    assert [f.shape for f in features] == [(1, 32, 32, 64), (1, 16, 16, 64), (1, 8, 8, 64),
                                          (1, 4, 4, 64), (1, 2, 2, 64)]
    anchors, counts = model.anchors(features)
    assert counts == [3 * 32 * 32, 3 * 16 * 16, 3 * 8 * 8, 3 * 4 * 4, 3 * 2 * 2]
    assert anchors.shape == (sum(counts), 4)
    assert all(np.isfinite(np.asarray(f)).all() for f in features)


def test_wrong_image_size_is_refused_with_a_clear_message():
    model = MaskRCNN(small_config(), rngs=nnx.Rngs(0))
    expected = r"images must be \(B, 128, 128, 3\).*got \(1, 96, 128, 3\)"
    with pytest.raises(ValueError, match=expected):
        model.features(jnp.zeros((1, 96, 128, 3), jnp.uint8))


def test_load_torchvision_state_lists_every_problem_at_once():
    from mrcnn_jax.weights import load_torchvision_state

    model = MaskRCNN(small_config(), rngs=nnx.Rngs(0))
    head = nnx.state(model.rpn_head)
    state = {"rpn.head.conv.0.0.weight": np.zeros((64, 64, 3, 3), np.float32),
             "rpn.head.conv.0.0.bias": np.zeros((64,), np.float32),
             "rpn.head.cls_logits.weight": np.zeros((5, 64, 1, 1), np.float32),  # 3 expected
             "rpn.head.extra.weight": np.zeros((1,), np.float32)}
    with pytest.raises(ValueError) as error:
        load_torchvision_state(model.rpn_head, state, prefix=("rpn_head",))
    message = str(error.value)
    assert "missing (3)" in message and "rpn.head.bbox_pred.weight" in message
    assert "unexpected (1)" in message and "rpn.head.extra.weight" in message
    assert "mis-shaped (1)" in message and "rpn.head.cls_logits.weight" in message
    after = nnx.state(model.rpn_head)  # nothing half-loaded
    for a, b in zip(jax.tree.leaves(head), jax.tree.leaves(after), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_shapes_preset_anchors_cover_most_shapes_by_the_iou_rule():
    """shapes_config's two anchor scales give most shapes an anchor at IoU >= 0.7 (a regular
    RPN positive); small_config's one scale leaves most to the low-quality rule."""
    rng = np.random.default_rng(0)
    boxes = np.concatenate([draw_shapes(rng)["boxes"] for _ in range(100)])  # (G, 4)
    sizes = [(32, 32), (16, 16), (8, 8), (4, 4), (2, 2)]
    covered = {}
    for name, config in (("small", small_config()), ("shapes", shapes_config())):
        anchors = generate_anchors(config.image_size, sizes, config.rpn.anchor_sizes,
                                   config.rpn.aspect_ratios)
        best = np.asarray(box_iou(jnp.asarray(boxes), jnp.asarray(anchors))).max(axis=1)
        covered[name] = float((best >= 0.7).mean())
    assert len(boxes) > 250
    assert covered["small"] < 0.45 and covered["shapes"] > 0.85, covered
    model = nnx.eval_shape(lambda: MaskRCNN(shapes_config(), rngs=nnx.Rngs(0)))
    assert model.rpn_head.cls_logits.kernel.shape == (1, 1, 64, 6)  # 2 scales x 3 ratios


def test_pool_methods_agree():
    """``MaskRCNN.pool``: inference's gather and training's dense form (small maps) pool the same
    values; the dense one is picked by ``"auto"`` for these 32x32-and-smaller levels."""
    config = shapes_config(image_size=(128, 128))
    model = MaskRCNN(config, rngs=nnx.Rngs(0))
    images = np.random.default_rng(0).integers(0, 256, (2, 128, 128, 3), dtype=np.uint8)
    features = model.features(jnp.asarray(images))
    rng = np.random.default_rng(1)
    xy = rng.uniform(0, 100, (2, 40, 2))
    rois = jnp.asarray(np.concatenate([xy, xy + rng.uniform(2, 90, (2, 40, 2))], -1), jnp.float32)
    pooled = {m: np.asarray(model.pool(features, rois, 7, m)) for m in ("gather", "dense", "auto")}
    assert np.abs(pooled["gather"]).mean() > 1e-2  # real features, not zeros
    np.testing.assert_allclose(pooled["dense"], pooled["gather"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(pooled["auto"], pooled["dense"], rtol=1e-6, atol=1e-7)
