"""The jitted train step and predict on a tiny model: overfitting, empty images, no retrace."""

import dataclasses
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mrcnn_jax.boxes import mirror_boxes
from mrcnn_jax.config import small_config
from mrcnn_jax.inference import mask_probs, mirrored_mask_probs, predict, predict_raw
from mrcnn_jax.model import MaskRCNN
from mrcnn_jax.paste_masks import paste_masks
from mrcnn_jax.training import LOSS_TERMS, eval_losses, loss_fn, make_optimizer, train_step

SIZE = 64


def make_batch(seed, objects_per_image=(2, 0)):
    """Rectangles and discs on a grey background; image ``i`` has ``objects_per_image[i]``."""
    rng = np.random.default_rng(seed)
    b, g = len(objects_per_image), 4
    images = np.full((b, SIZE, SIZE, 3), 128, np.uint8)
    boxes = np.zeros((b, g, 4), np.float32)
    masks = np.zeros((b, g, SIZE, SIZE), np.uint8)
    labels = np.zeros((b, g), np.int32)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    for i, count in enumerate(objects_per_image):
        for j in range(count):
            x, y = rng.integers(4, 30, size=2)
            w, h = rng.integers(16, 30, size=2)
            label = 1 + j % 3
            m = (xx >= x) & (xx < x + w) & (yy >= y) & (yy < y + h)
            if label == 2:  # a disc inside the box
                m &= (xx - x - w / 2) ** 2 / (w / 2) ** 2 + (yy - y - h / 2) ** 2 / (h / 2) ** 2 < 1
            images[i][m] = (60 * label, 200 - 50 * label, 90)
            ys, xs = np.nonzero(m)
            boxes[i, j] = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
            masks[i, j], labels[i, j] = m, label
    valid = labels > 0
    return {"images": images, "boxes": boxes, "labels": labels, "masks": masks, "valid": valid}


@pytest.fixture(scope="module")
def trained():
    """A tiny model overfit on one batch (one image with objects, one without)."""
    config = small_config(image_size=(SIZE, SIZE))
    model = MaskRCNN(config, rngs=nnx.Rngs(0))
    optimizer = make_optimizer(model, learning_rate=0.02, warmup_steps=5)
    batch = jax.tree.map(jnp.asarray, make_batch(0))
    key = jax.random.key(0)
    before = {k: float(v) for k, v in eval_losses(model, batch, key).items()}
    history = []
    for step in range(120):  # 60 were too few for box_regression (0.69x); 120 give ~0.2x
        metrics = train_step(model, optimizer, batch, jax.random.fold_in(key, step))
        history.append({k: float(v) for k, v in metrics.items()})
    after = {k: float(v) for k, v in eval_losses(model, batch, key).items()}
    return model, batch, before, after, history, optimizer


def test_overfitting_one_batch_drives_every_loss_term_down(trained):
    _, _, before, after, history, _ = trained
    assert all(np.isfinite(list(h.values())).all() for h in history)
    for term in LOSS_TERMS:
        assert after[term] < 0.5 * before[term], (term, before[term], after[term])
    assert after["loss"] < 0.3 * before["loss"]


def test_an_image_without_objects_trains_without_nan(trained):
    model, batch, *_ = trained
    assert not bool(batch["valid"][1].any())  # the second image has no objects
    params = jax.tree.leaves(nnx.state(model, nnx.Param))
    assert all(bool(jnp.isfinite(p).all()) for p in params)


def test_empty_batch_gives_finite_losses_and_zero_box_and_mask_terms():
    model = MaskRCNN(small_config(image_size=(SIZE, SIZE)), rngs=nnx.Rngs(1))
    batch = jax.tree.map(jnp.asarray, make_batch(1, objects_per_image=(0, 0)))
    losses = eval_losses(model, batch, jax.random.key(0))
    assert all(np.isfinite(float(v)) for v in losses.values())
    assert float(losses["rpn_box"]) == 0.0
    assert float(losses["box_regression"]) == 0.0
    assert float(losses["mask"]) == 0.0
    grads = nnx.jit(nnx.grad(lambda m: loss_fn(m, batch, jax.random.key(0))[0]))(model)
    assert all(bool(jnp.isfinite(g).all()) for g in jax.tree.leaves(grads))


def test_predict_finds_the_objects_and_respects_valid(trained):
    model, batch, *_ = trained
    out = jax.tree.map(np.asarray, predict(model, batch["images"]))
    d = model.config.roi_heads.detections_per_image
    assert out["boxes"].shape == (2, d, 4) and out["masks"].shape == (2, d, SIZE, SIZE)
    valid = out["valid"]
    assert (out["scores"][~valid] == 0).all() and (out["labels"][~valid] == 0).all()
    assert (out["masks"][~valid] == 0).all() and (out["boxes"][~valid] == 0).all()
    assert (out["scores"][valid] > model.config.roi_heads.score_threshold).all()
    assert (np.diff(out["scores"], axis=1) <= 0).all()  # sorted best first
    # the overfit image: its best detection of each object overlaps it well, with its label
    from mrcnn_jax import box_iou
    top = out["scores"][0] > 0.5
    iou = np.asarray(box_iou(batch["boxes"][0][:2], out["boxes"][0][top]))
    assert iou.shape[1] >= 2 and (iou.max(axis=1) > 0.7).all()
    best = iou.argmax(axis=1)
    assert (out["labels"][0][top][best] == np.asarray(batch["labels"][0][:2])).all()


