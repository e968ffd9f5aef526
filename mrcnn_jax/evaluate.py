"""Evaluate a model on a data split with COCO metrics: ``python -m mrcnn_jax.evaluate``.

    python -m mrcnn_jax.evaluate --workdir outputs/shapes            # latest checkpoint there
    python -m mrcnn_jax.evaluate --workdir outputs/shapes --num_val 500 --out results.json
    python -m mrcnn_jax.evaluate --workdir outputs/coco --annotations val.json --images val/
    python -m mrcnn_jax.evaluate --workdir outputs/shapes --paste_rule exact   # detectron2's paste

Runs the jitted network over the split in fixed-size batches (no shuffling, no flips), turns
detections and ground truth into COCO dicts, scores them with the project's own
``coco_evaluate`` (equal to pycocotools), prints the standard table and writes the detections
as a COCO results JSON. ``--check_pycocotools`` also runs pycocotools on the same input and
reports the largest difference.

Without ``--annotations`` the split is the run's own validation split (``run.json``'s
``data``): the shapes validation split at the model's input size, or for a run trained on
COCO-format data its validation file or held-out fraction, evaluated as below. With
``--annotations B.json --images DIR`` it is any COCO-format split, for any work directory
(trained here or written by ``import_torchvision``):

- the split is prepared once with ``prepare_coco`` into ``--data_dir`` under a name made from
  the file's path, size and modification time (reused while the file is unchanged); the skip
  counts are printed;
- the dataset's categories are matched to the model's classes (``run.json``'s
  ``class_names``, background first) **by name**: every dataset category needs a model class
  of the same name, else a ``ValueError`` lists the mismatch; a model with more classes (COCO's
  91) is fine, its detections of classes the dataset lacks are dropped and counted;
- images of any size are fitted into the model's ``image_size`` (``predict.fit_image``) and
  the detections mapped back to the original pixels (``predict.to_original``; the
  steps live in ``evaluate_coco.py``);
- the ground truth is the JSON's own entries (``bbox``, ``segmentation``, ``area``,
  ``iscrowd`` as written; a missing ``area`` is the mask's pixel count) for the images and
  annotations ``prepare_coco`` kept, and ``detections.json`` uses the dataset's original image
  and category ids, so pycocotools on the same JSON and ``detections.json`` gives the same
  figures when nothing was skipped;
- a per-category table (AP and AP50 for boxes and masks, by category name) follows the COCO
  table; the returned results hold it as ``results["per_class"]``.

Shape shorthand: ``B`` batch, ``D`` detections, ``G`` ground-truth slots, ``H, W`` model input,
``h, w`` original image. Taught in notebooks/10_inference_and_evaluation.
"""

import argparse
import contextlib
import dataclasses
import io
import json
import pathlib

import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from mrcnn_jax.coco_masks import masks_to_rle
from mrcnn_jax.evaluate_coco import (
    category_map,
    coco_split_name,
    evaluate_coco_split,
    print_per_class,
)
from mrcnn_jax.evaluation import STAT_NAMES, coco_evaluate, detections_to_coco, print_table
from mrcnn_jax.inference import predict
from mrcnn_jax.paste_masks import PASTE_RULES


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


def padded_batches(source, batch_size, image_size, max_instances):
    """Every record of ``source`` once, in order, in batches of exactly ``batch_size``.

    The last batch is filled up with copies of the last record, marked ``image_valid = False``
    (``(B,)`` bool), so a global batch always splits over the devices and no image is dropped
    or counted twice (``drop_remainder`` batches would lose the tail).
    """
    from mrcnn_jax.data import make_loader

    single = make_loader(source, 1, image_size=image_size, max_instances=max_instances,
                         train=False).dataset  # record i -> a batch of one, unshuffled
    n = len(source)
    for start in range(0, n, batch_size):
        rows = [single[min(i, n - 1)] for i in range(start, start + batch_size)]
        batch = {k: np.concatenate([r[k] for r in rows]) for k in rows[0]}
        batch["image_valid"] = np.arange(start, start + batch_size) < n  # (B,)
        yield batch


