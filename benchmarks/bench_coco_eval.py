"""COCO evaluation: ``mrcnn_jax.coco_evaluate`` against pycocotools' ``COCOeval``, time and stats.

    python benchmarks/bench_coco_eval.py --case small     # 300 images, ~3,000 gt, 30,000 dets
    python benchmarks/bench_coco_eval.py --case coco      # 5,000 images, 100 dets each
    python benchmarks/bench_coco_eval.py --case coco --iou_types bbox
    python benchmarks/bench_coco_eval.py --case tiny      # 20 images: a check in seconds

A synthetic case, the same for a given ``--seed``: 480x640 images; ground truth as polygons
(8-12 vertices around an ellipse) of three size classes (small, medium, large, in about COCO's
proportions), 3% of them crowd regions, spread over the categories; detections as compressed
RLEs (COCO results) with a box each: jittered copies of most ground truth (1-3 per object,
sometimes with the wrong category) and false positives anywhere, all with random scores.

Both sides get the same COCO dicts in the same process. pycocotools' time covers building
``COCO`` from the dict, ``loadRes``, ``evaluate``, ``accumulate`` and ``summarize`` for each IoU
type (its inputs are deep-copied outside the timing, because ``loadRes`` writes into them);
ours covers one ``coco_evaluate`` call for the same IoU types. Each time is the best of
``--repeats`` runs (default 1: one run). The 12 stats of each IoU type must agree to 1e-4, or
the script fails.
"""

import argparse
import contextlib
import copy
import io
import sys
import time
import warnings

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from mrcnn_jax.evaluation import STAT_NAMES, coco_evaluate

HEIGHT, WIDTH = 480, 640
# case: (images, ground truth per image, detections per image, categories)
CASES = {"tiny": (20, 10, 100, 10), "small": (300, 10, 100, 10), "coco": (5000, 7, 100, 80)}


def _polygons(rng, n, centers, radii):
    """``n`` polygons of 8-12 vertices (padded by repeating the last) around ellipses."""
    num_vertices = rng.integers(8, 13, size=n)  # (n,)
    angles = np.sort(rng.uniform(0, 2 * np.pi, size=(n, 12)), axis=1)  # (n, 12)
    angles[np.arange(12)[None, :] >= num_vertices[:, None]] = 2 * np.pi
    angles = np.sort(angles, axis=1)
    scale = rng.uniform(0.8, 1.2, size=(n, 12))[..., None] * radii[:, None, :]  # (n, 12, 2)
    points = centers[:, None, :] + scale * np.stack([np.cos(angles), np.sin(angles)], -1)
    points = np.clip(points, 0, [WIDTH, HEIGHT])  # (n, 12, 2) x, y
    return [p[:k].reshape(-1).tolist() for p, k in zip(points, num_vertices, strict=True)]


def _random_shapes(rng, n):
    """Centres ``(n, 2)`` and radii ``(n, 2)``: 40% small, 35% medium, 25% large objects."""
    side = np.select([rng.random(n) < 0.4, rng.random(n) < 0.6],
                     [rng.uniform(6, 30, n), rng.uniform(34, 90, n)], rng.uniform(100, 300, n))
    radii = side[:, None] / 2 * rng.uniform(0.7, 1.3, size=(n, 2))  # (n, 2)
    centers = rng.uniform(0, 1, size=(n, 2)) * [WIDTH, HEIGHT]  # (n, 2)
    return centers, radii


