"""Prediction images/s: ours against torchvision with the same weights, in the same run.

    python benchmarks/bench_predict.py                     # both cases, 5 timed calls each
    python benchmarks/bench_predict.py --quick             # 2 timed calls each (a smoke test)
    python benchmarks/bench_predict.py --cases shapes --repeats 20 --json out.json
    python benchmarks/bench_predict.py --no_torchvision    # ours only (torch makes the weights)

Cases (nothing is downloaded; weights are random, made by torchvision with ``torch.manual_seed``
and loaded into ours with ``mrcnn_jax.from_torchvision``, so both sides hold the same tensors):
- ``r50``: torchvision's ``maskrcnn_resnet50_fpn`` (91 classes, torchvision's eval defaults:
  1000 proposals per image, 100 detections) on **one 800x1088 image**, a size torchvision's
  transform neither resizes (min side 800, long side under 1333) nor pads (multiples of 32);
- ``shapes``: the ``shapes_config`` model (ResNet-18 GroupNorm FPN, 4 classes) at **128x128,
  a batch of 8**, torchvision's side built by ``bench_train_step.torchvision_small_maskrcnn``
  with the preset's proposal and detection counts; when the preset averages masks with the
  mirrored image's (``mask_flip_test``) torchvision does the same (``bench_train_shapes``).

The same work on both sides: ``--score_thresh`` (default 0) replaces both models' detection
score threshold. With random weights the R50 classifier's scores are about 1/91, under
torchvision's usual 0.05, so torchvision would keep no detection and skip its mask head while
ours (static shapes) always computes and pastes all ``D`` masks; at 0 both keep 100 detections
per image and paste 100 full-size masks.

Timing: ours is the jitted ``mrcnn_jax.predict`` on uint8 images (normalisation inside),
``jax.block_until_ready`` on every output; torchvision is ``model(images)`` under
``torch.no_grad()`` in eval mode on float images in [0, 1] (its transform normalises). The
first ``--warmup`` calls are left out (ours compiles in the first, printed apart), then the
median of ``--repeats`` calls. Both run on this machine's CPU (or ours on the accelerator JAX
finds) with every core this process may use (``--threads`` for torch).
"""

import argparse
import dataclasses
import json
import os
import pathlib
import platform
import sys
import time

import numpy as np

# torch's OpenMP threads spin at barriers by default, which costs a lot on a shared machine
# (benchmarks/bench_train_shapes.py); set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))


