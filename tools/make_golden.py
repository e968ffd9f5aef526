"""Write tests/golden/geometry.npz: torchvision's answers on small seeded random inputs.

The geometry tests (tests/test_boxes.py, test_anchors.py, test_nms.py, test_roi_align.py,
test_poolers.py, test_paste_masks.py) compare mrcnn_jax with these arrays, so they check parity
with torchvision without importing torch. Only this script needs torch and torchvision:

    . .venv/bin/activate                      # torch==2.14.1, torchvision==0.29.1
    python tools/make_golden.py               # writes tests/golden/geometry.npz (< 300 KB)

Rerun it only when a case is added or the pinned torchvision changes; the output is
deterministic (fixed seeds, CPU kernels), so a rerun reproduces the committed file. Arrays are
stored in mrcnn_jax's layouts: features NHWC (torchvision is NCHW), RoIs as ``boxes (K, 4)`` plus
``batch_indices (K,)`` (torchvision takes ``(K, 5)`` with the batch index first). Keys are
``<case>/<name>``; the large 800x1056 anchor set is stored as a SHA-256 of its float32 bytes
plus a few slices.
"""

import hashlib
import pathlib

import numpy as np
import torch
import torchvision
from torchvision.models.detection._utils import BoxCoder
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.roi_heads import paste_masks_in_image
from torchvision.ops import MultiScaleRoIAlign

OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "golden" / "geometry.npz"
FPN_SIZES = ((32,), (64,), (128,), (256,), (512,))
FPN_RATIOS = ((0.5, 1.0, 2.0),) * 5


def random_boxes(rng, n, low, high, min_size, max_size):
    """``(n, 4)`` float32 xyxy boxes with top-left in [low, high) and sides in a range."""
    xy = rng.uniform(low, high, (n, 2))
    wh = rng.uniform(min_size, max_size, (n, 2))
    return np.concatenate([xy, xy + wh], axis=1).astype(np.float32)


def iou_case(rng, out):
    boxes1 = random_boxes(rng, 40, -10, 90, 0.5, 60)
    boxes1[:3, 2] = boxes1[:3, 0]  # zero width: torchvision gives 0 against positive boxes
    boxes2 = random_boxes(rng, 50, -10, 90, 0.5, 60)
    boxes2[:5] = boxes1[5:10]  # identical pairs: IoU exactly 1
    out["iou/boxes1"], out["iou/boxes2"] = boxes1, boxes2
    out["iou/iou"] = torchvision.ops.box_iou(torch.tensor(boxes1), torch.tensor(boxes2)).numpy()


def coder_case(rng, out):
    for name, weights in (("rpn", (1.0, 1.0, 1.0, 1.0)), ("roi", (10.0, 10.0, 5.0, 5.0))):
        coder = BoxCoder(weights)
        gt = random_boxes(rng, 48, -20, 200, 1, 120)
        anchors = random_boxes(rng, 48, -20, 200, 1, 120)
        deltas = rng.normal(0, 1.5, (48, 4)).astype(np.float32) * np.float32(weights)
        # dw, dh far beyond the log(1000/16) clamp (after dividing by the weights), and very
        # negative ones (no lower clamp).
        deltas[:6, 2:] = np.float32([[5, 9], [12, 3], [30, -2], [-8, 50], [100, 100], [-30, 0]])
        deltas[:6, 2:] *= np.float32(weights[2:])
        out[f"coder_{name}/weights"] = np.float32(weights)
        out[f"coder_{name}/gt"], out[f"coder_{name}/anchors"] = gt, anchors
        out[f"coder_{name}/encoded"] = coder.encode_single(
            torch.tensor(gt), torch.tensor(anchors)
        ).numpy()
        out[f"coder_{name}/deltas"] = deltas
        out[f"coder_{name}/decoded"] = coder.decode_single(
            torch.tensor(deltas), torch.tensor(anchors)
        ).numpy()


def torchvision_anchors(image_size, feature_sizes, sizes, ratios):
    generator = AnchorGenerator(sizes, ratios)
    images = ImageList(torch.zeros(1, 3, *image_size), [tuple(image_size)])
    feats = [torch.zeros(1, 1, h, w) for h, w in feature_sizes]
    return generator(images, feats)[0].numpy()