def make_case(case, seed=0):
    """``(ground_truth, detections)`` COCO dicts of ``case``, deterministic in ``seed``."""
    num_images, gt_per_image, dt_per_image, num_categories = CASES[case]
    rng = np.random.default_rng(seed)
    images = [{"id": i + 1, "height": HEIGHT, "width": WIDTH} for i in range(num_images)]
    categories = [{"id": c + 1, "name": f"c{c + 1}"} for c in range(num_categories)]
    annotations, detections = [], []
    for image in images:
        num_gt = int(rng.poisson(gt_per_image)) if case == "coco" else gt_per_image
        centers, radii = _random_shapes(rng, num_gt)
        polygons = _polygons(rng, num_gt, centers, radii)
        rles = mask_utils.frPyObjects(polygons, HEIGHT, WIDTH) if num_gt else []
        gt_categories = rng.integers(1, num_categories + 1, size=num_gt)
        for polygon, rle, category in zip(polygons, rles, gt_categories, strict=True):
            annotations.append({"id": len(annotations) + 1, "image_id": image["id"],
                                "category_id": int(category), "segmentation": [polygon],
                                "area": float(mask_utils.area(rle)),
                                "bbox": mask_utils.toBbox(rle).tolist(),
                                "iscrowd": int(rng.random() < 0.03)})
        # detections: 1-3 jittered copies of 90% of the objects, then false positives
        copies = np.where(rng.random(num_gt) < 0.9, rng.integers(1, 4, size=num_gt), 0)
        source = np.repeat(np.arange(num_gt), copies)[:dt_per_image]  # (n_true,)
        num_true = len(source)
        fp_centers, fp_radii = _random_shapes(rng, dt_per_image - num_true)
        shift = rng.normal(0, 0.08, size=(num_true, 2)) * radii[source]  # (n_true, 2)
        grow = rng.uniform(0.85, 1.15, size=(num_true, 2))
        centers = np.concatenate([centers[source] + shift, fp_centers])  # (dt_per_image, 2)
        radii = np.concatenate([radii[source] * grow, fp_radii])
        polygons = _polygons(rng, dt_per_image, centers, radii)
        rles = mask_utils.frPyObjects(polygons, HEIGHT, WIDTH)
        categories_dt = np.concatenate([
            np.where(rng.random(num_true) < 0.95, gt_categories[source],
                     rng.integers(1, num_categories + 1, size=num_true)),
            rng.integers(1, num_categories + 1, size=dt_per_image - num_true)])
        scores = np.concatenate([rng.uniform(0.3, 1.0, num_true),
                                 rng.uniform(0.0, 0.8, dt_per_image - num_true)])
        boxes = mask_utils.toBbox(rles) + rng.normal(0, 1.0, size=(dt_per_image, 4))
        for rle, category, score, box in zip(rles, categories_dt, scores, boxes, strict=True):
            detections.append({"image_id": image["id"], "category_id": int(category),
                               "bbox": np.maximum(box, 0.5).round(2).tolist(),
                               "score": round(float(score), 4),
                               "segmentation": {"size": [HEIGHT, WIDTH],
                                                "counts": rle["counts"].decode("ascii")}})
    order = rng.permutation(len(detections))  # results need not come grouped by image
    ground_truth = {"images": images, "annotations": annotations, "categories": categories}
    return ground_truth, [detections[i] for i in order]


def run_pycocotools(ground_truth, detections, iou_types):
    """pycocotools' stats per IoU type and its seconds (its inputs copied outside the timing)."""
    stats, seconds = {}, 0.0
    for iou_type in iou_types:
        gt_copy, dt_copy = copy.deepcopy(ground_truth), copy.deepcopy(detections)
        start = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            coco = COCO()
            coco.dataset = gt_copy
            coco.createIndex()
            evaluator = COCOeval(coco, coco.loadRes(dt_copy), iou_type)
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        seconds += time.perf_counter() - start
        stats[iou_type] = np.asarray(evaluator.stats)
    return stats, seconds


def run_ours(ground_truth, detections, iou_types):
    start = time.perf_counter()
    results = coco_evaluate(ground_truth, detections, iou_types)
    seconds = time.perf_counter() - start
    return {t: np.array([results[t][name] for name in STAT_NAMES]) for t in iou_types}, seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=sorted(CASES), default="small")
    parser.add_argument("--iou_types", nargs="+", default=["bbox", "segm"],
                        choices=["bbox", "segm"])
    parser.add_argument("--repeats", type=int, default=1, help="best of this many runs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip_pycocotools", action="store_true",
                        help="time ours only (no check)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", "__array__ implementation", DeprecationWarning)
    start = time.perf_counter()
    ground_truth, detections = make_case(args.case, args.seed)
    num_crowd = sum(ann["iscrowd"] for ann in ground_truth["annotations"])
    print(f"case {args.case}: {len(ground_truth['images'])} images, "
          f"{len(ground_truth['annotations'])} ground truth ({num_crowd} crowd), "
          f"{len(detections)} detections, {len(ground_truth['categories'])} categories, "
          f"{HEIGHT}x{WIDTH}; made in {time.perf_counter() - start:.1f} s")
    iou_types = tuple(args.iou_types)
    ours_s, theirs_s = [], []
    for _ in range(args.repeats):
        ours, seconds = run_ours(ground_truth, detections, iou_types)
        ours_s.append(seconds)
        if not args.skip_pycocotools:
            theirs, seconds = run_pycocotools(ground_truth, detections, iou_types)
            theirs_s.append(seconds)
    for iou_type in iou_types:
        print(f"{iou_type:5s} ours   " + " ".join(f"{v:.4f}" for v in ours[iou_type]))
        if not args.skip_pycocotools:
            print(f"{iou_type:5s} theirs " + " ".join(f"{v:.4f}" for v in theirs[iou_type]))
            worst = float(np.max(np.abs(ours[iou_type] - theirs[iou_type])))
            print(f"{iou_type:5s} largest difference over the 12 stats: {worst:.2e}")
            if worst > 1e-4:
                sys.exit(f"{iou_type}: ours and pycocotools differ by {worst:.2e} > 1e-4")
    what = "best of " + str(args.repeats) if args.repeats > 1 else "one run"
    print(f"{'+'.join(iou_types)} ({what}): ours {min(ours_s):.2f} s", end="")
    if theirs_s:
        print(f", pycocotools {min(theirs_s):.2f} s, "
              f"ratio ours / pycocotools {min(ours_s) / min(theirs_s):.2f}")
    else:
        print()


if __name__ == "__main__":
    main()
