"""Train Mask R-CNN on the shapes data or your own COCO-format data: ``python -m mrcnn_jax.train``.

    python -m mrcnn_jax.train --minutes 15 --workdir outputs/shapes   # the README's main job
    python -m mrcnn_jax.train --steps 200 --workdir outputs/quick
    python -m mrcnn_jax.train --train_annotations my/train.json --train_images my/images \
        --init outputs/shapes --minutes 10 --workdir outputs/mine      # your data, fine-tuned
    python -m mrcnn_jax.train --help

Prepares the data if needed (the synthetic shapes, or a COCO-format JSON plus its image folder,
printing what was skipped), builds the model (a preset from scratch, or ``--init`` from a
torchvision state dict or a work directory of ours), trains with SGD + momentum, linear
warm-up and cosine decay, shows a progress bar with the loss terms and images/s, writes
``metrics.jsonl`` and ``loss_curve.png`` in the work directory, checkpoints with Orbax (atomic;
``--resume`` continues the same run: batch ``i`` and the key of step ``i`` depend only on the
seed and ``i``), evaluates the validation loss periodically and, at the end, COCO box and mask
AP on the held-out split, and saves a picture of predictions.

``--minutes M`` fits the schedule to the budget: after compilation the step time is measured and
the schedule's length set so that its decay ends inside ``M`` minutes (refitted a few times,
``schedule.BudgetFit``; the length and step time go to ``run.json``). A slower machine trains
fewer steps but still finishes its decay. ``--steps`` then caps the length.

Taught in notebooks/09_training (shapes) and notebooks/13_your_own_dataset (your data).
"""

import argparse
import concurrent.futures
import itertools
import json
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm import tqdm

from mrcnn_jax import checkpoints
from mrcnn_jax.config import shapes_config, small_config
from mrcnn_jax.data import class_names, make_loader
from mrcnn_jax.data.splits import coco_splits, split_sources
from mrcnn_jax.model import MaskRCNN
from mrcnn_jax.schedule import BudgetFit, set_total_steps
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
DEFAULT_STEPS, DEFAULT_LR, DEFAULT_WARMUP = 2800, 0.02, 200  # from scratch, shapes
COCO_MASK_CROP = 112  # DESIGN.md "Data": own data keeps masks as crops in their boxes


