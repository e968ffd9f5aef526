"""``python -m mrcnn_jax.evaluate --annotations B.json --images DIR`` on a COCO-format split.

The committed torchvision-trained shapes model (128 x 128 input) evaluates a tiny COCO dataset
of drawn polygons on images of five sizes, with category ids that are not its labels; the
figures must equal pycocotools run on the JSON file and ``detections.json`` themselves.
"""

import contextlib
import io
import json

import numpy as np
import pytest
from coco_toy import CATEGORIES, trained_workdir, write_dataset
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from mrcnn_jax import evaluate, evaluate_coco
from mrcnn_jax.evaluation import STAT_NAMES
from mrcnn_jax.import_torchvision import COCO_CATEGORY_NAMES


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate_coco")
    annotations = write_dataset(root)
    workdir = trained_workdir(root / "workdir")
    out = root / "dets.json"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        results = evaluate.main(["--workdir", str(workdir), "--annotations", str(annotations),
                                 "--images", str(root / "images"), "--data_dir",
                                 str(root / "data"), "--batch_size", "2", "--out", str(out),
                                 "--check_pycocotools"])
    return {"root": root, "annotations": annotations, "workdir": workdir, "out": out,
            "results": results, "printed": printed.getvalue()}


def test_figures_equal_pycocotools_on_the_files(run):
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(run["annotations"]))
        dt = gt.loadRes(str(run["out"]))
        for iou_type in ("bbox", "segm"):
            ev = COCOeval(gt, dt, iou_type)
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
            ours = [run["results"][iou_type][k] for k in STAT_NAMES]
            np.testing.assert_allclose(ours, ev.stats, atol=1e-9, err_msg=iou_type)
    assert run["results"]["bbox"]["AP50"] > 0.9  # a real model, so the check means something
    assert "largest difference from pycocotools: 0.00e+00" in run["printed"]


def test_detections_use_the_datasets_ids_and_original_pixels(run):
    dets = json.loads(run["out"].read_text())
    data = json.loads(run["annotations"].read_text())
    assert {d["category_id"] for d in dets} <= {c["id"] for c in CATEGORIES}
    assert {d["image_id"] for d in dets} == {img["id"] for img in data["images"]}
    big = [d for d in dets if d["image_id"] == 102 and d["score"] > 0.5]  # 200 x 150 image
    assert max(d["bbox"][0] + d["bbox"][2] for d in big) > 140  # beyond the 128-px input
    for ann in data["annotations"]:  # each object found in its own pixels, right category
        x, y, w, h = ann["bbox"]
        ious = [_iou(ann["bbox"], d["bbox"]) for d in dets if d["image_id"] == ann["image_id"]
                and d["category_id"] == ann["category_id"] and d["score"] > 0.5]
        assert max(ious, default=0) > 0.7, (ann["id"], x, y, w, h)


def _iou(a, b):
    ax2, ay2, bx2, by2 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
    iw = max(0.0, min(ax2, bx2) - max(a[0], b[0]))
    ih = max(0.0, min(ay2, by2) - max(a[1], b[1]))
    return iw * ih / (a[2] * a[3] + b[2] * b[3] - iw * ih)


def test_per_class_table_by_category_name(run):
    table = run["results"]["per_class"]
    data = json.loads(run["annotations"].read_text())
    for cat in CATEGORIES:
        count = sum(a["category_id"] == cat["id"] for a in data["annotations"])
        assert table[cat["name"]]["instances"] == count
        assert 0 <= table[cat["name"]]["bbox"]["AP"] <= 1
    mean = np.mean([row["segm"]["AP"] for row in table.values()])
    np.testing.assert_allclose(mean, run["results"]["segm"]["AP"], atol=1e-9)
    assert "category                 instances  box AP" in run["printed"]
    assert "kept 5 images, " in run["printed"] and "nothing skipped" in run["printed"]


