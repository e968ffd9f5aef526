"""Which compiled XLA operations a training step or a prediction spends its time in.

    python benchmarks/profile_ops.py                         # small_config train_step, batch 8
    python benchmarks/profile_ops.py --what predict_r50 --top 40
    python benchmarks/profile_ops.py --what predict_shapes --calls 5

Runs the jitted function a few times under ``jax.profiler.trace`` (with a Perfetto trace),
then joins the trace's per-operation events with the compiled HLO (``.lower().compile()``)
and prints: the total operation time per call (summed over the CPU threads), the busiest
single operations with their output shape and the JAX operation they came from (HLO
metadata), and the same grouped by kind and origin. Issue 19's changes were found this way
(benchmarks/README.md, "Where the time goes, by XLA operation").

What it cannot see: XLA:CPU runs convolutions through Eigen's thread pool without per-operation
events, so their time is not in the table; it shows as the difference between a call's wall time
and the busiest thread's operation time. Python-side events (``$``) are left out: the profiler's
Python tracer inflates them.
"""

import argparse
import collections
import glob
import gzip
import json
import re
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


def train_step_case(batch):
    from bench_train_step import make_batch

    from mrcnn_jax.config import small_config
    from mrcnn_jax.model import MaskRCNN
    from mrcnn_jax.training import make_optimizer, train_step

    model = MaskRCNN(small_config(), rngs=nnx.Rngs(0))
    optimizer = make_optimizer(model, learning_rate=0.01, warmup_steps=10)
    data = jax.tree.map(jnp.asarray, make_batch(batch, 128))
    key = jax.random.key(0)
    calls = iter(range(10**9))

    def call():
        return train_step(model, optimizer, data, jax.random.fold_in(key, next(calls)))

    return call, lambda: train_step.lower(model, optimizer, data, key).compile().as_text()


def predict_case(config, images):
    from mrcnn_jax.inference import predict
    from mrcnn_jax.model import MaskRCNN

    model = MaskRCNN(config, rngs=nnx.Rngs(0))
    images = jnp.asarray(images)
    return (lambda: predict(model, images),
            lambda: predict.lower(model, images).compile().as_text())


def make_case(what, batch):
    from mrcnn_jax.config import resnet50_fpn_config, shapes_config

    rng = np.random.default_rng(0)
    if what == "train_step":
        return train_step_case(batch)
    if what == "predict_r50":
        images = rng.integers(0, 255, (1, 800, 1088, 3), dtype=np.uint8)
        return predict_case(resnet50_fpn_config(image_size=(800, 1088)), images)
    images = rng.integers(0, 255, (batch, 128, 128, 3), dtype=np.uint8)
    return predict_case(shapes_config(), images)


def trace_events(call, calls):
    directory = tempfile.mkdtemp(prefix="profile_ops_")
    walls = []
    with jax.profiler.trace(directory, create_perfetto_trace=True):
        for _ in range(calls):
            start = time.perf_counter()
            jax.block_until_ready(call())
            walls.append(time.perf_counter() - start)
    path = glob.glob(f"{directory}/**/*.json.gz", recursive=True)[0]
    events = json.load(gzip.open(path))
    events = events["traceEvents"] if isinstance(events, dict) else events
    return events, walls


def is_operation(name):
    skip = ("$", "end:", "Thunk", "Pjit", "block_until", "Threadpool", "Transpose", "DevicePut",
            "H2D", "ParseArguments", "SlinkyThreadPool")
    return not name.startswith(skip)


def hlo_definitions(text):
    """``{instruction name: (output shape, JAX op_name)}`` from compiled HLO text."""
    table = {}
    for line in text.splitlines():
        match = re.match(r"\s*(?:ROOT )?%?([\w.-]+) = (\S+)", line)
        if match and match.group(1) not in table:
            origin = re.search(r'op_name="([^"]+)"', line)
            table[match.group(1)] = (match.group(2), origin.group(1) if origin else "")
    return table


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--what", choices=("train_step", "predict_r50", "predict_shapes"),
                        default="train_step")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--calls", type=int, default=5, help="traced calls (after 2 warm-ups)")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args(argv)

    call, hlo_text = make_case(args.what, args.batch)
    for _ in range(2):
        jax.block_until_ready(call())
    events, walls = trace_events(call, args.calls)
    definitions = hlo_definitions(hlo_text())

    per_op, per_thread = collections.Counter(), collections.Counter()
    for event in events:
        if event.get("ph") == "X" and is_operation(event["name"]):
            per_op[event["name"]] += event["dur"]
            per_thread[event.get("tid")] += event["dur"]
    n = args.calls
    busiest = max(per_thread.values()) / n / 1000
    print(f"{args.what} on {jax.devices()[0].device_kind}: wall {np.median(walls) * 1000:.0f} ms "
          f"per call (median of {n}, traced); operation time {sum(per_op.values()) / n / 1000:.0f}"
          f" ms over all threads, busiest thread {busiest:.0f} ms (the rest of the wall time is "
          "mostly Eigen convolutions, which have no events)")
    print(f"\n{'ms/call':>8}  {'operation':30s} {'output':34s} origin")
    for name, total in per_op.most_common(args.top):
        shape, origin = definitions.get(name, ("?", ""))
        print(f"{total / n / 1000:8.2f}  {name:30s} {shape[:34]:34s} {origin[:70]}")
    groups = collections.Counter()
    for name, total in per_op.items():
        shape, origin = definitions.get(name, ("?", ""))
        kind = re.sub(r"\.\d+$", "", name).split("_fusion")[0]
        groups[f"{kind} | {'/'.join(origin.split('/')[1:3])[:60]}"] += total
    print(f"\n{'ms/call':>8}  kind | origin")
    for key, total in groups.most_common(args.top):
        print(f"{total / n / 1000:8.2f}  {key}")


if __name__ == "__main__":
    main()
