"""Bad COCO-format input: a clear one-line error or a counted skip, never a crash later.

Each case of issue 17 item 7 is written here as a tiny JSON plus image folder and prepared with
``prepare_coco``; the tests assert the error message or the count in ``builder.skipped``.
"""

import json

import numpy as np
import pytest
from PIL import Image, ImageOps

from mrcnn_jax.data.coco import coco_source, format_skipped, load_annotations, prepare_coco
from mrcnn_jax.data.examples import parse_example
from mrcnn_jax.data.images import read_image

SQUARE = [[2, 2, 8, 2, 8, 8, 2, 8]]  # a 6 x 6 polygon


def _ann(ann_id, image_id, bbox=(2, 2, 6, 6), segmentation=SQUARE, category_id=1):
    return {"id": ann_id, "image_id": image_id, "category_id": category_id, "iscrowd": 0,
            "bbox": None if bbox is None else list(bbox), "segmentation": segmentation,
            "area": 36.0}


def _save(image, path, **kwargs):
    image.save(path, **kwargs)
    return path


def _exif_jpeg(path, width, height, orientation):
    """A JPEG stored ``width x height`` with an EXIF orientation tag; returns its pixels."""
    ys, xs = np.mgrid[:height, :width]
    pixels = np.stack([xs * 12, ys * 16, np.full_like(xs, 60 * orientation % 255)], axis=2)
    pixels = np.clip(pixels, 0, 255).astype(np.uint8)  # smooth, so JPEG keeps it closely
    exif = Image.Exif()
    exif[0x0112] = orientation
    _save(Image.fromarray(pixels), path, exif=exif.tobytes(), quality=95)
    return path


@pytest.fixture(scope="module")
def messy(tmp_path_factory):
    """One dataset holding most kinds of bad input; prepared once."""
    root = tmp_path_factory.mktemp("messy")
    images = root / "images"
    images.mkdir()
    rgb = np.random.default_rng(0).integers(0, 255, (12, 16, 3), dtype=np.uint8)
    _save(Image.fromarray(rgb), images / "ok.png")
    _save(Image.fromarray(rgb), images / "wrong_size.png")
    _save(Image.fromarray(rgb[..., 0]), images / "gray.png")
    sixteen = np.array([[0, 1000, 32768, 65535] * 4] * 12, np.uint16)  # (12, 16)
    _save(Image.fromarray(sixteen), images / "sixteen.png")
    rgba = np.concatenate([rgb, np.full((12, 16, 1), 7, np.uint8)], axis=2)
    _save(Image.fromarray(rgba, "RGBA"), images / "rgba.png")
    _save(Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=8),
          images / "palette.png")
    _exif_jpeg(images / "rotated.jpg", 16, 12, 6)  # shown upright as 12 wide, 16 high
    _exif_jpeg(images / "tag_ignored.jpg", 16, 12, 8)  # the JSON measures it as stored
    names = ["ok.png", "missing.png", "wrong_size.png", "gray.png", "sixteen.png", "rgba.png",
             "palette.png", "rotated.jpg", "tag_ignored.jpg"]
    entries = [{"id": k + 1, "file_name": n, "width": 16, "height": 12}
               for k, n in enumerate(names)]
    entries[2]["width"] = 20  # wrong_size.png is 16 wide
    entries[7].update(width=12, height=16)  # rotated.jpg upright
    entries.append(dict(entries[0]))  # the same image listed twice
    anns = [
        _ann(1, 1), _ann(2, 1, bbox=(2, float("nan"), 6, 6)),  # NaN in a bbox
        _ann(3, 1, bbox=(30, 30, 5, 5)),  # fully outside
        _ann(4, 1, bbox=(2, 2, 0, 6)),  # zero width
        _ann(5, 1, segmentation=[[2, 2, 8, 8]]),  # a 2-point polygon only
        _ann(6, 1, segmentation=[SQUARE[0], [1, 1, 3, 3]]),  # one good part, one short
        _ann(7, 1, category_id=42), _ann(8, 99),  # unknown category; unknown image
        _ann(9, 2), _ann(10, 2), _ann(11, 3),  # on the missing and the wrong-size image
        _ann(12, 1, bbox=(10, 8, 10, 10)),  # partly outside: clipped, kept
        _ann(13, 1, bbox=None),  # no box at all
    ]
    data = {"images": entries, "annotations": anns,
            "categories": [{"id": 1, "name": "thing"}, {"id": 2, "name": "other"}]}
    path = root / "messy.json"
    path.write_text(json.dumps(data))
    builder = prepare_coco(path, images, root / "prepared", name="messy")
    source = coco_source("messy", "train", root / "prepared")
    records = {r["image/filename"].decode(): parse_example(r) for r in source}
    return {"root": root, "path": path, "builder": builder, "records": records}