@pytest.mark.parametrize("rule", ["torchvision", "exact"])
def test_predict_pastes_masks_by_the_configured_rule(trained, rule):
    model, batch, *_ = trained
    original = model.config
    model.config = original.replace(roi_heads=dataclasses.replace(original.roi_heads,
                                                                  paste_rule=rule))
    try:
        raw = jax.tree.map(np.asarray, predict_raw(model, batch["images"]))
        out = jax.tree.map(np.asarray, predict(model, batch["images"]))
    finally:
        model.config = original
    expected = np.asarray(paste_masks(raw["mask_probs"][0], raw["boxes"][0], (SIZE, SIZE), rule))
    # predict_raw runs op by op here, predict as one compiled program (other convolution
    # kernels, xla_cpu.CPU_OPTIONS): mask probabilities differ by up to ~1e-5
    np.testing.assert_allclose(out["masks"][0], expected * raw["valid"][0][:, None, None],
                               atol=5e-5)
    assert (out["masks"][0][raw["valid"][0]] > 0.5).any()


def test_train_step_and_predict_do_not_retrace_on_a_new_batch(trained, caplog):
    model, batch, *_, optimizer = trained  # train_step and predict are compiled already
    predict(model, batch["images"])
    new_batch = jax.tree.map(jnp.asarray, make_batch(5, objects_per_image=(1, 3)))
    with caplog.at_level(logging.WARNING, logger="jax"), jax.log_compiles(True):
        caplog.clear()
        train_step(model, optimizer, new_batch, jax.random.key(2))
        predict(model, new_batch["images"])
    compiled = [r.getMessage() for r in caplog.records if "Compiling" in r.getMessage()]
    assert compiled == []


def test_mask_flip_test_averages_with_the_mirrored_image(trained):
    model, batch, *_ = trained
    images = batch["images"]
    original = model.config
    plain = jax.tree.map(np.asarray, predict_raw(model, images))
    model.config = original.replace(roi_heads=dataclasses.replace(original.roi_heads,
                                                                  mask_flip_test=True))
    try:
        tta = jax.tree.map(np.asarray, predict_raw(model, images))
    finally:
        model.config = original
    # only the masks change; the two programs compile differently, so floats agree to rounding
    for key in ("labels", "valid"):
        np.testing.assert_array_equal(tta[key], plain[key])
    for key in ("boxes", "scores"):
        np.testing.assert_allclose(tta[key], plain[key], rtol=1e-6, atol=1e-5)
    boxes, labels = jnp.asarray(plain["boxes"]), jnp.asarray(plain["labels"])
    flipped = np.asarray(mirrored_mask_probs(model, images, boxes, labels))
    np.testing.assert_allclose(tta["mask_probs"], 0.5 * (plain["mask_probs"] + flipped),
                               atol=1e-6)
    assert np.abs(flipped - plain["mask_probs"]).max() > 0.05  # the mirrored view differs
    # the average is exactly mirror-equivariant: averaged masks of the mirrored image at the
    # mirrored boxes are the averaged masks mirrored (fails if boxes, images and mask columns
    # are not mirrored consistently)
    def averaged(x, b):
        return 0.5 * (mask_probs(model, model.features(x), b, labels)
                      + mirrored_mask_probs(model, x, b, labels))

    mirrored = averaged(images[:, :, ::-1], mirror_boxes(boxes, SIZE))
    np.testing.assert_allclose(np.asarray(mirrored), tta["mask_probs"][..., ::-1], atol=1e-5)


def test_mask_loss_weight_scales_only_the_mask_term_in_the_total():
    config = small_config(image_size=(SIZE, SIZE))
    model = MaskRCNN(config, rngs=nnx.Rngs(2))
    batch = jax.tree.map(jnp.asarray, make_batch(3))
    plain = {k: float(v) for k, v in eval_losses(model, batch, jax.random.key(0)).items()}
    assert plain["loss"] == pytest.approx(sum(plain[t] for t in LOSS_TERMS), rel=1e-6)
    model.config = config.replace(roi_heads=dataclasses.replace(config.roi_heads,
                                                                mask_loss_weight=3.0))
    weighted = {k: float(v) for k, v in eval_losses(model, batch, jax.random.key(0)).items()}
    for term in LOSS_TERMS:  # the terms are reported unweighted
        assert weighted[term] == pytest.approx(plain[term], rel=1e-5)
    assert plain["mask"] > 0.1
    assert weighted["loss"] == pytest.approx(plain["loss"] + 2.0 * plain["mask"], rel=1e-5)