class UserInputError(Exception):
    """Data, weights or a work directory that cannot be used, as the message says."""


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", default="outputs/shapes", help="checkpoints, metrics, pictures")
    p.add_argument("--data_dir", default=None, help="prepared data (default <repo>/data)")
    data = p.add_argument_group("data: the shapes (default) or a COCO-format dataset")
    data.add_argument("--num_train", type=int, default=8000,
                      help="shapes training images (8000: generated in ~20 s, each seen ~3 times)")
    data.add_argument("--num_val", type=int, default=500, help="held-out shapes images")
    data.add_argument("--train_annotations", default=None, help="COCO JSON of the training images")
    data.add_argument("--train_images", default=None, help="folder of the training images")
    data.add_argument("--val_annotations", default=None, help="COCO JSON of a validation split")
    data.add_argument("--val_images", default=None, help="folder of the validation images")
    data.add_argument("--val_fraction", type=float, default=0.1,
                      help="without --val_annotations: the fraction of training images held out")
    data.add_argument("--image_size", type=int, default=None,
                      help="fit every image into S x S, aspect kept, padded (default 128)")
    data.add_argument("--min_size", type=int, default=None,
                      help="torchvision-style resize: shorter side to this ... (with --max_size)")
    data.add_argument("--max_size", type=int, default=None,
                      help="... unless the longer side would pass this; padded to max x max")
    data.add_argument("--max_instances", type=int, default=8,
                      help="ground-truth slots per image (more are cut, and counted)")
    data.add_argument("--mask_crop", type=int, default=None,
                      help=f"ground-truth masks as M x M crops in their boxes (default "
                           f"{COCO_MASK_CROP} for COCO-format data, full masks for shapes; "
                           "0: full)")
    model = p.add_argument_group("model and schedule")
    model.add_argument("--preset", choices=sorted(PRESETS), default="shapes",
                       help="model preset from scratch: shapes_config (tuned for the shapes "
                            "job) or small_config; ignored with --init")
    model.add_argument("--init", default=None,
                       help="start from weights: a torchvision state dict (.pth needs torch; "
                            ".npz) or a work directory of ours; class layers are re-initialised "
                            "when the class count differs")
    model.add_argument("--trainable_backbone_layers", type=int, default=None, choices=range(6),
                       help="torchvision's meaning: 5 trains the whole ResNet, 3 freezes the "
                            "stem and layer1, 0 all of it (default: the preset's or 3 with "
                            "torchvision weights)")
    model.add_argument("--steps", type=int, default=None,
                       help=f"total optimisation steps (default {DEFAULT_STEPS}; with --minutes "
                            "the budget sets it and --steps caps it)")
    model.add_argument("--minutes", type=float, default=None,
                       help="training budget: the schedule is fitted so its decay ends in time")
    model.add_argument("--batch_size", type=int, default=8)
    model.add_argument("--lr", type=float, default=None,
                       help=f"peak learning rate (default {DEFAULT_LR}; fine-tuning's with --init)")
    model.add_argument("--warmup", type=int, default=None,
                       help=f"linear warm-up steps (default {DEFAULT_WARMUP}; fine-tuning's with "
                            "--init)")
    run = p.add_argument_group("run")
    run.add_argument("--eval_every", type=int, default=500, help="validation loss every N steps")
    run.add_argument("--checkpoint_every", type=int, default=500)
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--resume", action="store_true", help="continue from the latest checkpoint")
    run.add_argument("--stop_after", type=int, default=None,
                     help="checkpoint and stop once this many steps are done (resume later)")
    run.add_argument("--no_final_eval", action="store_true", help="skip COCO evaluation")
    run.add_argument("--devices", type=int, default=None,
                     help="devices of the data-parallel mesh (default: all visible); "
                          "--batch_size is global and must divide by it")
    run.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                     help="compute dtype of convolutions and matmuls (parameters, norms, losses "
                          "and box geometry stay float32)")
    add_distributed_args(p)
    args = p.parse_args(argv)
    if args.image_size is not None and (args.min_size or args.max_size):
        p.error("give --image_size or --min_size/--max_size, not both")
    if (args.min_size is None) != (args.max_size is None):
        p.error("--min_size and --max_size go together")
    if args.min_size is not None and args.min_size > args.max_size:
        p.error(f"--min_size {args.min_size} is larger than --max_size {args.max_size}")
    if (args.train_annotations is None) != (args.train_images is None):
        p.error("--train_annotations and --train_images go together")
    if args.val_annotations and not args.train_annotations:
        p.error("--val_annotations needs --train_annotations")
    if args.image_size is None and args.min_size is None:
        args.image_size = 128
    if args.init is None:  # from scratch: the shapes job's schedule (with --init: build())
        schedule_defaults(args, None)
    return args


def resize_options(args):
    """The loader's resize keywords for these arguments."""
    if getattr(args, "min_size", None) is not None:
        return {"min_size": args.min_size, "max_size": args.max_size}
    return {"image_size": args.image_size}


def padded_side(args):
    return args.max_size if getattr(args, "min_size", None) is not None else args.image_size


def prepare_data(args):
    """The ``run.json`` data dict, preparing the data; prints what COCO preparation skipped."""
    if args.train_annotations is None:
        return {"num_train": args.num_train, "num_val": args.num_val,
                "image_size": args.image_size or 128, "seed": 0}
    data, report = coco_splits(args.train_annotations, args.train_images, args.val_annotations,
                               args.val_images, val_fraction=args.val_fraction,
                               data_dir=args.data_dir)
    if jax.process_index() == 0:
        for split, line in report.items():
            print(f"{split} data ({data['name']}): {line}")
    return data


