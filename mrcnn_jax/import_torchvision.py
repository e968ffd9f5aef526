"""Turn torchvision Mask R-CNN weights into a JAX work directory: ``python -m
mrcnn_jax.import_torchvision``.

    # torchvision's COCO weights (the file torchvision downloads; loading a .pth needs torch)
    python -m mrcnn_jax.import_torchvision ~/.cache/torch/hub/checkpoints/\\
        maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth --workdir outputs/coco --coco_v1
    python -m mrcnn_jax.predict --workdir outputs/coco photo.jpg

The weights file is a torchvision state dict: a ``.pth`` (read with ``torch.load``, so torch
must be installed for this one step) or an ``.npz`` of arrays keyed by torchvision's names
(no torch needed; if it holds ``reference/config`` and ``reference/class_names``, as
``data/torchvision_shapes_example.npz`` does, those are used).
:func:`mrcnn_jax.weights.from_torchvision` infers the architecture; the work directory gets
``run.json`` (config and class names) and an Orbax checkpoint, which ``predict``, ``evaluate``
and ``checkpoints.restore_model`` load.

Taught in notebooks/11_pretrained_weights.
"""

import argparse
import json
import pathlib

import numpy as np

from mrcnn_jax import checkpoints
from mrcnn_jax.config import resnet50_fpn_config
from mrcnn_jax.training import make_optimizer
from mrcnn_jax.weights import from_torchvision

# torchvision's COCO_V1 ``meta["categories"]``: 91 labels, "N/A" for COCO's unused ids
COCO_CATEGORY_NAMES = (
    "__background__ person bicycle car motorcycle airplane bus train truck boat "
    "traffic_light fire_hydrant N/A stop_sign parking_meter bench bird cat dog horse sheep cow "
    "elephant bear zebra giraffe N/A backpack umbrella N/A N/A handbag tie suitcase frisbee "
    "skis snowboard sports_ball kite baseball_bat baseball_glove skateboard surfboard "
    "tennis_racket bottle N/A wine_glass cup fork knife spoon bowl banana apple sandwich orange "
    "broccoli carrot hot_dog pizza donut cake chair couch potted_plant bed N/A dining_table N/A "
    "N/A toilet N/A tv laptop mouse remote keyboard cell_phone microwave oven toaster sink "
    "refrigerator N/A book clock vase scissors teddy_bear hair_drier toothbrush"
)
COCO_CATEGORY_NAMES = [n if n.startswith("__") else n.replace("_", " ")
                       for n in COCO_CATEGORY_NAMES.split()]


def load_state_dict(path):
    """``{torchvision name: numpy array}`` from a ``.pth`` (needs torch) or ``.npz`` file."""
    path = pathlib.Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no weights file at {path}")
    if path.suffix == ".npz":
        with np.load(path) as data:
            return {k: data[k] for k in data.files if not k.startswith("reference/")}
    try:
        import torch
    except ImportError as error:
        raise ImportError(f"reading {path.name} (a torch pickle) needs torch; or export the "
                          "state dict to .npz where torch is installed: np.savez(path, **{k: "
                          "v.numpy() for k, v in state_dict.items()})") from error
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("model", state)  # torchvision reference scripts wrap it in {"model": ...}
    return {k: v.numpy() for k, v in state.items()}


def import_weights(state_dict, workdir, config=None, class_names=None):
    """Write ``workdir/run.json`` and an Orbax checkpoint of the imported model; returns it."""
    model = from_torchvision(state_dict, config)
    k = model.config.num_classes
    if class_names is None:
        class_names = COCO_CATEGORY_NAMES if k == 91 else [str(i) for i in range(k)]
    if len(class_names) != k:
        raise ValueError(f"the weights have {k} classes (background included); "
                         f"{len(class_names)} class names given")
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    checkpoints.write_run(workdir, {"config": checkpoints.config_to_dict(model.config),
                                    "class_names": list(class_names),
                                    "source": "torchvision weights"})
    checkpoints.save(checkpoints.manager(workdir), 0, model, make_optimizer(model))
    return model


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("weights", help="torchvision state dict: .pth (needs torch) or .npz")
    p.add_argument("--workdir", required=True, help="where run.json and checkpoints/ go")
    p.add_argument("--image_size", type=int, nargs=2, default=(800, 1088),
                   metavar=("H", "W"), help="static input size of the JAX model")
    p.add_argument("--coco_v1", action="store_true",
                   help="torchvision's legacy COCO_V1 weights: frozen BatchNorm eps 0")
    p.add_argument("--class_names", default=None,
                   help="text file, one name per line, background first (default: COCO's 91)")
    args = p.parse_args(argv)
    config = resnet50_fpn_config(image_size=args.image_size,
                                 frozen_bn_eps=0.0 if args.coco_v1 else 1e-5)
    names = None
    if args.weights.endswith(".npz"):  # an export that carries its config and class names
        with np.load(args.weights) as data:
            if "reference/config" in data.files:
                config = checkpoints.config_from_dict(json.loads(str(data["reference/config"])))
                print("config and class names from the file's reference/config")
            if "reference/class_names" in data.files:
                names = [str(n) for n in data["reference/class_names"]]
    if args.class_names:
        names = pathlib.Path(args.class_names).read_text().splitlines()
    model = import_weights(load_state_dict(args.weights), args.workdir, config, names)
    c = model.config
    print(f"imported ResNet-{c.backbone.depth}-FPN, {c.num_classes} classes, input "
          f"{c.image_size[0]}x{c.image_size[1]} -> {pathlib.Path(args.workdir).resolve()}")


if __name__ == "__main__":
    main()
