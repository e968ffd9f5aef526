"""COCO-format instance segmentation as TFDS ArrayRecord, and TFDS ``lvis``, for the pipeline.

``prepare_coco`` reads a COCO JSON annotation file plus its image folder (COCO 2017 itself, or
any dataset exported in COCO format: CVAT, Label Studio, Roboflow, ...) and writes the common
example format (``examples.py``): the image file's bytes (re-encoded only when converted,
see below), and per instance a box, a
contiguous label, the original ``category_id``, ``is_crowd`` and the mask as a PNG, decoded by
pycocotools exactly like ``COCO.annToMask`` (polygons, uncompressed and compressed RLE, crowd).

Categories are sorted by id and mapped to contiguous ClassLabel indices ``0..K-1`` with their
names; the pipeline adds 1, so the model sees ``1..K`` and 0 = background.
``class_names(source)`` (examples.py) lists them; ``objects/category_id`` keeps the original ids
for COCO evaluation.

Bad input never crashes later in JAX and is never lost silently. A file that cannot be COCO
raises a one-line ``ValueError`` (not JSON, not a dict with ``images`` and ``categories``, an
entry lacking ``id``/``file_name``/``width``/``height``, duplicate category names, one image id
for two different files); so does a split where no image, or none of its annotations, is
usable (with the skip counts: e.g. a boxes-only export, whose segmentations are empty).
Everything else is skipped or fixed and counted per split in ``builder.skipped`` (a
``collections.Counter``; ``SKIP_REASONS`` says what each key means, ``format_skipped`` prints
it, both in ``coco_checks.py`` with ``load_annotations``; the counts are saved beside the
prepared data and read back when it is reused):

- images: file missing (``missing_images``), unreadable (``corrupt_images``), size unlike the
  JSON's ``width``/``height`` (``size_mismatch``), a repeated entry of the same id and file
  (``duplicate_images``); the annotations of skipped images are counted too
  (``annotations_of_skipped_images``);
- images kept but converted (``images.py``): EXIF-rotated photos are turned upright when the
  JSON has the upright size (``exif_rotated``, what CVAT / Label Studio show and measure) or
  kept as stored when the JSON has the stored size (``exif_ignored``); grayscale, palette,
  RGBA, CMYK and 16-bit images become 8-bit RGB (``converted_images``, 16-bit scaled by
  255/65535). Such images are re-encoded (JPEG sources as JPEG quality 95, others as PNG);
  all others are stored as their file's bytes, unchanged;
- annotations: ``image_id`` not among ``images`` (``annotations_without_image``), unknown
  ``category_id`` (``unknown_category``), a ``bbox`` that is not 4 finite numbers or an entry
  lacking ``bbox``/``segmentation`` (``bad_bbox``), zero area after clipping to the image
  (``zero_area``); a box partly outside is clipped (``clipped_boxes``, kept); polygon parts
  with fewer than 3 points or non-finite coordinates are dropped (``short_polygons``; with
  fewer than 3 points pycocotools would read a 2-point polygon as a box); a segmentation that
  pycocotools cannot decode or that covers no pixel skips the annotation
  (``bad_segmentation``).

``builder.kept[split]`` counts the ``images`` and ``annotations`` written.

Images without annotations are kept (all ``valid`` False in batches; torchvision's COCO training
drops them). Crowd regions are stored; the pipeline drops them unless ``include_crowd=True``.

TFDS ``coco/2017`` has **no masks** (boxes only) and its ``_info`` needs TensorFlow: use this
builder on the official files instead (``annotations/instances_val2017.json`` + ``val2017/``)::

    prepare_coco("annotations/instances_val2017.json", "val2017", name="coco2017",
                 split="validation")
    source = coco_source("coco2017", "validation")

TFDS ``lvis`` stores the same layout (per-instance PNG masks); once prepared (it needs Apache
Beam and the 27 GB download, offline only with ``download=False``), ``lvis_source`` reads it.

Shape shorthand: ``N`` instances, ``H, W`` image size. Taught in notebooks/00_data.
"""