def model_config(args, names):
    """The model's config: the preset, or the architecture of ``--init``."""
    side = padded_side(args)
    if args.init is None:
        config = PRESETS[args.preset](num_classes=len(names), image_size=(side, side))
    else:
        from mrcnn_jax.finetune import init_config
        config = init_config(args.init, num_classes=len(names), image_size=(side, side))
    if args.trainable_backbone_layers is not None:
        config = config.replace(backbone=config.backbone.__class__(**{
            **vars(config.backbone), "trainable_layers": args.trainable_backbone_layers}))
    return config.replace(dtype=args.dtype)


def schedule_defaults(args, config, num_train=None):
    """Fill ``--lr``, ``--warmup`` and ``--steps``: from scratch as the shapes job, or the
    fine-tuning defaults with ``--init`` (``finetune.finetune_defaults``, printed)."""
    if args.init is None:
        defaults = {"lr": DEFAULT_LR, "warmup": DEFAULT_WARMUP, "steps": DEFAULT_STEPS}
    else:
        from mrcnn_jax.finetune import finetune_defaults
        defaults = finetune_defaults(config, args.batch_size, num_train)
        if jax.process_index() == 0:
            for key, given in (("lr", args.lr), ("warmup", args.warmup), ("steps", args.steps)):
                if given is None and not (key == "steps" and args.minutes is not None):
                    print(f"fine-tuning default --{key}: {defaults['reasons'][key]}")
    args.lr = defaults["lr"] if args.lr is None else args.lr
    args.warmup = defaults["warmup"] if args.warmup is None else args.warmup
    if args.steps is None and args.minutes is None:
        args.steps = defaults["steps"]


def check_resume(workdir, run):
    """A resumed run must have the same classes (and so the same class layers) as before."""
    path = pathlib.Path(workdir) / "run.json"
    if not path.exists():
        return
    before = json.loads(path.read_text())
    if before.get("class_names") != run["class_names"]:
        raise UserInputError(f"--resume: {workdir} was trained on classes "
                             f"{before.get('class_names')}, this run has "
                             f"{run['class_names']}; use a new --workdir")


def build(args):
    """Mesh, model, optimizer, data and the run description from parsed arguments.

    The loader yields this process's slice (``B / P`` images) of every global batch;
    ``read(step)`` returns the slice of global batch ``step`` (``sharding.process_batch_index``).
    """
    mesh = make_mesh(args.devices)
    check_batch_size(args.batch_size, mesh)
    try:
        data = prepare_data(args)
        train_source, val_source = split_sources(data, args.data_dir)
        names = class_names(train_source)
        config = model_config(args, names)
    except (FileNotFoundError, ValueError, KeyError) as error:
        raise UserInputError(str(error)) from error
    schedule_defaults(args, config, len(train_source))
    if args.mask_crop is None:
        args.mask_crop = COCO_MASK_CROP if data.get("kind") == "coco" else 0
    mask_crop = args.mask_crop
    local = args.batch_size // jax.process_count()
    loader = make_loader(train_source, local, **resize_options(args), mask_size=mask_crop or None,
                         max_instances=args.max_instances, seed=args.seed, num_epochs=None)
    if args.init is None:
        model, report = MaskRCNN(config, rngs=nnx.Rngs(args.seed)), None
    else:
        from mrcnn_jax.finetune import format_report, init_model
        try:
            model, report = init_model(args.init, config, rngs=nnx.Rngs(args.seed),
                                       class_names=names)
        except (FileNotFoundError, ValueError, KeyError) as error:
            raise UserInputError(str(error)) from error
        if jax.process_index() == 0:
            print(format_report(report))
    optimizer = make_optimizer(model, args.lr, warmup_steps=args.warmup,
                               total_steps=args.steps if args.minutes is None else None)
    replicate(mesh, model, optimizer)
    run = {"config": checkpoints.config_to_dict(config), "data": data, "class_names": names,
           "max_instances": args.max_instances, "resize": resize_options(args),
           "mask_crop": mask_crop, "args": vars(args)}

    def read(step):
        return loader.dataset[process_batch_index(step, len(train_source), args.batch_size)]

    if jax.process_index() == 0:
        print(f"data: {len(train_source)} training images, {len(val_source)} held out; "
              f"classes {names[1:]}")
    return mesh, model, optimizer, read, run, names


