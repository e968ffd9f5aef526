"""Train a tiny torchvision Mask R-CNN on shapes; ship it as data/torchvision_shapes_example.npz.

    python tools/export_torchvision_example.py                  # ~5 min of training, export, check
    python tools/export_torchvision_example.py --check_only     # check the file against our model

Notebook 11's offline path needs torchvision weights that nobody has to download: this is a
torchvision ``MaskRCNN`` (needs torch) built by ``bench_train_step.torchvision_small_maskrcnn``
from :func:`tiny_config` (ResNet-18 layout, widths 8-64, stem 8, GroupNorm with 4 groups, FPN 32,
box head 64, mask head 4 x 32), trained by ``bench_train_shapes.train_torchvision`` on the main
job's shapes data, evaluated on the 500 held-out images, and exported by
``bench_train_shapes.export_torchvision`` with float16 weights (the references are torchvision's
predictions with the rounded weights, so they stay exact). It is *not* a COCO model.

The check, which needs no torch: ``mrcnn_jax.weights.from_torchvision`` loads the file's state
dict with the file's config, ``predict`` runs on the stored images, and for each image the
detections scoring above 0.5 must equal torchvision's: same count and labels, boxes within
0.5 px, mask IoU at least 0.98.
"""

import argparse
import json
import pathlib
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
OUT = ROOT / "data" / "torchvision_shapes_example.npz"
SCORE = 0.5  # detections compared: those above torchvision's usual display threshold


def tiny_config():
    """``small_config()`` narrowed so the exported file stays under ~1 MB and still learns."""
    import dataclasses

    from mrcnn_jax.config import small_config

    config = small_config()
    return config.replace(
        fpn_channels=32,
        backbone=dataclasses.replace(config.backbone, stem_width=8, widths=(8, 16, 32, 64),
                                     group_norm_groups=4),  # 4 divides every width
        roi_heads=dataclasses.replace(config.roi_heads, representation_size=64,
                                      mask_layers=(32, 32, 32, 32)),
    )


def train_and_export(args):
    import bench_train_shapes as bench

    from mrcnn_jax.data import make_loader, shapes_source

    bench.require_torch(args.threads)
    config = tiny_config()
    model = bench.build_torchvision(config, seed=0)
    print(f"tiny torchvision MaskRCNN: {sum(p.numel() for p in model.parameters()):,} parameters")
    source = shapes_source("train", None, **bench.DATA)
    loader = make_loader(source, bench.BATCH, image_size=bench.DATA["image_size"],
                         max_instances=bench.MAX_INSTANCES, seed=0, num_epochs=None)
    log = bench.train_torchvision(model, loader, args.steps, args.minutes, args.lr, args.warmup)
    print(f"trained {log['steps']} steps in {log['seconds'] / 60:.1f} min "
          f"({bench.images_per_s(log['step_times']):.1f} images/s)")
    bench.round_weights(model, np.float16)  # evaluate what is shipped
    val_loader, names = bench.eval_loader(args.num_eval)
    results = bench.evaluate_torchvision(model, val_loader, names)
    print(f"float16 weights, {args.num_eval} held-out images: mask AP {results['segm']['AP']:.3f} "
          f"(AP50 {results['segm']['AP50']:.3f}), box AP {results['bbox']['AP']:.3f}")
    summary = {"steps": log["steps"], "minutes": log["seconds"] / 60,
               "num_eval": args.num_eval, "results": results}
    images = next(iter(bench.eval_loader(4)[0]))["images"]
    path = bench.export_torchvision(args.out, model, config, names, images, np.float16,
                                    extra={"reference/training": np.array(json.dumps(summary))})
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")


def mask_iou(a, b):
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else np.logical_and(a, b).sum() / union


def check(path):
    """Our ``predict`` on the file's images against torchvision's stored detections.

    Returns the largest box difference (px) and the smallest mask IoU; raises AssertionError.
    """
    import jax.numpy as jnp

    from mrcnn_jax.checkpoints import config_from_dict
    from mrcnn_jax.import_torchvision import load_state_dict
    from mrcnn_jax.inference import predict
    from mrcnn_jax.weights import from_torchvision

    f = np.load(path)
    state = load_state_dict(path)  # every key but reference/...
    config = config_from_dict(json.loads(str(f["reference/config"])))
    model = from_torchvision(state, config)
    images = f["reference/images"]
    out = {k: np.asarray(v) for k, v in predict(model, jnp.asarray(images)).items()}
    worst_box, worst_iou, worst_score = 0.0, 1.0, 0.0
    for i in range(len(images)):
        keep = out["valid"][i] & (out["scores"][i] > SCORE)
        ref = f[f"reference/{i}/scores"] > SCORE
        assert keep.sum() == ref.sum(), (i, keep.sum(), ref.sum())
        assert (out["labels"][i][keep] == f[f"reference/{i}/labels"][ref]).all(), i
        box_diff = np.abs(out["boxes"][i][keep] - f[f"reference/{i}/boxes"][ref])
        score_diff = np.abs(out["scores"][i][keep] - f[f"reference/{i}/scores"][ref])
        worst_box = max(worst_box, float(box_diff.max(initial=0)))
        worst_score = max(worst_score, float(score_diff.max(initial=0)))
        for ours, theirs in zip(out["masks"][i][keep] > 0.5, f[f"reference/{i}/masks"][ref],
                                strict=True):
            worst_iou = min(worst_iou, mask_iou(ours, theirs))
        print(f"image {i}: {int(keep.sum())} detections above {SCORE}, labels equal")
    print(f"largest box difference {worst_box:.2e} px, largest score difference "
          f"{worst_score:.2e}, smallest mask IoU {worst_iou:.4f}")
    assert worst_box < 0.5 and worst_iou >= 0.98, (worst_box, worst_iou)
    return worst_box, worst_iou


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(OUT))
    p.add_argument("--minutes", type=float, default=5.0, help="training budget")
    p.add_argument("--steps", type=int, default=600, help="planned steps (schedule span)")
    p.add_argument("--lr", type=float, default=0.02)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--num_eval", type=int, default=500, help="held-out images scored")
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument("--check_only", action="store_true", help="only compare --out with ours")
    args = p.parse_args(argv)
    if not args.check_only:
        start = time.perf_counter()
        train_and_export(args)
        print(f"train, evaluate and export: {(time.perf_counter() - start) / 60:.1f} min")
    check(args.out)


if __name__ == "__main__":
    main()