def cpu_model():
    """The CPU's model name from ``/proc/cpuinfo`` (Linux), else ``platform.processor()``."""
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def test_images(count, height, width, seed=0):
    """``(count, H, W, 3)`` uint8: coloured rectangles on grey (any content times the same)."""
    rng = np.random.default_rng(seed)
    images = np.full((count, height, width, 3), 120, np.uint8)
    for image in images:
        for _ in range(6):
            y, x = rng.integers(0, (height * 3 // 4, width * 3 // 4))
            h, w = rng.integers(height // 10, height // 4), rng.integers(width // 10, width // 4)
            image[y:y + h, x:x + w] = rng.integers(0, 256, 3)
    return images


def with_score_threshold(config, threshold):
    return config.replace(roi_heads=dataclasses.replace(config.roi_heads,
                                                        score_threshold=threshold))


def r50_case(score_thresh):
    """torchvision's random ``maskrcnn_resnet50_fpn``, ours with its tensors, 1 image."""
    import torch
    import torchvision

    from mrcnn_jax import from_torchvision
    from mrcnn_jax.config import resnet50_fpn_config

    torch.manual_seed(0)
    tv = torchvision.models.detection.maskrcnn_resnet50_fpn(weights=None, weights_backbone=None)
    tv.roi_heads.score_thresh = score_thresh
    config = with_score_threshold(resnet50_fpn_config(image_size=(800, 1088)), score_thresh)
    ours = from_torchvision(tv.state_dict(), config)
    return ours, tv, test_images(1, 800, 1088), False


def shapes_case(score_thresh):
    """The ``shapes_config`` model from torchvision (random); ours with its tensors, 8 images."""
    from bench_train_shapes import build_torchvision

    from mrcnn_jax import from_torchvision
    from mrcnn_jax.config import shapes_config

    config = with_score_threshold(shapes_config(image_size=(128, 128)), score_thresh)
    tv = build_torchvision(config, seed=0)  # the preset's test-time counts and threshold
    ours = from_torchvision(tv.state_dict(), config)
    return ours, tv, test_images(8, 128, 128), config.roi_heads.mask_flip_test


def time_calls(call, warmup, repeats):
    """(seconds of the first call, median seconds of ``repeats`` calls after ``warmup``)."""
    start = time.perf_counter()
    call()
    first = time.perf_counter() - start
    for _ in range(warmup - 1):
        call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return first, float(np.median(times))


def time_ours(model, images, warmup, repeats):
    import jax
    import jax.numpy as jnp

    from mrcnn_jax.inference import predict

    def call():
        out = predict(model, jnp.asarray(images))
        jax.block_until_ready(out)
        return out

    first, median = time_calls(call, warmup, repeats)
    detections = int(np.asarray(call()["valid"]).sum()) / len(images)
    return {"first_call_s": first, "median_s": median, "images_per_s": len(images) / median,
            "detections_per_image": detections}


def time_torchvision(model, images, warmup, repeats, mask_flip_test, device="cpu"):
    import torch

    model.eval().to(device)
    tensors = [t.to(device) for t in
               torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255.0)]

    def call():
        if mask_flip_test:  # the mirrored-mask average ours does; numpy outputs
            from bench_train_shapes import torchvision_predict

            if device != "cpu":
                raise ValueError("mask_flip_test is timed on the CPU only")
            return torchvision_predict(model, images, mask_flip_test=True)
        with torch.no_grad():
            out = model(tensors)
        if device != "cpu":
            torch.cuda.synchronize()  # CUDA runs asynchronously: wait for the outputs
        return out

    first, median = time_calls(call, warmup, repeats)
    detections = sum(len(o["scores"]) for o in call()) / len(images)
    return {"first_call_s": first, "median_s": median, "images_per_s": len(images) / median,
            "detections_per_image": detections}


CASES = {"r50": ("R50-FPN, 1 image 800x1088", r50_case),
         "shapes": ("shapes_config, 8 images 128x128", shapes_case)}


def run_case(name, args):
    title, build = CASES[name]
    ours_model, tv_model, images, flip = build(args.score_thresh)
    row = {"case": name, "title": title, "batch": len(images),
           "image_size": list(images.shape[1:3])}
    row["ours"] = time_ours(ours_model, images, args.warmup, args.repeats)
    o = row["ours"]
    print(f"{title}: ours        {o['images_per_s']:7.2f} images/s  ({o['median_s'] * 1e3:8.1f} "
          f"ms per call, first call {o['first_call_s']:.1f} s, "
          f"{o['detections_per_image']:.0f} detections/image)", flush=True)
    if tv_model is not None and not args.no_torchvision:
        row["torchvision"] = time_torchvision(tv_model, images, args.warmup, args.repeats, flip,
                                              args.torch_device)
        t = row["torchvision"]
        row["ratio"] = o["images_per_s"] / t["images_per_s"]
        print(f"{title}: torchvision {t['images_per_s']:7.2f} images/s  "
              f"({t['median_s'] * 1e3:8.1f} ms per call, first call {t['first_call_s']:.1f} s, "
              f"{t['detections_per_image']:.0f} detections/image)")
        print(f"{title}: ours / torchvision = {row['ratio']:.2f}", flush=True)
    return row


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", nargs="+", choices=sorted(CASES), default=["r50", "shapes"])
    p.add_argument("--repeats", type=int, default=5, help="timed calls per side (median)")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls first (ours compiles)")
    p.add_argument("--quick", action="store_true", help="2 timed calls per side")
    p.add_argument("--score_thresh", type=float, default=0.0,
                   help="detection score threshold of both models (module docstring)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads (default: every core this process may use)")
    p.add_argument("--torch_device", default="cpu", help="torchvision's device (cuda on a GPU)")
    p.add_argument("--no_torchvision", action="store_true", help="time ours only")
    p.add_argument("--json", default=None, help="also write the figures to this file")
    args = p.parse_args(argv)
    if args.quick:
        args.repeats = 2
    args.warmup = max(args.warmup, 1)
    return args


def main(argv=None):
    args = parse_args(argv)
    import jax

    try:  # torchvision makes the weights of both sides, so torch is needed even without timing it
        import torch
    except ImportError as error:
        raise SystemExit("needs torch and torchvision (they make the weights of both sides): "
                         f"pip install torch==2.14.1 torchvision==0.29.1 ({error})") from error
    threads = args.threads or len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    machine = {"cpu": cpu_model(), "cores": len(os.sched_getaffinity(0)),
               "jax": jax.__version__, "jax_backend": jax.default_backend(),
               "jax_device": jax.devices()[0].device_kind, "torch": torch.__version__,
               "torch_threads": threads, "torch_device": args.torch_device}
    print(f"CPU: {machine['cpu']}, {machine['cores']} core(s) for this process; jax "
          f"{machine['jax']} on {machine['jax_backend']} ({machine['jax_device']}); torch "
          f"{machine['torch']} on {args.torch_device} with {threads} thread(s); median of "
          f"{args.repeats} calls after {args.warmup} warm-up", flush=True)
    rows = [run_case(name, args) for name in args.cases]
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps({"machine": machine, "args": vars(args),
                                                       "rows": rows}, indent=1))
    return rows


if __name__ == "__main__":
    main()
