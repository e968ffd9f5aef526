"""Detect objects in image files or folders with a trained model: ``python -m mrcnn_jax.predict``.

    python -m mrcnn_jax.predict --workdir outputs/shapes photos/ extra.jpg --out outputs/pred

Arguments are image files (any extension PIL reads) or folders; a folder contributes its own
files with an image extension (``IMAGE_EXTENSIONS``: jpg, jpeg, png, bmp, tif, tiff, webp, any
case), sorted by name, not its subfolders. Each image is read as 8-bit RGB with its EXIF
orientation applied (``data/images.py``), resized to fit the model's input size (aspect kept,
the scale of ``fit_image``) and padded bottom/right, run through the jitted network, and its
detections are mapped back to the original pixels: boxes divided by the scale and clipped to
the image, mask probabilities pasted at the original size (as torchvision's postprocess does).

``--out`` (default ``workdir/predictions``) receives, per image, ``<stem>_pred.png`` (a repeated
stem gets ``_<image_id>`` added) with the masks, boxes, class names and scores of the
detections with score >= ``--min_score`` drawn on the original image; and for all images
``detections.json`` (COCO results of those detections: ``image_id``, ``category_id`` = the
model's label 1..K-1, ``bbox`` [x, y, w, h] and ``segmentation`` RLE in original pixels,
``score``) beside ``images.json`` (COCO ``images``: ``id``, ``file_name``, ``width``,
``height``; and ``categories``: the model's class names), which maps each file to its
``image_id`` (1, 2, ... in the order read). A file that cannot be read is reported, skipped and
counted at the end; the others are still processed (exit status 0 if any image was read).
Mistakes in the command (no work directory, a path that does not exist, no images found, no
file readable) print one line to stderr and exit with status 2.

Shape shorthand: ``D`` detections, ``H, W`` model input size, ``h, w`` original image size.
Taught in notebooks/10_inference_and_evaluation.
"""

import argparse
import json
import pathlib
import sys

import jax
import numpy as np
from PIL import Image

from mrcnn_jax import xla_cpu
from mrcnn_jax.data.images import IMAGE_EXTENSIONS, read_image
from mrcnn_jax.evaluation import detections_to_coco
from mrcnn_jax.inference import predict_raw
from mrcnn_jax.paste_masks import paste_masks


class UsageError(Exception):
    """A mistake in the command line; ``main`` prints it as one line and exits with 2."""


def find_images(paths):
    """Image files named by ``paths``: files as given, folders' image files sorted by name.

    Raises ``UsageError`` for a path that does not exist and when nothing is found.
    """
    found = []
    for path in map(pathlib.Path, paths):
        if path.is_dir():
            found += sorted(p for p in path.iterdir()
                            if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        elif path.exists():
            found.append(path)
        else:
            raise UsageError(f"no such file or folder: {path}")
    if not found:
        raise UsageError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) in {list(paths)}")
    return found


def fit_size(height, width, image_size):
    """``(new_h, new_w)`` of an image fitted into ``image_size (H, W)``, aspect kept:
    ``floor(side * min(H / h, W / w))``, as the input pipeline's resize (``transforms.py``)."""
    scale = min(image_size[0] / height, image_size[1] / width)
    new_h = min(max(int(np.floor(height * scale + 1e-6)), 1), image_size[0])
    new_w = min(max(int(np.floor(width * scale + 1e-6)), 1), image_size[1])
    return new_h, new_w


def fit_image(image, image_size):
    """``image (h, w, 3)`` uint8 resized (bilinear) into a zero canvas ``(H, W, 3)``.

    Returns the canvas and ``scale (2,)`` float32 ``(sy, sx)`` = new / original per axis.
    """
    height, width = image.shape[:2]
    new_h, new_w = fit_size(height, width, image_size)
    canvas = np.zeros((*image_size, 3), np.uint8)
    resized = image
    if (new_h, new_w) != (height, width):
        resized = np.asarray(Image.fromarray(image).resize((new_w, new_h),
                                                           Image.Resampling.BILINEAR))
    canvas[:new_h, :new_w] = resized
    return canvas, np.array([new_h / height, new_w / width], np.float32)


