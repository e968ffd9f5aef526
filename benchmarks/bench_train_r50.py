"""One R50-FPN training step at 800x1344, float32 and bfloat16; torchvision's on the same device.

    python benchmarks/bench_train_r50.py                       # 2 images, 10 timed steps each
    python benchmarks/bench_train_r50.py --steps 5 --no_torchvision
    python benchmarks/bench_train_r50.py --torch_device cuda   # on a GPU

Ours: ``resnet50_fpn_config(image_size=(800, 1344))`` (torchvision's ``maskrcnn_resnet50_fpn``
layers, 91 classes, random initialisation, frozen BatchNorm, the first two stages frozen),
``training.train_step`` jitted with SGD + momentum, ``--dtype`` float32 and bfloat16 (compute
only: parameters, norms, losses and box geometry stay float32). torchvision:
``maskrcnn_resnet50_fpn(weights=None, weights_backbone=None)`` in train mode with
``min_size=800, max_size=1344`` (no resizing), SGD + momentum, in float32 and under
``torch.autocast(dtype=torch.bfloat16)``. Both get the same synthetic batch (rectangles with
full masks, 3 objects per image). Reported: the first step of ours (compile included), then the
median of ``--steps`` steps after ``--warmup`` untimed ones; every step waits for its result
(``jax.block_until_ready``; ``torch.cuda.synchronize``). A CPU takes minutes per step here;
this is meant for a GPU or TPU.
"""

import argparse
import time

import numpy as np


def make_batch(batch_size, height, width, slots=8, objects=3, seed=0):
    """Rectangles on noise, full-size masks, ``slots`` padded ground-truth entries."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 255, (batch_size, height, width, 3)).astype(np.uint8)
    boxes = np.zeros((batch_size, slots, 4), np.float32)
    masks = np.zeros((batch_size, slots, height, width), np.uint8)
    labels = np.zeros((batch_size, slots), np.int32)
    for b in range(batch_size):
        for j in range(objects):
            x, y = rng.integers(0, (width * 5 // 8, height * 5 // 8))
            w = rng.integers(width // 8, width * 3 // 8)
            h = rng.integers(height // 8, height * 3 // 8)
            boxes[b, j] = [x, y, x + w, y + h]
            masks[b, j, y:y + h, x:x + w] = 1
            images[b, y:y + h, x:x + w] = rng.integers(0, 256, 3)
            labels[b, j] = 1 + (7 * j) % 90
    return {"images": images, "boxes": boxes, "labels": labels, "masks": masks,
            "valid": labels > 0}


def median_after(step, warmup, steps):
    """(seconds of the first call, median seconds of ``steps`` calls after ``warmup`` more)."""
    start = time.perf_counter()
    step(0)
    first = time.perf_counter() - start
    for i in range(warmup):
        step(1 + i)
    times = []
    for i in range(steps):
        start = time.perf_counter()
        step(1 + warmup + i)
        times.append(time.perf_counter() - start)
    return first, float(np.median(times))


def time_ours(batch, dtype, warmup, steps):
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from mrcnn_jax.config import resnet50_fpn_config
    from mrcnn_jax.model import MaskRCNN
    from mrcnn_jax.training import make_optimizer, train_step

    height, width = batch["images"].shape[1:3]
    config = resnet50_fpn_config(image_size=(height, width)).replace(dtype=dtype)
    model = MaskRCNN(config, rngs=nnx.Rngs(0))
    optimizer = make_optimizer(model, learning_rate=0.01, warmup_steps=10)
    batch = jax.tree.map(jnp.asarray, batch)
    key = jax.random.key(0)
    losses = []

    def step(i):
        out = train_step(model, optimizer, batch, jax.random.fold_in(key, i))
        losses.append(float(out["loss"]))  # waits for the step

    first, median = median_after(step, warmup, steps)
    return {"first_step_s": first, "median_s": median, "loss0": losses[0],
            "finite": bool(np.isfinite(losses).all())}


def time_torchvision(batch, dtype, warmup, steps, device):
    import torch
    import torchvision

    torch.manual_seed(0)
    height, width = batch["images"].shape[1:3]
    model = torchvision.models.detection.maskrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, min_size=height, max_size=width).to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    images = [t.to(device) for t in
              torch.from_numpy(batch["images"]).permute(0, 3, 1, 2).float().div(255.0)]
    targets = [{"boxes": torch.from_numpy(b[v]).to(device),
                "labels": torch.from_numpy(lab[v]).long().to(device),
                "masks": torch.from_numpy(m[v]).to(device)}
               for b, lab, m, v in zip(batch["boxes"], batch["labels"], batch["masks"],
                                       batch["valid"], strict=True)]
    losses = []

    def step(i):
        with torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16,
                            enabled=dtype == "bfloat16"):
            loss = sum(model(images, targets).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss))  # waits for the step
        if device != "cpu":
            torch.cuda.synchronize()

    first, median = median_after(step, warmup, steps)
    return {"first_step_s": first, "median_s": median, "loss0": losses[0],
            "finite": bool(np.isfinite(losses).all())}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--size", type=int, nargs=2, default=[800, 1344], metavar=("H", "W"))
    p.add_argument("--steps", type=int, default=10, help="timed steps (median)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps after the first")
    p.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    p.add_argument("--torch_device", default="cpu")
    p.add_argument("--no_torchvision", action="store_true")
    args = p.parse_args(argv)
    import jax

    print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}; batch {args.batch} of "
          f"{args.size[0]}x{args.size[1]}; median of {args.steps} steps", flush=True)
    batch = make_batch(args.batch, *args.size)
    rows = []
    for dtype in args.dtypes:
        sides = [("ours", lambda d=dtype: time_ours(batch, d, args.warmup, args.steps))]
        if not args.no_torchvision:
            sides.append(("torchvision", lambda d=dtype: time_torchvision(
                batch, d, args.warmup, args.steps, args.torch_device)))
        for name, run in sides:
            r = run()
            rows.append({"side": name, "dtype": dtype, **r})
            print(f"{name:11s} {dtype:8s}: {r['median_s'] * 1e3:8.1f} ms/step "
                  f"({args.batch / r['median_s']:6.2f} images/s), first step "
                  f"{r['first_step_s']:.1f} s, step-0 loss {r['loss0']:.4f}, finite "
                  f"{r['finite']}", flush=True)
    return rows


if __name__ == "__main__":
    main()
