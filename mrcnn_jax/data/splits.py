"""The training and held-out splits a command works on: the shapes data or a COCO-format folder.

A work directory's ``run.json`` keeps a small ``data`` dict that names its splits, so that
``evaluate`` and ``--resume`` find them again::

    {"num_train": 8000, "num_val": 500, "image_size": 128, "seed": 0}        # shapes
    {"kind": "coco", "name": "train_3f9a1c2e", "train_split": "train[:90%]",
     "val_split": "train[90%:]", "category_ids": [1, 2, 3], "class_names": [...],
     "train_annotations": "...", "train_images": "...", "val_annotations": null, ...}

(A ``data`` dict without ``kind`` is the shapes data, as written before COCO-format training.)

``coco_splits`` prepares a COCO-format folder once (``prepare_coco``, into the data directory
under a name derived from the annotation file's path, size and modification time, so an edited
file is prepared again) and, without a validation file, holds out a fixed fraction of the
training images: the last ``val_fraction`` of the prepared records (TFDS split slicing; the
order is fixed by the record keys, so every run holds out the same images).
"""

import hashlib
import json
import pathlib

from mrcnn_jax.data.coco import coco_source, format_skipped, prepare_coco
from mrcnn_jax.data.shapes import shapes_source


def prepared_name(annotation_file, images=None):
    """``<stem>_<hash>``: one prepared dataset per annotation file version and image folder."""
    path = pathlib.Path(annotation_file).resolve()
    stat = path.stat()
    key = f"{path}|{stat.st_size}|{stat.st_mtime_ns}|{images and pathlib.Path(images).resolve()}"
    stem = "".join(c if c.isalnum() else "_" for c in path.stem.lower())[:40] or "data"
    return f"{stem}_{hashlib.sha1(key.encode()).hexdigest()[:8]}"


def _categories(annotation_file):
    cats = sorted((int(c["id"]), str(c["name"]))
                  for c in json.loads(pathlib.Path(annotation_file).read_text())["categories"])
    return [i for i, _ in cats], [n for _, n in cats]


def coco_splits(train_annotations, train_images, val_annotations=None, val_images=None, *,
                val_fraction=0.1, data_dir=None):
    """Prepare a COCO-format dataset for training; returns ``(data, report)``.

    ``data`` is the ``run.json`` dict above; ``report`` maps each prepared split to a line of
    what was kept, skipped and fixed (``coco.format_skipped``; saved with the prepared data, so
    a later run prints the same line).
    """
    for what, path in (("--train_annotations", train_annotations),
                       ("--train_images", train_images)):
        if path is None or not pathlib.Path(path).exists():
            raise FileNotFoundError(f"{what} {path} does not exist")
    if (val_annotations is None) != (val_images is None):
        raise ValueError("give both --val_annotations and --val_images, or neither "
                         f"(got {val_annotations!r} and {val_images!r})")
    if val_annotations is None and not 0.0 < val_fraction < 1.0:
        raise ValueError(f"--val_fraction must be in (0, 1), got {val_fraction}")
    name = prepared_name(train_annotations, train_images)
    more = ()
    if val_annotations is not None:
        if not pathlib.Path(val_annotations).exists():
            raise FileNotFoundError(f"--val_annotations {val_annotations} does not exist")
        name = f"{name}_{prepared_name(val_annotations, val_images).rsplit('_', 1)[1]}"
        more = (("validation", str(val_annotations), str(val_images)),)
    builder = prepare_coco(train_annotations, train_images, data_dir=data_dir, name=name,
                           split="train", more_splits=more)
    ids, names = _categories(train_annotations)
    percent = round(100 * val_fraction)
    data = {
        "kind": "coco", "name": name,
        "train_split": "train" if more else f"train[:{100 - percent}%]",
        "val_split": "validation" if more else f"train[{100 - percent}%:]",
        "category_ids": ids, "class_names": ["background", *names],
        "train_annotations": str(pathlib.Path(train_annotations).resolve()),
        "train_images": str(pathlib.Path(train_images).resolve()),
        "val_annotations": val_annotations and str(pathlib.Path(val_annotations).resolve()),
        "val_images": val_images and str(pathlib.Path(val_images).resolve()),
        "val_fraction": None if more else percent / 100,
    }
    report = {split: format_skipped(builder.skipped.get(split, {}), builder.kept.get(split))
              for split in builder.kept}
    return data, report


def split_sources(data, data_dir=None):
    """``(train_source, val_source)`` of a ``run.json`` data dict (shapes or COCO-format)."""
    if data.get("kind", "shapes") == "shapes":
        sizes = {k: data[k] for k in ("num_train", "num_val", "image_size", "seed")}
        return (shapes_source("train", data_dir, **sizes),
                shapes_source("validation", data_dir, **sizes))
    return (coco_source(data["name"], data["train_split"], data_dir),
            coco_source(data["name"], data["val_split"], data_dir))


def category_ids(data, num_classes):
    """The dataset's original category id of each model label ``1..K`` (shapes: ``1..K``)."""
    if data.get("kind", "shapes") == "coco":
        return list(data["category_ids"])
    return list(range(1, num_classes))