def validation_loss(model, args, data, mesh=None, batches=4):
    """Mean loss terms over ``batches`` validation batches of the run's ``data`` dict (default
    mesh: every visible device, as the command's). ``args`` gives the batch size, resize and
    ground-truth layout (``--image_size`` or ``--min_size/--max_size``, ``--max_instances``,
    ``--mask_crop``)."""
    mesh = make_mesh() if mesh is None else mesh
    _, source = split_sources(data, args.data_dir)
    local = args.batch_size // jax.process_count()
    totals, count = {}, min(batches, len(source) // args.batch_size)
    if count == 0:
        return totals
    loader = make_loader(source, local, **resize_options(args),
                         mask_size=getattr(args, "mask_crop", None) or None,
                         max_instances=args.max_instances, train=False)
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


def _rewind_metrics(path, start):
    """Keep only the rows of steps ``<= start`` (a resumed run redoes the steps after its last
    checkpoint; without this they would be logged, and drawn, twice)."""
    if not path.exists():
        return
    rows = [line for line in path.read_text().splitlines()
            if line.strip() and json.loads(line)["step"] <= start]
    path.write_text("".join(line + "\n" for line in rows))


def _agree(value):
    """The same number on every process (process 0's): budget decisions must not diverge."""
    if jax.process_count() == 1:
        return value
    from jax.experimental import multihost_utils
    return type(value)(multihost_utils.broadcast_one_to_all(np.asarray(value)))


def train(args):
    workdir = pathlib.Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    mesh, model, optimizer, read, run, names = build(args)
    lead = jax.process_index() == 0  # logging, plots and the bar on process 0 only
    mngr = checkpoints.manager(workdir)
    start = 0
    if args.resume and mngr.latest_step() is not None:
        check_resume(workdir, run)
        start = checkpoints.restore(mngr, model, optimizer)
        replicate(mesh, model, optimizer)
        print(f"resumed from step {start}")
        if args.minutes is not None:  # the restored length stands until the next fit
            from mrcnn_jax.schedule import total_steps
            args.steps = args.steps or total_steps(optimizer)
    total = args.steps if args.minutes is None else (args.steps or 10**9)
    began = time.perf_counter()
    fit = None if args.minutes is None else BudgetFit(args.minutes, began, warmup=args.warmup,
                                                      at_most=args.steps)
    run["schedule"] = {"total_steps": None if args.minutes else total, "minutes": args.minutes}
    if lead:
        checkpoints.write_run(workdir, run)
        print(f"mesh: {mesh.devices.size} {jax.devices()[0].platform} device(s) over "
              f"{jax.process_count()} process(es), global batch {args.batch_size}, "
              f"compute {args.dtype}; lr {args.lr}, warm-up {args.warmup}, "
              + (f"{total} steps" if fit is None else f"schedule fitted to {args.minutes} min"))
        _rewind_metrics(workdir / "metrics.jsonl", start)
    base_key = jax.random.key(args.seed)
    log = open(workdir / "metrics.jsonl", "a") if lead else None  # noqa: SIM115
    bar = tqdm(initial=start, total=None if fit else total, unit="step", disable=not lead)
    done, truncated = start, 0
    for step, batch in prefetched(read, itertools.count(start)):
        if step >= total:
            break
        done = step + 1
        truncated += int(batch["num_truncated"].sum())
        batch = shard_batch(check_batch(batch), mesh)  # a function of (seed, step) only
        t0 = time.perf_counter()
        metrics = {k: float(v) for k, v in train_step(
            model, optimizer, batch, jax.random.fold_in(base_key, step), mesh).items()}
        now = time.perf_counter()
        metrics.update(step=step + 1, images_per_s=args.batch_size / (now - t0))
        if not np.isfinite(metrics["loss"]):
            raise FloatingPointError(f"loss became {metrics['loss']} at step {step}: {metrics}")
        if fit is not None and (fitted := fit.update(step + 1, now)) is not None:
            total = _agree(int(fitted))
            set_total_steps(optimizer, total)
            bar.total = total
            run["schedule"] = {"total_steps": total, "minutes": args.minutes} | fit.summary()
            if lead:
                checkpoints.write_run(workdir, run)
        bar.set_postfix({k: f"{metrics[k]:.3f}" for k in ("loss", *LOSS_TERMS)}
                        | {"img/s": f"{metrics['images_per_s']:.1f}"}, refresh=False)
        bar.update(1)
        if (step + 1) % args.eval_every == 0 or step + 1 == total:
            metrics["val"] = validation_loss(model, args, run["data"], mesh)
        if lead:
            log.write(json.dumps(metrics) + "\n")
            log.flush()
        out_of_time = bool(_agree(int(fit is not None and fit.out_of_time(time.perf_counter()))))
        stop = args.stop_after is not None and step + 1 >= args.stop_after
        if (step + 1) % args.checkpoint_every == 0 or step + 1 == total or out_of_time or stop:
            checkpoints.save(mngr, step + 1, model, optimizer)
        if out_of_time or stop:
            print(f"\nstopping at step {step + 1} of {total} "
                  f"({'time budget' if out_of_time else '--stop_after'})")
            break
    bar.close()
    if lead:
        log.close()
        if truncated:
            share = " (this process's share)" if jax.process_count() > 1 else ""
            print(f"{truncated} ground-truth instances in training batches{share} were cut by "
                  f"--max_instances {args.max_instances} (images with more objects); raise it "
                  "to keep them")
    return model, run, names, done, mesh


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
    """COCO box and mask AP on the held-out split (process 0 prints and writes them): the shapes
    data in the model's pixels, COCO-format data in each image's own pixels and category ids
    (``evaluate_coco``, as ``python -m mrcnn_jax.evaluate`` does)."""
    from mrcnn_jax.evaluate import evaluate_sharded, pycocotools_stats
    from mrcnn_jax.evaluation import print_table

    _, source = split_sources(run["data"], args.data_dir)
    if run["data"].get("kind") == "coco":
        from mrcnn_jax.data.coco import load_annotations
        from mrcnn_jax.evaluate_coco import category_map, evaluate_coco_split, print_per_class

        data = run["data"]
        coco = load_annotations(data["val_annotations"] or data["train_annotations"])
        results, gt, dets, _ = evaluate_coco_split(
            model, source, coco, category_map(names, coco["categories"]), args.batch_size, mesh,
            min_size=args.min_size)
    else:
        results, gt, dets = evaluate_sharded(model, source, names, args.batch_size, mesh,
                                             image_size=padded_side(args),
                                             max_instances=args.max_instances)
    if jax.process_index() != 0:  # COCO evaluation and pictures on process 0
        return results
    print_table({t: results[t] for t in ("bbox", "segm")})
    if "per_class" in results:
        print_per_class(results["per_class"])
    if dets:
        ref = pycocotools_stats(gt, dets)
        print(f"pycocotools on the same detections: mask AP {ref['segm']['AP']:.4f}, "
              f"AP50 {ref['segm']['AP50']:.4f}; box AP {ref['bbox']['AP']:.4f}")
    else:
        ref = None
        print("no detections (pycocotools cannot load an empty result list)")
    (workdir / "evaluation.json").write_text(json.dumps({"ours": results, "pycocotools": ref,
                                                         "num_images": len(gt["images"])}))
    loader = make_loader(source, min(8, len(source)), **run["resize"],
                         max_instances=args.max_instances, train=False)
    save_prediction_picture(model, loader, names, workdir / "predictions.png")
    return results


def main(argv=None):
    args = parse_args(argv)
    init_distributed(args)
    try:
        return _main(args)
    except UserInputError as error:  # bad data or weights: one line, not a traceback
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


def _main(args):
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
