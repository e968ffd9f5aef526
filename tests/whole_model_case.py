"""The whole-model parity cases against torchvision, shared by tests/test_from_torchvision.py and
tools/make_torchvision_parity.py. Needs no torch.

A case is a torchvision Mask R-CNN (its state-dict table in ``golden/torchvision_maskrcnn_shapes
.json``), an image size and a seed. Its weights are generated here with numpy from the seed and
each tensor's name, so the tools script (which loads them into torchvision and records its
outputs) and the tests (which load them into ours with ``from_torchvision``) use the same
weights without shipping them. Any weights must give the same function; these are LeCun-scaled
so activations stay O(1) through the network (He scaling grows them to ~500 by P2 and saturates
the RPN's sigmoid, which makes proposal scores tie), with random BatchNorm statistics. A random
classifier scores every class near 1/K, so its weights are scaled up (``cls_scale``) and both
models use a higher score threshold (``score_threshold``): a few dozen detections, with scores
well separated.

Golden files hold torchvision's outputs, subsampled where they are large: FPN values and RPN
outputs at seeded positions, all proposals, box-head and mask-head outputs for fixed boxes, and
the final detections with their masks as COCO RLE.
"""

import json
import pathlib
import zlib

import numpy as np

GOLDEN = pathlib.Path(__file__).resolve().parent / "golden"
TABLES = GOLDEN / "torchvision_maskrcnn_shapes.json"

CASES = {
    "resnet50": {"table": "maskrcnn_resnet50_fpn", "image_size": (800, 1056), "seed": 50,
                 "cls_scale": 1.0, "score_threshold": 0.75},
    "resnet18": {"table": "maskrcnn_resnet18_fpn", "image_size": (128, 128), "seed": 18,
                 "cls_scale": 2.0, "score_threshold": 0.5},
}
NUM_GIVEN_BOXES = 32  # box-head and mask-head checks on fixed boxes
SAMPLES = 4096  # FPN values / RPN outputs compared at this many seeded positions per array


def golden_path(name):
    return GOLDEN / f"torchvision_{name}_parity.npz"


def _rng(seed, name=""):
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


def _fan_in(name, shape):
    if len(shape) == 4:  # OIHW conv, or (in, out, 2, 2) transposed conv: one tap per output
        return shape[0] if name.endswith("conv5_mask.weight") else int(np.prod(shape[1:]))
    return shape[1]  # (out, in) linear


def synthetic_state(name):
    """``{torchvision name: float32 array}`` for case ``name``, in torchvision's layout."""
    case = CASES[name]
    table = json.loads(TABLES.read_text())[case["table"]]
    state = {}
    for key, shape in sorted(table.items()):
        rng = _rng(case["seed"], key)
        shape = tuple(shape)
        if key.endswith("running_var"):
            value = rng.uniform(0.5, 1.5, shape)
        elif key.endswith("running_mean") or key.endswith("bias"):
            value = rng.normal(0.0, 0.1, shape)
        elif len(shape) == 1:  # BatchNorm weight
            value = rng.uniform(0.5, 1.5, shape)
        else:
            std = np.sqrt(1.0 / _fan_in(key, shape))  # LeCun: O(1) outputs
            if "bbox_pred" in key:
                std *= 0.1  # small deltas: proposals and detections stay near their anchors
            if key.endswith("cls_score.weight"):
                std *= case["cls_scale"]
            value = rng.normal(0.0, std, shape)
        state[key] = value.astype(np.float32)
    return state


def synthetic_image(name):
    """A deterministic uint8 ``(H, W, 3)`` picture: a smooth background and filled shapes."""
    case = CASES[name]
    h, w = case["image_size"]
    rng = _rng(case["seed"], "image")
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    image = np.stack([60 + 80 * xx / w, 60 + 80 * yy / h, 100 + 0 * xx], -1)
    for _ in range(12):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        r = rng.uniform(0.05, 0.25) * min(h, w)
        inside = (np.abs(yy - cy) < r) & (np.abs(xx - cx) < r) if rng.random() < 0.5 \
            else (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
        image[inside] = rng.integers(0, 256, 3)
    image += rng.normal(0, 8, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def given_boxes(name):
    """``(NUM_GIVEN_BOXES, 4)`` float32 boxes inside the image, of every FPN level's size."""
    case = CASES[name]
    h, w = case["image_size"]
    rng = _rng(case["seed"], "boxes")
    size = np.exp(rng.uniform(np.log(8), np.log(min(h, w) * 0.9), (NUM_GIVEN_BOXES, 2)))
    x1 = rng.uniform(0, w - size[:, 0])
    y1 = rng.uniform(0, h - size[:, 1])
    return np.stack([x1, y1, x1 + size[:, 0], y1 + size[:, 1]], 1).astype(np.float32)


def sample_index(name, what, count):
    """Seeded positions (without repeats) into a flattened array of ``count`` values."""
    rng = _rng(CASES[name]["seed"], f"sample/{what}")
    return np.sort(rng.choice(count, size=min(SAMPLES, count), replace=False))


def mask_channels(name, num_classes):
    """The class channel of the mask head compared for each given box."""
    return (np.arange(NUM_GIVEN_BOXES) * 7 + CASES[name]["seed"]) % num_classes
