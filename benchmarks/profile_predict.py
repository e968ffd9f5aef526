"""Where ``predict``'s time goes, stage by stage (issue 19: ``predict`` against torchvision).

    python benchmarks/profile_predict.py                   # R50-FPN, one 800x1088 image
    python benchmarks/profile_predict.py --case shapes     # shapes_config, 8 images of 128x128

Each row jits a program that runs inference up to a stage and times it (median of
``--repeats`` calls after one compile call); a stage's own cost is its row minus the row
before. Weights are random (nothing is downloaded; the time does not depend on them) and the
detection score threshold is 0, as in ``bench_predict.py``, so every detection slot is filled
and its mask computed and pasted. The cut points:

1. ``body``: normalisation and the ResNet body (C2-C5);
2. ``+ fpn``: P2-P6;
3. ``+ proposals``: the RPN head, decoding, top-k per level and NMS;
4. ``+ box head, detect``: RoIAlign 7x7 of the proposals, the box head, per-class decoding,
   score filter and the batched NMS to ``D`` detections;
5. ``+ mask head``: RoIAlign 14x14 of the detections and the mask head (with the mirrored
   image's pass when the config's ``mask_flip_test`` asks for it);
6. ``predict``: the whole jitted ``mrcnn_jax.predict``, pasting the masks into the image.
"""

import argparse
import dataclasses
import time

import jax
import numpy as np
from flax import nnx

from mrcnn_jax.config import resnet50_fpn_config, shapes_config
from mrcnn_jax.inference import detections, predict, predict_raw
from mrcnn_jax.model import MaskRCNN


def stages(images):
    """``name -> fn(model) -> outputs``: inference cut after each stage."""
    return {
        "body": lambda m: m.body(m.normalize(images)),
        "+ fpn": lambda m: m.features(images),
        "+ proposals": lambda m: m.proposals(m.features(images), training=False)["proposals"],
        "+ box head, detect": lambda m: detections(m, m.features(images)),
        "+ mask head": lambda m: predict_raw(m, images),
        "predict (+ paste)": lambda m: predict(m, images),
    }


def time_fn(fn, model, repeats):
    jitted = nnx.jit(fn)
    start = time.perf_counter()
    jax.block_until_ready(jitted(model))
    compile_s = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(jitted(model))
        times.append(time.perf_counter() - start)
    return compile_s, float(np.median(times))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=("r50", "shapes"), default="r50")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    if args.case == "r50":
        config, shape = resnet50_fpn_config(image_size=(800, 1088)), (1, 800, 1088, 3)
    else:
        config, shape = shapes_config(image_size=(128, 128)), (8, 128, 128, 3)
    config = config.replace(roi_heads=dataclasses.replace(config.roi_heads, score_threshold=0.0))
    model = MaskRCNN(config, rngs=nnx.Rngs(0))
    images = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    print(f"{args.case}: {shape[0]} image(s) of {shape[1]}x{shape[2]}, "
          f"{config.roi_heads.detections_per_image} detections, "
          f"mask_flip_test={config.roi_heads.mask_flip_test}, {jax.devices()[0].platform}")
    print(f"{'stage':22s}{'compile s':>10s}{'cumulative s':>14s}{'own s':>9s}")
    previous = 0.0
    for name, fn in stages(images).items():
        compile_s, seconds = time_fn(fn, model, args.repeats)
        print(f"{name:22s}{compile_s:10.1f}{seconds:14.3f}{seconds - previous:9.3f}", flush=True)
        previous = seconds


if __name__ == "__main__":
    main()
