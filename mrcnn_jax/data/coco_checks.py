"""Checks of COCO-format input for ``prepare_coco`` (``coco.py``): what makes an annotation file
unusable (one-line ``ValueError``), and the named counts of what is skipped or fixed.

``load_annotations`` reads and checks a JSON file; ``SKIP_REASONS`` names every key of
``builder.skipped`` with what it counts; ``format_skipped`` turns one split's counts into one
readable line (the train and evaluate commands print it); ``clean_polygons`` and
``finite_box`` are the per-annotation checks (polygon parts of at least 3 finite points, a
``bbox`` of 4 finite numbers).

Taught in notebooks/13_your_own_dataset.
"""

import collections
import json
import math
import pathlib

SKIP_REASONS = {  # builder.skipped keys, in the order format_skipped prints them
    "missing_images": "image files not found (skipped)",
    "corrupt_images": "unreadable image files (skipped)",
    "size_mismatch": "images whose size differs from the JSON's width/height (skipped)",
    "duplicate_images": "repeated images entries, same id and file (skipped)",
    "annotations_of_skipped_images": "annotations of the skipped images (lost with them)",
    "annotations_without_image": "annotations whose image_id is not in images (skipped)",
    "unknown_category": "annotations with a category_id not in categories (skipped)",
    "bad_bbox": "annotations without a bbox of 4 finite numbers or a segmentation (skipped)",
    "zero_area": "annotations whose box has no area inside the image (skipped)",
    "bad_segmentation": "annotations without a usable segmentation: empty (a boxes-only "
                        "export), undecodable or covering no pixel (skipped)",
    "short_polygons": "polygon parts with < 3 points or non-finite values (dropped)",
    "clipped_boxes": "boxes partly outside the image (clipped, kept)",
    "exif_rotated": "images turned upright by their EXIF orientation (kept, re-encoded)",
    "exif_ignored": "EXIF-rotated images the JSON measures as stored (kept unrotated)",
    "converted_images": "grayscale/16-bit/RGBA/palette images made 8-bit RGB (kept, re-encoded)",
}


def format_skipped(counts, kept=None):
    """A readable summary of one split's ``builder.skipped`` counts (``kept``: its
    ``builder.kept``), e.g. ``"kept 40 images, 310 annotations; skipped or fixed: 2 image
    files not found (skipped), ..."``; ``"nothing skipped"`` when ``counts`` is empty."""
    keys = [k for k in SKIP_REASONS if counts.get(k)]
    keys += [k for k in sorted(counts) if k not in SKIP_REASONS and counts[k]]
    parts = [f"{counts[k]} {SKIP_REASONS.get(k, k)}" for k in keys]
    text = "skipped or fixed: " + ", ".join(parts) if parts else "nothing skipped"
    if kept:
        text = f"kept {kept.get('images', 0)} images, {kept.get('annotations', 0)} " \
               f"annotations; {text}"
    return text


def _check_entries(entries, keys, what, path):
    if not isinstance(entries, list):
        raise ValueError(f"COCO annotation file {path}: '{what}' must be a list; got "
                         f"{type(entries).__name__}")
    for k, entry in enumerate(entries):
        missing = [key for key in keys if not isinstance(entry, dict) or key not in entry]
        if missing:
            raise ValueError(f"COCO annotation file {path}: {what}[{k}] lacks {missing} "
                             f"(needs {list(keys)}); got {str(entry)[:80]}")


def _check_ids(data, path):
    """Integer image ids, one file per id; unique category names (TFDS class labels)."""
    files = {}
    for info in data["images"]:
        if not isinstance(info["id"], int) or isinstance(info["id"], bool):
            raise ValueError(f"COCO annotation file {path}: image ids must be integers; got "
                             f"{info['id']!r} for {info['file_name']}")
        other = files.setdefault(info["id"], info["file_name"])
        if other != info["file_name"]:
            raise ValueError(f"COCO annotation file {path}: image id {info['id']} is used by "
                             f"two files, {other} and {info['file_name']}; ids must be unique")
    names = collections.defaultdict(list)
    for cat in data["categories"]:
        names[str(cat["name"])].append(cat["id"])
    repeated = {n: ids for n, ids in names.items() if len(ids) > 1}
    if repeated:
        raise ValueError(f"COCO annotation file {path}: category names must be unique; "
                         f"repeated (name: ids): {repeated}")


def load_annotations(annotation_file):
    """Read and check a COCO JSON file; returns the dict. Raises ``ValueError`` if unusable."""
    path = pathlib.Path(annotation_file)
    if not path.is_file():
        raise FileNotFoundError(f"COCO annotation file {path} does not exist")
    text = path.read_text()
    if not text.strip():
        raise ValueError(f"COCO annotation file {path} is empty")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"COCO annotation file {path} is not valid JSON: {error}") from None
    if isinstance(data, list):
        raise ValueError(f"COCO annotation file {path} holds a list, not a dict with 'images', "
                         "'annotations' and 'categories' (a COCO results file?)")
    if not isinstance(data, dict) or not data.get("images") or not data.get("categories"):
        keys = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"COCO annotation file {path} needs non-empty 'images' and "
                         f"'categories' lists; found keys {keys}")
    data.setdefault("annotations", [])
    _check_entries(data["images"], ("id", "file_name", "width", "height"), "images", path)
    _check_entries(data["categories"], ("id", "name"), "categories", path)
    if not isinstance(data["annotations"], list):
        raise ValueError(f"COCO annotation file {path}: 'annotations' must be a list; got "
                         f"{type(data['annotations']).__name__}")
    _check_ids(data, path)
    return data


def clean_polygons(segmentation):
    """Polygon parts with at least 3 finite points; returns ``(parts, number dropped)``."""
    parts = []
    for part in segmentation:
        try:
            values = [float(v) for v in part]
        except (TypeError, ValueError):
            values = []
        if len(values) >= 6 and len(values) % 2 == 0 and all(map(math.isfinite, values)):
            parts.append(values)
    return parts, len(segmentation) - len(parts)


def finite_box(bbox):
    """Whether ``bbox`` is 4 finite numbers."""
    try:
        return len(bbox) == 4 and all(math.isfinite(float(v)) for v in bbox)
    except (TypeError, ValueError):
        return False
