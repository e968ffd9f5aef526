"""Train torchvision's Mask R-CNN and ours on the same shapes data for the same time; compare AP.

    python benchmarks/bench_train_shapes.py --minutes 15                       # both, 15 min each
    python benchmarks/bench_train_shapes.py --minutes 15 --ours_workdir outputs/shapes
    python benchmarks/bench_train_shapes.py --minutes 0.5 --num_eval 16        # smoke test
    python benchmarks/bench_train_shapes.py --minutes 15 --export outputs/tv_shapes.npz

Ours: ``mrcnn_jax.train`` (its default ``shapes_config`` preset, SGD + momentum, warm-up and
cosine over ``--steps``) in ``<workdir>/ours``, or, with ``--ours_workdir``, an already trained work
directory (the README's main job, ``outputs/shapes``): its ``metrics.jsonl`` gives steps and
images/s, its ``evaluation.json`` the AP when it covers ``--num_eval`` images (else its latest
checkpoint is evaluated here). torchvision: ``MaskRCNN`` on the same narrow ResNet-18 body, FPN,
anchors, proposal and RoI counts and head sizes (``bench_train_step.torchvision_small_maskrcnn``),
no resizing (``min_size = max_size = 128``), the same normalisation, the same batches in the
same order (``make_loader(...).dataset[step]``), the same optimiser (SGD momentum 0.9, weight
decay 1e-4, gradient clipping at global norm 10, optax's warm-up + cosine schedule), the
preset's mask loss weight, its test-time proposal and detection counts set to the preset's, and,
when the preset averages masks with the mirrored image's (``mask_flip_test``), the same average
before pasting. Each trains until ``--steps`` are
done or ``--minutes`` have passed, whichever comes first. Both are then scored on the first
``--num_eval`` held-out images with the same ``coco_evaluate`` (mask and box AP).

"images/s" is the batch size over the median time of one optimisation step (forward, backward,
update; the first step, which compiles ours, is left out). Needs torch and torchvision.
"""

import argparse
import dataclasses
import json
import math
import os
import pathlib
import sys
import time

import numpy as np
from tqdm import tqdm

# torch's OpenMP threads spin at every barrier by default; when another job holds a core, a
# 2-thread training step then ran 12x slower here (7.9 s against 0.65 s passive). Set before
# torch loads; OMP_WAIT_POLICY=ACTIVE in the environment restores the default.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from bench_train_step import torchvision_small_maskrcnn  # noqa: E402

from mrcnn_jax.checkpoints import config_from_dict, read_run  # noqa: E402
from mrcnn_jax.config import shapes_config  # noqa: E402
from mrcnn_jax.data import class_names, make_loader, shapes_source  # noqa: E402
from mrcnn_jax.evaluate import evaluate_model, full_batch_size, ground_truth_to_coco  # noqa: E402
from mrcnn_jax.evaluation import coco_evaluate, detections_to_coco  # noqa: E402
from mrcnn_jax.train import parse_args as train_defaults  # noqa: E402

_MAIN_JOB = train_defaults([])
DATA = {"num_train": _MAIN_JOB.num_train, "num_val": _MAIN_JOB.num_val,
        "image_size": _MAIN_JOB.image_size, "seed": 0}  # the main job's data
BATCH, MAX_INSTANCES = _MAIN_JOB.batch_size, _MAIN_JOB.max_instances  # 8, 8
TORCH_HINT = "needs torch: pip install torch==2.14.1 torchvision==0.29.1"
TV_LOSSES = {"loss_objectness": "obj", "loss_rpn_box_reg": "rpn_box",
             "loss_classifier": "cls", "loss_box_reg": "box", "loss_mask": "mask"}


def require_torch(threads=None):
    """Import torch and torchvision (and set its thread count), or exit saying how to install."""
    try:
        import torch
        import torchvision  # noqa: F401
    except ImportError as error:
        raise SystemExit(f"{TORCH_HINT} ({error})") from error
    if threads:
        torch.set_num_threads(threads)
    return torch


