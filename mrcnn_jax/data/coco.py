"""COCO-format instance segmentation as TFDS ArrayRecord, and TFDS ``lvis``, for the pipeline.

``prepare_coco`` reads a COCO JSON annotation file plus its image folder (COCO 2017 itself, or
any dataset exported in COCO format: CVAT, Label Studio, Roboflow, ...) and writes the common
example format (``examples.py``): the image bytes as they are, and per instance a box, a
contiguous label, the original ``category_id``, ``is_crowd`` and the mask as a PNG, decoded by
pycocotools exactly like ``COCO.annToMask`` (polygons, uncompressed and compressed RLE, crowd).

Categories are sorted by id and mapped to contiguous ClassLabel indices ``0..K-1`` with their
names; the pipeline adds 1, so the model sees ``1..K`` and 0 = background.
``class_names(source)`` (examples.py) lists them; ``objects/category_id`` keeps the original ids
for COCO evaluation.

Bad input, all counted in ``builder.skipped`` (per split) and logged, never a crash in JAX:

- empty or invalid annotation file, no images or no categories: ``ValueError``;
- image file missing: ``FileNotFoundError``; corrupt image or size unlike the JSON: image
  skipped (``corrupt_images``);
- annotation with an unknown category id: skipped (``unknown_category``);
- box partly outside the image: clipped to it (``clipped_boxes``); zero area after clipping
  (degenerate or fully outside): skipped (``zero_area``); segmentation pycocotools cannot
  decode or that covers no pixel: skipped (``bad_segmentation``).

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

from mrcnn_jax.data.examples import default_data_dir, encode_png

_LOG = logging.getLogger(__name__)


def load_annotations(annotation_file):
    """Read and check a COCO JSON file; returns the dict. Raises ``ValueError`` if unusable."""
    path = pathlib.Path(annotation_file)
    text = path.read_text() if path.exists() else None
    if text is None:
        raise FileNotFoundError(f"COCO annotation file {path} does not exist")
    if not text.strip():
        raise ValueError(f"COCO annotation file {path} is empty")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"COCO annotation file {path} is not valid JSON: {error}") from None
    if not isinstance(data, dict) or not data.get("images") or not data.get("categories"):
        keys = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"COCO annotation file {path} needs non-empty 'images' and "
                         f"'categories' lists; found keys {keys}")
    data.setdefault("annotations", [])
    return data


def annotation_mask(segmentation, height, width):
    """Decode a COCO ``segmentation`` to ``(H, W)`` uint8 0/1, as ``COCO.annToMask`` does."""
    if isinstance(segmentation, list):  # polygons: one RLE per part, merged
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
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
        by_image = collections.defaultdict(list)
        for ann in data["annotations"]:
            by_image[ann["image_id"]].append(ann)
        counts = self.skipped.setdefault(split, collections.Counter())
        for info in data["images"]:
            record = _image_record(info, pathlib.Path(image_dir), counts)
            if record is not None:
                record["objects"] = _objects(by_image[info["id"]], labels, info, counts)
                yield int(info["id"]), record
        if counts:
            _LOG.warning("%s %s: %s", annotation_file, split, dict(counts))


def _image_record(info, image_dir, counts):
    """Image bytes and ids of one COCO ``images`` entry; ``None`` (counted) if corrupt."""
    path = image_dir / info["file_name"]
    if not path.exists():
        raise FileNotFoundError(f"image {path} (image id {info['id']}) listed in the "
                                f"annotations is not in {image_dir}")
    data = path.read_bytes()
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            size = image.size
    except Exception as error:  # PIL raises several types for broken files
        _LOG.warning("skipping corrupt image %s: %s", path, error)
        counts["corrupt_images"] += 1
        return None
    if size != (info["width"], info["height"]):
        _LOG.warning("skipping %s: size %s, annotations say %s", path, size,
                     (info["width"], info["height"]))
        counts["corrupt_images"] += 1
        return None
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
        box, clipped = clip_coco_box(ann["bbox"], height, width)
        if box[2] <= box[0] or box[3] <= box[1]:
            counts["zero_area"] += 1
            continue
        if clipped:
            counts["clipped_boxes"] += 1
        try:
            mask = annotation_mask(ann["segmentation"], height, width)  # (H, W)
        except Exception:  # pycocotools raises TypeError/ValueError on malformed input
            mask = None
        if mask is None or not mask.any():
            counts["bad_segmentation"] += 1
            continue
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

    Returns the builder (no-op if already prepared); ``builder.skipped`` counts bad input per
    split (empty when nothing was written in this call).
    """
    splits = ((split, str(annotation_file), str(image_dir)),
              *((s, str(a), str(d)) for s, a, d in more_splits))
    config = CocoConfig(name=name, splits=splits, description="COCO-format instances")
    data_dir = default_data_dir() if data_dir is None else data_dir
    builder = CocoInstances(config=config, data_dir=str(data_dir), file_format="array_record")
    builder.download_and_prepare()
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
