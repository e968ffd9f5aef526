"""Synthetic instance segmentation: squares, circles and triangles, prepared offline in seconds.

``draw_shapes`` is a pure numpy function: given a seeded ``np.random.Generator`` it paints 1 to
``max_objects`` shapes of random colour and size on a plain background, later shapes occluding
earlier ones. Each instance keeps only its *visible* pixels as its mask; its box is the tight box
of that mask (``examples.tight_box``: pixel ``(i, j)`` covers ``[j, j + 1) x [i, i + 1)``);
instances with fewer than ``min_visible`` visible pixels (fully hidden ones included) are dropped
and their pixels left as background, so every non-background pixel lies in exactly one mask.

``Shapes`` is a TFDS ``GeneratorBasedBuilder`` writing ArrayRecord files in the common example
format (``examples.py``): one PNG per instance mask, like TFDS ``lvis``. Example ``i`` of a split
is drawn from ``np.random.default_rng([seed, split_index, i])``, so data are reproducible and
independent of write order. No TensorFlow is needed.

Public API::

    builder = prepare_shapes(data_dir=None, num_train=1000, num_val=100, image_size=128)
    source = shapes_source("train", data_dir=None, ...same keywords...)  # prepares if missing
    len(source), source[0]   # a tfds.data_source: random access, decoded numpy records

Stored labels are 0..2 (TFDS ClassLabel over ``CLASS_NAMES``); ``parse_example`` and the input
pipeline add 1, so the model sees 1 = square, 2 = circle, 3 = triangle and 0 = background.
Prepared data go to ``data_dir/shapes/<config name>/1.0.0`` (default ``<repo>/data``).

Shape shorthand: ``S`` image side, ``N`` instances. Taught in notebooks/00_data.
"""

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from mrcnn_jax.data.examples import default_data_dir, encode_png, tight_boxes

CLASS_NAMES = ("square", "circle", "triangle")
_SPLITS = ("train", "validation")


def _shape_mask(kind, cx, cy, r, size):
    """Pixels whose centre lies inside a square/circle/triangle of half-size ``r``; (S, S)."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5  # pixel centres
    dx, dy = xs - cx, ys - cy
    if kind == 0:  # square
        return (np.abs(dx) <= r) & (np.abs(dy) <= r)
    if kind == 1:  # circle
        return dx * dx + dy * dy <= r * r
    # Upright triangle with apex (cx, cy - r) and base at y = cy + r: |dx| <= (dy + r) / 2.
    return (dy <= r) & (np.abs(dx) <= (dy + r) / 2)


def _min_side(mask):
    """Shorter side of the tight box of a boolean ``(S, S)`` mask (0 if empty)."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return 0
    return min(rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1)


def draw_shapes(rng, image_size=128, max_objects=6, min_visible=16, size_range=(0.08, 0.22),
                min_side=4):
    """Draw one synthetic image; returns a dict of numpy arrays.

    Args:
      rng: ``np.random.Generator``; the only source of randomness.
      image_size: side ``S`` of the square image.
      max_objects: at most this many shapes are painted (at least one).
      min_visible: instances with fewer visible pixels are dropped (fully hidden ones too).
      min_side: instances whose visible part is thinner than this (a sliver left by
        occlusion, say 35 x 1 px) are dropped too: no detector can be asked to find them.
      size_range: half-size of a shape as a fraction of ``S``.

    Returns:
      ``image (S, S, 3) uint8``, ``masks (N, S, S) bool`` visible parts,
      ``boxes (N, 4) float32`` tight xyxy boxes of the masks, ``labels (N,) int32`` in 0..2
      (index into ``CLASS_NAMES``), listed back to front (painting order).
    """
    count = int(rng.integers(1, max_objects + 1))
    background = rng.integers(0, 90, size=3)  # dark, so every shape (>= 110) contrasts
    image = np.empty((image_size, image_size, 3), np.uint8)
    image[:] = background
    kinds = rng.integers(0, len(CLASS_NAMES), size=count)
    radii = rng.uniform(*size_range, size=count) * image_size
    centres = rng.uniform(0.0, 1.0, size=(count, 2)) * (image_size - radii[:, None]) \
        + radii[:, None] / 2  # (count, 2): shapes may be cut by the border
    colours = rng.integers(110, 256, size=(count, 3))
    full = [_shape_mask(k, cx, cy, r, image_size)
            for k, (cx, cy), r in zip(kinds, centres, radii, strict=True)]
    visible, covered = [None] * count, np.zeros((image_size, image_size), bool)
    for k in range(count - 1, -1, -1):  # later shapes occlude earlier ones
        visible[k] = full[k] & ~covered
        covered |= full[k]
    keep = [k for k in range(count)
            if visible[k].sum() >= min_visible and _min_side(visible[k]) >= min_side]
    for k in keep:  # pixels of dropped slivers stay background: masks explain every pixel
        image[visible[k]] = colours[k]
    masks = np.stack([visible[k] for k in keep]) if keep else np.zeros(
        (0, image_size, image_size), bool)  # (N, S, S)
    return {"image": image, "masks": masks, "boxes": tight_boxes(masks),
            "labels": kinds[keep].astype(np.int32)}


