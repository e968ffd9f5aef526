"""The course checks are themselves checked: for every core exercise a teacher solution (written
here, independently of the package) passes, known-wrong versions (the common mistakes) fail with
the message that names the mistake, and a stub raising NotImplementedError is "not attempted".
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mrcnn_jax import course
from mrcnn_jax.course import core

# ---------------------------------------------------------------- teacher solutions


def sol_box_iou(boxes1, boxes2):
    def area(b):
        return jnp.maximum(b[:, 2] - b[:, 0], 0) * jnp.maximum(b[:, 3] - b[:, 1], 0)
    lt = jnp.maximum(boxes1[:, None, :2], boxes2[None, :, :2])
    rb = jnp.minimum(boxes1[:, None, 2:], boxes2[None, :, 2:])
    wh = jnp.maximum(rb - lt, 0.0)
    inter = wh[..., 0] * wh[..., 1]
    union = area(boxes1)[:, None] + area(boxes2)[None, :] - inter
    return jnp.where(union > 0, inter / jnp.where(union > 0, union, 1.0), 0.0)


def _centres(b):
    w, h = b[..., 2] - b[..., 0], b[..., 3] - b[..., 1]
    return b[..., 0] + 0.5 * w, b[..., 1] + 0.5 * h, w, h


def sol_encode(boxes, anchors, weights=(1.0, 1.0, 1.0, 1.0)):
    ax, ay, aw, ah = _centres(jnp.asarray(anchors))
    gx, gy, gw, gh = _centres(jnp.asarray(boxes))
    aw, ah, gw, gh = (jnp.maximum(v, 1e-6) for v in (aw, ah, gw, gh))
    wx, wy, ww, wh = weights
    return jnp.stack([wx * (gx - ax) / aw, wy * (gy - ay) / ah, ww * jnp.log(gw / aw),
                      wh * jnp.log(gh / ah)], axis=-1)


CLIP = math.log(1000 / 16)


def sol_decode(deltas, anchors, weights=(1.0, 1.0, 1.0, 1.0), clip=CLIP):
    ax, ay, aw, ah = _centres(jnp.asarray(anchors))
    wx, wy, ww, wh = weights
    dx, dy = deltas[..., 0] / wx, deltas[..., 1] / wy
    dw, dh = jnp.minimum(deltas[..., 2] / ww, clip), jnp.minimum(deltas[..., 3] / wh, clip)
    cx, cy = ax + dx * aw, ay + dy * ah
    w, h = aw * jnp.exp(dw), ah * jnp.exp(dh)
    return jnp.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=-1)


def sol_level_anchors(image_size, feature_size, sizes, aspect_ratios):
    cells = []
    for r in aspect_ratios:
        for s in sizes:
            h = np.float32(s) * np.sqrt(np.float32(r))
            w = np.float32(s) / np.sqrt(np.float32(r))
            cells.append(np.round(np.array([-w, -h, w, h], np.float32) / 2))
    stride_y, stride_x = image_size[0] // feature_size[0], image_size[1] // feature_size[1]
    out = [np.array([j * stride_x, i * stride_y] * 2, np.float32) + c
           for i in range(feature_size[0]) for j in range(feature_size[1]) for c in cells]
    return np.array(out, np.float32).reshape(-1, 4)


def sol_nms(boxes, scores, iou_threshold, max_output_size):
    order = jnp.argsort(-scores, stable=True)
    iou = sol_box_iou(boxes, boxes)
    n = scores.shape[0]

    def body(i, state):
        alive, keep, count = state
        cand = order[i]
        take = alive[cand] & (count < max_output_size)
        keep = jnp.where(take, keep.at[jnp.minimum(count, max_output_size - 1)].set(cand), keep)
        alive = jnp.where(take, alive & (iou[cand] <= iou_threshold), alive)
        return alive, keep, count + take

    init = (jnp.ones(n, bool), jnp.zeros(max_output_size, jnp.int32), jnp.int32(0))
    _, keep, count = jax.lax.fori_loop(0, n, body, init)
    return keep, jnp.arange(max_output_size) < count


def sol_bilinear(features, y, x):
    height, width = features.shape[:2]
    outside = (y < -1) | (y > height) | (x < -1) | (x > width)
    y, x = jnp.maximum(y, 0.0), jnp.maximum(x, 0.0)
    y0, x0 = jnp.floor(y), jnp.floor(x)
    y_edge, x_edge = y0 >= height - 1, x0 >= width - 1
    y0, x0 = jnp.where(y_edge, height - 1, y0), jnp.where(x_edge, width - 1, x0)
    y1, x1 = jnp.where(y_edge, y0, y0 + 1), jnp.where(x_edge, x0, x0 + 1)
    ly, lx = jnp.where(y_edge, 0.0, y - y0), jnp.where(x_edge, 0.0, x - x0)
    y0, y1, x0, x1 = (v.astype(jnp.int32) for v in (y0, y1, x0, x1))
    value = ((1 - ly) * (1 - lx))[:, None] * features[y0, x0] + \
        ((1 - ly) * lx)[:, None] * features[y0, x1] + \
        (ly * (1 - lx))[:, None] * features[y1, x0] + (ly * lx)[:, None] * features[y1, x1]
    return jnp.where(outside[:, None], 0.0, value)


def sol_roi_align(features, boxes, batch_indices, output_size=(7, 7), spatial_scale=1.0,
                  sampling_ratio=2, aligned=False):
    oh, ow = output_size
    s = sampling_ratio
    offset = 0.5 if aligned else 0.0

    def one(box, b):
        x1, y1, x2, y2 = box * spatial_scale - offset
        w, h = x2 - x1, y2 - y1
        if not aligned:
            w, h = jnp.maximum(w, 1.0), jnp.maximum(h, 1.0)
        ys = y1 + (jnp.arange(oh)[:, None] + (jnp.arange(s)[None, :] + 0.5) / s) * h / oh
        xs = x1 + (jnp.arange(ow)[:, None] + (jnp.arange(s)[None, :] + 0.5) / s) * w / ow
        yy = jnp.broadcast_to(ys[:, :, None, None], (oh, s, ow, s)).reshape(-1)
        xx = jnp.broadcast_to(xs[None, None, :, :], (oh, s, ow, s)).reshape(-1)
        samples = sol_bilinear(features[b], yy, xx).reshape(oh, s, ow, s, -1)
        return samples.mean(axis=(1, 3))

    features = jnp.asarray(features)
    return jax.vmap(one)(jnp.asarray(boxes), jnp.asarray(batch_indices))


def sol_map_levels(boxes, k_min=2, k_max=5):
    w = jnp.maximum(boxes[:, 2] - boxes[:, 0], 0)
    h = jnp.maximum(boxes[:, 3] - boxes[:, 1], 0)
    level = jnp.floor(4 + jnp.log2(jnp.sqrt(w * h) / 224) + 1e-6)
    return (jnp.clip(level, k_min, k_max) - k_min).astype(jnp.int32)


def sol_match(iou, gt_valid, high, low, allow_low_quality):
    iou = jnp.where(gt_valid[:, None], iou, -1.0)
    best, best_gt = iou.max(axis=0), iou.argmax(axis=0)
    out = jnp.where(best >= high, best_gt, jnp.where(best >= low, -2, -1))
    if allow_low_quality:
        is_best = ((iou == iou.max(axis=1, keepdims=True)) & gt_valid[:, None]).any(axis=0)
        out = jnp.where(is_best, best_gt, out)
    return out.astype(jnp.int32)


def sol_sample_balanced(key, labels, num_samples, positive_fraction):
    kp, kn = jax.random.split(key)
    pos, neg = labels == 1, labels == 0
    n_pos = jnp.minimum(pos.sum(), int(num_samples * positive_fraction))
    n_neg = jnp.minimum(neg.sum(), num_samples - n_pos)

    def take(k, mask, count):
        priority = jnp.where(mask, jax.random.uniform(k, mask.shape), -1.0)
        rank = jnp.argsort(jnp.argsort(-priority))
        return mask & (rank < count)

    return take(kp, pos, n_pos), take(kn, neg, n_neg)


def sol_mask_targets(gt_masks, gt_boxes, rois, matched_gt, image_size, mask_size,
                     sampling_ratio, binary=False, aligned=False, _shift_crops=True):
    b, g, hm, wm = gt_masks.shape
    owner = jnp.take_along_axis(gt_boxes, matched_gt[..., None], axis=1)
    cut_aligned = aligned
    if (hm, wm) == tuple(image_size):
        frame = jnp.broadcast_to(jnp.array([0.0, 0.0, wm, hm]), owner.shape)
    elif _shift_crops:  # a crop cell's value sits at its centre
        frame, rois, cut_aligned = owner, rois if aligned else rois + 0.5, True
    else:
        frame = owner
    size = jnp.maximum(frame[..., 2:] - frame[..., :2], 1e-3)
    scale = jnp.array([wm, hm], jnp.float32) / size
    local = (rois - jnp.tile(frame[..., :2], 2)) * jnp.tile(scale, 2)
    images = (jnp.arange(b)[:, None] * g + matched_gt).reshape(-1)
    out = sol_roi_align(gt_masks.reshape(b * g, hm, wm, 1), local.reshape(-1, 4), images,
                        (mask_size, mask_size), 1.0, sampling_ratio, cut_aligned)
    out = out.reshape(b, -1, mask_size, mask_size)
    return (out >= 0.5).astype(jnp.float32) if binary else out


def sol_smooth_l1(x, beta):
    if beta == 0:
        return jnp.abs(x)
    return jnp.where(jnp.abs(x) < beta, 0.5 * x ** 2 / beta, jnp.abs(x) - 0.5 * beta)


def _bce(x, t):
    return jnp.maximum(x, 0) - x * t + jnp.log1p(jnp.exp(-jnp.abs(x)))


def sol_rpn_losses(logits, deltas, targets, beta):
    count = jnp.maximum(targets["sampled"].sum(), 1)
    bce = _bce(logits, targets["labels"])
    box = sol_smooth_l1(deltas - targets["deltas"], beta).sum(-1)
    return {"rpn_objectness": jnp.where(targets["sampled"], bce, 0).sum() / count,
            "rpn_box": jnp.where(targets["positive"], box, 0).sum() / count}


def sol_mask_loss(mask_logits, labels, targets, valid):
    chosen = jnp.take_along_axis(mask_logits, labels[:, :, None, None, None], -1)[..., 0]
    per_roi = _bce(chosen, targets).mean(axis=(2, 3))
    return jnp.where(valid, per_roi, 0).sum() / jnp.maximum(valid.sum(), 1)


def _resize_weights(start, end, m, out):
    length = jnp.maximum(end - start + 1, 1)
    p = jnp.arange(out)
    u = p[None, :] - start[:, None]
    inside = (u >= 0) & (p[None, :] <= end[:, None])
    src = jnp.maximum((u + 0.5) * (m / length[:, None]) - 0.5, 0.0)
    lo = jnp.floor(src).astype(jnp.int32)
    frac = src - lo
    hi = jnp.minimum(lo + 1, m - 1)
    lo = jnp.minimum(lo, m - 1)
    cells = jnp.arange(m)
    w = (1 - frac)[..., None] * (cells == lo[..., None]) + \
        frac[..., None] * (cells == hi[..., None])
    return jnp.where(inside[..., None], w, 0.0)


def sol_paste_masks(masks, boxes, image_size):
    m = masks.shape[1]
    padded = jnp.pad(masks, ((0, 0), (1, 1), (1, 1)))
    scale = (m + 2) / m
    c = (boxes[:, :2] + boxes[:, 2:]) / 2
    half = (boxes[:, 2:] - boxes[:, :2]) / 2 * scale
    grown = jnp.trunc(jnp.concatenate([c - half, c + half], axis=1)).astype(jnp.int32)
    rows = _resize_weights(grown[:, 1], grown[:, 3], m + 2, image_size[0])
    cols = _resize_weights(grown[:, 0], grown[:, 2], m + 2, image_size[1])
    hp = jax.lax.Precision.HIGHEST
    return jnp.einsum("dhi,dij,dwj->dhw", rows, padded, cols, precision=hp)


def sol_coco_match(ious, iou_threshold):
    taken = np.zeros(ious.shape[1], bool)
    tp = np.zeros(ious.shape[0], bool)
    for d, row in enumerate(ious):
        best, best_iou = -1, iou_threshold
        for g, value in enumerate(row):
            if not taken[g] and value >= best_iou:
                best, best_iou = g, value
        if best >= 0:
            taken[best], tp[d] = True, True
    return tp


def sol_average_precision(recall, precision):
    precision = np.array(precision, np.float64)
    for i in range(len(precision) - 2, -1, -1):
        precision[i] = max(precision[i], precision[i + 1])
    total = 0.0
    for level in np.linspace(0, 1, 101):
        reached = np.nonzero(np.asarray(recall) >= level)[0]
        total += precision[reached[0]] if len(reached) else 0.0
    return total / 101


def sol_pad_example(example, size, max_instances, full_masks=True):
    height, width = example["image"].shape[:2]
    canvas = np.zeros((size, size, 3), np.uint8)
    canvas[:height, :width] = example["image"]
    count = len(example["labels"])
    keep = min(count, max_instances)
    masks = example["masks"][:keep]
    shape = (size, size) if full_masks else example["masks"].shape[1:]
    padded_masks = np.zeros((max_instances, *shape), np.uint8)
    padded_masks[:keep, :masks.shape[1], :masks.shape[2]] = masks
    boxes = np.zeros((max_instances, 4), np.float32)
    boxes[:keep] = example["boxes"][:keep]
    labels = np.zeros(max_instances, np.int32)
    labels[:keep] = example["labels"][:keep]
    return {"image": canvas, "boxes": boxes, "labels": labels, "masks": padded_masks,
            "valid": np.arange(max_instances) < keep, "num_truncated": count - keep}


def _conv(block, x, pad):
    y = jax.lax.conv_general_dilated(x, block.kernel[...], (1, 1), ((pad, pad), (pad, pad)),
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y + block.bias[...]


def _up(x, size):
    rows = jnp.arange(size[0]) * x.shape[1] // size[0]
    cols = jnp.arange(size[1]) * x.shape[2] // size[1]
    return x[:, rows][:, :, cols]


def sol_fpn(module, features, upsample=_up, smoothed=False):
    laterals = [_conv(b, c, 0) for b, c in zip(module.inner_blocks, features, strict=True)]
    merged, outputs = [laterals[-1]], [_conv(module.layer_blocks[-1], laterals[-1], 1)]
    for k in range(len(features) - 2, -1, -1):
        above = outputs[0] if smoothed else merged[0]
        merged.insert(0, laterals[k] + upsample(above, laterals[k].shape[1:3]))
        outputs.insert(0, _conv(module.layer_blocks[k], merged[0], 1))
    return [*outputs, outputs[-1][:, ::2, ::2]]


def sol_lr_schedule(step, lr, warmup, total):
    step = jnp.asarray(step, jnp.float32)
    rising = 0.001 * lr + (lr - 0.001 * lr) * step / max(warmup, 1)
    t = jnp.clip((step - warmup) / max(total - warmup, 1), 0.0, 1.0)
    return jnp.where(step < warmup, rising, 0.5 * lr * (1 + jnp.cos(jnp.pi * t)))


def sol_from_torchvision_layout(name, value, roi_size=7):
    value = np.asarray(value)
    if name.endswith("conv5_mask.weight"):
        return value.transpose(2, 3, 0, 1)
    if value.ndim == 4:
        return value.transpose(2, 3, 1, 0)
    if "box_head.fc6" in name:
        out, channels = value.shape[0], value.shape[1] // (roi_size * roi_size)
        value = value.reshape(out, channels, roi_size, roi_size).transpose(2, 3, 1, 0)
        return value.reshape(-1, out)
    return value.T if value.ndim == 2 else value


# ---------------------------------------------------------------- known-wrong versions


def wrong_iou_xywh(b1, b2):
    def conv(b):
        return jnp.concatenate([b[:, :2], b[:, :2] + b[:, 2:]], axis=1)
    return sol_box_iou(conv(b1), conv(b2))


def wrong_iou_plus_one(b1, b2):
    def area(b):
        return (b[:, 2] - b[:, 0] + 1) * (b[:, 3] - b[:, 1] + 1)
    lt = jnp.maximum(b1[:, None, :2], b2[None, :, :2])
    rb = jnp.minimum(b1[:, None, 2:], b2[None, :, 2:])
    wh = jnp.maximum(rb - lt + 1, 0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (area(b1)[:, None] + area(b2)[None, :] - inter)


def wrong_iou_python_if(b1, b2):
    if jnp.any(b1 < 0):
        return jnp.zeros((b1.shape[0], b2.shape[0]))
    return sol_box_iou(b1, b2)


def wrong_iou_nan(b1, b2):
    def area(b):
        return (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    lt = jnp.maximum(b1[:, None, :2], b2[None, :, :2])
    rb = jnp.minimum(b1[:, None, 2:], b2[None, :, 2:])
    wh = jnp.maximum(rb - lt, 0.0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (area(b1)[:, None] + area(b2)[None, :] - inter)


def wrong_encode_no_weights(boxes, anchors, weights=(1.0, 1.0, 1.0, 1.0)):
    return sol_encode(boxes, anchors)


def wrong_encode_corners(boxes, anchors, weights=(1.0, 1.0, 1.0, 1.0)):
    wx, wy, ww, wh = weights
    aw, ah = anchors[..., 2] - anchors[..., 0], anchors[..., 3] - anchors[..., 1]
    gw, gh = boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]
    return jnp.stack([wx * (boxes[..., 0] - anchors[..., 0]) / aw,
                      wy * (boxes[..., 1] - anchors[..., 1]) / ah,
                      ww * jnp.log(gw / aw), wh * jnp.log(gh / ah)], axis=-1)


def wrong_decode_no_clip(deltas, anchors, weights=(1.0, 1.0, 1.0, 1.0), clip=4.0):
    return sol_decode(deltas, anchors, weights, clip=1e9)


def wrong_decode_no_weights(deltas, anchors, weights=(1.0, 1.0, 1.0, 1.0), clip=4.0):
    return sol_decode(deltas, anchors, (1.0, 1.0, 1.0, 1.0), clip)


def wrong_anchors_half_stride(image_size, feature_size, sizes, aspect_ratios):
    sy, sx = image_size[0] // feature_size[0], image_size[1] // feature_size[1]
    return sol_level_anchors(image_size, feature_size, sizes, aspect_ratios) + np.array(
        [sx, sy, sx, sy], np.float32) / 2


def wrong_anchors_ratio_w_over_h(image_size, feature_size, sizes, aspect_ratios):
    return sol_level_anchors(image_size, feature_size, sizes, [1 / r for r in aspect_ratios])


def wrong_anchors_size_major(image_size, feature_size, sizes, aspect_ratios):
    out = sol_level_anchors(image_size, feature_size, sizes, aspect_ratios)
    out = out.reshape(-1, len(aspect_ratios), len(sizes), 4).transpose(0, 2, 1, 3)
    return out.reshape(-1, 4)


def wrong_nms_one_pass(boxes, scores, iou_threshold, max_output_size):
    """Sorts once and drops every box overlapping any higher-scoring box, kept or not."""
    n = scores.shape[0]
    iou = sol_box_iou(boxes, boxes)
    rank = jnp.argsort(jnp.argsort(-scores, stable=True))
    higher = rank[None, :] < rank[:, None]
    keep = ~jnp.any((iou > iou_threshold) & higher, axis=1)
    key = jnp.where(keep, rank, n + rank)
    order = jnp.argsort(key)[:max_output_size]
    return order.astype(jnp.int32), jnp.arange(max_output_size) < keep.sum()


def wrong_nms_geq(boxes, scores, iou_threshold, max_output_size):
    return sol_nms(boxes, scores, iou_threshold - 1e-6, max_output_size)


def wrong_bilinear_no_zero(features, y, x):
    h, w = features.shape[:2]
    return sol_bilinear(features, jnp.clip(y, -1, h), jnp.clip(x, -1, w))


def wrong_bilinear_half_pixel(features, y, x):
    return sol_bilinear(features, y - 0.5, x - 0.5)


def wrong_bilinear_no_clamp(features, y, x):
    height, width = features.shape[:2]
    outside = (y < -1) | (y > height) | (x < -1) | (x > width)
    y0, x0 = jnp.floor(y).astype(jnp.int32), jnp.floor(x).astype(jnp.int32)
    ly, lx = y - y0, x - x0
    y1, x1 = jnp.minimum(y0 + 1, height - 1), jnp.minimum(x0 + 1, width - 1)
    value = ((1 - ly) * (1 - lx))[:, None] * features[y0, x0] + \
        ((1 - ly) * lx)[:, None] * features[y0, x1] + \
        (ly * (1 - lx))[:, None] * features[y1, x0] + (ly * lx)[:, None] * features[y1, x1]
    return jnp.where(outside[:, None], 0.0, value)


def wrong_roi_align_ignores_aligned(features, boxes, batch_indices, output_size=(7, 7),
                                    spatial_scale=1.0, sampling_ratio=2, aligned=False):
    return sol_roi_align(features, boxes, batch_indices, output_size, spatial_scale,
                         sampling_ratio, False)


def wrong_roi_align_no_scale(features, boxes, batch_indices, output_size=(7, 7),
                             spatial_scale=1.0, sampling_ratio=2, aligned=False):
    return sol_roi_align(features, boxes, batch_indices, output_size, 1.0, sampling_ratio,
                         aligned)


def wrong_levels_absolute(boxes, k_min=2, k_max=5):
    return sol_map_levels(boxes, k_min, k_max) + k_min


def wrong_levels_round(boxes, k_min=2, k_max=5):
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    level = jnp.round(4 + jnp.log2(jnp.sqrt(w * h) / 224))
    return (jnp.clip(level, k_min, k_max) - k_min).astype(jnp.int32)


def wrong_match_no_low_quality(iou, gt_valid, high, low, allow_low_quality):
    return sol_match(iou, gt_valid, high, low, False)


def wrong_match_padding(iou, gt_valid, high, low, allow_low_quality):
    return sol_match(iou, jnp.ones_like(gt_valid), high, low, allow_low_quality)


def wrong_match_first_best_only(iou, gt_valid, high, low, allow_low_quality):
    out = sol_match(iou, gt_valid, high, low, False)
    if not allow_low_quality:
        return out
    masked = jnp.where(gt_valid[:, None], iou, -1.0)
    best_gt = masked.argmax(axis=0)
    first = jnp.zeros(iou.shape[1], bool).at[masked.argmax(axis=1)].max(gt_valid)
    return jnp.where(first, best_gt, out).astype(jnp.int32)


def wrong_sampler_first(key, labels, num_samples, positive_fraction):
    pos, neg = labels == 1, labels == 0
    n_pos = jnp.minimum(pos.sum(), int(num_samples * positive_fraction))
    n_neg = jnp.minimum(neg.sum(), num_samples - n_pos)
    return pos & (jnp.cumsum(pos) <= n_pos), neg & (jnp.cumsum(neg) <= n_neg)


def wrong_sampler_fixed_negatives(key, labels, num_samples, positive_fraction):
    pos, neg = sol_sample_balanced(key, labels, num_samples, positive_fraction)
    n_neg = num_samples - int(num_samples * positive_fraction)
    return pos, neg & (jnp.cumsum(neg) <= n_neg)


def wrong_sampler_ignored_as_negative(key, labels, num_samples, positive_fraction):
    return sol_sample_balanced(key, jnp.where(labels == -1, 0, labels), num_samples,
                               positive_fraction)


def wrong_mask_targets_binary(gt_masks, gt_boxes, rois, matched_gt, image_size, mask_size,
                              sampling_ratio, binary=False, aligned=False):
    return sol_mask_targets(gt_masks, gt_boxes, rois, matched_gt, image_size, mask_size,
                            sampling_ratio, True, aligned)


def wrong_mask_targets_crop_unshifted(gt_masks, gt_boxes, rois, matched_gt, image_size,
                                      mask_size, sampling_ratio, binary=False, aligned=False):
    return sol_mask_targets(gt_masks, gt_boxes, rois, matched_gt, image_size, mask_size,
                            sampling_ratio, binary, aligned, _shift_crops=False)


def wrong_mask_targets_by_roi(gt_masks, gt_boxes, rois, matched_gt, image_size, mask_size,
                              sampling_ratio, binary=False, aligned=False):
    g = gt_boxes.shape[1]
    index = jnp.broadcast_to(jnp.arange(rois.shape[1]) % g, matched_gt.shape)
    return sol_mask_targets(gt_masks, gt_boxes, rois, index, image_size, mask_size,
                            sampling_ratio, binary, aligned)


def wrong_smooth_l1_nan_grad(x, beta):
    x = jnp.asarray(x)
    return jnp.where(jnp.abs(x) < beta, 0.5 * x ** 2 / beta, jnp.abs(x) - 0.5 * beta)


def wrong_smooth_l1_no_beta(x, beta):
    return jnp.where(jnp.abs(x) < beta, 0.5 * x ** 2, jnp.abs(x) - 0.5 * beta)


def wrong_rpn_unmasked(logits, deltas, targets, beta):
    return sol_rpn_losses(logits, deltas, dict(targets, sampled=jnp.ones_like(
        targets["sampled"])), beta)


def wrong_rpn_naive_bce(logits, deltas, targets, beta):
    out = sol_rpn_losses(logits, deltas, targets, beta)
    p = jax.nn.sigmoid(logits)
    t = targets["labels"]
    bce = -(t * jnp.log(p) + (1 - t) * jnp.log(1 - p))
    count = jnp.maximum(targets["sampled"].sum(), 1)
    return dict(out, rpn_objectness=jnp.where(targets["sampled"], bce, 0).sum() / count)


def wrong_rpn_box_per_positive(logits, deltas, targets, beta):
    out = sol_rpn_losses(logits, deltas, targets, beta)
    ratio = jnp.maximum(targets["sampled"].sum(), 1) / jnp.maximum(targets["positive"].sum(), 1)
    return dict(out, rpn_box=out["rpn_box"] * ratio)


def wrong_mask_loss_channel0(mask_logits, labels, targets, valid):
    return sol_mask_loss(mask_logits, jnp.zeros_like(labels), targets, valid)


def wrong_mask_loss_unmasked(mask_logits, labels, targets, valid):
    return sol_mask_loss(mask_logits, labels, targets, jnp.ones_like(valid))


def wrong_paste_plain(masks, boxes, image_size):
    b = jnp.trunc(boxes).astype(jnp.int32)
    m = masks.shape[1]
    rows = _resize_weights(b[:, 1], b[:, 3], m, image_size[0])
    cols = _resize_weights(b[:, 0], b[:, 2], m, image_size[1])
    return jnp.einsum("dhi,dij,dwj->dhw", rows, masks, cols)


def wrong_paste_exact(masks, boxes, image_size):
    from mrcnn_jax.paste_masks import paste_masks
    return paste_masks(masks, boxes, image_size, rule="exact")


def wrong_coco_match_voc(ious, iou_threshold):
    taken, tp = set(), np.zeros(len(ious), bool)
    for d, row in enumerate(ious):
        if row.size == 0:
            continue
        best = int(np.argmax(row))
        if row[best] >= iou_threshold and best not in taken:
            taken.add(best)
            tp[d] = True
    return tp


def wrong_coco_match_reuse(ious, iou_threshold):
    return (ious >= iou_threshold).any(axis=1) if ious.shape[1] else np.zeros(len(ious), bool)


def wrong_ap_11_point(recall, precision):
    precision = np.maximum.accumulate(np.asarray(precision)[::-1])[::-1]
    return np.mean([precision[np.asarray(recall) >= t].max() if np.any(np.asarray(recall) >= t)
                    else 0.0 for t in np.linspace(0, 1, 11)])


def wrong_ap_no_interpolation(recall, precision):
    total = 0.0
    for level in np.linspace(0, 1, 101):
        reached = np.nonzero(np.asarray(recall) >= level)[0]
        total += precision[reached[0]] if len(reached) else 0.0
    return total / 101


def wrong_ap_area(recall, precision):
    precision = np.maximum.accumulate(np.asarray(precision)[::-1])[::-1]
    r = np.concatenate([[0.0], recall])
    return float(np.sum((r[1:] - r[:-1]) * precision))



def wrong_pad_last_kept(example, size, max_instances, full_masks=True):
    tail = {k: example[k][::-1] for k in ("boxes", "labels", "masks", "is_crowd")}
    return sol_pad_example(dict(example, **tail), size, max_instances, full_masks)


def wrong_pad_centred(example, size, max_instances, full_masks=True):
    out = sol_pad_example(example, size, max_instances, full_masks)
    height, width = example["image"].shape[:2]
    top, left = (size - height) // 2, (size - width) // 2
    out["image"] = np.zeros_like(out["image"])
    out["image"][top:top + height, left:left + width] = example["image"]
    return out


def wrong_pad_negative_count(example, size, max_instances, full_masks=True):
    out = sol_pad_example(example, size, max_instances, full_masks)
    return dict(out, num_truncated=len(example["labels"]) - max_instances)


def wrong_pad_crops_padded(example, size, max_instances, full_masks=True):
    return sol_pad_example(example, size, max_instances, True)


def wrong_fpn_no_top_down(module, features):
    return sol_fpn(module, features, upsample=lambda x, size: 0.0)


def wrong_fpn_smoothed(module, features):
    return sol_fpn(module, features, smoothed=True)


def wrong_fpn_image_resize(module, features):
    def resize(x, size):
        return jax.image.resize(x, (x.shape[0], *size, x.shape[3]), "nearest")
    return sol_fpn(module, features, upsample=resize)


def wrong_fpn_no_p6(module, features):
    return sol_fpn(module, features)[:-1]


def wrong_lr_python_if(step, lr, warmup, total):
    if step < warmup:
        return lr * 0.001 + (lr - lr * 0.001) * step / warmup
    return lr * 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))


def wrong_lr_from_zero(step, lr, warmup, total):
    step = jnp.asarray(step, jnp.float32)
    return jnp.where(step < warmup, lr * step / max(warmup, 1),
                     sol_lr_schedule(step, lr, warmup, total))


def wrong_lr_cosine_over_total(step, lr, warmup, total):
    step = jnp.asarray(step, jnp.float32)
    t = jnp.clip(step / total, 0.0, 1.0)
    return jnp.where(step < warmup, sol_lr_schedule(step, lr, warmup, total),
                     0.5 * lr * (1 + jnp.cos(jnp.pi * t)))


def wrong_lr_no_clamp(step, lr, warmup, total):
    step = jnp.asarray(step, jnp.float32)
    t = (step - warmup) / max(total - warmup, 1)
    return jnp.where(step < warmup, sol_lr_schedule(step, lr, warmup, total),
                     0.5 * lr * (1 + jnp.cos(jnp.pi * t)))


def wrong_layout_in_out_swapped(name, value, roi_size=7):
    value = np.asarray(value)
    if value.ndim == 4:
        return value.transpose(2, 3, 0, 1)
    return sol_from_torchvision_layout(name, value, roi_size)


def wrong_layout_reversed(name, value, roi_size=7):
    value = np.asarray(value)
    return value.T if value.ndim == 4 else sol_from_torchvision_layout(name, value, roi_size)


def wrong_layout_fc6_plain(name, value, roi_size=7):
    if "fc6" in name:
        return np.asarray(value).T
    return sol_from_torchvision_layout(name, value, roi_size)


def wrong_layout_transposed_conv(name, value, roi_size=7):
    if "conv5_mask" in name:
        return np.asarray(value).transpose(2, 3, 1, 0)
    return sol_from_torchvision_layout(name, value, roi_size)


def not_implemented(*args, **kwargs):
    raise NotImplementedError


# ---------------------------------------------------------------- the table

# exercise -> (teacher solution, [(known-wrong version, words its message must contain)])
CASES = {
    "box_iou": (sol_box_iou, [(wrong_iou_xywh, "not (x, y, width, height)"),
                              (wrong_iou_plus_one, "no +1"),
                              (wrong_iou_python_if, "use `jnp.where`"),
                              (wrong_iou_nan, "NaN")]),
    "encode_boxes": (sol_encode, [(wrong_encode_no_weights, "weights (wx, wy, ww, wh) multiply"),
                                  (wrong_encode_corners, "move the box *centre*")]),
    "decode_boxes": (sol_decode, [(wrong_decode_no_clip, "clamp dw and dh"),
                                  (wrong_decode_no_weights, "divide the deltas by the weights")]),
    "level_anchors": (sol_level_anchors, [
        (wrong_anchors_half_stride, "no half-stride offset"),
        (wrong_anchors_ratio_w_over_h, "height / width"),
        (wrong_anchors_size_major, "ratio-major")]),
    "nms": (sol_nms, [(wrong_nms_one_pass, "suppressed earlier must not suppress"),
                      (wrong_nms_geq, "strictly above the threshold")]),
    "bilinear": (sol_bilinear, [(wrong_bilinear_no_zero, "reads 0"),
                                (wrong_bilinear_half_pixel, "no half-pixel shift"),
                                (wrong_bilinear_no_clamp, "clamp y and x at 0")]),
    "roi_align": (sol_roi_align, [(wrong_roi_align_ignores_aligned, "half-pixel shift"),
                                  (wrong_roi_align_no_scale, "spatial_scale")]),
    "map_levels": (sol_map_levels, [(wrong_levels_absolute, "counted from k_min"),
                                    (wrong_levels_round, "floor, not round")]),
    "match": (sol_match, [(wrong_match_no_low_quality, "low-quality rule is missing"),
                          (wrong_match_padding, "padded ground truth"),
                          (wrong_match_first_best_only, "*every* prediction tied")]),
    "sample_balanced": (sol_sample_balanced, [
        (wrong_sampler_first, "not the first ones"),
        (wrong_sampler_fixed_negatives, "negatives fill the rest"),
        (wrong_sampler_ignored_as_negative, "ignored anchors are never sampled")]),
    "mask_targets": (sol_mask_targets, [(wrong_mask_targets_binary, "targets are soft"),
                                        (wrong_mask_targets_by_roi, "*its matched* ground"),
                                        (wrong_mask_targets_crop_unshifted, "rois + 0.5")]),
    "smooth_l1": (sol_smooth_l1, [(wrong_smooth_l1_nan_grad, "handle beta == 0"),
                                  (wrong_smooth_l1_no_beta, "divide by beta")]),
    "rpn_losses": (sol_rpn_losses, [(wrong_rpn_unmasked, "*sampled* anchors only"),
                                    (wrong_rpn_naive_bce, "stable form"),
                                    (wrong_rpn_box_per_positive, "not of positives")]),
    "mask_loss": (sol_mask_loss, [(wrong_mask_loss_channel0, "own class channel"),
                                  (wrong_mask_loss_unmasked, "valid RoIs only")]),
    "paste_masks": (sol_paste_masks, [(wrong_paste_plain, "pads the mask with one zero cell"),
                                      (wrong_paste_exact, "detectron2's exact rule")]),
    "coco_match": (sol_coco_match, [(wrong_coco_match_voc, "VOC-style"),
                                    (wrong_coco_match_reuse, "matched only once")]),
    "average_precision": (sol_average_precision, [
        (wrong_ap_11_point, "not VOC 2007's 11"),
        (wrong_ap_no_interpolation, "non-increasing from the right"),
        (wrong_ap_area, "area under the interpolated curve")]),
    "pad_example": (sol_pad_example, [(wrong_pad_last_kept, "keep the *first*"),
                                      (wrong_pad_centred, "top-left corner"),
                                      (wrong_pad_negative_count, "max(N - max_instances, 0)"),
                                      (wrong_pad_crops_padded, "keep their own M x M")]),
    "fpn": (sol_fpn, [(wrong_fpn_no_top_down, "without the top-down sum"),
                      (wrong_fpn_smoothed, "before its 3x3 conv"),
                      (wrong_fpn_image_resize, "half-pixel centres"),
                      (wrong_fpn_no_p6, "then the extra level")]),
    "lr_schedule": (sol_lr_schedule, [(wrong_lr_python_if, "jnp.where"),
                                      (wrong_lr_from_zero, "starts at 0.001 * lr"),
                                      (wrong_lr_cosine_over_total, "not step / total"),
                                      (wrong_lr_no_clamp, "stays at 0")]),
    "from_torchvision_layout": (sol_from_torchvision_layout, [
        (wrong_layout_in_out_swapped, "the last two axes are (in, out)"),
        (wrong_layout_reversed, "reverses all four"),
        (wrong_layout_fc6_plain, "flattened (c, y, x)"),
        (wrong_layout_transposed_conv, "*transposed* conv")]),
}


def test_every_check_has_cases():
    assert set(CASES) == set(course.CHECKS)
    for name in course.CHECKS:
        assert hasattr(course, f"check_{name}")


@pytest.mark.parametrize("name", sorted(CASES))
def test_teacher_solution_passes(name, capsys):
    solution, _ = CASES[name]
    assert course.CHECKS[name](solution) is True
    assert capsys.readouterr().out.strip().endswith(f"{name}: correct")
    assert core.RESULTS[name]["status"] == "correct"


@pytest.mark.parametrize("name,index", [(n, i) for n in sorted(CASES)
                                        for i in range(len(CASES[n][1]))])
def test_known_mistake_fails_with_its_message(name, index):
    wrong, words = CASES[name][1][index]
    with pytest.raises(AssertionError) as info:
        course.CHECKS[name](wrong)
    message = str(info.value)
    assert words in message, message
    assert message.startswith("case '"), message
    assert core.RESULTS[name]["status"] == "wrong"


@pytest.mark.parametrize("name", sorted(CASES))
def test_not_implemented_is_not_attempted(name, capsys):
    assert course.CHECKS[name](not_implemented) is False
    assert "not attempted" in capsys.readouterr().out
    assert core.RESULTS[name]["status"] == "not attempted"


def test_wrong_message_names_case_input_expected_got_and_error():
    with pytest.raises(AssertionError) as info:
        course.check_box_iou(wrong_iou_xywh)
    message = str(info.value)
    for words in ("case 'hand example", "boxes1 = shape (1, 4) float32", "expected shape (1, 1)",
                  "got      shape (1, 1)", "largest error", "at index (0, 0)", "hint:"):
        assert words in message, message
    assert "def " not in message and "jnp." not in message.split("hint:")[0]


def test_results_file_gets_one_json_line_per_check(tmp_path, monkeypatch):
    path = tmp_path / "results.jsonl"
    monkeypatch.setenv(core.RESULTS_ENV, str(path))
    course.check_smooth_l1(not_implemented)
    course.check_smooth_l1(sol_smooth_l1)
    lines = path.read_text().splitlines()
    assert [line.split('"status": ')[1].split('"')[1] for line in lines] == [
        "not attempted", "correct"]


def returns_none(*args, **kwargs):
    return None


def raises_value_error(*args, **kwargs):
    raise ValueError("boom")


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("bad", [returns_none, raises_value_error], ids=["none", "raises"])
def test_garbage_is_wrong_with_a_message(name, bad):
    with pytest.raises(AssertionError) as info:
        course.CHECKS[name](bad)
    assert str(info.value).startswith("case '"), str(info.value)
    if bad is raises_value_error:
        assert "your function raised ValueError: boom" in str(info.value)


@pytest.mark.parametrize("warmup", [5, 0])
def test_lr_schedule_oracle_is_make_optimizers_schedule(warmup):
    """The check's oracle is the rate ``make_optimizer`` applies: a gradient of 1 on one
    parameter, with momentum and weight decay off, is updated by exactly ``-lr(step)``."""
    from flax import nnx

    from mrcnn_jax.course.training import _oracle
    from mrcnn_jax.training import make_optimizer

    probe = nnx.Linear(1, 1, use_bias=False, rngs=nnx.Rngs(0))
    optimizer = make_optimizer(probe, 0.02, momentum=0.0, weight_decay=0.0,
                               warmup_steps=warmup, total_steps=25)
    params = nnx.state(probe, nnx.Param)
    ones = jax.tree.map(jnp.ones_like, params)
    state, rates = optimizer.tx.init(params), []
    for _ in range(30):  # 5 steps past the end too
        updates, state = optimizer.tx.update(ones, state, params)
        rates.append(-float(jax.tree.leaves(updates)[0].ravel()[0]))
    np.testing.assert_allclose(rates, _oracle(np.arange(30), 0.02, warmup, 25), rtol=1e-4,
                               atol=1e-9)
