"""COCO metrics on a COCO-format split in its original pixels and category ids.

What ``python -m mrcnn_jax.evaluate --annotations B.json --images DIR`` runs (``evaluate.py``
documents the command): ``fitted_batches`` fits each prepared image into the model's
``image_size`` (``predict.fit_image``, any size and aspect), ``evaluate_coco_split`` runs the
network on the data-parallel mesh and maps every detection back to the original pixels
(``predict.to_original``) and to the dataset's category id (``category_map``, by name), and
scores it against the JSON's own annotations (``ground_truth_subset``: the images and
annotations ``prepare_coco`` kept), so the figures equal pycocotools run on the JSON file and
the written detections. ``per_class_ap`` and ``print_per_class`` give AP per category name.

Shape shorthand: ``B`` batch, ``D`` detections, ``K`` kept detections, ``H, W`` model input,
``h, w`` original image. Taught in notebooks/13_your_own_dataset.
"""

import collections

import numpy as np
from tqdm import tqdm

from mrcnn_jax.evaluation import coco_evaluate, detections_to_coco


def coco_split_name(annotation_file, image_dir):
    """Prepared-data name of a split to evaluate: ``eval_`` + ``splits.prepared_name`` (the
    file's stem and a hash of its path, size, modification time and image folder), so an
    edited JSON is prepared again, an unchanged one reused, and a training file's own prepared
    data (same hash, no prefix) are never overwritten with another split layout."""
    from mrcnn_jax.data.splits import prepared_name

    return f"eval_{prepared_name(annotation_file, image_dir)}"


def category_map(model_names, categories):
    """``{model label: dataset category id}`` matching names; ``model_names[0]`` is background.

    Raises ``ValueError`` listing the dataset's categories that no model class is named after.
    """
    labels = {str(name): k for k, name in enumerate(model_names) if k > 0}
    missing = [f"{c['name']} (id {c['id']})" for c in categories if str(c["name"]) not in labels]
    if missing:
        raise ValueError(f"the dataset's categories {missing} are not among the model's "
                         f"classes {list(model_names[1:])} (matched by name)")
    return {labels[str(c["name"])]: int(c["id"]) for c in categories}


def _resized(image, image_size, min_size):
    """``image`` resized as training resized it, on a zero ``image_size`` canvas, and its scale:
    fitted into ``image_size`` (``predict.fit_image``), or with ``min_size`` the torchvision
    rule of ``transforms.resized_size`` with ``max_size = image_size[0]``."""
    from PIL import Image

    from mrcnn_jax.data.transforms import resized_size
    from mrcnn_jax.predict import fit_image

    if min_size is None:
        return fit_image(image, image_size)
    height, width = image.shape[:2]
    new_h, new_w = resized_size(height, width, min_size, image_size[0])
    canvas = np.zeros((*image_size, 3), np.uint8)
    canvas[:new_h, :new_w] = (image if (new_h, new_w) == (height, width) else np.asarray(
        Image.fromarray(image).resize((new_w, new_h), Image.Resampling.BILINEAR)))
    return canvas, np.array([new_h / height, new_w / width], np.float32)


def fitted_batches(source, batch_size, image_size, min_size=None):
    """Every record of ``source`` once, in order, fitted into ``image_size (H, W)`` (or, with
    ``min_size``, resized by torchvision's rule with ``max_size = H``, as ``train --min_size
    --max_size`` trained it).

    Yields ``images (B, H, W, 3)``, ``scales (B, 2)`` (sy, sx), ``orig_sizes (B, 2)`` (h, w),
    ``image_ids``, ``ann_ids`` and ``mask_areas`` (per image, its stored annotations) and
    ``image_valid (B,)``: the last batch is filled up with copies of the last record.
    """
    n = len(source)
    for start in range(0, n, batch_size):
        rows = [source[min(i, n - 1)] for i in range(start, start + batch_size)]
        pixels = [np.asarray(r["image"]) for r in rows]  # each (h, w, 3)
        fitted = [_resized(p, image_size, min_size) for p in pixels]
        yield {"images": np.stack([c for c, _ in fitted]),  # (B, H, W, 3)
               "scales": np.stack([sc for _, sc in fitted]),  # (B, 2)
               "orig_sizes": np.array([p.shape[:2] for p in pixels]),  # (B, 2)
               "image_ids": [int(r["image/id"]) for r in rows],
               "ann_ids": [[int(a) for a in r["objects"]["id"]] for r in rows],
               "mask_areas": [[float((np.asarray(m) > 0).sum()) for m in
                               r["objects"]["segmentation"]] for r in rows],
               "image_valid": np.arange(start, start + batch_size) < n}