def test_every_bad_input_is_counted(messy):
    assert dict(messy["builder"].skipped["train"]) == {
        "missing_images": 1, "size_mismatch": 1, "duplicate_images": 1,
        "annotations_of_skipped_images": 3, "annotations_without_image": 1,
        "unknown_category": 1, "bad_bbox": 2, "zero_area": 2, "short_polygons": 2,
        "bad_segmentation": 1, "clipped_boxes": 1, "exif_rotated": 1, "exif_ignored": 1,
        "converted_images": 4}
    assert dict(messy["builder"].kept["train"]) == {"images": 7, "annotations": 3}
    assert sorted(messy["records"]) == ["gray.png", "ok.png", "palette.png", "rgba.png",
                                        "rotated.jpg", "sixteen.png", "tag_ignored.jpg"]
    ok = messy["records"]["ok.png"]
    assert ok["labels"].tolist() == [1, 1, 1]  # annotations 1, 6 (short part dropped), 12
    np.testing.assert_allclose(ok["boxes"][2], [10, 8, 16, 12], atol=1e-4)  # clipped
    np.testing.assert_array_equal(ok["masks"][1], ok["masks"][0])  # only the good part


def test_format_skipped_lists_each_count_once(messy):
    text = format_skipped(messy["builder"].skipped["train"], messy["builder"].kept["train"])
    assert text.startswith("kept 7 images, 3 annotations; skipped or fixed: 1 image files not "
                           "found (skipped), ")
    assert "2 annotations without a bbox of 4 finite numbers" in text
    assert "1 annotations whose image_id is not in images (skipped)" in text
    assert format_skipped({}) == "nothing skipped"


def test_skip_counts_come_back_when_prepared_data_are_reused(messy):
    again = prepare_coco(messy["path"], messy["root"] / "images", messy["root"] / "prepared",
                         name="messy")
    assert again.skipped == messy["builder"].skipped and again.kept == messy["builder"].kept


def test_images_of_any_mode_become_8_bit_rgb(messy):
    records, images = messy["records"], messy["root"] / "images"
    for name in ("gray.png", "sixteen.png", "rgba.png", "palette.png"):
        assert records[name]["image"].shape == (12, 16, 3), name
    gray = np.asarray(Image.open(images / "gray.png"))
    np.testing.assert_array_equal(records["gray.png"]["image"], np.stack([gray] * 3, axis=2))
    # 16-bit scaled over its full range (255 / 65535), not clipped at 255
    assert records["sixteen.png"]["image"][0, :4, 0].tolist() == [0, 4, 128, 255]
    rgba = np.asarray(Image.open(images / "rgba.png"))
    np.testing.assert_array_equal(records["rgba.png"]["image"], rgba[..., :3])
    palette = np.asarray(Image.open(images / "palette.png").convert("RGB"))
    np.testing.assert_array_equal(records["palette.png"]["image"], palette)


def test_exif_orientation_is_applied_as_the_json_measured_it(messy):
    images, records = messy["root"] / "images", messy["records"]
    upright = np.asarray(ImageOps.exif_transpose(Image.open(images / "rotated.jpg")))
    assert upright.shape == (16, 12, 3)
    rotated = records["rotated.jpg"]["image"]  # re-encoded as JPEG quality 95
    assert rotated.shape == (16, 12, 3)
    assert np.abs(rotated.astype(int) - upright).mean() < 3  # JPEG re-encoding
    assert np.abs(rotated.astype(int) - upright[::-1, ::-1]).mean() > 30  # not the other way
    stored = np.asarray(Image.open(images / "tag_ignored.jpg"))  # (12, 16, 3), tag ignored
    np.testing.assert_array_equal(records["tag_ignored.jpg"]["image"], stored)
    np.testing.assert_array_equal(read_image(images / "rotated.jpg"), upright)  # predict's


