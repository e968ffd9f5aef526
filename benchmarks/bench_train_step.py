"""Time one training step of the small preset against torchvision's Mask R-CNN built the same way.

    python benchmarks/bench_train_step.py                # batch 8 of 128x128, 10 timed steps
    python benchmarks/bench_train_step.py --steps 20 --batch 8

Ours: ``small_config()`` (ResNet-18 layout with widths 32-256 and GroupNorm, FPN 64, RPN 600/300
proposals, 64 RoIs per image, box head 256, mask head 4 x 64), ``train_step`` jitted, SGD with
momentum. torchvision: ``MaskRCNN`` on the same body (torchvision ``BasicBlock`` with the same
widths and GroupNorm), the same FPN, anchors, proposal counts, RoI counts and head sizes, on the
same synthetic batch (rectangles with masks), on the same CPU, in the same run. Reported: the
first JAX step (compile included), then the median of ``--steps`` steady steps for each.
"""

import argparse
import collections
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mrcnn_jax.config import small_config
from mrcnn_jax.model import MaskRCNN
from mrcnn_jax.training import make_optimizer, train_step


def make_batch(batch_size, size, objects=3, seed=0):
    rng = np.random.default_rng(seed)
    g = 8
    images = rng.integers(0, 255, (batch_size, size, size, 3)).astype(np.uint8)
    boxes = np.zeros((batch_size, g, 4), np.float32)
    masks = np.zeros((batch_size, g, size, size), np.uint8)
    labels = np.zeros((batch_size, g), np.int32)
    for b in range(batch_size):
        for j in range(objects):
            x, y = rng.integers(0, size * 5 // 8, 2)
            w, h = rng.integers(size // 8, size * 3 // 8, 2)
            boxes[b, j] = [x, y, x + w, y + h]
            masks[b, j, y:y + h, x:x + w] = 1
            labels[b, j] = 1 + j % 3
    return {"images": images, "boxes": boxes, "labels": labels, "masks": masks,
            "valid": labels > 0}


def time_ours(batch, steps):
    model = MaskRCNN(small_config(), rngs=nnx.Rngs(0))
    optimizer = make_optimizer(model, learning_rate=0.01, warmup_steps=10)
    batch = jax.tree.map(jnp.asarray, batch)
    key = jax.random.key(0)
    start = time.perf_counter()
    jax.block_until_ready(train_step(model, optimizer, batch, key))
    first = time.perf_counter() - start
    times = []
    for step in range(1, steps + 1):
        start = time.perf_counter()
        jax.block_until_ready(train_step(model, optimizer, batch, jax.random.fold_in(key, step)))
        times.append(time.perf_counter() - start)
    return first, float(np.median(times))


def torchvision_small_maskrcnn(config):
    """torchvision MaskRCNN with the body, FPN, anchors and heads of ``config``."""
    import torch
    from torchvision.models.detection import MaskRCNN as TorchMaskRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
    from torchvision.models.resnet import BasicBlock

    bb, rpn, heads, f = config.backbone, config.rpn, config.roi_heads, config.fpn_channels
    norm = lambda c: torch.nn.GroupNorm(bb.group_norm_groups, c)
    layers = {"conv1": torch.nn.Conv2d(3, bb.stem_width, 7, 2, 3, bias=False),
              "bn1": norm(bb.stem_width), "relu": torch.nn.ReLU(),
              "maxpool": torch.nn.MaxPool2d(3, 2, 1)}
    cin = bb.stem_width
    for i, width in enumerate(bb.widths, 1):
        stride = 1 if i == 1 else 2
        down = None
        if stride != 1 or cin != width:
            down = torch.nn.Sequential(torch.nn.Conv2d(cin, width, 1, stride, bias=False),
                                       norm(width))
        layers[f"layer{i}"] = torch.nn.Sequential(
            BasicBlock(cin, width, stride, down, norm_layer=norm),
            BasicBlock(width, width, norm_layer=norm))
        cin = width
    body = torch.nn.Sequential(collections.OrderedDict(layers))
    return_layers = {f"layer{i}": str(i - 1) for i in range(1, 5)}
    backbone = BackboneWithFPN(body, return_layers, list(bb.widths), f)
    anchors = AnchorGenerator(rpn.anchor_sizes, rpn.aspect_ratios)
    size = config.image_size[0]
    return TorchMaskRCNN(
        backbone, num_classes=None, min_size=size, max_size=size,
        rpn_anchor_generator=anchors,
        rpn_pre_nms_top_n_train=rpn.pre_nms_top_n_train,
        rpn_post_nms_top_n_train=rpn.post_nms_top_n_train,
        box_batch_size_per_image=heads.batch_size_per_image,
        box_positive_fraction=heads.positive_fraction,
        box_head=TwoMLPHead(f * heads.box_roi_size**2, heads.representation_size),
        box_predictor=FastRCNNPredictor(heads.representation_size, config.num_classes),
        mask_head=MaskRCNNHeads(f, list(heads.mask_layers), 1),
        mask_predictor=MaskRCNNPredictor(heads.mask_layers[-1], heads.mask_layers[-1],
                                         config.num_classes),
    )


def time_torchvision(batch, steps):
    import torch

    model = torchvision_small_maskrcnn(small_config())
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    images = [torch.tensor(im.transpose(2, 0, 1), dtype=torch.float32) / 255.0
              for im in batch["images"]]
    targets = [{"boxes": torch.tensor(bx[v]), "labels": torch.tensor(lb[v], dtype=torch.int64),
                "masks": torch.tensor(mk[v])}
               for bx, lb, mk, v in zip(batch["boxes"], batch["labels"], batch["masks"],
                                        batch["valid"], strict=True)]

    def step():
        losses = model(images, targets)
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()

    step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return float(np.median(times)), torch.get_num_threads()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    batch = make_batch(args.batch, 128)
    first, ours = time_ours(batch, args.steps)
    print(f"mrcnn_jax small preset, batch {args.batch} of 128x128, {jax.devices()[0].platform}")
    print(f"  first step (compile included): {first:6.1f} s")
    print(f"  steady step (median of {args.steps}):  {ours:6.3f} s  "
          f"({args.batch / ours:5.1f} images/s)")
    try:
        theirs, threads = time_torchvision(batch, args.steps)
    except ImportError:
        print("torchvision not importable: no reference figure")
        return
    print(f"torchvision MaskRCNN, same body/FPN/heads ({threads} threads)")
    print(f"  steady step (median of {args.steps}):  {theirs:6.3f} s  "
          f"({args.batch / theirs:5.1f} images/s)")
    print(f"step time, jax / torchvision: {ours / theirs:.2f}")
    print(f"images/s, jax / torchvision: {theirs / ours:.2f}  (issue 19 asks for >= 1.3)")


if __name__ == "__main__":
    main()