def anchors_case(rng, out):
    # P2-P6 on a small image; (2, 3) for P6 gives unequal strides 64 and 53, as torchvision does.
    small = dict(image_size=(128, 160), feature_sizes=((32, 40), (16, 20), (8, 10), (4, 5), (2, 3)))
    out["anchors_fpn/image_size"] = np.int32(small["image_size"])
    out["anchors_fpn/feature_sizes"] = np.int32(small["feature_sizes"])
    out["anchors_fpn/anchors"] = torchvision_anchors(**small, sizes=FPN_SIZES, ratios=FPN_RATIOS)
    # Several sizes per level and uneven ratio lists: checks the ratio-major ordering.
    custom = dict(
        image_size=(96, 128),
        feature_sizes=((24, 32), (12, 16), (6, 8)),
        sizes=((20, 40), (80,), (160, 320)),
        ratios=((0.5, 1.0, 2.0), (1.0,), (0.25, 0.5, 1.0, 2.0, 4.0)),
    )
    out["anchors_custom/image_size"] = np.int32(custom["image_size"])
    out["anchors_custom/feature_sizes"] = np.int32(custom["feature_sizes"])
    out["anchors_custom/anchors"] = torchvision_anchors(**custom)
    # The real maskrcnn_resnet50_fpn input 800x1056: 211k anchors, stored as hash and samples.
    big_feats = ((200, 264), (100, 132), (50, 66), (25, 33), (13, 17))
    big = torchvision_anchors((800, 1056), big_feats, FPN_SIZES, FPN_RATIOS)
    sample = np.sort(rng.choice(len(big), 400, replace=False))
    out["anchors_big/image_size"] = np.int32((800, 1056))
    out["anchors_big/feature_sizes"] = np.int32(big_feats)
    out["anchors_big/shape"] = np.int64(big.shape)
    out["anchors_big/sha256"] = np.array(
        hashlib.sha256(np.ascontiguousarray(big, "<f4").tobytes()).hexdigest()
    )
    out["anchors_big/head"], out["anchors_big/tail"] = big[:40], big[-40:]
    out["anchors_big/sample_index"], out["anchors_big/sample"] = sample, big[sample]


def nms_case(rng, out):
    boxes = random_boxes(rng, 500, 0, 300, 4, 80)
    scores = rng.permutation(500).astype(np.float32) / 500 + np.float32(0.001)  # no ties
    classes = rng.integers(0, 5, 500).astype(np.int32)
    out["nms/boxes"], out["nms/scores"], out["nms/classes"] = boxes, scores, classes
    tb, ts = torch.tensor(boxes), torch.tensor(scores)
    for threshold in (0.3, 0.5, 0.7):
        keep = torchvision.ops.nms(tb, ts, threshold).numpy().astype(np.int32)
        out[f"nms/keep_{threshold}"] = keep
        keep = torchvision.ops.batched_nms(tb, ts, torch.tensor(classes), threshold).numpy()
        out[f"nms/batched_keep_{threshold}"] = keep.astype(np.int32)