def build_torchvision(config, seed=0):
    """``torchvision_small_maskrcnn(config)`` with the config's test-time proposal and
    detection counts (torchvision's defaults are 1000/1000 proposals and 100 detections)."""
    torch = require_torch()
    torch.manual_seed(seed)
    model = torchvision_small_maskrcnn(config)
    rpn, heads = config.rpn, config.roi_heads
    model.rpn._pre_nms_top_n["testing"] = rpn.pre_nms_top_n_test
    model.rpn._post_nms_top_n["testing"] = rpn.post_nms_top_n_test
    model.roi_heads.detections_per_img = heads.detections_per_image
    model.roi_heads.score_thresh = heads.score_threshold
    model.roi_heads.nms_thresh = heads.nms_threshold
    size = config.image_size
    transform = model.transform  # GeneralizedRCNNTransform: must neither resize nor renormalise
    if (transform.min_size, transform.max_size) != ((size[0],), size[1]) or size[0] != size[1]:
        raise ValueError(f"torchvision would resize: min_size {transform.min_size}, max_size "
                         f"{transform.max_size}, image size {size}")
    if (tuple(transform.image_mean), tuple(transform.image_std)) != (config.pixel_mean,
                                                                     config.pixel_std):
        raise ValueError("torchvision's image normalisation differs from the config's")
    return model


def to_torchvision_batch(batch):
    """A package batch -> torchvision's ``(images, targets)``: float CHW in [0, 1], and per image
    the valid ``boxes``, ``labels`` (int64) and full-size ``masks`` (uint8)."""
    import torch

    images = list(torch.from_numpy(batch["images"]).permute(0, 3, 1, 2).float().div(255.0))
    targets = [{"boxes": torch.from_numpy(b[v]), "labels": torch.from_numpy(lab[v]).long(),
                "masks": torch.from_numpy(m[v])}
               for b, lab, m, v in zip(batch["boxes"], batch["labels"], batch["masks"],
                                       batch["valid"].astype(bool), strict=True)]
    return images, targets


def lr_schedule(steps, lr=0.02, warmup=200):
    """Learning rate of each step: ``make_optimizer``'s optax warm-up + cosine schedule."""
    import optax

    schedule = optax.warmup_cosine_decay_schedule(lr * 0.001, lr, warmup, max(steps, warmup + 1))
    return np.asarray(schedule(np.arange(steps)), np.float64)


def train_torchvision(model, loader, steps, minutes=None, lr=0.02, warmup=200, momentum=0.9,
                      weight_decay=1e-4, clip_norm=10.0, mask_loss_weight=1.0, progress=True):
    """Train ``model`` on ``loader.dataset[step]`` for ``steps`` steps or ``minutes``.

    The optimiser is ``mrcnn_jax.training.make_optimizer``'s: gradients clipped to global norm
    ``clip_norm``, then weight decay, then SGD with momentum, learning rate per step from
    :func:`lr_schedule`. The loss is the sum of torchvision's terms with ``loss_mask`` times
    ``mask_loss_weight`` (as ``compute_losses``). Returns ``{"steps", "seconds",
    "step_times"}``.
    """
    import torch

    rates = lr_schedule(steps, lr, warmup)
    optimizer = torch.optim.SGD(model.parameters(), lr=rates[0], momentum=momentum,
                                weight_decay=weight_decay)
    model.train()
    began, times, done = time.perf_counter(), [], 0
    bar = tqdm(range(steps), unit="step", desc="torchvision", disable=not progress)
    for step in bar:
        images, targets = to_torchvision_batch(loader.dataset[step])
        for group in optimizer.param_groups:
            group["lr"] = float(rates[step])
        start = time.perf_counter()
        losses = model(images, targets)
        loss = sum(v * (mask_loss_weight if k == "loss_mask" else 1.0) for k, v in losses.items())
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
        optimizer.step()
        times.append(time.perf_counter() - start)
        done = step + 1
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"torchvision loss became {loss.item()} at step {step}")
        bar.set_postfix({"loss": f"{loss.item():.3f}"}
                        | {short: f"{losses[k].item():.3f}" for k, short in TV_LOSSES.items()}
                        | {"img/s": f"{len(images) / times[-1]:.1f}"})
        if minutes and time.perf_counter() - began > 60 * minutes:
            break
    bar.close()
    return {"steps": done, "seconds": time.perf_counter() - began, "step_times": times}


