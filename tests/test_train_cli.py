"""The training command end to end on tiny shapes data: resume equals an uninterrupted run,
a short real run reaches a recorded loss bound, and the outputs (metrics, curve, evaluation,
picture, checkpoints) are written."""

import json

import jax
import numpy as np
import pytest
from flax import nnx

from mrcnn_jax import train
from mrcnn_jax.checkpoints import restore_model

# --preset small: the loss bound below was recorded with it (the default shapes preset's
# anchors suit 128x128 images, not this 64x64 setting)
TINY = ["--preset", "small", "--num_train", "32", "--num_val", "10", "--image_size", "64",
        "--batch_size", "4", "--steps", "40", "--warmup", "5", "--lr", "0.02", "--eval_every", "20",
        "--checkpoint_every", "20", "--max_instances", "6"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    data = ["--data_dir", str(root / "data")]
    straight, halves = root / "straight", root / "halves"
    train.main([*TINY, *data, "--workdir", str(straight)])
    train.main([*TINY, *data, "--workdir", str(halves), "--stop_after", "20",
                "--no_final_eval"])
    train.main([*TINY, *data, "--workdir", str(halves), "--resume", "--no_final_eval"])
    return straight, halves


def _metrics(workdir):
    return [json.loads(line) for line in (workdir / "metrics.jsonl").open()]


def test_resumed_run_equals_uninterrupted_run(runs):
    straight, halves = runs
    a, _ = restore_model(straight)
    b, _ = restore_model(halves)
    for x, y in zip(jax.tree.leaves(nnx.state(a)), jax.tree.leaves(nnx.state(b)), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6)
    la, lb = _metrics(straight), _metrics(halves)
    assert [m["step"] for m in lb] == list(range(1, 41))
    np.testing.assert_allclose([m["loss"] for m in la], [m["loss"] for m in lb], rtol=1e-4)


def test_short_run_reaches_recorded_loss_bound(runs):
    straight, _ = runs
    metrics = _metrics(straight)
    first = np.mean([m["loss"] for m in metrics[:5]])
    last = np.mean([m["loss"] for m in metrics[-5:]])
    # recorded 2026-11-24: first ~3.0, last ~1.3 on this tiny setting; bounds leave margin
    assert last < 0.7 * first, (first, last)
    assert last < 2.0
    assert "val" in metrics[-1] and np.isfinite(metrics[-1]["val"]["loss"])


def test_outputs_are_written(runs):
    straight, _ = runs
    for name in ("metrics.jsonl", "loss_curve.png", "evaluation.json", "predictions.png",
                 "run.json"):
        assert (straight / name).stat().st_size > 0, name
    evaluation = json.loads((straight / "evaluation.json").read_text())
    assert evaluation["num_images"] == 10  # all held-out images, though 10 % batch 4 != 0
    for iou_type in ("bbox", "segm"):
        for key, ours in evaluation["ours"][iou_type].items():
            assert abs(ours - evaluation["pycocotools"][iou_type][key]) < 1e-4, (iou_type, key)
