"""Train Mask R-CNN on the synthetic shapes data: ``python -m mrcnn_jax.train``.

    python -m mrcnn_jax.train --minutes 17 --workdir outputs/shapes   # the README's main job
    python -m mrcnn_jax.train --steps 200 --workdir outputs/quick
    python -m mrcnn_jax.train --help

Prepares the shapes data if needed, trains the ``shapes_config`` preset from scratch with
SGD + momentum, linear warm-up and cosine decay, shows a progress bar with the loss terms and
images/s, writes ``metrics.jsonl`` and ``loss_curve.png`` in the work directory, checkpoints
with Orbax (atomic; ``--resume`` continues the same run: batch ``i`` and the key of step ``i``
depend only on the seed and ``i``), evaluates the validation loss periodically and, at the
end, COCO box and mask AP on the held-out split, and saves a picture of predictions.

Taught in notebooks/09_training.
"""

import argparse
import concurrent.futures
import json
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm import tqdm

from mrcnn_jax import checkpoints
from mrcnn_jax.config import shapes_config, small_config
from mrcnn_jax.data import class_names, make_loader, shapes_source
from mrcnn_jax.model import MaskRCNN
from mrcnn_jax.sharding import (
    add_distributed_args,
    check_batch_size,
    init_distributed,
    local_copy,
    make_mesh,
    process_batch_index,
    replicate,
    shard_batch,
    train_step,
)
from mrcnn_jax.training import LOSS_TERMS, check_batch, eval_losses, make_optimizer

PRESETS = {"shapes": shapes_config, "small": small_config}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", default="outputs/shapes", help="checkpoints, metrics, pictures")
    p.add_argument("--data_dir", default=None, help="prepared data (default <repo>/data)")
    p.add_argument("--num_train", type=int, default=8000,
                   help="shapes training images (8000: generated in ~20 s, each seen ~3 times)")
    p.add_argument("--num_val", type=int, default=500, help="held-out shapes images")
    p.add_argument("--image_size", type=int, default=128)
    p.add_argument("--preset", choices=sorted(PRESETS), default="shapes",
                   help="model preset: shapes_config (tuned for this job) or small_config")
    p.add_argument("--steps", type=int, default=2800,
                   help="total optimisation steps (2800 took 14-18 min on the 2-core CPU)")
    p.add_argument("--minutes", type=float, default=None,
                   help="stop training after this wall-clock budget (schedule still spans --steps)")
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--lr", type=float, default=0.02, help="peak learning rate")
    p.add_argument("--warmup", type=int, default=200, help="linear warm-up steps")
    p.add_argument("--max_instances", type=int, default=8, help="ground-truth slots per image")
    p.add_argument("--eval_every", type=int, default=500, help="validation loss every N steps")
    p.add_argument("--checkpoint_every", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint")
    p.add_argument("--stop_after", type=int, default=None,
                   help="checkpoint and stop once this many steps are done (resume later)")
    p.add_argument("--no_final_eval", action="store_true", help="skip COCO evaluation")
    p.add_argument("--devices", type=int, default=None,
                   help="devices of the data-parallel mesh (default: all visible); "
                        "--batch_size is global and must divide by it")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                   help="compute dtype of convolutions and matmuls (parameters, norms, losses "
                        "and box geometry stay float32)")
    add_distributed_args(p)
    return p.parse_args(argv)


def build(args):
    """Mesh, model, optimizer, data and the run description from parsed arguments.

    The loader yields this process's slice (``B / P`` images) of every global batch;
    ``read(step)`` returns the slice of global batch ``step`` (``sharding.process_batch_index``).
    """
    mesh = make_mesh(args.devices)
    check_batch_size(args.batch_size, mesh)
    config = PRESETS[args.preset](image_size=(args.image_size, args.image_size))
    config = config.replace(dtype=args.dtype)
    data = {"num_train": args.num_train, "num_val": args.num_val,
            "image_size": args.image_size, "seed": 0}
    train_source = shapes_source("train", args.data_dir, **data)
    local = args.batch_size // jax.process_count()
    loader = make_loader(train_source, local, image_size=args.image_size,
                         max_instances=args.max_instances, seed=args.seed, num_epochs=None)
    model = MaskRCNN(config, rngs=nnx.Rngs(args.seed))
    optimizer = make_optimizer(model, args.lr, warmup_steps=args.warmup, total_steps=args.steps)
    replicate(mesh, model, optimizer)
    names = class_names(train_source)
    run = {"config": checkpoints.config_to_dict(config), "data": data, "class_names": names,
           "max_instances": args.max_instances, "args": vars(args)}

    def read(step):
        return loader.dataset[process_batch_index(step, len(train_source), args.batch_size)]

    return mesh, model, optimizer, read, run, names


