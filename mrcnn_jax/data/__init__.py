"""Data: TFDS builders (synthetic shapes, COCO-format instances, TFDS lvis) and a grain pipeline.

No TensorFlow: builders write ArrayRecord, ``tfds.data_source`` reads records as numpy, and
``make_loader`` turns them into fixed-shape batches (DESIGN.md "Data").

    from mrcnn_jax.data import shapes_source, make_loader
    source = shapes_source("train", num_train=1000)          # prepares into <repo>/data once
    loader = make_loader(source, batch_size=8, image_size=128, max_instances=8, seed=0)
    batch = next(iter(loader))  # images (8,128,128,3) u8, boxes (8,8,4), labels, masks, valid

Modules: ``examples`` (the shared record layout, ``parse_example``, label 0 = background),
``shapes`` (``draw_shapes``, ``prepare_shapes``, ``shapes_source``), ``coco``
(``prepare_coco``, ``coco_source``, ``lvis_source``), ``coco_checks`` (``load_annotations``,
``SKIP_REASONS``, ``format_skipped``: bad COCO-format input), ``images`` (any image file as
8-bit RGB, EXIF orientation applied), ``transforms`` (resize, flip, mask crops, padding),
``pipeline`` (``make_loader``, batch keys and shapes).
Taught in notebooks/00_data.
"""

from mrcnn_jax.data.coco import coco_source, format_skipped, lvis_source, prepare_coco
from mrcnn_jax.data.examples import class_names, default_data_dir, parse_example, tight_box
from mrcnn_jax.data.pipeline import Loader, make_loader
from mrcnn_jax.data.shapes import CLASS_NAMES, draw_shapes, prepare_shapes, shapes_source

__all__ = [
    "CLASS_NAMES",
    "Loader",
    "class_names",
    "coco_source",
    "default_data_dir",
    "draw_shapes",
    "format_skipped",
    "lvis_source",
    "make_loader",
    "parse_example",
    "prepare_coco",
    "prepare_shapes",
    "shapes_source",
    "tight_box",
]
