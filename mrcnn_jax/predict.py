"""Detect objects in image files with a trained checkpoint: ``python -m mrcnn_jax.predict``.

    python -m mrcnn_jax.predict --workdir outputs/shapes image1.png image2.jpg --out outputs/pred

Each image is resized to fit the model's input size (aspect kept) and padded bottom/right, run
through the jitted ``predict``, and saved with its masks, boxes, class names and scores drawn
(detections with score >= ``--min_score``), at the original resolution's aspect.

Shape shorthand: ``D`` detections, ``S`` model input size.
Taught in notebooks/10_inference_and_evaluation.
"""

import argparse
import pathlib

import jax
import numpy as np
from PIL import Image

from mrcnn_jax.checkpoints import restore_model
from mrcnn_jax.inference import predict
from mrcnn_jax.layers import set_compute_dtype
from mrcnn_jax.plotting import draw_boxes, overlay_masks, show_image, subplots
from mrcnn_jax.sharding import make_mesh, replicate, shard_batch


def load_image(path, size):
    """``(S, S, 3)`` uint8 canvas with the image resized to fit, and its scale and size."""
    try:
        image = Image.open(path).convert("RGB")
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot read {path} as an image: {error}") from error
    h, w = size
    scale = min(h / image.height, w / image.width)
    new = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    canvas = np.zeros((h, w, 3), np.uint8)
    canvas[: new[1], : new[0]] = np.asarray(image.resize(new, Image.BILINEAR))
    return canvas, new


def draw(canvas, content_size, out, names, min_score, path):
    keep = out["valid"] & (out["scores"] >= min_score)
    w, h = content_size
    fig, (ax,) = subplots(1, size=5.0)
    shown = overlay_masks(canvas, out["masks"][keep], out["labels"][keep])[:h, :w]
    show_image(ax, shown, f"{int(keep.sum())} detections")
    draw_boxes(ax, out["boxes"][keep], out["labels"][keep], out["scores"][keep],
               class_names=names)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", nargs="+", help="image files (PNG, JPEG, ...)")
    parser.add_argument("--workdir", required=True, help="training work directory")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (latest)")
    parser.add_argument("--out", default=None, help="output folder (default workdir/predictions)")
    parser.add_argument("--min_score", type=float, default=0.5)
    parser.add_argument("--devices", type=int, default=None,
                        help="devices of the data-parallel mesh (default: all visible); images "
                             "go through in batches of one per device")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default=None,
                        help="compute dtype (default: the run's)")
    args = parser.parse_args(argv)
    model, run = restore_model(args.workdir, args.step)
    if args.dtype:
        set_compute_dtype(model, args.dtype)
        model.config = model.config.replace(dtype=args.dtype)
    mesh = make_mesh(args.devices)
    replicate(mesh, model)
    names = run.get("class_names") or [str(k) for k in range(model.config.num_classes)]
    out_dir = pathlib.Path(args.out or pathlib.Path(args.workdir) / "predictions")
    out_dir.mkdir(parents=True, exist_ok=True)
    n = mesh.devices.size
    for start in range(0, len(args.images), n):
        paths = args.images[start:start + n]
        loaded = [load_image(path, model.config.image_size) for path in paths]
        canvases = np.stack([c for c, _ in loaded] + [loaded[-1][0]] * (n - len(paths)))
        images = shard_batch({"images": canvases}, mesh)["images"]  # (n, S, S, 3), padded
        outs = jax.tree.map(np.asarray, predict(model, images))
        for i, (path, (canvas, content)) in enumerate(zip(paths, loaded, strict=True)):
            out = {k: v[i] for k, v in outs.items()}
            target = out_dir / (pathlib.Path(path).stem + "_pred.png")
            draw(canvas, content, out, names, args.min_score, target)
            print(f"{path}: {int((out['valid'] & (out['scores'] >= args.min_score)).sum())} "
                  f"detections -> {target}")


if __name__ == "__main__":
    main()
