"""The COCO-format path against the native shapes path: same pictures, same steps, same seed.

    python benchmarks/bench_coco_path.py --steps 600 --num_train 2000 --num_val 300
    python benchmarks/bench_coco_path.py --steps 4 --num_train 16 --num_val 8 --image_size 64

Writes the native shapes images (training and held-out) as a COCO folder with polygons
(``data/shapes_coco.py``; polygons rasterise back to exactly the drawn masks), then trains the
``shapes_config`` preset for ``--steps`` steps three times with ``python -m mrcnn_jax.train``:
native data seed 0, COCO-format data seed 0 (through ``prepare_coco``, masks as 112 x 112 crops
in their boxes, COCO evaluation in original pixels), and native data seed 1 (the noise: what
another seed alone changes); with ``--with_full_masks`` also COCO-format data seed 0 with
``--mask_crop 0`` (full-size masks, as the native path stores them), which separates the crop
from the record order. ``--only NAME ...`` runs some rows (XLA on one CPU is deterministic, so
rows run apart give the same figures). Prints mask and box AP of each and the differences.
Fixed steps, so the figures do not depend on how busy the machine is.
"""

import argparse
import json
import pathlib
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from mrcnn_jax.data.shapes_coco import write_shapes_coco  # noqa: E402

ROWS = {"native0": "native, seed 0", "coco0": "COCO format, seed 0",
        "native1": "native, seed 1", "coco0_full_masks": "COCO, --mask_crop 0"}


def run(argv, workdir):
    began = time.perf_counter()
    subprocess.run([sys.executable, "-m", "mrcnn_jax.train", *argv, "--workdir", str(workdir)],
                   check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    ours = json.loads((workdir / "evaluation.json").read_text())["ours"]
    return {"mask AP": ours["segm"]["AP"], "mask AP50": ours["segm"]["AP50"],
            "box AP": ours["bbox"]["AP"], "box AP50": ours["bbox"]["AP50"],
            "minutes": (time.perf_counter() - began) / 60}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--num_train", type=int, default=2000)
    parser.add_argument("--num_val", type=int, default=300)
    parser.add_argument("--image_size", type=int, default=128)
    parser.add_argument("--work", default=None, help="work folder (default: a temporary one)")
    parser.add_argument("--with_full_masks", action="store_true",
                        help="add the COCO-format run with --mask_crop 0")
    parser.add_argument("--only", nargs="+", default=None, choices=sorted(ROWS),
                        help="run these rows only")
    args = parser.parse_args(argv)
    work = pathlib.Path(args.work or tempfile.mkdtemp(prefix="bench_coco_path_"))
    folder = work / "shapes_as_coco"
    train_json = write_shapes_coco(folder, "train", args.num_train, image_size=args.image_size)
    val_json = write_shapes_coco(folder, "validation", args.num_val, image_size=args.image_size)
    common = ["--steps", str(args.steps), "--image_size", str(args.image_size),
              "--eval_every", str(10**6), "--data_dir", str(work / "prepared")]
    native = ["--num_train", str(args.num_train), "--num_val", str(args.num_val)]
    coco = ["--train_annotations", str(train_json), "--train_images", str(folder / "train"),
            "--val_annotations", str(val_json), "--val_images", str(folder / "validation")]
    argv = {"native0": [*common, *native, "--seed", "0"],
            "coco0": [*common, *coco, "--seed", "0"],
            "native1": [*common, *native, "--seed", "1"],
            "coco0_full_masks": [*common, *coco, "--seed", "0", "--mask_crop", "0"]}
    chosen = args.only or [r for r in ROWS if r != "coco0_full_masks" or args.with_full_masks]
    rows = {ROWS[r]: run(argv[r], work / r) for r in chosen}
    keys = ("mask AP", "mask AP50", "box AP", "box AP50")
    print(f"{args.steps} steps, {args.num_train} training and {args.num_val} held-out "
          f"{args.image_size}px images, shapes_config, batch 8")
    print(f"{'':22s}" + "".join(f"{k:>11s}" for k in keys) + "    minutes")
    for name, row in rows.items():
        print(f"{name:22s}" + "".join(f"{row[k]:11.4f}" for k in keys) + f"{row['minutes']:9.1f}")
    for name, other in (("COCO - native", "COCO format, seed 0"),
                        ("COCO full - native", ROWS["coco0_full_masks"]),
                        ("seed 1 - seed 0", "native, seed 1")):
        if other in rows and "native, seed 0" in rows:
            print(f"{name:22s}" + "".join(f"{rows[other][k] - rows['native, seed 0'][k]:+11.4f}"
                                          for k in keys))


if __name__ == "__main__":
    main()