def validation_loss(model, args, data, mesh=None, batches=4):
    """Mean loss terms over ``batches`` validation batches (default mesh: every visible device,
    as the command's)."""
    mesh = make_mesh() if mesh is None else mesh
    source = shapes_source("validation", args.data_dir, **data)
    local = args.batch_size // jax.process_count()
    loader = make_loader(source, local, image_size=args.image_size,
                         max_instances=args.max_instances, train=False)
    totals, count = {}, min(batches, len(source) // args.batch_size)
    for i in range(count):
        batch = loader.dataset[process_batch_index(i, len(source), args.batch_size)]
        terms = eval_losses(model, shard_batch(check_batch(batch), mesh), jax.random.key(i))
        for k, v in terms.items():
            totals[k] = totals.get(k, 0.0) + float(v) / count
    return totals


def prefetched(read, steps):
    """``(step, batch)`` for each step, batch ``step`` being ``read(step)``; the next batch is
    read in a background thread while the current step runs (the jitted step releases the GIL
    and leaves part of the second core idle), so data loading costs no step time."""
    steps = iter(steps)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        step = next(steps, None)
        pending = None if step is None else pool.submit(read, step)
        while step is not None:
            batch = pending.result()
            following = next(steps, None)
            if following is not None:
                pending = pool.submit(read, following)
            yield step, batch
            step = following


def train(args):
    workdir = pathlib.Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    mesh, model, optimizer, read, run, names = build(args)
    lead = jax.process_index() == 0  # logging, plots and the bar on process 0 only
    mngr = checkpoints.manager(workdir)
    start = 0
    if args.resume and mngr.latest_step() is not None:
        start = checkpoints.restore(mngr, model, optimizer)
        replicate(mesh, model, optimizer)
        print(f"resumed from step {start}")
    if lead:
        checkpoints.write_run(workdir, run)
        print(f"mesh: {mesh.devices.size} {jax.devices()[0].platform} device(s) over "
              f"{jax.process_count()} process(es), global batch {args.batch_size}, "
              f"compute {args.dtype}")
    base_key = jax.random.key(args.seed)
    log = open(workdir / "metrics.jsonl", "a" if start else "w") if lead else None  # noqa: SIM115
    began = time.perf_counter()
    bar = tqdm(initial=start, total=args.steps, unit="step", disable=not lead)
    step = start - 1
    for step, batch in prefetched(read, range(start, args.steps)):
        batch = shard_batch(check_batch(batch), mesh)  # a function of (seed, step) only
        t0 = time.perf_counter()
        metrics = {k: float(v) for k, v in train_step(
            model, optimizer, batch, jax.random.fold_in(base_key, step), mesh).items()}
        metrics.update(step=step + 1, images_per_s=args.batch_size / (time.perf_counter() - t0))
        if not np.isfinite(metrics["loss"]):
            raise FloatingPointError(f"loss became {metrics['loss']} at step {step}: {metrics}")
        bar.set_postfix({k: f"{metrics[k]:.3f}" for k in ("loss", *LOSS_TERMS)}
                        | {"img/s": f"{metrics['images_per_s']:.1f}"}, refresh=False)
        bar.update(1)
        if (step + 1) % args.eval_every == 0 or step + 1 == args.steps:
            metrics["val"] = validation_loss(model, args, run["data"], mesh)
        if lead:
            log.write(json.dumps(metrics) + "\n")
            log.flush()
        out_of_time = bool(args.minutes and time.perf_counter() - began > 60 * args.minutes)
        out_of_time |= args.stop_after is not None and step + 1 >= args.stop_after
        if (step + 1) % args.checkpoint_every == 0 or step + 1 == args.steps or out_of_time:
            checkpoints.save(mngr, step + 1, model, optimizer)
        if out_of_time:
            print(f"\nstopping at step {step + 1} (time budget or --stop_after)")
            break
    bar.close()
    if lead:
        log.close()
    return model, run, names, step + 1, mesh


def plot_loss_curve(workdir):
    """``loss_curve.png``: every loss term against the step, validation loss as points."""
    from mrcnn_jax.plotting import colour, subplots

    rows = [json.loads(line) for line in (pathlib.Path(workdir) / "metrics.jsonl").open()]
    steps = np.array([r["step"] for r in rows])
    fig, (ax,) = subplots(1, size=5.0)
    ax.plot(steps, [r["loss"] for r in rows], color="black", label="loss", linewidth=1)
    for i, term in enumerate(LOSS_TERMS):  # one palette colour per term, as the notebooks
        ax.plot(steps, [r[term] for r in rows], color=colour(i), label=term, linewidth=1)
    val = [(r["step"], r["val"]["loss"]) for r in rows if "val" in r]
    if val:
        ax.plot(*zip(*val, strict=True), "o", color="dimgrey", label="validation loss")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(pathlib.Path(workdir) / "loss_curve.png", dpi=110)


def save_prediction_picture(model, loader, names, path, count=8):
    """A grid of validation images with predicted masks, boxes, classes and scores."""
    from mrcnn_jax.inference import predict
    from mrcnn_jax.plotting import draw_boxes, overlay_masks, show_image, subplots

    batch = next(iter(loader))
    model = local_copy(model)  # on one device, whatever the mesh
    out = jax.tree.map(np.asarray, predict(model, jnp.asarray(batch["images"])))
    count = min(count, len(batch["images"]))
    fig, axes = subplots(count // 2, 2, size=2.6)
    for i, ax in zip(range(count), axes, strict=False):
        keep = out["valid"][i] & (out["scores"][i] >= 0.5)
        shown = overlay_masks(batch["images"][i], out["masks"][i][keep], out["labels"][i][keep])
        show_image(ax, shown)
        draw_boxes(ax, out["boxes"][i][keep], out["labels"][i][keep], out["scores"][i][keep],
                   class_names=names)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def final_evaluation(model, args, run, names, workdir, mesh):
    from mrcnn_jax.evaluate import evaluate_sharded, pycocotools_stats
    from mrcnn_jax.evaluation import print_table

    source = shapes_source("validation", args.data_dir, **run["data"])
    results, gt, dets = evaluate_sharded(model, source, names, args.batch_size, mesh,
                                         image_size=args.image_size,
                                         max_instances=args.max_instances)
    if jax.process_index() != 0:  # COCO evaluation and pictures on process 0
        return results
    print_table(results)
    ref = pycocotools_stats(gt, dets)
    print(f"pycocotools on the same detections: mask AP {ref['segm']['AP']:.4f}, "
          f"AP50 {ref['segm']['AP50']:.4f}; box AP {ref['bbox']['AP']:.4f}")
    (workdir / "evaluation.json").write_text(json.dumps({"ours": results, "pycocotools": ref,
                                                         "num_images": len(gt["images"])}))
    loader = make_loader(source, min(8, len(source)), image_size=args.image_size,
                         max_instances=args.max_instances, train=False)
    save_prediction_picture(model, loader, names, workdir / "predictions.png")
    return results


def main(argv=None):
    args = parse_args(argv)
    init_distributed(args)
    workdir = pathlib.Path(args.workdir)
    began = time.perf_counter()
    model, run, names, steps, mesh = train(args)
    if jax.process_index() == 0:
        plot_loss_curve(workdir)
    print(f"trained {steps} steps in {(time.perf_counter() - began) / 60:.1f} min")
    if not args.no_final_eval:
        final_evaluation(model, args, run, names, workdir, mesh)
    print(f"outputs in {workdir.resolve()}: metrics.jsonl, loss_curve.png, checkpoints/, "
          f"{'' if args.no_final_eval else 'evaluation.json, predictions.png'}")


if __name__ == "__main__":
    main()