def test_category_mismatch_is_one_line_listing_it(run, tmp_path, capsys):
    other = [{"id": 9, "name": "square"}, {"id": 4, "name": "hexagon"}]
    annotations = write_dataset(tmp_path, sizes=[(64, 64)], categories=other)
    with pytest.raises(SystemExit) as exit_info:
        evaluate.main(["--workdir", str(run["workdir"]), "--annotations", str(annotations),
                       "--images", str(tmp_path / "images"), "--data_dir",
                       str(tmp_path / "data")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "the dataset's categories ['hexagon (id 4)'] are not among the model's classes " \
           "['square', 'circle', 'triangle']" in err


def test_user_errors_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        evaluate.main(["--workdir", str(tmp_path / "nowhere")])
    assert exit_info.value.code == 2
    assert "is not a work directory (no run.json)" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        evaluate.main(["--workdir", str(tmp_path), "--annotations", "a.json"])
    assert exit_info.value.code == 2
    assert "--annotations and --images go together" in capsys.readouterr().err


def test_a_superset_model_maps_by_name():
    categories = [{"id": 1, "name": "dog"}, {"id": 7, "name": "person"}]
    assert evaluate_coco.category_map(COCO_CATEGORY_NAMES, categories) == {18: 1, 1: 7}


def test_split_name_follows_the_file(tmp_path):
    path = tmp_path / "val.json"
    path.write_text("{}")
    first = evaluate_coco.coco_split_name(path, tmp_path)
    assert first == evaluate_coco.coco_split_name(path, tmp_path) and first.startswith("eval_val_")
    path.write_text("{ }")
    assert evaluate_coco.coco_split_name(path, tmp_path) != first


def test_ground_truth_keeps_what_was_prepared():
    data = {"images": [{"id": 1}, {"id": 2}], "categories": [{"id": 3, "name": "x"}],
            "annotations": [{"id": 10, "image_id": 1, "category_id": 3},
                            {"id": 11, "image_id": 1, "category_id": 3, "area": 5.0},
                            {"id": 12, "image_id": 2, "category_id": 3}]}
    gt = evaluate_coco.ground_truth_subset(data, {1: [10, 11]}, {(1, 10): 7.0, (1, 11): 6.0})
    assert [img["id"] for img in gt["images"]] == [1]
    assert [(a["id"], a["area"]) for a in gt["annotations"]] == [(10, 7.0), (11, 5.0)]
    with pytest.raises(ValueError, match="without an 'id'"):
        evaluate_coco.ground_truth_subset(data, {1: [-1]}, {})


def test_a_run_trained_on_coco_data_evaluates_its_held_out_split(run, tmp_path, capsys):
    """No --annotations: the run's own validation split (here the held-out 40% of the file),
    equal to pycocotools on the file restricted to those images."""
    import shutil

    from mrcnn_jax.checkpoints import read_run, write_run
    from mrcnn_jax.data.splits import coco_splits

    workdir = tmp_path / "workdir"
    shutil.copytree(run["workdir"], workdir)
    data, _ = coco_splits(run["annotations"], run["root"] / "images", val_fraction=0.4,
                          data_dir=tmp_path / "data")
    write_run(workdir, read_run(workdir) | {"data": data})
    out = tmp_path / "dets.json"
    results = evaluate.main(["--workdir", str(workdir), "--data_dir", str(tmp_path / "data"),
                             "--out", str(out), "--batch_size", "2"])
    dets = json.loads(out.read_text())
    held_out = sorted({d["image_id"] for d in dets})
    assert len(held_out) == 2 and "validation split train[60%:]" in capsys.readouterr().out
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(run["annotations"]))
        ev = COCOeval(gt, gt.loadRes(str(out)), "segm")
        ev.params.imgIds = held_out
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    np.testing.assert_allclose([results["segm"][k] for k in STAT_NAMES], ev.stats, atol=1e-9)


def test_paste_rule_changes_only_the_masks(run, tmp_path):
    """``--paste_rule exact``: the same detections (boxes, scores, classes) with masks pasted by
    detectron2's rule; the default is the run's own (torchvision's here)."""
    from mrcnn_jax.checkpoints import read_run

    assert read_run(run["workdir"])["config"]["roi_heads"]["paste_rule"] == "torchvision"
    out = tmp_path / "exact.json"
    with contextlib.redirect_stdout(io.StringIO()):
        results = evaluate.main(["--workdir", str(run["workdir"]), "--annotations",
                                 str(run["annotations"]), "--images", str(run["root"] / "images"),
                                 "--data_dir", str(run["root"] / "data"), "--batch_size", "2",
                                 "--out", str(out), "--paste_rule", "exact"])
    default, exact = json.loads(run["out"].read_text()), json.loads(out.read_text())
    # another jit (another paste) may fuse the network differently: an ulp, not a detection
    ids = lambda dets: [(d["image_id"], d["category_id"]) for d in dets]
    assert ids(exact) == ids(default)
    for key in ("bbox", "score"):
        np.testing.assert_allclose([d[key] for d in exact], [d[key] for d in default],
                                   rtol=1e-5, atol=1e-4)
    changed = sum(a["segmentation"] != b["segmentation"]
                  for a, b in zip(default, exact, strict=True))
    assert changed > len(default) // 4, f"only {changed} of {len(default)} masks changed"
    np.testing.assert_allclose([results["bbox"][k] for k in STAT_NAMES],
                               [run["results"]["bbox"][k] for k in STAT_NAMES], atol=1e-6)
    assert results["segm"]["AP"] != run["results"]["segm"]["AP"]
