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
from mrcnn_jax.training import LOSS_TERMS

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
    # recorded 2026-11-24: first ~3.0, last ~1.3 on this tiny setting; 2026-12-05 (the preset's
    # later changes): first 3.96, last 1.95 with YNNPACK's convolutions, 2.00 with XLA's own
    # (xla_cpu.CPU_OPTIONS), the same curve within step-to-step noise; bounds leave margin
    assert last < 0.7 * first, (first, last)
    assert last < 2.4
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


# Data parallel and bfloat16 from the command line. JAX fixes its device count at start, so
# this runs in a subprocess with 8 CPU devices: the same 4 steps on 8 devices and on 1, the
# 8-device checkpoint evaluated on 8 devices and on 1, and 2 steps in bfloat16.
SCALING = """
import json, sys
from mrcnn_jax import evaluate, train
root, tiny = sys.argv[1], sys.argv[2:]
for n in (8, 1):
    train.main([*tiny, "--devices", str(n), "--workdir", f"{root}/d{n}", "--no_final_eval"])
figures = {}
for n in (8, 1):
    figures[n] = evaluate.main(["--workdir", f"{root}/d8", "--devices", str(n), "--num_val",
                                "10", "--batch_size", "8", "--out", f"{root}/dets{n}.json"])
json.dump(figures, open(f"{root}/figures.json", "w"))
train.main([*tiny, "--steps", "2", "--dtype", "bfloat16", "--workdir", f"{root}/bf16",
            "--no_final_eval"])
try:
    train.main([*tiny, "--batch_size", "6", "--devices", "4", "--workdir", f"{root}/bad"])
except ValueError as e:
    open(f"{root}/error.txt", "w").write(str(e))
"""
SCALING_ARGS = ["--preset", "small", "--num_train", "32", "--num_val", "10", "--image_size",
                "64", "--batch_size", "8", "--steps", "4", "--warmup", "2",
                "--eval_every", "4", "--checkpoint_every", "4", "--max_instances", "6"]