import collections
import dataclasses
import io
import json
import logging
import pathlib

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image
from pycocotools import mask as mask_utils

from mrcnn_jax.data.coco_checks import (  # noqa: F401  (load_annotations: public here too)
    SKIP_REASONS,
    clean_polygons,
    finite_box,
    format_skipped,
    load_annotations,
)
from mrcnn_jax.data.examples import default_data_dir, encode_png
from mrcnn_jax.data.images import (
    ROTATING,
    decode_image,
    encode_image,
    exif_orientation,
    plain_rgb,
)

_LOG = logging.getLogger(__name__)

def annotation_mask(segmentation, height, width):
    """Decode a COCO ``segmentation`` to ``(H, W)`` uint8 0/1, as ``COCO.annToMask`` does
    (polygons: only the parts ``clean_polygons`` keeps; none left gives an empty mask)."""
    if isinstance(segmentation, list):  # polygons: one RLE per part, merged
        parts, _ = clean_polygons(segmentation)
        if not parts:
            return np.zeros((height, width), np.uint8)
        rle = mask_utils.merge(mask_utils.frPyObjects(parts, height, width))
    elif isinstance(segmentation.get("counts"), list):  # uncompressed RLE
        rle = mask_utils.frPyObjects(segmentation, height, width)
    else:  # compressed RLE (counts as str or bytes)
        rle = segmentation
    return mask_utils.decode(rle)


def clip_coco_box(bbox, height, width):
    """COCO ``[x, y, w, h]`` -> xyxy clipped to the image, and whether clipping changed it."""
    x, y, w, h = (float(v) for v in bbox)
    box = np.array([x, y, x + w, y + h], np.float32)
    clipped = np.clip(box, 0, [width, height, width, height]).astype(np.float32)
    return clipped, bool((clipped != box).any())


@dataclasses.dataclass(eq=False)
class CocoConfig(tfds.core.BuilderConfig):
    """Where the data come from: ``splits`` is ``((split, annotation_file, image_dir), ...)``."""

    splits: tuple = ()


class CocoInstances(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """TFDS builder of COCO-format instance data (not registered: read back from files)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}

    def __init__(self, **kwargs):
        self.skipped = {}  # split -> collections.Counter of skipped or fixed items
        self.kept = {}  # split -> collections.Counter of images and annotations written
        self._annotations = {}
        super().__init__(**kwargs)

    def _load(self, annotation_file):
        key = str(annotation_file)
        if key not in self._annotations:
            self._annotations[key] = load_annotations(annotation_file)
        return self._annotations[key]

    def _categories(self):
        """``[(id, name), ...]`` sorted by id, identical in every split's file."""
        found = None
        for _, annotation_file, _ in self.builder_config.splits:
            cats = sorted((int(c["id"]), str(c["name"]))
                          for c in self._load(annotation_file)["categories"])
            if found is not None and cats != found:
                raise ValueError(f"{annotation_file}: categories differ from the other splits")
            found = cats
        return found

    def _info(self):
        names = [name for _, name in self._categories()]
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(None, None, 3)),
                "image/id": np.int64,
                "image/filename": tfds.features.Text(),
                "objects": tfds.features.Sequence({
                    "id": np.int64,
                    "bbox": tfds.features.BBoxFeature(),
                    "label": tfds.features.ClassLabel(names=names),
                    "category_id": np.int64,
                    "is_crowd": np.bool_,
                    "segmentation": tfds.features.Image(shape=(None, None, 1),
                                                        encoding_format="png"),
                }),
            }),
            supervised_keys=None,
        )

    def _split_generators(self, dl_manager):
        return {split: self._generate_examples(split, annotation_file, image_dir)
                for split, annotation_file, image_dir in self.builder_config.splits}

    def _generate_examples(self, split, annotation_file, image_dir):
        data = self._load(annotation_file)
        labels = {cat_id: k for k, (cat_id, _) in enumerate(self._categories())}
        image_ids = {info["id"] for info in data["images"]}
        by_image = collections.defaultdict(list)
        counts = self.skipped.setdefault(split, collections.Counter())
        kept = self.kept.setdefault(split, collections.Counter())
        for ann in data["annotations"]:
            if not isinstance(ann, dict) or ann.get("image_id") not in image_ids:
                counts["annotations_without_image"] += 1
            else:
                by_image[ann["image_id"]].append(ann)
        seen = set()
        for info in data["images"]:
            if info["id"] in seen:  # same id and file (other files raised in load)
                counts["duplicate_images"] += 1
                continue
            seen.add(info["id"])
            record = _image_record(info, pathlib.Path(image_dir), counts)
            if record is None:
                if by_image[info["id"]]:
                    counts["annotations_of_skipped_images"] += len(by_image[info["id"]])
                continue
            record["objects"] = _objects(by_image[info["id"]], labels, info, counts)
            kept["images"] += 1
            kept["annotations"] += len(record["objects"]["id"])
            yield int(info["id"]), record
        if not kept["images"]:
            first = pathlib.Path(image_dir) / data["images"][0]["file_name"]
            raise ValueError(f"{annotation_file}: none of its {len(data['images'])} images is "
                             f"usable ({format_skipped(counts)}); the first is expected at "
                             f"{first}")
        if data["annotations"] and not kept["annotations"]:
            raise ValueError(f"{annotation_file}: none of its {len(data['annotations'])} "
                             f"annotations is usable ({format_skipped(counts)})")
        if counts:
            _LOG.warning("%s %s: %s", annotation_file, split, format_skipped(counts, kept))


