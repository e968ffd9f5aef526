"""Check for notebooks/00_data: padding one example to fixed shapes, with ``valid``.

``pad_example(example, size, max_instances, full_masks=True) -> dict`` as
``mrcnn_jax.data.transforms.pad_example`` (the oracle). ``example`` is a parsed example:
``image (H, W, 3) uint8``, ``boxes (N, 4) float32`` xyxy pixels, ``labels (N,) int32`` in 1..K,
``masks (N, H, W)`` (or crops ``(N, M, M)`` when ``full_masks`` is False) uint8, ``is_crowd
(N,) bool``, ``image_id``. The check reads six keys of the result: ``image (S, S, 3) uint8``
(the image at the top-left corner, zeros elsewhere), ``boxes (G, 4)``, ``labels (G,)``,
``masks (G, S, S)`` (crops keep ``(G, M, M)``), ``valid (G,) bool`` and ``num_truncated``
(objects past ``G = max_instances``; the first ``G`` in stored order are kept). Other keys are
not checked. Plain numpy at load time, so no ``jit`` case.
"""

import numpy as np

from mrcnn_jax.course.core import call, compare, describe_inputs, exercise
from mrcnn_jax.data.transforms import pad_example as oracle_pad_example

KEYS = ("image", "boxes", "labels", "masks", "valid", "num_truncated")


def _example(rng, height, width, count, crop=None):
    """A parsed example with ``count`` random rectangles (masks full, or ``crop x crop``)."""
    image = rng.integers(1, 256, (height, width, 3)).astype(np.uint8)
    x1 = rng.integers(0, width - 1, count)
    y1 = rng.integers(0, height - 1, count)
    x2 = np.minimum(x1 + rng.integers(1, width, count), width)
    y2 = np.minimum(y1 + rng.integers(1, height, count), height)
    boxes = np.stack([x1, y1, x2, y2], axis=1).astype(np.float32).reshape(count, 4)
    if crop is None:
        masks = np.zeros((count, height, width), np.uint8)
        for k in range(count):
            masks[k, y1[k]:y2[k], x1[k]:x2[k]] = 1
    else:
        masks = (rng.uniform(size=(count, crop, crop)) < 0.5).astype(np.uint8)
    return {"image": image, "boxes": boxes, "labels": rng.integers(1, 4, count).astype(np.int32),
            "masks": masks, "is_crowd": np.zeros(count, bool), "image_id": 7}


def _subset(example, keep):
    return dict(example, **{k: example[k][keep] for k in ("boxes", "labels", "masks",
                                                           "is_crowd")})


def _mistakes(example, size, max_instances, full_masks):
    count = len(example["labels"])

    def oracle(**changes):
        return oracle_pad_example(dict(example, **changes), size, max_instances, full_masks)

    def last_kept():
        return oracle_pad_example(_subset(example, np.arange(count)[::-1]), size,
                                  max_instances, full_masks)

    def centred():
        height, width = example["image"].shape[:2]
        canvas = np.zeros((size, size, 3), np.uint8)
        top, left = (size - height) // 2, (size - width) // 2
        canvas[top:top + height, left:left + width] = example["image"]
        return canvas

    def negative_pad(key, fill):
        out = oracle()[key].copy()
        out[min(count, max_instances):] = fill
        return out

    return {
        "image": (("pad at the bottom and right: the image stays at the top-left corner, so "
                   "boxes keep their pixel coordinates", centred),),
        "boxes": (("keep the *first* max_instances objects in stored order (truncate the tail)",
                   lambda: last_kept()["boxes"]),
                  ("padded slots are all zeros: box (0, 0, 0, 0)",
                   lambda: negative_pad("boxes", -1.0))),
        "labels": (("keep the *first* max_instances objects in stored order (truncate the "
                    "tail)", lambda: last_kept()["labels"]),
                   ("padded slots hold label 0 (background), not -1",
                    lambda: negative_pad("labels", -1))),
        "masks": (("mask crops (full_masks=False) keep their own M x M size; only full masks "
                   "are padded like the image",
                   lambda: oracle_pad_example(example, size, max_instances, True)["masks"]),
                  ("keep the *first* max_instances objects in stored order",
                   lambda: last_kept()["masks"])),
        "valid": (),
        "num_truncated": (("num_truncated counts the objects that did not fit: "
                           "max(N - max_instances, 0)",
                           lambda: np.int32(count - max_instances)),
                          ("num_truncated counts the objects that did not fit, not the slots "
                           "left empty", lambda: np.int32(max(max_instances - count, 0)))),
    }


@exercise("pad_example")
def check_pad_example(fn):
    """Check ``fn(example, size, max_instances, full_masks=True) -> dict`` (module
    docstring): six keys compared, exactly for integers and booleans."""
    def run(case, example, size, max_instances, full_masks=True):
        original = {k: np.copy(v) for k, v in example.items()}
        inputs = describe_inputs(
            (example["image"], example["boxes"], example["labels"], example["masks"]),
            {"size": size, "max_instances": max_instances, "full_masks": full_masks},
            names=("example['image']", "example['boxes']", "example['labels']",
                   "example['masks']"))
        got = call(case, fn, example, size, max_instances, full_masks)
        if not isinstance(got, dict) or any(k not in got for k in KEYS):
            have = sorted(got) if isinstance(got, dict) else type(got).__name__
            raise AssertionError(f"case '{case}': return a dict with (at least) the keys "
                                 f"{list(KEYS)}; got {have}")
        expected = oracle_pad_example(original, size, max_instances, full_masks)
        mistakes = _mistakes(original, size, max_instances, full_masks)
        for key in KEYS:
            compare(case, got[key], np.asarray(expected[key]), inputs, rtol=0, atol=1e-6,
                    mistakes=mistakes[key], what=f"'{key}'")

    rng = np.random.default_rng(20)
    hand = {"image": np.full((2, 3, 3), 200, np.uint8),
            "boxes": np.array([[0, 0, 2, 1], [1, 1, 3, 2]], np.float32),
            "labels": np.array([2, 3], np.int32),
            "masks": np.array([[[1, 1, 0], [0, 0, 0]], [[0, 0, 0], [0, 1, 1]]], np.uint8),
            "is_crowd": np.zeros(2, bool), "image_id": 1}
    run("hand example: a 2 x 3 image with 2 objects, padded to 4 x 4 and 3 slots", hand, 4, 3)
    run("random: a 20 x 30 image with 5 objects, padded to 32 x 32 and 8 slots",
        _example(rng, 20, 30, 5), 32, 8)
    run("more objects than slots: 6 objects, 4 slots (the first 4 kept, 2 counted)",
        _example(rng, 24, 16, 6), 24, 4)
    run("exactly as many objects as slots", _example(rng, 16, 16, 3), 16, 3)
    run("no objects at all (an image of background)", _example(rng, 12, 20, 0), 32, 4)
    run("mask crops (full_masks=False): 3 crops of 7 x 7 keep their size",
        _example(rng, 20, 20, 3, crop=7), 32, 5, False)
    run("mask crops and truncation: 5 crops of 6 x 6, 2 slots",
        _example(rng, 30, 18, 5, crop=6), 32, 2, False)