@dataclasses.dataclass(eq=False)
class ShapesConfig(tfds.core.BuilderConfig):
    """Sizes and seed of a shapes dataset; the config name encodes them all."""

    image_size: int = 128
    num_train: int = 1000
    num_val: int = 100
    max_objects: int = 6
    seed: int = 0


def shapes_config(image_size=128, num_train=1000, num_val=100, max_objects=6, seed=0):
    """A ``ShapesConfig`` named ``s{size}_n{train}_{val}_m{max}_seed{seed}``."""
    name = f"s{image_size}_n{num_train}_{num_val}_m{max_objects}_seed{seed}"
    return ShapesConfig(name=name, image_size=image_size, num_train=num_train,
                        num_val=num_val, max_objects=max_objects, seed=seed,
                        description="synthetic squares, circles and triangles")


class Shapes(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """TFDS builder of the synthetic shapes data (not registered: read back from files)."""

    VERSION = tfds.core.Version("1.1.0")  # 1.1.0: slivers thinner than 4 px dropped
    RELEASE_NOTES = {"1.0.0": "Initial release."}

    def _info(self):
        size = self.builder_config.image_size
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(size, size, 3), encoding_format="png"),
                "image/id": np.int64,
                "objects": tfds.features.Sequence({
                    "bbox": tfds.features.BBoxFeature(),
                    "label": tfds.features.ClassLabel(names=CLASS_NAMES),
                    "segmentation": tfds.features.Image(shape=(size, size, 1),
                                                        encoding_format="png"),
                }),
            }),
            supervised_keys=None,
            homepage="https://github.com/",
        )

    def _split_generators(self, dl_manager):
        config = self.builder_config
        counts = {"train": config.num_train, "validation": config.num_val}
        return {split: self._generate_examples(index, counts[split])
                for index, split in enumerate(_SPLITS) if counts[split] > 0}

    def _generate_examples(self, split_index, count):
        config = self.builder_config
        for i in range(count):
            rng = np.random.default_rng([config.seed, split_index, i])
            yield i, _to_record(draw_shapes(rng, config.image_size, config.max_objects), i)


def _to_record(drawn, image_id):
    """``draw_shapes`` output -> a record of the common example format (PNG bytes)."""
    size = drawn["image"].shape[0]
    yxyx = drawn["boxes"][:, [1, 0, 3, 2]] / size  # (N, 4) normalised for BBoxFeature
    return {
        "image": encode_png(drawn["image"]),
        "image/id": image_id,
        "objects": {
            "bbox": [b for b in yxyx],
            "label": [int(k) for k in drawn["labels"]],
            "segmentation": [encode_png(m.astype(np.uint8) * 255) for m in drawn["masks"]],
        },
    }


def prepare_shapes(data_dir=None, num_train=1000, num_val=100, image_size=128, max_objects=6,
                   seed=0):
    """Write the shapes dataset as ArrayRecord under ``data_dir`` (no-op if already there).

    Returns the prepared ``Shapes`` builder; ``builder.as_data_source(split)`` reads it, as does
    ``shapes_source``. A split with count 0 is not written.
    """
    config = shapes_config(image_size, num_train, num_val, max_objects, seed)
    data_dir = default_data_dir() if data_dir is None else data_dir
    builder = Shapes(config=config, data_dir=str(data_dir), file_format="array_record")
    builder.download_and_prepare()
    return builder


def shapes_source(split="train", data_dir=None, **config):
    """``tfds.data_source`` of a shapes split, preparing it first if needed.

    ``config`` takes the keywords of ``prepare_shapes`` (``num_train``, ``image_size``, ...).
    Split slicing works: ``shapes_source("train[:10%]")``.
    """
    builder = prepare_shapes(data_dir, **config)
    return tfds.data_source(f"shapes/{builder.builder_config.name}", split=split,
                            data_dir=str(builder.data_dir_root), download=False)