def roi_align_case(rng, out):
    features = rng.normal(size=(2, 12, 16, 3)).astype(np.float32)  # NHWC
    scale, n_boxes = 0.5, 40  # the map covers a 24 x 32 image
    boxes = random_boxes(rng, n_boxes, -8, 30, 0.2, 20)
    boxes[0] = [-30, -20, -12, -5]  # wholly outside, above-left
    boxes[1] = [40, 30, 60, 44]  # wholly outside, below-right
    boxes[2] = [-6, -6, 40, 30]  # covers the whole map and more
    boxes[3] = [3.3, 4.1, 3.5, 4.2]  # under one cell: aligned=False grows it to 1 cell
    boxes[4] = [10, 10, 10, 10]  # a point
    boxes[5] = [31.5, 23.5, 33, 25]  # across the bottom-right edge
    batch_indices = rng.integers(0, 2, n_boxes).astype(np.int32)
    output_size = (5, 4)  # not square, to catch transposed axes
    cotangent = rng.normal(size=(n_boxes, *output_size, 3)).astype(np.float32)
    rois = torch.tensor(np.concatenate([batch_indices[:, None], boxes], 1).astype(np.float32))
    out["roi_align/features"], out["roi_align/boxes"] = features, boxes
    out["roi_align/batch_indices"], out["roi_align/cotangent"] = batch_indices, cotangent
    out["roi_align/output_size"], out["roi_align/spatial_scale"] = np.int32(output_size), scale
    for aligned in (False, True):
        for ratio in (1, 2, 4):
            feats = torch.tensor(features.transpose(0, 3, 1, 2).copy(), requires_grad=True)
            pooled = torchvision.ops.roi_align(feats, rois, output_size, scale, ratio, aligned)
            (pooled * torch.tensor(cotangent.transpose(0, 3, 1, 2))).sum().backward()
            key = f"roi_align/aligned{int(aligned)}_ratio{ratio}"
            out[f"{key}/pooled"] = pooled.detach().numpy().transpose(0, 2, 3, 1)
            out[f"{key}/grad"] = feats.grad.numpy().transpose(0, 2, 3, 1)


def multiscale_case(rng, out):
    image_size = (128, 160)
    shapes = ((32, 40), (16, 20), (8, 10), (4, 5))  # P2-P5
    features = [rng.normal(size=(2, h, w, 3)).astype(np.float32) for h, w in shapes]
    # sqrt(area) from ~8 to ~500 so every level gets boxes; big ones stick out of the image.
    sides = np.exp(rng.uniform(np.log(8), np.log(500), (40, 1))) * rng.uniform(0.7, 1.4, (40, 2))
    centres = rng.uniform(0, 160, (40, 2))
    boxes = np.concatenate([centres - sides / 2, centres + sides / 2], 1).astype(np.float32)
    batch_indices = np.sort(rng.integers(0, 2, 40)).astype(np.int32)
    pooler = MultiScaleRoIAlign(["p2", "p3", "p4", "p5"], output_size=(5, 5), sampling_ratio=2)
    feats = {
        f"p{i + 2}": torch.tensor(f.transpose(0, 3, 1, 2).copy()) for i, f in enumerate(features)
    }
    per_image = [torch.tensor(boxes[batch_indices == b]) for b in range(2)]
    pooled = pooler(feats, per_image, [image_size] * 2).numpy().transpose(0, 2, 3, 1)
    out["multiscale/image_size"] = np.int32(image_size)
    for i, f in enumerate(features):
        out[f"multiscale/features_{i}"] = f
    out["multiscale/boxes"], out["multiscale/batch_indices"] = boxes, batch_indices
    out["multiscale/levels"] = pooler.map_levels(per_image).numpy().astype(np.int32)
    out["multiscale/pooled"] = pooled


def paste_case(rng, out):
    image_size = (36, 44)
    masks = rng.uniform(size=(10, 7, 7)).astype(np.float32)
    boxes = random_boxes(rng, 10, -6, 40, 1, 20)
    boxes[0] = [-10, -8, 4, 6]  # off the top-left corner
    boxes[1] = [38, 30, 60, 50]  # off the bottom-right corner
    boxes[2] = [12.6, 7.2, 13.1, 7.9]  # under one pixel
    pasted = paste_masks_in_image(torch.tensor(masks[:, None]), torch.tensor(boxes), image_size)
    out["paste/image_size"] = np.int32(image_size)
    out["paste/masks"], out["paste/boxes"] = masks, boxes
    out["paste/pasted"] = pasted.numpy()[:, 0]


def main():
    torch.use_deterministic_algorithms(True)
    out = {
        "versions/torch": np.array(torch.__version__),
        "versions/torchvision": np.array(torchvision.__version__),
    }
    for seed, case in enumerate(
        (iou_case, coder_case, anchors_case, nms_case, roi_align_case, multiscale_case, paste_case)
    ):
        case(np.random.default_rng(1000 + seed), out)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(OUT, **out)
    print(f"wrote {len(out)} arrays, {OUT.stat().st_size / 1024:.0f} KB, to {OUT}")


if __name__ == "__main__":
    main()