def _write(tmp_path, data, name="bad.json"):
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def _one_image(**changes):
    data = {"images": [{"id": 1, "file_name": "a.png", "width": 16, "height": 12}],
            "annotations": [_ann(1, 1)], "categories": [{"id": 1, "name": "thing"}]}
    data.update(changes)
    return data


@pytest.mark.parametrize("data, message", [
    ([{"image_id": 1, "bbox": [0, 0, 1, 1], "score": 0.5}],
     "holds a list, not a dict with 'images'.*results file"),
    ({"info": {}, "licenses": []}, r"needs non-empty 'images' and 'categories' lists; found "
                                   r"keys \['info', 'licenses'\]"),
    (_one_image(images=[{"id": 1, "file_name": "a.png", "height": 12}]),
     r"images\[0\] lacks \['width'\]"),
    (_one_image(categories=[{"id": 1}]), r"categories\[0\] lacks \['name'\]"),
    (_one_image(images=[{"id": "a", "file_name": "a.png", "width": 16, "height": 12}]),
     "image ids must be integers; got 'a' for a.png"),
    (_one_image(images=[{"id": 1, "file_name": "a.png", "width": 16, "height": 12},
                        {"id": 1, "file_name": "b.png", "width": 16, "height": 12}]),
     "image id 1 is used by two files, a.png and b.png"),
    (_one_image(categories=[{"id": 1, "name": "cat"}, {"id": 2, "name": "cat"}]),
     r"category names must be unique; repeated \(name: ids\): \{'cat': \[1, 2\]\}"),
    (_one_image(annotations={"1": {}}), "'annotations' must be a list; got dict"),
])
def test_files_that_are_not_coco_get_one_line_errors(tmp_path, data, message):
    with pytest.raises(ValueError, match=message) as error:
        load_annotations(_write(tmp_path, data))
    assert "\n" not in str(error.value)


def test_every_image_skipped_says_why(tmp_path):
    Image.new("RGB", (20, 12)).save(tmp_path / "a.png")  # the JSON says 16 x 12
    path = _write(tmp_path, _one_image())
    with pytest.raises(ValueError, match=r"none of its 1 images is usable \(skipped or fixed: 1 "
                       r"images whose size differs from the JSON's width/height \(skipped\), 1 "
                       r"annotations of the skipped images"):
        prepare_coco(path, tmp_path, tmp_path / "prepared", name="allbad")


def test_corrupt_and_float_images_are_skipped_not_fatal(tmp_path):
    Image.new("RGB", (16, 12)).save(tmp_path / "a.png")
    (tmp_path / "b.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    Image.fromarray(np.zeros((12, 16), np.float32), "F").save(tmp_path / "c.tif")
    images = [{"id": k + 1, "file_name": n, "width": 16, "height": 12}
              for k, n in enumerate(("a.png", "b.jpg", "c.tif"))]
    path = _write(tmp_path, _one_image(images=images))
    builder = prepare_coco(path, tmp_path, tmp_path / "prepared", name="corrupt")
    assert dict(builder.skipped["train"]) == {"corrupt_images": 2}
    assert len(coco_source("corrupt", "train", tmp_path / "prepared")) == 1


def test_no_usable_annotation_says_why(tmp_path):
    """A boxes-only export (empty segmentations) would train masks on nothing: an error."""
    Image.new("RGB", (16, 12)).save(tmp_path / "a.png")
    path = _write(tmp_path, _one_image(annotations=[_ann(1, 1, segmentation=[])]))
    with pytest.raises(ValueError, match=r"none of its 1 annotations is usable \(skipped or "
                       r"fixed: 1 annotations without a usable segmentation: empty \(a "
                       r"boxes-only export\)"):
        prepare_coco(path, tmp_path, tmp_path / "prepared", name="boxes_only")
