"""A one-minute tour of the geometry of Mask R-CNN on a synthetic image, saved as a picture.

    python -m mrcnn_jax.demo [--out outputs/demo.png] [--seed 0]

Draws a few shapes, then shows the stages built so far: the anchors of each FPN level near an
object, noisy detections before and after NMS, RoIAlign crops of the kept boxes, and their
masks pasted back into the image. (The training job replaces this once the model exists.)
"""

import argparse
import pathlib

import jax.numpy as jnp
import numpy as np

from mrcnn_jax import box_iou, generate_anchors, nms, paste_masks, roi_align
from mrcnn_jax.plotting import colour, draw_boxes, overlay_masks, show_image, subplots

IMAGE_SIZE = 128
FEATURE_SIZES = [(32, 32), (16, 16), (8, 8), (4, 4), (2, 2)]  # P2-P6 strides 4..64


def synthetic_image(rng):
    """A 128x128 image with two filled rectangles and a disc; returns image, boxes, masks."""
    image = np.full((IMAGE_SIZE, IMAGE_SIZE, 3), 235, np.uint8)
    yy, xx = np.mgrid[:IMAGE_SIZE, :IMAGE_SIZE]
    masks = [
        (xx >= 10) & (xx < 50) & (yy >= 15) & (yy < 60),
        (xx - 90) ** 2 + (yy - 40) ** 2 < 22**2,
        (xx >= 40) & (xx < 110) & (yy >= 80) & (yy < 118),
    ]
    for i, m in enumerate(masks):
        image[m] = (np.array([int(colour(i)[k : k + 2], 16) for k in (1, 3, 5)]) * 0.8).astype(
            np.uint8
        )
    boxes = []
    for m in masks:
        ys, xs = np.nonzero(m)
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    return image, np.asarray(boxes, np.float32), np.stack(masks).astype(np.float32)


def noisy_detections(rng, boxes, per_object=12):
    """Jittered copies of each box with scores, as a detector's raw output looks."""
    jitter = rng.normal(0, 4, size=(len(boxes), per_object, 4))
    candidates = (boxes[:, None, :] + jitter).reshape(-1, 4).astype(np.float32)
    scores = rng.uniform(0.3, 1.0, size=len(candidates)).astype(np.float32)
    return candidates, scores


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="outputs/demo.png", help="where to save the picture")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    image, gt_boxes, gt_masks = synthetic_image(rng)

    anchors = generate_anchors((IMAGE_SIZE, IMAGE_SIZE), FEATURE_SIZES)  # (A, 4)
    iou = np.asarray(box_iou(anchors, gt_boxes))  # (A, 3)
    best = iou.max(axis=1) >= 0.5  # anchors the RPN would call positive-ish

    candidates, scores = noisy_detections(rng, gt_boxes)
    keep, valid = nms(candidates, scores, iou_threshold=0.5, max_output_size=8)
    kept = np.asarray(keep)[np.asarray(valid)]

    features = jnp.asarray(gt_masks.transpose(1, 2, 0)[None])  # (1, H, W, 3): masks as a map
    crops = roi_align(features, candidates[kept], np.zeros(len(kept), np.int32), (28, 28),
                      1.0, 2, True)  # (K, 28, 28, 3)
    owner = np.asarray(box_iou(candidates[kept], gt_boxes)).argmax(axis=1)  # (K,)
    mask_crops = np.asarray(crops)[np.arange(len(kept)), :, :, owner]  # (K, 28, 28)
    pasted = paste_masks(mask_crops, candidates[kept], (IMAGE_SIZE, IMAGE_SIZE))  # (K, H, W)

    fig, axes = subplots(4, size=3.2)
    show_image(axes[0], image, f"anchors IoU>=0.5: {int(best.sum())} of {len(anchors)}")
    draw_boxes(axes[0], anchors[best], linewidth=0.6)
    show_image(axes[1], image, f"{len(candidates)} raw detections")
    draw_boxes(axes[1], candidates, colours=[colour(i) for i in np.repeat(np.arange(3), 12)],
               linewidth=0.5)
    show_image(axes[2], image, f"after NMS: {len(kept)} kept")
    draw_boxes(axes[2], candidates[kept], labels=owner, scores=scores[kept])
    blank = np.full_like(image, 235)
    show_image(axes[3], overlay_masks(blank, np.asarray(pasted), labels=owner, alpha=0.8),
               "28x28 RoIAlign crops, pasted")
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"anchors: {len(anchors)}, near an object: {int(best.sum())}")
    print(f"NMS kept {len(kept)} of {len(candidates)} noisy boxes")
    print(f"saved {out.resolve()}")


if __name__ == "__main__":
    main()