def torchvision_predict(model, images, mask_flip_test=False):
    """torchvision's eval-mode detections on ``images (B, H, W, 3) uint8``: per image a dict
    of numpy ``boxes (N, 4)``, ``labels (N,)``, ``scores (N,)``, ``masks (N, H, W)``
    probabilities. ``mask_flip_test``: each mask averaged with the mirrored image's, before
    pasting, as ``RoIHeadsConfig.mask_flip_test`` does in ours."""
    import torch

    model.eval()
    tensors = list(torch.from_numpy(np.asarray(images)).permute(0, 3, 1, 2).float().div(255.0))
    with torch.no_grad():
        outputs = model(tensors)
        if mask_flip_test:
            outputs = _average_mirrored_masks(model, tensors, outputs)
    return [{"boxes": o["boxes"].numpy(), "labels": o["labels"].numpy(),
             "scores": o["scores"].numpy(), "masks": o["masks"][:, 0].numpy()} for o in outputs]


def _mask_probs(model, tensors, boxes, labels):
    """torchvision's mask branch on given boxes: ``(N, M, M)`` probabilities of each label."""
    import torch

    image_list, _ = model.transform(tensors)  # no resize here: boxes stay in image pixels
    features = model.backbone(image_list.tensors)
    heads = model.roi_heads
    x = heads.mask_predictor(heads.mask_head(heads.mask_roi_pool(features, boxes,
                                                                 image_list.image_sizes)))
    labels = torch.cat(labels)
    return x[torch.arange(len(labels)), labels].sigmoid()  # (N, M, M)


def _average_mirrored_masks(model, tensors, outputs):
    """Replace each output's pasted masks by the average of the image's and the mirrored
    image's mask probabilities (mirrored back), pasted by torchvision's rule."""
    import torch
    from torchvision.models.detection.roi_heads import paste_masks_in_image

    width = tensors[0].shape[-1]
    boxes, labels = [o["boxes"] for o in outputs], [o["labels"] for o in outputs]
    mirrored = [torch.stack([width - b[:, 2], b[:, 1], width - b[:, 0], b[:, 3]], 1)
                for b in boxes]
    plain = _mask_probs(model, tensors, boxes, labels)[:, None]  # (N, 1, M, M)
    flipped = _mask_probs(model, [t.flip(-1) for t in tensors], mirrored, labels).flip(-1)
    averaged = 0.5 * (plain + flipped[:, None])
    sizes, size = [len(b) for b in boxes], tuple(tensors[0].shape[-2:])
    for o, b, p, a in zip(outputs, boxes, plain.split(sizes), averaged.split(sizes), strict=True):
        # the plain probabilities pasted are torchvision's own masks: the branch is the same
        torch.testing.assert_close(paste_masks_in_image(p, b, size), o["masks"], atol=1e-5,
                                   rtol=1e-5)
        o["masks"] = paste_masks_in_image(a, b, size)
    return outputs


def evaluate_torchvision(model, loader, names, mask_flip_test=False, progress=True):
    """``evaluate_model`` for a torchvision model: the same COCO dicts, ``coco_evaluate``."""
    images, annotations, detections = [], [], []
    for batch in tqdm(loader, desc="evaluate torchvision", unit="batch", disable=not progress):
        ids = list(range(len(images), len(images) + len(batch["images"])))
        imgs, anns = ground_truth_to_coco(batch, names, ids)
        for ann in anns:
            ann["id"] += len(annotations)
        images += imgs
        annotations += anns
        outs = torchvision_predict(model, batch["images"], mask_flip_test)
        for image_id, out in zip(ids, outs, strict=True):
            detections += detections_to_coco(image_id, out["boxes"], out["scores"],
                                             out["labels"], out["masks"])
    categories = [{"id": k, "name": n} for k, n in enumerate(names) if k > 0]
    ground_truth = {"images": images, "annotations": annotations, "categories": categories}
    return coco_evaluate(ground_truth, detections)


def eval_loader(num_eval, data_dir=None):
    """The first ``num_eval`` held-out images in fixed order, every one of them evaluated."""
    source = shapes_source(f"validation[:{num_eval}]", data_dir, **DATA)
    loader = make_loader(source, full_batch_size(len(source), BATCH),
                         image_size=DATA["image_size"], max_instances=MAX_INSTANCES, train=False)
    return loader, class_names(source)


