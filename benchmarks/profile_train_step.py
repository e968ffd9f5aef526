"""Where a training step's time goes, stage by stage (issue 19's first lead: measure first).

    python benchmarks/profile_train_step.py                      # shapes_config, batch 8, 128 px
    python benchmarks/profile_train_step.py --preset small --repeats 20
    python benchmarks/profile_train_step.py --dense_max_cells 0    # RoIAlign by gather only

Each row jits a program that runs the network up to a stage and times it (median of
``--repeats`` after one compile run), forward alone and forward plus the backward pass (the
gradient of a scalar of the stage's outputs with respect to every parameter). A stage's own cost
is its row minus the row before it; the last rows are the loss (``training.loss_fn``), its
gradient, and the whole ``train_step`` (the optimizer update included). The cut points:

1. ``body``: normalisation and the ResNet body (C2-C5);
2. ``+ fpn``: the FPN's lateral and output convolutions (P2-P6);
3. ``+ rpn head``: the shared RPN convolution and its two 1x1 outputs on all levels;
4. ``+ proposals``: decode, top-k per level, NMS, and the RPN targets (no gradient flows
   through boxes, so its backward adds nothing);
5. ``+ box head``: RoI sampling, RoIAlign 7x7 from the FPN maps, the two-layer box head;
6. ``+ mask head``: RoIAlign 14x14, the mask head's convolutions, the mask targets;
7. ``loss``: ``train_forward`` and the losses; ``train_step``: loss, gradient, SGD update.

Gradients through cut-off stages differ a little from the full loss's (other scalars), but
they run the same backward kernels, which is what is timed. XLA fuses across the cuts, so the
differences are estimates; the last rows are exact. Prints the table and the share of each
stage in the gradient column.
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from bench_train_step import make_batch  # benchmarks/ is on the path when run as a script
from flax import nnx

from mrcnn_jax.config import shapes_config, small_config
from mrcnn_jax.model import MaskRCNN
from mrcnn_jax.training import loss_fn, make_optimizer, train_step


def _scalar(tree):
    """A scalar that depends on every float leaf of ``tree`` (for the backward pass)."""
    leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)]
    return sum(jnp.mean(x.astype(jnp.float32)) for x in leaves)


def stages(model, batch, key):
    """``name -> fn(model) -> outputs``: the network cut after each stage."""
    heads = model.config.roi_heads

    def body(m):
        return m.body(m.normalize(batch["images"]))

    def fpn(m):
        return m.features(batch["images"])

    def rpn_head(m):
        return m.rpn_head(m.features(batch["images"]))

    def proposals(m):
        from mrcnn_jax.rpn import rpn_targets

        out = m.proposals(m.features(batch["images"]), training=True)
        b = batch["boxes"].shape[0]
        targets = jax.vmap(rpn_targets, in_axes=(0, None, 0, 0, None))(
            jax.random.split(key, b), out["anchors"], batch["boxes"].astype(jnp.float32),
            batch["valid"].astype(bool), m.config.rpn)
        return out["rpn_logits"], out["rpn_deltas"], out["proposals"], targets

    def box_head(m):
        from mrcnn_jax.roi_heads import sample_rois

        features = m.features(batch["images"])
        out = m.proposals(features, training=True)
        b = batch["boxes"].shape[0]
        samples = jax.vmap(sample_rois, in_axes=(0, 0, 0, 0, 0, 0, None))(
            jax.random.split(key, b), out["proposals"], out["proposal_valid"],
            batch["boxes"].astype(jnp.float32), batch["labels"], batch["valid"].astype(bool),
            heads)
        return out["rpn_logits"], m.box_head(m.pool(features, samples["rois"],
                                                    heads.box_roi_size))

    def mask_head(m):
        return m.train_forward(batch, key)

    return {"body": body, "+ fpn": fpn, "+ rpn head": rpn_head, "+ proposals": proposals,
            "+ box head": box_head, "+ mask head": mask_head,
            "loss": lambda m: loss_fn(m, batch, key)[0]}


def timed(fn, *args, repeats):
    jax.block_until_ready(fn(*args))  # compile
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=("shapes", "small"), default="shapes")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--dense_max_cells", type=int, default=None,
                        help="override poolers.DENSE_MAX_CELLS (0: RoIAlign by gather only)")
    args = parser.parse_args(argv)
    if args.dense_max_cells is not None:
        from mrcnn_jax import poolers

        poolers.DENSE_MAX_CELLS = args.dense_max_cells
    make_config = shapes_config if args.preset == "shapes" else small_config
    model = MaskRCNN(make_config(image_size=(args.size, args.size)), rngs=nnx.Rngs(0))
    batch = jax.tree.map(jnp.asarray, make_batch(args.batch, args.size))
    key = jax.random.key(0)
    rows = []
    for name, fn in stages(model, batch, key).items():
        forward = nnx.jit(fn)
        grad = nnx.jit(nnx.grad(lambda m, fn=fn: _scalar(fn(m)),
                                argnums=nnx.DiffState(0, nnx.Param)))
        rows.append((name, timed(forward, model, repeats=args.repeats),
                     timed(grad, model, repeats=args.repeats)))
        print(f"{name:14s} forward {rows[-1][1] * 1e3:8.1f} ms   forward+backward "
              f"{rows[-1][2] * 1e3:8.1f} ms", flush=True)
    optimizer = make_optimizer(model, learning_rate=0.01, warmup_steps=10)
    step = timed(lambda: train_step(model, optimizer, batch, key), repeats=args.repeats)
    print(f"\n{args.preset}_config, batch {args.batch} of {args.size}x{args.size}, "
          f"{jax.device_count()} {jax.default_backend()} device(s), median of {args.repeats}")
    print(f"{'stage':14s} {'forward ms':>11s} {'fwd+bwd ms':>11s} {'own fwd':>9s} "
          f"{'own f+b':>9s} {'share':>7s}")
    previous = (0.0, 0.0)
    for name, fwd, both in rows[:-1]:
        own = (fwd - previous[0], both - previous[1])
        print(f"{name:14s} {fwd * 1e3:11.1f} {both * 1e3:11.1f} {own[0] * 1e3:9.1f} "
              f"{own[1] * 1e3:9.1f} {own[1] / step:7.1%}")
        previous = (fwd, both)
    name, fwd, both = rows[-1]
    print(f"{'loss':14s} {fwd * 1e3:11.1f} {both * 1e3:11.1f} {(fwd - previous[0]) * 1e3:9.1f} "
          f"{(both - previous[1]) * 1e3:9.1f} {(both - previous[1]) / step:7.1%}")
    print(f"{'train_step':14s} {'':11s} {step * 1e3:11.1f} {'':9s} {(step - both) * 1e3:9.1f} "
          f"{(step - both) / step:7.1%}   ({args.batch / step:.1f} images/s)")


if __name__ == "__main__":
    main()
