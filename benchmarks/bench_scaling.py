"""Training images/s against the number of devices, float32 against bfloat16.

    python benchmarks/bench_scaling.py                          # 1, 2, 4, 8 forced CPU devices
    python benchmarks/bench_scaling.py --devices 1 8 --steps 5 --batch_size 16
    python benchmarks/bench_scaling.py --platform gpu --devices 1  # a real accelerator

Each configuration runs in its own process (JAX fixes the device count at start; on CPU the
count is forced with ``--xla_force_host_platform_device_count``): the ``shapes_config`` model
at 128x128, a fixed global batch of synthetic rectangles, the data-parallel step of
``mrcnn_jax.sharding`` (compile excluded: two warm-up steps), then the median of ``--steps``
timed steps. It also prints the step-0 loss, which for a given seed differs between float32
and bfloat16 only by bfloat16's rounding.

What forced CPU devices can show: that the same step runs partitioned over N devices (the
batch split, the gradient all-reduce) and what the partitioning costs. What they cannot show:
speed-up. The N "devices" are slices of the same CPU cores (2 on the project's machine), so
the total compute is the same and images/s can only stay flat or fall. bfloat16 on a CPU
without native bf16 matmul units is emulated and slower; its speed-up needs a GPU or TPU.
"""

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np


def synthetic_batch(batch_size, size=128, slots=8, seed=0):
    """Rectangles of 3 classes on grey, full masks, ``slots`` padded ground truth."""
    rng = np.random.default_rng(seed)
    images = np.full((batch_size, size, size, 3), 128, np.uint8)
    boxes = np.zeros((batch_size, slots, 4), np.float32)
    masks = np.zeros((batch_size, slots, size, size), np.uint8)
    labels = np.zeros((batch_size, slots), np.int32)
    for i in range(batch_size):
        for j in range(rng.integers(1, 5)):
            x, y = rng.integers(0, size - 40, size=2)
            w, h = rng.integers(12, 40, size=2)
            images[i, y:y + h, x:x + w] = (70 * (j % 3 + 1), 200 - 50 * (j % 3), 90)
            masks[i, j, y:y + h, x:x + w] = 1
            boxes[i, j], labels[i, j] = (x, y, x + w, y + h), 1 + j % 3
    return {"images": images, "boxes": boxes, "labels": labels, "masks": masks,
            "valid": labels > 0}


def child(devices, dtype, batch_size, steps):
    """One configuration, in this process: print a JSON line with its figures."""
    import jax
    from flax import nnx

    from mrcnn_jax import sharding
    from mrcnn_jax.config import shapes_config
    from mrcnn_jax.model import MaskRCNN
    from mrcnn_jax.training import make_optimizer

    mesh = sharding.make_mesh(devices)
    model = MaskRCNN(shapes_config().replace(dtype=dtype), rngs=nnx.Rngs(0))
    optimizer = make_optimizer(model, 0.02, warmup_steps=10, total_steps=100)
    sharding.replicate(mesh, model, optimizer)
    batch = sharding.shard_batch(synthetic_batch(batch_size), mesh)
    key = jax.random.key(0)
    times, first_loss = [], None
    for step in range(steps + 2):
        start = time.perf_counter()
        terms = sharding.train_step(model, optimizer, batch, jax.random.fold_in(key, step), mesh)
        loss = float(terms["loss"])  # waits for the step
        if step == 0:
            first_loss = loss
        if step >= 2:
            times.append(time.perf_counter() - start)
    seconds = float(np.median(times))
    print(json.dumps({"devices": devices, "dtype": dtype, "platform": jax.default_backend(),
                      "step_s": seconds, "images_per_s": batch_size / seconds,
                      "step0_loss": first_loss}))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--batch_size", type=int, default=8, help="global batch")
    parser.add_argument("--steps", type=int, default=5, help="timed steps after 2 warm-up")
    parser.add_argument("--platform", default="cpu", help="cpu forces the device count")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(int(args.child[0]), args.child[1], args.batch_size, args.steps)
        return
    rows = []
    for dtype in args.dtypes:
        for n in args.devices:
            env = dict(os.environ, JAX_PLATFORMS=args.platform)
            if args.platform == "cpu":
                env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={n}"
            done = subprocess.run([sys.executable, __file__, "--child", str(n), dtype,
                                   "--batch_size", str(args.batch_size), "--steps",
                                   str(args.steps)], env=env, capture_output=True, text=True)
            if done.returncode:
                raise RuntimeError(f"{n} devices, {dtype} failed:\n{done.stderr[-2000:]}")
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            r = rows[-1]
            print(f"{r['platform']} x{n:<2d} {dtype:9s} global batch {args.batch_size}: "
                  f"{r['step_s'] * 1e3:7.0f} ms/step {r['images_per_s']:6.1f} images/s  "
                  f"step-0 loss {r['step0_loss']:.5f}", flush=True)
    by = {(r["devices"], r["dtype"]): r for r in rows}
    for n in args.devices:
        if (n, "float32") in by and (n, "bfloat16") in by:
            a, b = by[(n, "float32")], by[(n, "bfloat16")]
            print(f"x{n}: step-0 loss bf16 - f32 = {b['step0_loss'] - a['step0_loss']:+.5f} "
                  f"({(b['step0_loss'] - a['step0_loss']) / a['step0_loss']:+.2%}); "
                  f"bf16/f32 images/s = {b['images_per_s'] / a['images_per_s']:.2f}")


if __name__ == "__main__":
    main()