def evaluate_sharded(model, source, class_names, batch_size, mesh, *, image_size,
                     max_instances, progress=True):
    """:func:`evaluate_model` on a data-parallel mesh (``sharding.py``), every image once.

    Each global batch of ``batch_size`` (a multiple of the devices) is padded
    (:func:`padded_batches`), split over the mesh, predicted with the replicated ``model``,
    gathered, and only its valid images are scored. Every process reads the whole batch (the
    ground truth is needed where COCO runs) and feeds the devices its own rows; COCO runs on
    process 0 (others return ``(None, None, None)``). Per-image predictions do not depend on
    the batch, so the figures equal a single device's.
    """
    import jax
    from jax.experimental import multihost_utils

    from mrcnn_jax.sharding import check_batch_size, shard_batch

    check_batch_size(batch_size, mesh)
    local = batch_size // jax.process_count()
    rows = slice(jax.process_index() * local, (jax.process_index() + 1) * local)
    images, annotations, detections = [], [], []
    batches = padded_batches(source, batch_size, image_size, max_instances)
    total = -(-len(source) // batch_size)
    for batch in tqdm(batches, total=total, desc="evaluate", unit="batch",
                      disable=not progress or jax.process_index() != 0):
        sharded = shard_batch({"images": batch["images"][rows]}, mesh)["images"]
        out = predict(model, sharded)
        out = multihost_utils.process_allgather(out, tiled=True)  # (B, ...) numpy everywhere
        keep = np.flatnonzero(batch["image_valid"])
        first = len(images)
        ids = list(range(first, first + len(keep)))
        gt_rows = {k: v[keep] for k, v in batch.items()}
        imgs, anns = ground_truth_to_coco(gt_rows, class_names, ids)
        for ann in anns:
            ann["id"] += len(annotations)
        images += imgs
        annotations += anns
        for j, i in enumerate(keep):
            detections += detections_to_coco(ids[j], out["boxes"][i], out["scores"][i],
                                              out["labels"][i], out["masks"][i],
                                              out["valid"][i])
    if jax.process_index() != 0:
        return None, None, None
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


def _class_names(run, model, workdir):
    names = run.get("class_names")
    if not names or len(names) != model.config.num_classes:
        raise ValueError(f"{workdir}/run.json needs 'class_names' (background first) for "
                         f"the model's {model.config.num_classes} classes; got {names}")
    return names


def _prepare_split(args, run, model):
    """The prepared COCO split of ``--annotations``/``--images``, its JSON and the category map
    (``ValueError``/``FileNotFoundError`` with one line on bad input)."""
    from mrcnn_jax.data.coco import coco_source, format_skipped, load_annotations, prepare_coco

    names = _class_names(run, model, args.workdir)
    if not pathlib.Path(args.images).is_dir():
        raise FileNotFoundError(f"--images {args.images} is not a folder")
    data = load_annotations(args.annotations)
    label_to_category = category_map(names, data["categories"])
    name = coco_split_name(args.annotations, args.images)
    builder = prepare_coco(args.annotations, args.images, args.data_dir, name=name,
                           split="validation")
    summary = format_skipped(builder.skipped.get("validation", {}),
                             builder.kept.get("validation"))
    print(f"{args.annotations}: {summary}")
    return coco_source(name, "validation", args.data_dir), data, label_to_category


def _held_out_split(args, run, model):
    """The validation split of a run trained on COCO-format data (``run.json``'s ``data``
    of ``splits.coco_splits``): its prepared records, the JSON they came from, the map."""
    from mrcnn_jax.data.coco import load_annotations
    from mrcnn_jax.data.splits import split_sources

    names = _class_names(run, model, args.workdir)
    data = load_annotations(run["data"]["val_annotations"] or run["data"]["train_annotations"])
    source = split_sources(run["data"], args.data_dir)[1]
    print(f"evaluating the run's validation split {run['data']['val_split']} of "
          f"{run['data']['name']}")
    return source, data, category_map(names, data["categories"])


def main(argv=None):
    from mrcnn_jax.checkpoints import restore_model
    from mrcnn_jax.data import class_names, shapes_source
    from mrcnn_jax.layers import set_compute_dtype
    from mrcnn_jax.sharding import add_distributed_args, init_distributed, make_mesh, replicate

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, help="training or import work directory")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (latest)")
    parser.add_argument("--annotations", default=None,
                        help="COCO JSON of the split to evaluate (default: shapes validation)")
    parser.add_argument("--images", default=None, help="folder of that JSON's file_names")
    parser.add_argument("--data_dir", default=None, help="prepared data (default <repo>/data)")
    parser.add_argument("--num_val", type=int, default=500, help="held-out shapes images")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--out", default=None, help="COCO results JSON (default in workdir)")
    parser.add_argument("--check_pycocotools", action="store_true")
    parser.add_argument("--devices", type=int, default=None,
                        help="devices of the data-parallel mesh (default: all visible); the "
                             "batch size is rounded up to a multiple of it")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default=None,
                        help="compute dtype (default: the run's)")
    parser.add_argument("--paste_rule", choices=PASTE_RULES, default=None,
                        help="how masks are pasted into the image (default: the run's config; "
                             "'exact' is detectron2's rule, paste_masks.paste_masks)")
    add_distributed_args(parser)
    args = parser.parse_args(argv)
    if (args.annotations is None) != (args.images is None):
        parser.error("--annotations and --images go together")
    init_distributed(args)
    try:
        if not pathlib.Path(args.workdir, "run.json").is_file():
            raise FileNotFoundError(f"{args.workdir} is not a work directory (no run.json)")
        model, run = restore_model(args.workdir, args.step)
        coco = args.annotations or run.get("data", {}).get("kind") == "coco"
        if args.annotations:
            source, data, label_to_category = _prepare_split(args, run, model)
        elif coco:
            source, data, label_to_category = _held_out_split(args, run, model)
    except (ValueError, FileNotFoundError) as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    if args.dtype:
        set_compute_dtype(model, args.dtype)
        model.config = model.config.replace(dtype=args.dtype)
    if args.paste_rule:
        model.config = model.config.replace(roi_heads=dataclasses.replace(
            model.config.roi_heads, paste_rule=args.paste_rule))
    mesh = make_mesh(args.devices)
    replicate(mesh, model)
    n = mesh.devices.size
    batch_size = -(-args.batch_size // n) * n  # the split is padded, every image evaluated
    if coco:
        batch_size = min(batch_size, -(-len(source) // n) * n)  # no batch larger than needed
        results, gt, dets, dropped = evaluate_coco_split(
            model, source, data, label_to_category, batch_size, mesh,
            min_size=run.get("resize", {}).get("min_size"))
    else:
        source = shapes_source("validation", args.data_dir,
                               **run["data"] | {"num_val": args.num_val})
        results, gt, dets = evaluate_sharded(model, source, class_names(source), batch_size,
                                             mesh, image_size=model.config.image_size[0],
                                             max_instances=run["max_instances"])
    if results is None:  # not process 0
        return
    print_table({t: results[t] for t in ("bbox", "segm")})
    if coco:
        print_per_class(results["per_class"])
        if dropped:
            print(f"dropped {dropped} detections of model classes the dataset does not have")
    out = pathlib.Path(args.out or pathlib.Path(args.workdir) / "detections.json")
    out.write_text(json.dumps(dets))
    print(f"wrote {len(dets)} detections to {out}")
    if args.check_pycocotools and not dets:
        print("no detections: pycocotools cannot load an empty result list (loadRes fails)")
    elif args.check_pycocotools:
        ref = pycocotools_stats(gt, dets)
        diff = max(abs(results[t][k] - ref[t][k]) for t in ref for k in STAT_NAMES)
        print(f"largest difference from pycocotools: {diff:.2e}")
    return results


if __name__ == "__main__":
    main()