def _open_image(path):
    """``(bytes, format, stored size (w, h), EXIF orientation, plain RGB?)``; None if broken."""
    data = path.read_bytes()
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            return data, image.format, image.size, exif_orientation(image), plain_rgb(
                data, image)
    except Exception as error:  # PIL raises several types for broken files
        _LOG.warning("skipping unreadable image %s: %s", path, error)
        return None


def _image_record(info, image_dir, counts):
    """Image bytes and ids of one COCO ``images`` entry; ``None`` (counted) if unusable."""
    path = image_dir / info["file_name"]
    if not path.is_file():
        if not counts["missing_images"]:
            _LOG.warning("image %s (id %s) is not in %s", info["file_name"], info["id"], image_dir)
        counts["missing_images"] += 1
        return None
    opened = _open_image(path)
    if opened is None:
        counts["corrupt_images"] += 1
        return None
    data, fmt, stored, orientation, plain = opened
    upright = stored[::-1] if orientation in ROTATING else stored
    expected = (info["width"], info["height"])
    rotate = orientation != 1 and upright == expected  # else the tool saw the stored pixels
    if not rotate and stored != expected:
        _LOG.warning("skipping %s: size %s, the annotations say %s", path, upright, expected)
        counts["size_mismatch"] += 1
        return None
    if orientation != 1:
        counts["exif_rotated" if rotate else "exif_ignored"] += 1
    if rotate or not plain:  # re-encode; readers ignore EXIF, so plain unrotated bytes stay
        try:
            pixels = decode_image(data, apply_exif=rotate)  # (H, W, 3) uint8
        except ValueError as error:
            _LOG.warning("skipping %s: %s", path, error)
            counts["corrupt_images"] += 1
            return None
        if not plain:
            counts["converted_images"] += 1
        data = encode_image(pixels, jpeg=fmt == "JPEG")
    return {"image": data, "image/id": int(info["id"]), "image/filename": info["file_name"]}