def round_weights(model, dtype):
    """Round every floating-point tensor of ``model`` to ``dtype`` and back, in place; returns
    the rounded ``{name: array of dtype}`` (what :func:`export_torchvision` stores)."""
    import torch

    state = model.state_dict()
    weights = {k: v.detach().numpy().astype(dtype) for k, v in state.items()
               if v.is_floating_point()}
    model.load_state_dict({k: torch.from_numpy(weights[k].astype(np.float32)) if k in weights
                           else v for k, v in state.items()})
    return weights


def export_torchvision(path, model, config, names, images, weights_dtype="float32", extra=None):
    """Save ``model``'s state dict and its own predictions on ``images`` to ``path`` (.npz).

    Keys: every floating-point state-dict tensor under its torchvision name, in
    ``weights_dtype`` (the model is first rounded to it in place, so with float16 the references
    are exactly what the stored weights give); everything else under ``reference/`` (what
    ``mrcnn_jax.import_torchvision.load_state_dict`` skips): ``config`` (our config as JSON),
    ``class_names``, ``torchvision`` (its version), ``images (N, H, W, 3) uint8`` and, per
    image ``i``, ``i/boxes (D, 4)``, ``i/labels (D,)``, ``i/scores (D,)``, ``i/masks (D, H, W)
    uint8`` (probability > 0.5): torchvision's eval-mode output, every detection it returns;
    ``extra`` arrays as given.
    """
    import torchvision

    arrays = dict(round_weights(model, weights_dtype))
    arrays["reference/config"] = np.array(json.dumps(dataclasses.asdict(config)))
    arrays["reference/class_names"] = np.array(names)
    arrays["reference/torchvision"] = np.array(torchvision.__version__)
    arrays["reference/images"] = np.asarray(images, np.uint8)
    for i, out in enumerate(torchvision_predict(model, images)):
        arrays[f"reference/{i}/boxes"] = out["boxes"].astype(np.float32)
        arrays[f"reference/{i}/labels"] = out["labels"].astype(np.int32)
        arrays[f"reference/{i}/scores"] = out["scores"].astype(np.float32)
        arrays[f"reference/{i}/masks"] = (out["masks"] > 0.5).astype(np.uint8)
    arrays.update(extra or {})
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)
    return path


def images_per_s(step_times, batch=BATCH):
    """Batch over the median step time, the first (compiling) step left out."""
    times = step_times[1:] or step_times
    return batch / float(np.median(times))


def run_ours(args, loader, names):
    """Train ours (or read ``--ours_workdir``) and score it on ``loader``: one table row."""
    from mrcnn_jax import train as train_cli

    if args.ours_workdir:
        workdir = pathlib.Path(args.ours_workdir)
        print(f"ours: NOT retrained; reading the run in {workdir}")
        rows = [json.loads(line) for line in (workdir / "metrics.jsonl").open()]
        row = {"model": "mrcnn_jax (read)", "steps": rows[-1]["step"], "minutes": None,
               "images_per_s": float(np.median([r["images_per_s"] for r in rows[1:] or rows]))}
        evaluation = workdir / "evaluation.json"
        saved = json.loads(evaluation.read_text()) if evaluation.exists() else {}
        if saved.get("num_images") == args.num_eval:
            print(f"ours: AP read from {evaluation} ({args.num_eval} images)")
            return row | {"results": saved["ours"]}
        from mrcnn_jax.checkpoints import restore_model

        print(f"ours: evaluating the latest checkpoint of {workdir} on {args.num_eval} images")
        model, _ = restore_model(workdir)
        return row | {"results": evaluate_model(model, loader, names)[0]}
    workdir = pathlib.Path(args.workdir) / "ours"
    if (workdir / "checkpoints").exists():
        raise SystemExit(f"{workdir} already holds a run: pick another --workdir or delete it")
    print(f"ours: training mrcnn_jax.train in {workdir}")
    targs = train_cli.parse_args([
        "--workdir", str(workdir), "--steps", str(args.steps), "--minutes", str(args.minutes),
        "--lr", str(args.lr), "--warmup", str(args.warmup), "--seed", str(args.seed),
        "--no_final_eval",
        "--eval_every", str(10**9), "--checkpoint_every", str(10**9)]
        + (["--data_dir", args.data_dir] if args.data_dir else []))
    began = time.perf_counter()
    model, _, _, steps = train_cli.train(targs)
    minutes = (time.perf_counter() - began) / 60
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").open()]
    times = [BATCH / r["images_per_s"] for r in rows]
    return {"model": "mrcnn_jax", "steps": steps, "minutes": minutes,
            "images_per_s": images_per_s(times),
            "results": evaluate_model(model, loader, names)[0]}