def ground_truth_subset(data, kept, areas):
    """The COCO dict ``data`` cut to the images and annotations ``kept``
    (``{image_id: [annotation id, ...]}``); ``areas[(image_id, ann_id)]`` fills a missing
    ``area``."""
    wanted = {(image_id, ann_id) for image_id, ids in kept.items() for ann_id in ids}
    if any(ann_id == -1 for _, ann_id in wanted):
        raise ValueError("annotations without an 'id' cannot be evaluated (COCO needs one)")
    images = list({img["id"]: img for img in reversed(data["images"]) if img["id"] in kept}
                  .values())[::-1]  # the first entry of each id, in file order
    annotations = []
    for ann in data["annotations"]:
        key = (ann.get("image_id"), ann.get("id")) if isinstance(ann, dict) else None
        if key in wanted:
            wanted.discard(key)  # once, even if an id repeats
            annotations.append(ann if "area" in ann else dict(ann, area=areas[key]))
    return {"images": images, "annotations": annotations, "categories": data["categories"]}


def per_class_ap(results, categories, ground_truth):
    """``{name: {"instances": n, "bbox": {"AP", "AP50"}, "segm": {...}}}`` from the
    ``precision (T, R, K, A, M)`` arrays of ``coco_evaluate(..., with_arrays=True)``
    (area "all", the largest cap; -1 where a category has no ground truth)."""
    names = {c["id"]: str(c["name"]) for c in categories}
    counts = collections.Counter(a["category_id"] for a in ground_truth["annotations"]
                                 if not a.get("iscrowd", 0))
    table = {}
    for iou_type, stats in results.items():
        for k, cat_id in enumerate(stats["category_ids"].tolist()):
            row = table.setdefault(names[cat_id], {"instances": counts[cat_id]})
            p = stats["precision"][:, :, k, 0, -1]  # (T, R)
            row[iou_type] = {"AP": float(p[p > -1].mean()) if (p > -1).any() else -1.0,
                             "AP50": float(p[0][p[0] > -1].mean()) if (p[0] > -1).any()
                             else -1.0}
    return table


def print_per_class(table):
    print(f"{'category':<24} {'instances':>9} {'box AP':>7} {'AP50':>6} {'mask AP':>8} "
          f"{'AP50':>6}")
    for name, row in table.items():
        box, segm = row.get("bbox", {}), row.get("segm", {})
        print(f"{name[:24]:<24} {row['instances']:>9d} {box.get('AP', -1):>7.3f} "
              f"{box.get('AP50', -1):>6.3f} {segm.get('AP', -1):>8.3f} "
              f"{segm.get('AP50', -1):>6.3f}")


def evaluate_coco_split(model, source, data, label_to_category, batch_size, mesh,
                        progress=True, min_size=None):
    """COCO metrics of ``model`` on a prepared COCO-format split, in original image pixels.

    Args:
      source: ``coco_source`` of the split; ``data``: its COCO JSON dict (ground truth).
      label_to_category: ``category_map`` (model label -> dataset category id).
      batch_size: a multiple of the mesh's devices; the last batch is padded.
      min_size: the run's ``--min_size`` (``run.json`` ``resize``), if it trained with one.
    Returns ``(results, ground_truth, detections, dropped)`` on process 0 (``None`` x 4
    elsewhere); ``results["per_class"]`` is :func:`per_class_ap`; ``dropped`` counts
    detections of model classes that are not dataset categories.
    """
    import jax

    from mrcnn_jax.predict import detect_batch, to_original
    from mrcnn_jax.sharding import check_batch_size

    check_batch_size(batch_size, mesh)
    kept, areas, detections, dropped = {}, {}, [], 0
    known = np.array(sorted(label_to_category))
    batches = fitted_batches(source, batch_size, model.config.image_size, min_size)
    for batch in tqdm(batches, total=-(-len(source) // batch_size), desc="evaluate",
                      unit="batch", disable=not progress or jax.process_index() != 0):
        outs = jax.tree.map(np.asarray, detect_batch(model, batch["images"], mesh))
        for i in np.flatnonzero(batch["image_valid"]):
            image_id = batch["image_ids"][i]
            kept[image_id] = batch["ann_ids"][i]
            areas.update({(image_id, a): m for a, m in zip(batch["ann_ids"][i],
                                                           batch["mask_areas"][i], strict=True)})
            out = {k: v[i] for k, v in outs.items()}
            mine = out["valid"] & np.isin(out["labels"], known)  # (D,)
            dropped += int((out["valid"] & ~mine).sum())
            det = to_original(out, batch["scales"][i], batch["orig_sizes"][i], mine,
                              model.config.roi_heads.paste_rule)
            detections += detections_to_coco(image_id, det["boxes"], det["scores"],
                                             det["labels"], det["masks"],
                                             label_to_category_id=label_to_category)
    if jax.process_index() != 0:
        return None, None, None, None
    ground_truth = ground_truth_subset(data, kept, areas)
    results = coco_evaluate(ground_truth, detections, with_arrays=True)
    table = per_class_ap(results, data["categories"], ground_truth)
    for stats in results.values():
        for key in ("precision", "recall", "category_ids"):
            stats.pop(key)
    results["per_class"] = table
    return results, ground_truth, detections, dropped
