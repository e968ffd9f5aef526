"""The grain input pipeline: a ``tfds.data_source`` in, fixed-shape numpy batches out.

``make_loader`` chains ``grain.MapDataset.source -> shuffle(seed) -> random_map(parse +
transform) -> batch(drop_remainder=True) -> repeat(num_epochs)``; the per-example work is the
pure numpy of ``examples.parse_example`` and ``transforms.transform_example``. Shuffling and
flips come from grain's per-index generators seeded by ``seed``, so the same seed gives the
same batches, with or without worker processes. Each epoch is reshuffled and drops its own
remainder; normalisation is left to the model.

Every batch is a dict of numpy arrays (``B`` batch, ``G`` = ``max_instances``, ``S`` =
``max_size``, ``M`` = ``mask_size``)::

    images        (B, S, S, 3) uint8    resized, padded bottom/right with zeros
    boxes         (B, G, 4) float32     xyxy pixels of ``images``; zeros where not valid
    labels        (B, G) int32          1..K, 0 = background / padding
    masks         (B, G, S, S) uint8    0/1 full masks, or (B, G, M, M) crops in their boxes
    valid         (B, G) bool           real ground truth slots
    is_crowd      (B, G) bool           crowd regions (only with include_crowd=True)
    image_ids     (B,) int64            ``image/id`` of the record
    image_sizes   (B, 2) int32          (h, w) of the resized content before padding
    orig_sizes    (B, 2) int32          (h, w) of the stored image
    scales        (B, 2) float32        (sy, sx): resized = original * scale
    flipped       (B,) bool
    num_instances (B,) int32            instances before truncation to G
    num_truncated (B,) int32            instances dropped because G was too small

``Loader`` (what ``make_loader`` returns) also keeps running totals in ``loader.stats`` and logs
a warning the first time ground truth is truncated.

Example::

    source = shapes_source("train")
    loader = make_loader(source, batch_size=8, image_size=128, max_instances=8, seed=0)
    for batch in loader: ...

Taught in notebooks/00_data.
"""

import logging

import grain
import numpy as np

from mrcnn_jax.data.examples import parse_example
from mrcnn_jax.data.transforms import transform_example

_LOG = logging.getLogger(__name__)
_BATCH_NAMES = {"image": "images", "image_id": "image_ids", "image_size": "image_sizes",
                "orig_size": "orig_sizes", "scale": "scales"}


class _Transform(grain.transforms.RandomMap):
    """Picklable parse + transform of one record (runs in grain worker processes too)."""

    def __init__(self, **options):
        self.options = options

    def random_map(self, element, rng):
        return transform_example(parse_example(element), rng, **self.options)


def _collate(examples):
    """Stack a list of fixed-shape examples into one batch dict with plural names."""
    return {_BATCH_NAMES.get(k, k): np.stack([e[k] for e in examples]) for k in examples[0]}


def _sizes(image_size, min_size, max_size):
    if image_size is not None:
        if min_size is not None or max_size is not None:
            raise ValueError("give either image_size or min_size/max_size, not both")
        return int(image_size), int(image_size)
    if min_size is None or max_size is None or min_size > max_size:
        raise ValueError(f"need image_size, or min_size <= max_size; got image_size="
                         f"{image_size}, min_size={min_size}, max_size={max_size}")
    return int(min_size), int(max_size)


class Loader:
    """Iterable over fixed-shape batches (see the module docstring), with truncation stats."""

    def __init__(self, dataset, num_batches, worker_count):
        self.dataset = dataset  # the grain.MapDataset of batches
        self.num_batches = num_batches
        self.worker_count = worker_count
        self.stats = {"batches": 0, "images": 0, "instances": 0, "truncated": 0}

    def __len__(self):
        if self.num_batches is None:
            raise TypeError("this Loader repeats forever (num_epochs=None): it has no length")
        return self.num_batches

    def __iter__(self):
        iterable = self.dataset.to_iter_dataset()
        if self.worker_count > 0:
            from absl import flags

            if not flags.FLAGS.is_parsed():  # grain workers read absl flags
                flags.FLAGS.mark_as_parsed()
            iterable = iterable.mp_prefetch(
                grain.MultiprocessingOptions(num_workers=self.worker_count))
        for batch in iterable:
            self._count(batch)
            yield batch

    def _count(self, batch):
        truncated = int(batch["num_truncated"].sum())
        if truncated and not self.stats["truncated"]:
            _LOG.warning("ground truth truncated to max_instances=%d: %d instances dropped "
                            "in this batch; raise max_instances (running count in "
                            "loader.stats['truncated'])", batch["labels"].shape[1], truncated)
        self.stats["batches"] += 1
        self.stats["images"] += len(batch["images"])
        self.stats["instances"] += int(batch["num_instances"].sum())
        self.stats["truncated"] += truncated


def make_loader(source, batch_size, *, image_size=None, min_size=None, max_size=None,
                max_instances=16, mask_size=None, train=True, shuffle=None, flip=None, seed=0,
                num_epochs=1, worker_count=0, include_crowd=False):
    """A ``Loader`` of fixed-shape batches from a ``tfds.data_source`` in the common format.

    Args:
      source: random-access records (``shapes_source``, ``coco_source``, ``lvis_source``).
      batch_size: ``B``; the last incomplete batch of each epoch is dropped.
      image_size: fixed size ``S`` (``min_size = max_size = S``: fit into ``S x S``); or
      min_size, max_size: torchvision-style resize, padded to ``max_size x max_size``.
      max_instances: ``G`` ground-truth slots; more instances are truncated and counted.
      mask_size: ``None`` for full masks, ``M`` for ``M x M`` crops inside the boxes (use it for
        large images: 28 or 112).
      train: default for ``shuffle`` and ``flip`` (random horizontal flip, probability 0.5).
      seed: seeds shuffling and flips; same seed, same batches.
      num_epochs: passes over ``source`` (``None`` repeats forever).
      worker_count: grain worker processes (0 = in this process).
      include_crowd: keep crowd regions, flagged in ``is_crowd`` (dropped by default).
    """
    min_size, max_size = _sizes(image_size, min_size, max_size)
    if batch_size < 1 or len(source) < batch_size:
        raise ValueError(f"batch_size={batch_size} needs 1 <= batch_size <= len(source) = "
                         f"{len(source)} (incomplete batches are dropped)")
    if max_instances < 1:
        raise ValueError(f"max_instances must be >= 1, got {max_instances}")
    shuffle = train if shuffle is None else shuffle
    flip = train if flip is None else flip
    dataset = grain.MapDataset.source(source)
    if shuffle:
        dataset = dataset.shuffle(seed=seed)
    transform = _Transform(min_size=min_size, max_size=max_size, max_instances=max_instances,
                           flip_prob=0.5 if flip else 0.0, mask_size=mask_size,
                           include_crowd=include_crowd)
    dataset = dataset.random_map(transform, seed=seed)
    dataset = dataset.batch(batch_size, drop_remainder=True, batch_fn=_collate)
    per_epoch = len(dataset)
    dataset = dataset.repeat(num_epochs)
    return Loader(dataset, per_epoch * num_epochs if num_epochs else None, worker_count)