@pytest.fixture(scope="module")
def scaling(tmp_path_factory):
    import os
    import subprocess
    import sys

    root = tmp_path_factory.mktemp("scaling")
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
               JAX_PLATFORMS="cpu")
    env.pop("JAX_NUM_CPU_DEVICES", None)
    data = ["--data_dir", str(root / "data")]
    done = subprocess.run([sys.executable, "-c", SCALING, str(root), *SCALING_ARGS, *data],
                          env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return root, done.stdout


def _assert_same_run(ours, one):
    """Losses logged by a run on several devices or processes against the 1-device run.

    Step 1 is the same function of the same weights: 1e-4. Warm-up is 2 steps, so step 2's
    update used 0.001 of the peak rate and step 3's half of it: a mean over the wrong images
    or a missing gradient all-reduce moves step 3 by far more than the 1e-3 allowed here
    (measured 2026-12-05: 2.5e-4 on the loss, 8e-4 on box_classifier, 9e-4 on grad_norm).
    After two steps at the peak rate the runs drift apart (measured at step 4: 3.2e-3 on the
    loss with 8 devices, 4.3e-3 with 2 processes, 1.9e-2 on box_regression), and that is not
    a sharding error: a device holding fewer images sums its convolutions in another order
    (~1e-7), which swaps RoIs whose RPN scores are that close, so a few other RoIs are
    sampled and the difference grows with every step. Step 4 is held to 1e-2 (the loss) as a
    sanity bound only; tests/test_sharding.py removes the sampling choice and checks
    gradients to 1e-5.
    """
    assert [m["step"] for m in ours] == [m["step"] for m in one] == [1, 2, 3, 4]
    for m, (a, b) in enumerate(zip(ours, one, strict=True), start=1):
        loss_rtol, term_rtol = {1: (1e-4, 1e-4), 2: (1e-3, 1e-3), 3: (1e-3, 3e-3)}.get(
            m, (1e-2, 5e-2))
        np.testing.assert_allclose(a["loss"], b["loss"], rtol=loss_rtol, err_msg=f"step {m}")
        for term in (*LOSS_TERMS, "grad_norm"):  # grad_norm: a mean over all images, not a sum
            np.testing.assert_allclose(a[term], b[term], rtol=term_rtol,
                                       err_msg=f"{term}, step {m}")
        assert a["images_per_s"] > 0


def test_eight_devices_log_the_losses_of_one(scaling):
    root, stdout = scaling
    assert "mesh: 8 cpu device(s)" in stdout and "mesh: 1 cpu device(s)" in stdout
    eight, one = _metrics(root / "d8"), _metrics(root / "d1")
    _assert_same_run(eight, one)
    np.testing.assert_allclose(eight[-1]["val"]["loss"], one[-1]["val"]["loss"], rtol=2e-2)


def test_sharded_evaluation_counts_every_image_once_and_equals_one_device(scaling):
    root, _ = scaling
    eight = json.loads((root / "dets8.json").read_text())
    one = json.loads((root / "dets1.json").read_text())
    assert {d["image_id"] for d in eight} <= set(range(10))  # 10 images, batch 8: 2 padded
    assert len(eight) == len(one) > 0
    figures = json.loads((root / "figures.json").read_text())
    for iou_type in ("bbox", "segm"):
        for name, value in figures["8"][iou_type].items():
            assert abs(value - figures["1"][iou_type][name]) < 1e-6, (iou_type, name)
    for a, b in zip(eight, one, strict=True):
        assert (a["image_id"], a["category_id"]) == (b["image_id"], b["category_id"])
        np.testing.assert_allclose(a["bbox"], b["bbox"], atol=1e-3)
        np.testing.assert_allclose(a["score"], b["score"], atol=1e-5)


def test_bfloat16_trains_with_finite_losses_and_batch_must_divide(scaling):
    root, _ = scaling
    metrics = _metrics(root / "bf16")
    assert len(metrics) == 2 and all(np.isfinite(m["loss"]) for m in metrics)
    f32 = _metrics(root / "d1")[0]["loss"]
    assert abs(metrics[0]["loss"] - f32) < 0.05 * f32  # step 0: same weights, bf16 compute
    assert "6 must be a multiple of the 4 devices" in (root / "error.txt").read_text()


# Two processes on localhost (jax.distributed, gloo CPU collectives, one CPU device each) train
# the scaling fixture's 4 steps together and log the losses one process logged.
def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _launch(root, process_id, address, *extra, processes=2, timeout_s=60):
    import os
    import subprocess
    import sys

    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo",
               XLA_FLAGS="--xla_force_host_platform_device_count=1")
    env.pop("JAX_NUM_CPU_DEVICES", None)
    args = [*SCALING_ARGS, "--data_dir", str(root / "data"), "--no_final_eval",
            "--coordinator_address", address, "--num_processes", str(processes),
            "--process_id", str(process_id), "--initialization_timeout", str(timeout_s), *extra]
    return subprocess.Popen([sys.executable, "-m", "mrcnn_jax.train", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_two_processes_log_the_losses_of_one(scaling):
    root, _ = scaling
    address = f"localhost:{_free_port()}"
    workdir = root / "two_processes"
    procs = [_launch(root, i, address, "--workdir", str(workdir)) for i in range(2)]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    for p, out in zip(procs, outputs, strict=True):
        assert p.returncode == 0, out[-3000:]
    assert "mesh: 2 cpu device(s) over 2 process(es)" in outputs[0]
    two, one = _metrics(workdir), _metrics(root / "d1")
    _assert_same_run(two, one)  # process 0 alone writes the log: each step once
    assert (workdir / "checkpoints" / "4").is_dir()  # Orbax, written by both processes


def test_a_missing_peer_fails_fast_with_a_clear_message(scaling):
    import time

    root, _ = scaling
    began = time.perf_counter()
    address = f"localhost:{_free_port()}"
    alone = _launch(root, 0, address, "--workdir", str(root / "alone"), timeout_s=5)
    out = alone.communicate(timeout=120)[0]  # process 1 never starts: XLA stops process 0
    assert alone.returncode != 0
    assert "joining the coordinator" in out and "DEADLINE_EXCEEDED" in out, out[-2000:]
    orphan = _launch(root, 1, f"localhost:{_free_port()}", "--workdir", str(root / "orphan"),
                     timeout_s=3)  # no coordinator at all
    out = orphan.communicate(timeout=120)[0]
    assert orphan.returncode != 0
    assert "no coordinator at localhost" in out and "start process 0" in out, out[-2000:]
    assert time.perf_counter() - began < 90