def load_image(path, size):
    """``(S, S, 3)`` uint8 canvas with the image resized to fit (``round``, as notebook 11
    uses it), and the resized ``(w, h)``; no EXIF handling (``read_image`` + ``fit_image``
    is what the command uses)."""
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


detect = xla_cpu.jit(predict_raw)  # boxes, scores, labels, valid, mask_probs (B, D, M, M)
_paste = jax.jit(paste_masks, static_argnums=(2, 3))


def to_original(out, scale, orig_size, keep, paste_rule="torchvision", chunk=8):
    """The ``keep`` detections of one image's ``detect`` outputs in original image pixels.

    Args:
      out: ``boxes (D, 4)``, ``scores``, ``labels``, ``mask_probs (D, M, M)`` of one image.
      scale: ``(sy, sx)`` of ``fit_image``; orig_size: ``(h, w)``.
      keep: ``(D,)`` bool, the detections wanted (e.g. valid and score >= a threshold).
      chunk: masks pasted per call (padded to it: one compilation per image size, and at
        most ``chunk`` float ``(h, w)`` planes in memory at a time).
    Returns ``boxes (K, 4)`` divided by the scale and clipped to the image, ``scores (K,)``,
    ``labels (K,)`` and ``masks (K, h, w)`` bool: the probabilities pasted at the original size
    into those boxes (as torchvision's postprocess does), above 0.5.
    """
    sy, sx = (float(v) for v in scale)
    h, w = (int(v) for v in orig_size)
    index = np.flatnonzero(np.asarray(keep, bool))  # (K,)
    boxes = np.asarray(out["boxes"], np.float32)[index] / np.array([sx, sy, sx, sy], np.float32)
    boxes = np.clip(boxes, 0, np.array([w, h, w, h], np.float32))  # (K, 4)
    probs = np.asarray(out["mask_probs"], np.float32)[index]  # (K, M, M)
    masks = np.zeros((len(index), h, w), bool)
    for start in range(0, len(index), chunk):
        part = slice(start, start + chunk)
        n = len(probs[part])
        pad = ((0, chunk - n), (0, 0), (0, 0))
        pasted = _paste(np.pad(probs[part], pad), np.pad(boxes[part], pad[:2]), (h, w),
                        paste_rule)  # (chunk, h, w)
        masks[part] = np.asarray(pasted[:n]) > 0.5
    return {"boxes": boxes, "scores": np.asarray(out["scores"])[index], "masks": masks,
            "labels": np.asarray(out["labels"])[index]}


def detect_batch(model, canvases, mesh):
    """``detect`` on ``canvases (B, H, W, 3)`` (B a multiple of the devices), as numpy.

    Every process passes the whole batch and feeds the mesh its own rows; all get all rows.
    """
    from jax.experimental import multihost_utils

    from mrcnn_jax.sharding import shard_batch

    local = len(canvases) // jax.process_count()
    rows = slice(jax.process_index() * local, (jax.process_index() + 1) * local)
    images = shard_batch({"images": canvases[rows]}, mesh)["images"]
    return multihost_utils.process_allgather(detect(model, images), tiled=True)


