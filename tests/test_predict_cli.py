"""``python -m mrcnn_jax.predict`` on folders and files: pictures, COCO results in original
pixels, unreadable files skipped and counted, user errors as one line with exit status 2."""

import importlib
import json

import numpy as np
import pytest
from coco_toy import trained_workdir, write_dataset
from PIL import Image
from pycocotools import mask as mask_utils

predict = importlib.import_module("mrcnn_jax.predict")  # the package's `predict` is the function


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    annotations = write_dataset(root)
    workdir = trained_workdir(root / "workdir")
    folder = root / "images"
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (folder / "notes.txt").write_text("not an image, not picked up from a folder")
    (folder / "sub").mkdir()
    Image.new("RGB", (32, 32)).save(folder / "sub" / "not_recursed.png")
    extra = root / "extra.PNG"
    Image.open(folder / "img_0.png").save(extra)  # a file named on its own, upper-case suffix
    more = root / "more"  # img_0 again as a phone would store it: turned, with an EXIF tag
    more.mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    turned = np.rot90(np.asarray(Image.open(folder / "img_0.png")))  # counter-clockwise
    Image.fromarray(turned).save(more / "img_0.jpg", exif=exif.tobytes(), quality=98)
    out = root / "out"
    return {"root": root, "annotations": json.loads(annotations.read_text()),
            "workdir": workdir, "folder": folder, "extra": extra, "out": out,
            "argv": [str(folder), str(extra), str(more), "--workdir", str(workdir), "--out",
                     str(out)]}


@pytest.fixture(scope="module")
def predicted(run):
    import contextlib
    import io

    printed, errors = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(errors):
        result = predict.main(run["argv"])
    return dict(result, printed=printed.getvalue(), errors=errors.getvalue())


def test_folder_and_file_give_pictures_and_coco_results(run, predicted):
    listed = json.loads((run["out"] / "images.json").read_text())
    names = [img["file_name"] for img in listed["images"]]
    expected = [str(run["folder"] / f"img_{k}.png") for k in range(5)] + [
        str(run["extra"]), str(run["root"] / "more" / "img_0.jpg")]
    assert names == expected  # broken.jpg skipped; notes.txt and sub/ not picked up
    assert [c["name"] for c in listed["categories"]] == ["square", "circle", "triangle"]
    sizes = {img["file_name"]: (img["width"], img["height"]) for img in listed["images"]}
    assert sizes[str(run["folder"] / "img_2.png")] == (200, 150)
    for k in range(5):
        assert (run["out"] / f"img_{k}_pred.png").is_file()
    assert (run["out"] / "extra_pred.png").is_file()
    assert (run["out"] / "img_0_7_pred.png").is_file()  # a second img_0
    dets = json.loads((run["out"] / "detections.json").read_text())
    assert dets == predicted["detections"] and all(d["score"] >= 0.5 for d in dets)
    by_id = {img["id"]: img for img in listed["images"]}
    for d in dets:
        img = by_id[d["image_id"]]
        x, y, w, h = d["bbox"]
        assert 0 <= x and 0 <= y and x + w <= img["width"] + 1e-3 and y + h <= img["height"] + 1e-3
        assert d["segmentation"]["size"] == [img["height"], img["width"]]


def test_detections_are_in_original_pixels(run, predicted):
    """Every drawn polygon is found at its own place in its own image (IoU > 0.7)."""
    dets = predicted["detections"]
    label = {"square": 1, "circle": 2, "triangle": 3}
    names = {c["id"]: c["name"] for c in run["annotations"]["categories"]}
    for ann in run["annotations"]["annotations"]:
        image_id = ann["image_id"] - 100 + 1  # predict numbers files from 1, in order
        mine = [d for d in dets if d["image_id"] == image_id
                and d["category_id"] == label[names[ann["category_id"]]]]
        ious = mask_utils.iou([d["bbox"] for d in mine], [ann["bbox"]], [0]) if mine else [[0]]
        assert np.max(ious) > 0.7, ann


def test_exif_rotated_photo_is_seen_upright(run, predicted):
    """The turned JPEG with its EXIF tag gives img_0's size and detections (JPEG aside)."""
    listed = json.loads((run["out"] / "images.json").read_text())["images"]
    assert (listed[6]["width"], listed[6]["height"]) == (listed[0]["width"], listed[0]["height"])
    first = [d for d in predicted["detections"] if d["image_id"] == 1]
    turned = [d for d in predicted["detections"] if d["image_id"] == 7]
    assert len(first) == len(turned) > 0
    for d in first:
        same = [t for t in turned if t["category_id"] == d["category_id"]]
        assert np.max(mask_utils.iou([t["bbox"] for t in same], [d["bbox"]], [0])) > 0.9


def test_unreadable_file_is_reported_and_counted(run, predicted):
    assert "skipping " in predicted["errors"] and "broken.jpg" in predicted["errors"]
    assert "1 of 8 files could not be read and were skipped" in predicted["errors"]
    assert [str(p) for p, _ in predicted["unreadable"]] == [str(run["folder"] / "broken.jpg")]
    assert "7 images, " in predicted["printed"]


@pytest.mark.parametrize("case, message", [
    ("no_workdir", "is not a work directory (no run.json there)"),
    ("bad_path", "no such file or folder: "),
    ("empty_folder", "no image files (.jpg, .jpeg, .png, .bmp, .tif, .tiff, .webp) in"),
    ("all_unreadable", "none of the 1 files could be read"),
])
def test_user_errors_are_one_line_and_exit_2(run, tmp_path, capsys, case, message):
    workdir = str(run["workdir"])
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad.png").write_bytes(b"nope")
    argv = {"no_workdir": [str(run["extra"]), "--workdir", str(tmp_path / "nowhere")],
            "bad_path": [str(tmp_path / "missing.png"), "--workdir", workdir],
            "empty_folder": [str(tmp_path / "empty"), "--workdir", workdir],
            "all_unreadable": [str(tmp_path / "bad.png"), "--workdir", workdir, "--out",
                               str(tmp_path / "out")]}[case]
    with pytest.raises(SystemExit) as exit_info:
        predict.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err.strip().splitlines()[-1] and "Traceback" not in err, err