def run_torchvision(args, loader, names, config):
    """Train torchvision's model the same way and score it on ``loader``: one table row."""
    model = build_torchvision(config, args.seed)
    source = shapes_source("train", args.data_dir, **DATA)
    train_loader = make_loader(source, BATCH, image_size=DATA["image_size"],
                               max_instances=MAX_INSTANCES, seed=args.seed, num_epochs=None)
    heads = config.roi_heads
    log = train_torchvision(model, train_loader, args.steps, args.minutes, args.lr, args.warmup,
                            mask_loss_weight=heads.mask_loss_weight)
    print(f"torchvision: {log['steps']} steps in {log['seconds'] / 60:.1f} min")
    if args.export:
        images = next(iter(eval_loader(4, args.data_dir)[0]))["images"]
        path = export_torchvision(args.export, model, config, names, images)
        print(f"exported torchvision's weights and reference predictions to {path} "
              f"({path.stat().st_size / 1e6:.2f} MB)")
    return {"model": "torchvision", "steps": log["steps"], "minutes": log["seconds"] / 60,
            "images_per_s": images_per_s(log["step_times"]),
            "results": evaluate_torchvision(model, loader, names, heads.mask_flip_test)}


def print_rows(rows, num_eval):
    print(f"\nCOCO AP on {num_eval} held-out shapes images (coco_evaluate)")
    print(f"{'model':18s} {'steps':>6s} {'train min':>9s} {'images/s':>9s} {'mask AP':>8s} "
          f"{'mask AP50':>9s} {'box AP':>7s} {'box AP50':>8s}")
    for r in rows:
        segm, bbox = r["results"]["segm"], r["results"]["bbox"]
        minutes = "-" if r["minutes"] is None else f"{r['minutes']:.1f}"
        print(f"{r['model']:18s} {r['steps']:6d} {minutes:>9s} {r['images_per_s']:9.1f} "
              f"{segm['AP']:8.3f} {segm['AP50']:9.3f} {bbox['AP']:7.3f} {bbox['AP50']:8.3f}")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=15.0, help="training budget of each model")
    p.add_argument("--steps", type=int, default=2800,
                   help="planned steps (the schedule's span), as mrcnn_jax.train")
    p.add_argument("--lr", type=float, default=0.02, help="peak learning rate")
    p.add_argument("--warmup", type=int, default=200, help="linear warm-up steps")
    p.add_argument("--num_eval", type=int, default=500, help="held-out images scored")
    p.add_argument("--workdir", default="outputs/bench_train_shapes",
                   help="where ours trains (<workdir>/ours) and the table is saved")
    p.add_argument("--ours_workdir", default=None,
                   help="a trained mrcnn_jax.train work directory to read instead of training")
    p.add_argument("--skip_ours", action="store_true", help="torchvision only")
    p.add_argument("--export", default=None, metavar="PATH.npz",
                   help="save torchvision's weights and reference predictions here")
    p.add_argument("--torch_threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--data_dir", default=None)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    torch = require_torch(args.torch_threads)  # fail before training ours
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}")
    config = shapes_config(image_size=(DATA["image_size"],) * 2)  # as mrcnn_jax.train's default
    if args.ours_workdir:  # the same sizes as the run we compare with
        config = config_from_dict(read_run(args.ours_workdir)["config"])
    loader, names = eval_loader(args.num_eval, args.data_dir)
    rows = [] if args.skip_ours else [run_ours(args, loader, names)]
    rows.append(run_torchvision(args, loader, names, config))
    print_rows(rows, args.num_eval)
    out = pathlib.Path(args.workdir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "comparison.json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
    print(f"table saved to {out / 'comparison.json'}")


if __name__ == "__main__":
    main()
