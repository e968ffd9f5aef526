"""Evaluate a model on a data split with COCO metrics: ``python -m mrcnn_jax.evaluate``.

    python -m mrcnn_jax.evaluate --workdir outputs/shapes            # latest checkpoint there
    python -m mrcnn_jax.evaluate --workdir outputs/shapes --num_val 500 --out results.json

Runs the jitted ``predict`` over the split in fixed-size batches (no shuffling, no flips),
turns detections and ground truth into COCO dicts, scores them with the project's own
``coco_evaluate`` (equal to pycocotools), prints the standard table and writes the detections
as a COCO results JSON. ``--check_pycocotools`` also runs pycocotools on the same input and
reports the largest difference.

Shape shorthand: ``B`` batch, ``D`` detections, ``G`` ground-truth slots, ``H, W`` image.
Taught in notebooks/10_inference_and_evaluation.
"""

import argparse
import contextlib
import io
import json
import pathlib

import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from mrcnn_jax.coco_masks import masks_to_rle
from mrcnn_jax.evaluation import STAT_NAMES, coco_evaluate, detections_to_coco, print_table
from mrcnn_jax.inference import predict


def full_batch_size(num_images, requested):
    """The largest batch size <= ``requested`` dividing ``num_images``, so batches with
    ``drop_remainder`` still cover every image (500 images, 8 asked -> 5)."""
    return max(d for d in range(1, max(1, min(requested, num_images)) + 1) if num_images % d == 0)


def ground_truth_to_coco(batch, class_names, image_ids):
    """COCO images and annotations of one batch (full-image masks, package xyxy boxes)."""
    images, annotations = [], []
    _, _, h, w = batch["masks"].shape
    for i, image_id in enumerate(image_ids):
        images.append({"id": int(image_id), "height": int(h), "width": int(w)})
        for g in np.flatnonzero(batch["valid"][i]):
            x1, y1, x2, y2 = (float(v) for v in batch["boxes"][i, g])
            rle = masks_to_rle(batch["masks"][i, g][None].astype(bool))[0]
            annotations.append({
                "id": len(annotations) + 1, "image_id": int(image_id),
                "category_id": int(batch["labels"][i, g]), "bbox": [x1, y1, x2 - x1, y2 - y1],
                "area": float(batch["masks"][i, g].sum()), "iscrowd": 0, "segmentation": rle,
            })
    return images, annotations


def evaluate_model(model, loader, class_names, progress=True):
    """Predict over ``loader`` and score with ``coco_evaluate``.

    Returns ``(results, ground_truth, detections)``: the ``{"bbox": {...}, "segm": {...}}``
    metrics and the COCO-format inputs they came from.
    """
    images, annotations, detections = [], [], []
    next_id = 0
    for batch in tqdm(loader, desc="evaluate", unit="batch", disable=not progress):
        out = {k: np.asarray(v) for k, v in predict(model, jnp.asarray(batch["images"])).items()}
        ids = list(range(next_id, next_id + len(batch["images"])))  # unique even if records repeat
        next_id += len(ids)
        imgs, anns = ground_truth_to_coco(batch, class_names, ids)
        for ann in anns:
            ann["id"] += len(annotations)
        images += imgs
        annotations += anns
        for i, image_id in enumerate(ids):
            detections += detections_to_coco(image_id, out["boxes"][i], out["scores"][i],
                                             out["labels"][i], out["masks"][i], out["valid"][i])
    categories = [{"id": k, "name": n} for k, n in enumerate(class_names) if k > 0]
    ground_truth = {"images": images, "annotations": annotations, "categories": categories}
    return coco_evaluate(ground_truth, detections), ground_truth, detections


def pycocotools_stats(ground_truth, detections):
    """pycocotools' ``COCOeval.stats`` on the same input, as ``{iou_type: {name: value}}``."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    results = {}
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = ground_truth
        gt.createIndex()
        dt = gt.loadRes(detections)
        for iou_type in ("bbox", "segm"):
            ev = COCOeval(gt, dt, iou_type)
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
            results[iou_type] = dict(zip(STAT_NAMES, ev.stats.tolist(), strict=True))
    return results


def main(argv=None):
    from mrcnn_jax.checkpoints import restore_model
    from mrcnn_jax.data import class_names, make_loader, shapes_source

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, help="training work directory")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (latest)")
    parser.add_argument("--data_dir", default=None)
    parser.add_argument("--num_val", type=int, default=500, help="held-out shapes images")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--out", default=None, help="COCO results JSON (default in workdir)")
    parser.add_argument("--check_pycocotools", action="store_true")
    args = parser.parse_args(argv)
    model, run = restore_model(args.workdir, args.step)
    source = shapes_source("validation", args.data_dir, **run["data"] | {"num_val": args.num_val})
    batch_size = full_batch_size(len(source), args.batch_size)  # every image is evaluated
    loader = make_loader(source, batch_size, image_size=model.config.image_size[0],
                         max_instances=run["max_instances"], train=False)
    results, gt, dets = evaluate_model(model, loader, class_names(source))
    print_table(results)
    out = pathlib.Path(args.out or pathlib.Path(args.workdir) / "detections.json")
    out.write_text(json.dumps(dets))
    print(f"wrote {len(dets)} detections to {out}")
    if args.check_pycocotools:
        ref = pycocotools_stats(gt, dets)
        diff = max(abs(results[t][k] - ref[t][k]) for t in ref for k in STAT_NAMES)
        print(f"largest difference from pycocotools: {diff:.2e}")


if __name__ == "__main__":
    main()
