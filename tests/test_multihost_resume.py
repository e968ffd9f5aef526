"""Exact resume across processes: two localhost processes (``jax.distributed``, gloo CPU
collectives, one CPU device each) train 4 steps, checkpointing with Orbax from both processes
at steps 2 and 4. A new work directory gets the step-2 checkpoint, ``run.json`` and the first
2 log lines, and two new processes ``--resume`` there and train steps 3-4. They end with the
parameters and log the losses of the uninterrupted run. (Starting the resume from a copy of
the uninterrupted run's own step-2 checkpoint saves a third 2-process launch: each compiles the
step for ~1 min of CPU; a ``--stop_after`` run writes its checkpoint with the same call.)

The launch helpers and the tiny setting are those of ``tests/test_train_cli.py``.
"""

import shutil

import jax
import numpy as np
import pytest
from flax import nnx
from test_train_cli import SCALING_ARGS, _free_port, _launch, _metrics

from mrcnn_jax.checkpoints import restore_model
from mrcnn_jax.data import shapes_source
from mrcnn_jax.training import LOSS_TERMS


def _arg(name):
    return SCALING_ARGS[SCALING_ARGS.index(name) + 1]


def _run_together(root, workdir, *extra):
    """Processes 0 and 1 of one run; returns process 0's output after both succeed."""
    address = f"localhost:{_free_port()}"
    procs = [_launch(root, i, address, "--workdir", str(workdir), *extra) for i in range(2)]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    for i, (p, out) in enumerate(zip(procs, outputs, strict=True)):
        assert p.returncode == 0, f"process {i}:\n{out[-3000:]}"
    return outputs[0]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("multihost_resume")
    # prepare the shapes data once here: two processes preparing it together would race
    sizes = {"num_train": int(_arg("--num_train")), "num_val": int(_arg("--num_val")),
             "image_size": int(_arg("--image_size")), "seed": 0}
    for split in ("train", "validation"):
        shapes_source(split, str(root / "data"), **sizes)
    straight, halves = root / "straight", root / "halves"
    _run_together(root, straight, "--checkpoint_every", "2")
    (halves / "checkpoints").mkdir(parents=True)
    shutil.copytree(straight / "checkpoints" / "2", halves / "checkpoints" / "2")
    shutil.copy(straight / "run.json", halves / "run.json")
    lines = (straight / "metrics.jsonl").read_text().splitlines(keepends=True)
    (halves / "metrics.jsonl").write_text("".join(lines[:2]))
    resumed = _run_together(root, halves, "--resume")
    return straight, halves, resumed


def test_two_processes_resume_exactly(runs):
    straight, halves, resumed = runs
    assert "resumed from step 2" in resumed
    assert "mesh: 2 cpu device(s) over 2 process(es)" in resumed
    assert sorted(p.name for p in (halves / "checkpoints").iterdir() if p.name.isdigit()) == [
        "2", "4"]
    a, run = restore_model(straight)
    b, _ = restore_model(halves)
    assert run["args"]["num_processes"] == 2
    leaves_a, leaves_b = jax.tree.leaves(nnx.state(a)), jax.tree.leaves(nnx.state(b))
    assert len(leaves_a) == len(leaves_b) > 50
    init = jax.tree.leaves(nnx.state(restore_model(halves, step=2)[0]))
    moved = max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
                for x, y in zip(leaves_b, init, strict=True))
    assert moved > 1e-4  # steps 3-4 really ran after the resume
    for x, y in zip(leaves_a, leaves_b, strict=True):
        np.testing.assert_allclose(np.asarray(y), np.asarray(x), rtol=1e-5, atol=1e-6)
    la, lb = _metrics(straight), _metrics(halves)  # process 0 appends after the resume
    assert [m["step"] for m in lb] == [1, 2, 3, 4] == [m["step"] for m in la]
    for term in ("loss", *LOSS_TERMS):
        np.testing.assert_allclose([m[term] for m in lb], [m[term] for m in la], rtol=1e-5,
                                   err_msg=term)
