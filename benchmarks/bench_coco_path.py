"""The COCO-format path against the native shapes path: same pictures, same steps, same seed.

    python benchmarks/bench_coco_path.py --steps 300 --num_train 1000 --num_val 200 --seeds 0 1 2
    python benchmarks/bench_coco_path.py --steps 4 --num_train 16 --num_val 8 --image_size 64

Writes the native shapes images (training and held-out) as a COCO folder with polygons
(``data/shapes_coco.py``; polygons rasterise back to exactly the drawn masks), then trains the
``shapes_config`` preset for ``--steps`` steps with ``python -m mrcnn_jax.train`` once per path
and seed: ``native`` (the shapes builder), ``coco`` (the COCO folder through ``prepare_coco``,
masks as 112 x 112 crops in their boxes, COCO evaluation in original pixels) and, with
``--paths ... coco_full``, the COCO folder with ``--mask_crop 0`` (full-size masks, as the
native path stores them), which separates the crops from the record order. Prints mask and box
AP of each run, each path's mean and spread over ``--seeds``, and each path's mean difference
to native paired by seed with its standard error (the noise it is read against). XLA on one
CPU is deterministic and the steps are fixed, so figures do not depend on how busy the machine
is, and a run can be repeated alone.
"""

import argparse
import json
import pathlib
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from mrcnn_jax.data.shapes_coco import write_shapes_coco  # noqa: E402

PATHS = {"native": "native", "coco": "COCO format", "coco_full": "COCO, --mask_crop 0"}
KEYS = ("mask AP", "mask AP50", "box AP", "box AP50")


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
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1],
                        help="train each path once per seed (the spread between seeds is the "
                             "noise the paths' difference is read against)")
    parser.add_argument("--paths", nargs="+", default=["native", "coco"], choices=sorted(PATHS),
                        help="coco_full: the COCO-format data with --mask_crop 0")
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
    argv = {"native": [*common, *native], "coco": [*common, *coco],
            "coco_full": [*common, *coco, "--mask_crop", "0"]}
    rows = {(path, seed): run([*argv[path], "--seed", str(seed)], work / f"{path}{seed}")
            for seed in args.seeds for path in args.paths}
    print(f"{args.steps} steps, {args.num_train} training and {args.num_val} held-out "
          f"{args.image_size}px images, shapes_config, batch 8")
    print(f"{'':28s}" + "".join(f"{k:>11s}" for k in KEYS) + "    minutes")
    for (path, seed), row in rows.items():
        print(f"{PATHS[path] + f', seed {seed}':28s}" + "".join(f"{row[k]:11.4f}" for k in KEYS)
              + f"{row['minutes']:9.1f}")
    means = {}
    for path in args.paths:
        values = np.array([[rows[path, seed][k] for k in KEYS] for seed in args.seeds])
        means[path] = values.mean(axis=0)
        spread = values.std(axis=0, ddof=1) if len(args.seeds) > 1 else np.full(len(KEYS), np.nan)
        print(f"{PATHS[path] + ', mean':28s}" + "".join(f"{v:11.4f}" for v in means[path]))
        print(f"{PATHS[path] + ', seed std':28s}" + "".join(f"{v:11.4f}" for v in spread))
    for path in args.paths:
        if path != "native" and "native" in args.paths:
            # paired by seed: the same seed's two runs differ by path and record order
            diffs = np.array([[rows[path, seed][k] - rows["native", seed][k] for k in KEYS]
                              for seed in args.seeds])
            print(f"{PATHS[path] + ' - native':28s}" + "".join(f"{v:+11.4f}"
                                                               for v in diffs.mean(axis=0)))
            if len(args.seeds) > 1:  # standard error of that mean difference
                error = diffs.std(axis=0, ddof=1) / np.sqrt(len(args.seeds))
                print(f"{'  its standard error':28s}" + "".join(f"{v:11.4f}" for v in error))


if __name__ == "__main__":
    main()