def _objects(annotations, labels, info, counts):
    """The ``objects`` Sequence of one image, skipping (and counting) bad annotations."""
    height, width = info["height"], info["width"]
    keys = ("id", "bbox", "label", "category_id", "is_crowd", "segmentation")
    objects = {k: [] for k in keys}
    for ann in annotations:
        if ann.get("category_id") not in labels:
            counts["unknown_category"] += 1
            continue
        if not finite_box(ann.get("bbox")) or "segmentation" not in ann:
            counts["bad_bbox"] += 1
            continue
        box, clipped = clip_coco_box(ann["bbox"], height, width)
        if box[2] <= box[0] or box[3] <= box[1]:
            counts["zero_area"] += 1
            continue
        segmentation = ann["segmentation"]
        dropped = clean_polygons(segmentation)[1] if isinstance(segmentation, list) else 0
        if dropped:
            counts["short_polygons"] += dropped
        try:
            mask = annotation_mask(segmentation, height, width)  # (H, W)
        except Exception:  # pycocotools raises TypeError/ValueError on malformed input
            mask = None
        if mask is None or mask.shape != (height, width) or not mask.any():
            counts["bad_segmentation"] += 1
            continue
        if clipped:
            counts["clipped_boxes"] += 1
        objects["id"].append(int(ann.get("id", -1)))
        objects["bbox"].append(box[[1, 0, 3, 2]] / np.array([height, width] * 2, np.float32))
        objects["label"].append(labels[ann["category_id"]])
        objects["category_id"].append(int(ann["category_id"]))
        objects["is_crowd"].append(bool(ann.get("iscrowd", 0)))
        objects["segmentation"].append(encode_png(mask * 255))
    return objects


def prepare_coco(annotation_file, image_dir, data_dir=None, name="custom", split="train",
                 more_splits=()):
    """Write COCO-format data as ArrayRecord under ``data_dir/coco_instances/<name>``.

    Args:
      annotation_file, image_dir: the COCO JSON and the folder its ``file_name``s live in.
      data_dir: root of prepared data (default ``<repo>/data``).
      name: config name, one per dataset (e.g. ``"coco2017"``, ``"my_parts"``).
      split: split name of this file (``"train"``, ``"validation"``, ...).
      more_splits: further ``(split, annotation_file, image_dir)`` with the same categories.

    Returns the builder (no-op if already prepared). ``builder.skipped[split]`` counts bad
    input (``SKIP_REASONS``) and ``builder.kept[split]`` the images and annotations written;
    both are saved as ``skipped.json`` in the prepared folder and read back from it when the
    data were prepared earlier. Print them with ``format_skipped(builder.skipped[split],
    builder.kept[split])``.
    """
    splits = ((split, str(annotation_file), str(image_dir)),
              *((s, str(a), str(d)) for s, a, d in more_splits))
    config = CocoConfig(name=name, splits=splits, description="COCO-format instances")
    data_dir = default_data_dir() if data_dir is None else data_dir
    builder = CocoInstances(config=config, data_dir=str(data_dir), file_format="array_record")
    builder.download_and_prepare()
    saved = pathlib.Path(builder.data_dir) / "skipped.json"
    if builder.kept:  # written in this call
        saved.write_text(json.dumps({"skipped": builder.skipped, "kept": builder.kept}))
    elif saved.exists():
        counts = json.loads(saved.read_text())
        builder.skipped = {k: collections.Counter(v) for k, v in counts["skipped"].items()}
        builder.kept = {k: collections.Counter(v) for k, v in counts["kept"].items()}
    return builder


def coco_source(name="custom", split="train", data_dir=None):
    """``tfds.data_source`` of data written by ``prepare_coco`` (no builder code needed)."""
    data_dir = default_data_dir() if data_dir is None else data_dir
    return tfds.data_source(f"coco_instances/{name}", split=split, data_dir=str(data_dir),
                            download=False)


def lvis_source(split="train", data_dir=None):
    """``tfds.data_source`` of a prepared TFDS ``lvis`` (never downloads)."""
    return tfds.data_source("lvis", split=split, data_dir=None if data_dir is None else
                            str(data_dir), download=False)