def draw(image, det, names, path):
    """Save ``image (h, w, 3)`` with the detections ``det`` (``to_original``) drawn."""
    import matplotlib.pyplot as plt

    from mrcnn_jax.plotting import draw_boxes, overlay_masks, show_image, subplots

    fig, (ax,) = subplots(1, size=5.0)
    show_image(ax, overlay_masks(image, det["masks"], det["labels"]),
               f"{len(det['scores'])} detections")
    draw_boxes(ax, det["boxes"], det["labels"], det["scores"], class_names=names)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def predict_files(model, files, names, out_dir, min_score, mesh):
    """Detect, draw and collect COCO results for ``files``; returns ``(images, detections,
    unreadable)`` with ``unreadable`` a list of ``(path, reason)``."""
    n = mesh.devices.size
    images, detections, unreadable, used = [], [], [], set()
    pending = []  # (path, pixels) read and not yet run
    for k, path in enumerate(files):
        try:
            pending.append((path, read_image(path)))
        except ValueError as error:
            unreadable.append((path, str(error)))
            print(f"skipping {error}", file=sys.stderr)
        if len(pending) < n and k + 1 < len(files) or not pending:
            continue
        fitted = [fit_image(pixels, model.config.image_size) for _, pixels in pending]
        canvases = np.stack([c for c, _ in fitted] + [fitted[-1][0]] * (n - len(fitted)))
        outs = jax.tree.map(np.asarray, detect_batch(model, canvases, mesh))
        for i, ((path, pixels), (_, scale)) in enumerate(zip(pending, fitted, strict=True)):
            out = {k2: v[i] for k2, v in outs.items()}
            keep = out["valid"] & (out["scores"] >= min_score)  # (D,)
            det = to_original(out, scale, pixels.shape[:2], keep,
                              model.config.roi_heads.paste_rule)
            image_id = len(images) + 1
            images.append({"id": image_id, "file_name": str(path),
                           "height": pixels.shape[0], "width": pixels.shape[1]})
            detections += detections_to_coco(image_id, det["boxes"], det["scores"],
                                             det["labels"], det["masks"])
            stem = path.stem if path.stem not in used else f"{path.stem}_{image_id}"
            used.add(stem)  # two files of one stem (a.png, a.jpg) get two pictures
            target = out_dir / f"{stem}_pred.png"
            draw(pixels, det, names, target)
            print(f"{path}: {int(keep.sum())} detections -> {target}")
        pending = []
    return images, detections, unreadable


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", nargs="+", help="image files or folders")
    parser.add_argument("--workdir", required=True, help="training or import work directory")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (latest)")
    parser.add_argument("--out", default=None, help="output folder (default workdir/predictions)")
    parser.add_argument("--min_score", type=float, default=0.5)
    parser.add_argument("--devices", type=int, default=None,
                        help="devices of the data-parallel mesh (default: all visible); images "
                             "go through in batches of one per device")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default=None,
                        help="compute dtype (default: the run's)")
    args = parser.parse_args(argv)
    from mrcnn_jax.checkpoints import restore_model
    from mrcnn_jax.layers import set_compute_dtype
    from mrcnn_jax.sharding import make_mesh, replicate

    try:
        files = find_images(args.images)
        if not pathlib.Path(args.workdir, "run.json").is_file():
            raise UsageError(f"{args.workdir} is not a work directory (no run.json there)")
        model, run = restore_model(args.workdir, args.step)
    except (UsageError, FileNotFoundError) as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    if args.dtype:
        set_compute_dtype(model, args.dtype)
        model.config = model.config.replace(dtype=args.dtype)
    mesh = make_mesh(args.devices)
    replicate(mesh, model)
    names = run.get("class_names") or [str(k) for k in range(model.config.num_classes)]
    out_dir = pathlib.Path(args.out or pathlib.Path(args.workdir) / "predictions")
    out_dir.mkdir(parents=True, exist_ok=True)
    images, dets, unreadable = predict_files(model, files, names, out_dir, args.min_score, mesh)
    categories = [{"id": k, "name": name} for k, name in enumerate(names) if k > 0]
    (out_dir / "images.json").write_text(json.dumps({"images": images,
                                                     "categories": categories}, indent=1))
    (out_dir / "detections.json").write_text(json.dumps(dets))
    print(f"{len(images)} images, {len(dets)} detections with score >= {args.min_score} -> "
          f"{out_dir / 'detections.json'} (image ids in {out_dir / 'images.json'})")
    if unreadable:
        print(f"{len(unreadable)} of {len(files)} files could not be read and were skipped: "
              f"{', '.join(str(p) for p, _ in unreadable)}", file=sys.stderr)
    if not images:
        parser.exit(2, f"{parser.prog}: error: none of the {len(files)} files could be read\n")
    return {"images": images, "detections": dets, "unreadable": unreadable}


if __name__ == "__main__":
    main()
