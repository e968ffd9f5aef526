"""Fine-tuning: start a model for a new dataset from pretrained weights (``train --init``).

    config = init_config("maskrcnn_resnet50_fpn_coco.pth", num_classes=3, image_size=(512, 512))
    model, report = init_model("maskrcnn_resnet50_fpn_coco.pth", config, rngs=nnx.Rngs(0))
    print(format_report(report))

The weights come from a torchvision Mask R-CNN state dict (``.pth``/``.pt``, read with torch,
or ``.npz`` of the same names, read without it) or from a work directory of ours (``run.json``
and ``checkpoints/``). :func:`init_config` builds the architecture the weights imply (as
``weights.config_for``) with the new class count and the caller's image size;
:func:`init_model` builds that model freshly and copies in every tensor whose shape fits. The
class-specific layers (torchvision's ``roi_heads.box_predictor.cls_score``, ``.bbox_pred`` and
``roi_heads.mask_predictor.mask_fcn_logits``; ours ``box_head.cls_score``, ``box_head.bbox_pred``
and ``mask_head.mask_fcn_logits``) keep their fresh values when the class count (or, where both
are known, the class list) differs. Any other tensor that is missing, extra or mis-shaped is an
error that lists them all. torchvision does the same by hand in its Penn-Fudan tutorial
(replacing ``box_predictor`` and ``mask_predictor``).

Frozen stages: ``config.backbone.trainable_layers`` is torchvision's ``trainable_backbone_layers``
(5 trains the whole ResNet body, 3 freezes the stem and ``layer1``, 0 freezes the body; the FPN
and heads always train). Frozen weights are ``layers.Frozen`` variables, which the optimizer
(``wrt=nnx.Param``) never sees. Norms: torchvision's ResNet-50 uses frozen BatchNorm, frozen in
every stage whatever ``trainable_layers`` says, and so does ours. For our GroupNorm models,
"matching frozen norms" means the GroupNorm scale and bias of a frozen stage are frozen with its
convolutions (``layers.make_norm(trainable=False)``); GroupNorm has no running statistics, so
such a norm still normalises each image by its own statistics, as it did in pre-training.

Naming: a *path* is one of our variable paths (``body.layer1.0.conv1.kernel``), a *name* a
torchvision state-dict key (``weights.torchvision_name``).
"""

import dataclasses
import json
import pathlib
import re
import zipfile

import jax.numpy as jnp
import numpy as np
from flax import nnx

from mrcnn_jax import checkpoints
from mrcnn_jax.config import resnet50_fpn_config
from mrcnn_jax.layers import Frozen
from mrcnn_jax.model import MaskRCNN
from mrcnn_jax.weights import (
    config_for,
    from_torchvision_layout,
    infer_architecture,
    torchvision_name,
    torchvision_shapes,
)

# torchvision names of the layers whose outputs are one per class
CLASS_LAYERS = ("roi_heads.box_predictor.cls_score.", "roi_heads.box_predictor.bbox_pred.",
                "roi_heads.mask_predictor.mask_fcn_logits.")
TORCH_SUFFIXES = (".pth", ".pt")
EXPECTED = ("a torchvision Mask R-CNN state dict (.pth/.pt, e.g. torch.save(model.state_dict(), "
            "path); or .npz of the same names) or a work directory of ours (run.json and "
            "checkpoints/)")
# The one-liner that turns a .pth into an .npz where torch is installed (the .npz needs no torch)
NPZ_ONE_LINER = ('python -c "import sys, numpy, torch; s = torch.load(sys.argv[1], '
                 "map_location='cpu', weights_only=True); numpy.savez(sys.argv[2], **{k: "
                 'v.numpy() for k, v in s.get(\'model\', s).items()})" weights.pth weights.npz')


class InitError(ValueError):
    """``--init`` got something that is not usable weights (a ValueError, so CLIs catch it)."""


@dataclasses.dataclass
class Source:
    """What ``--init`` points at, read: tensors in our layout, keyed by our paths."""

    path: str
    kind: str  # "torchvision .pth", "torchvision .npz" or "work directory (step N)"
    config: object  # the architecture of the weights (a MaskRCNNConfig)
    values: dict  # {our path (tuple): numpy array in our layout}
    unexpected: list  # torchvision names that no variable of the model takes
    ignored: list  # num_batches_tracked buffers (no counterpart)
    class_names: list | None = None


# ---------------------------------------------------------------------------- reading

def read_state_dict(path):
    """``({torchvision name: numpy array}, extras)`` from a ``.pth``/``.pt`` or ``.npz`` file;
    ``extras`` holds ``reference/config`` and ``reference/class_names`` if an .npz has them.
    Raises :class:`InitError` naming what was expected and what arrived."""
    path = pathlib.Path(path)
    if not path.exists():
        raise FileNotFoundError(f"--init {path}: no such file or directory; expected {EXPECTED}")
    if path.suffix == ".npz":
        state, extras = _read_npz(path)
    elif path.suffix in TORCH_SUFFIXES:
        state, extras = _read_torch(path), {}
    else:
        raise InitError(f"--init {path}: expected {EXPECTED}; got a {path.suffix or 'suffix-less'}"
                        " file")
    return _check_tensors(path, state), extras


def _read_npz(path):
    if not zipfile.is_zipfile(path):
        raise InitError(f"--init {path}: expected an .npz of arrays keyed by torchvision names "
                        "(numpy.savez); the file is not a zip archive, as every .npz is")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (ValueError, OSError, EOFError) as error:  # not a zip, or object arrays
        raise InitError(f"--init {path}: expected an .npz of arrays keyed by torchvision names "
                        f"(numpy.savez); numpy cannot read it as one: {error}") from None
    extras = {k: v for k, v in arrays.items() if k.startswith("reference/")}
    return {k: v for k, v in arrays.items() if not k.startswith("reference/")}, extras


def _read_torch(path):
    try:
        import torch
    except ImportError:
        raise InitError(f"--init {path}: reading a torch file needs torch, which is not "
                        "installed; convert it to .npz where torch is, and pass that: "
                        f"{NPZ_ONE_LINER}") from None
    if not zipfile.is_zipfile(path) and path.read_bytes()[:1] != b"\x80":  # zip or pickle
        raise InitError(f"--init {path}: expected {EXPECTED}; the file is not one torch.save "
                        "wrote (neither a zip archive nor a pickle)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - torch raises many types for a bad file
        lines = [re.sub(r"\x1b\[[0-9;]*m", "", x).strip() for x in str(error).splitlines()]
        line = next((x for x in lines if "Unsupported global" in x),
                    next((x for x in lines if x), "")).split(" was not an allowed global")[0]
        hint = (" (a whole pickled model? save model.state_dict() instead)"
                if "Unsupported global" in line or "Weights only" in line else "")
        raise InitError(f"--init {path}: expected {EXPECTED}; torch.load(weights_only=True) "
                        f"cannot read it as weights{hint}: {type(error).__name__}: {line}"
                        ) from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]  # torchvision's reference scripts save {"model": ..., ...}
    if not isinstance(state, dict):
        raise InitError(f"--init {path}: expected {EXPECTED}; the file holds a "
                        f"{type(state).__name__}")
    return {k: _torch_to_numpy(v) for k, v in state.items()}


def _torch_to_numpy(value):
    if not hasattr(value, "detach"):
        return value  # not a tensor: _check_tensors names it
    value = value.detach().cpu()
    return (value.float() if value.is_floating_point() else value).numpy()  # bfloat16 too


def _check_tensors(path, state):
    not_arrays = [k for k, v in state.items() if not isinstance(v, np.ndarray)
                  or v.dtype.kind not in "fiu"]
    if not state or not_arrays:
        raise InitError(f"--init {path}: expected {EXPECTED}; got "
                        + ("no tensors" if not state else
                           f"{len(not_arrays)} entries that are not numeric arrays, e.g. "
                           f"{not_arrays[:3]}"))
    if all(k.startswith("module.") for k in state):  # saved from DataParallel
        state = {k[len("module."):]: v for k, v in state.items()}
    try:
        infer_architecture(state)
    except ValueError as error:
        raise InitError(f"--init {path}: expected {EXPECTED}; {error}") from None
    return state


def _is_workdir(path):
    return path.is_dir() and (path / "run.json").exists()


# ---------------------------------------------------------------------------- config

def _zeros(shapes):
    """Shape-only stand-ins (no memory) for ``weights.infer_architecture``."""
    return {k: np.broadcast_to(np.float32(0), v) for k, v in shapes.items()}


def _source_arch(path):
    """(state dict or shapes, base config, class names or None) of ``--init path``."""
    path = pathlib.Path(path)
    if path.is_dir():
        if not _is_workdir(path):
            raise InitError(f"--init {path}: a folder must be a work directory of ours "
                            f"(run.json and checkpoints/); {path} has no run.json")
        run = checkpoints.read_run(path)
        if not isinstance(run, dict) or "config" not in run:
            raise InitError(f"--init {path}: run.json holds no model config; expected a work "
                            "directory written by python -m mrcnn_jax.train or import_torchvision")
        config = checkpoints.config_from_dict(run["config"])
        model = nnx.eval_shape(lambda: MaskRCNN(config, rngs=nnx.Rngs(0)))
        return _zeros(torchvision_shapes(model)), config, run.get("class_names")
    state, extras = read_state_dict(path)
    config = None
    if "reference/config" in extras:  # an export of ours that carries its config
        config = checkpoints.config_from_dict(json.loads(str(extras["reference/config"])))
    names = extras.get("reference/class_names")
    return state, config, None if names is None else [str(n) for n in names]


def init_config(path, num_classes, base_config=None, image_size=None):
    """The config of a model for ``num_classes`` (background included) initialised from ``path``.

    Layer sizes (ResNet depth, widths, norm, FPN and head widths) come from the weights; the
    rest (thresholds, anchors, sizes) from ``base_config``, or by default from the weights' own
    config: a work directory's ``run.json``, an .npz's ``reference/config``, otherwise
    torchvision's ``maskrcnn_resnet50_fpn`` defaults with frozen BatchNorm eps 0 (its COCO
    weights', also every model fine-tuned from them). ``image_size`` (H, W) replaces the
    base's. ``backbone.trainable_layers`` is 3 (torchvision's default with pretrained weights)
    unless ``base_config`` is given; set it after for ``--trainable_backbone_layers``.

    A state dict does not record GroupNorm's group count (nor anchors, only their number per
    location): without ``reference/config`` a GroupNorm model gets the base's groups (32, or
    fewer where a layer has fewer channels), so pass ``base_config`` with the right ones.
    """
    state, own, _ = _source_arch(path)
    base = base_config or own or resnet50_fpn_config(frozen_bn_eps=0.0)
    if base_config is None:
        base = base.replace(backbone=dataclasses.replace(base.backbone, trainable_layers=3))
    if image_size is not None:
        base = base.replace(image_size=tuple(image_size))
    try:
        config = config_for(state, base)
    except ValueError as error:
        raise InitError(f"--init {path}: {error}") from None
    if own is not None:  # not a shape: the groups the weights were trained with
        config = config.replace(backbone=dataclasses.replace(
            config.backbone, group_norm_groups=own.backbone.group_norm_groups))
    return config.replace(num_classes=int(num_classes))


# ---------------------------------------------------------------------------- loading

def read_source(path, config):
    """:class:`Source` of ``--init path``: every tensor in our layout under our paths
    (``config``: the model's; its anchors must agree with the weights' RPN head)."""
    path = pathlib.Path(path)
    if path.is_dir():
        if not _is_workdir(path):
            _source_arch(path)  # raises the clear error
        model, run = checkpoints.restore_model(path)
        step = checkpoints.manager(path).latest_step()
        values = {tuple(p): np.asarray(v.get_value())
                  for p, v in nnx.to_flat_state(nnx.state(model))}
        return Source(str(path), f"work directory, step {step}", model.config, values, [], [],
                      run.get("class_names"))
    state, own, names = _source_arch(path)
    try:
        config = config_for(state, own or config)
    except ValueError as error:
        raise InitError(f"--init {path}: {error}") from None
    roi_size = config.roi_heads.box_roi_size  # fc6's input layout is the weights'
    shapes = nnx.eval_shape(lambda: MaskRCNN(config, rngs=nnx.Rngs(0)))
    values, used = {}, set()
    for p, _ in nnx.to_flat_state(nnx.state(shapes)):
        name = torchvision_name(p)
        if name in state:
            values[tuple(p)] = from_torchvision_layout(name, state[name], roi_size)
            used.add(name)
    rest = sorted(set(state) - used)
    ignored = [n for n in rest if n.endswith("num_batches_tracked")]
    kind = f"torchvision {path.suffix}"
    return Source(str(path), kind, config, values, [n for n in rest if n not in ignored],
                  ignored, names)


def is_class_layer(path):
    """Whether one of our variable paths belongs to a layer with one output per class."""
    return torchvision_name(path).startswith(CLASS_LAYERS)


def init_model(path, config, rngs, class_names=None):
    """A fresh ``MaskRCNN(config)`` with every fitting tensor of ``path`` copied in.

    Args:
      path: torchvision state dict (``.pth``/``.pt`` needs torch, ``.npz`` not) or a work
        directory of ours.
      config: the new model's config (normally :func:`init_config`'s, with
        ``backbone.trainable_layers`` set as wanted).
      rngs: initialises the fresh model, whose class layers are kept when they are re-initialised.
      class_names: the new dataset's names (background first); if given and the weights record
        theirs (a work directory, an .npz with ``reference/class_names``), a different list
        re-initialises the class layers even when the counts agree.
    Returns:
      ``(model, report)``; the report is a dict (see :func:`format_report`).
    Raises:
      InitError if the file is not weights, or lists every tensor (other than the class layers)
      that is missing, extra or mis-shaped.
    """
    source = read_source(path, config)
    reinit_reason = _reinit_reason(source, config, class_names)
    if reinit_reason:  # the fresh model's class layers are kept
        model = MaskRCNN(config, rngs=rngs)
    else:  # every tensor is replaced: skip the random initialisation
        model = nnx.eval_shape(lambda: MaskRCNN(config, rngs=nnx.Rngs(0)))
    loaded, reinit, missing, misshaped, updates = [], [], [], [], []
    for p, variable in nnx.to_flat_state(nnx.state(model)):
        p = tuple(p)
        if reinit_reason and is_class_layer(p):
            reinit.append(p)
        elif p not in source.values:
            missing.append(_named(p, source))
        elif source.values[p].shape != tuple(variable.shape):
            misshaped.append(f"{_named(p, source)}: model {tuple(variable.shape)}, "
                             f"weights {source.values[p].shape}")
        else:
            loaded.append(p)
            updates.append((p, variable.replace(value=jnp.asarray(source.values[p], jnp.float32))))
    ours = {tuple(p) for p, _ in nnx.to_flat_state(nnx.state(model))}
    extra = source.unexpected + [_label(p) for p in source.values if p not in ours]
    if missing or misshaped or extra:
        raise InitError(
            f"--init {path} ({source.kind}) does not fit the model; apart from the class layers "
            "every tensor must:\n"
            f"  missing ({len(missing)}): {missing}\n"
            f"  unexpected ({len(extra)}): {extra}\n"
            f"  mis-shaped ({len(misshaped)}): {misshaped}")
    nnx.update(model, nnx.from_flat_state(updates))
    return model, _report(model, source, config, loaded, reinit, reinit_reason)


def _label(path):
    return ".".join(str(p) for p in path)


def _named(path, source):
    """Our path, and the file's name for it when the file has torchvision's names."""
    if source.kind.startswith("torchvision"):
        return f"{_label(path)} ({torchvision_name(path)})"
    return _label(path)


def _reinit_reason(source, config, class_names):
    before, after = source.config.num_classes, config.num_classes
    if before != after:
        return f"class count {before} -> {after} (background included)"
    if class_names is not None and source.class_names is not None and (
            list(class_names) != list(source.class_names)):
        return f"class list {list(source.class_names)[1:]} -> {list(class_names)[1:]}"
    return None


# ---------------------------------------------------------------------------- report

_GROUP_ORDER = ["body.stem", "body.layer1", "body.layer2", "body.layer3", "body.layer4", "fpn",
                "rpn_head", "box_head", "mask_head"]


def _group_rank(group):  # stem to heads; a class layer after its head
    top = group if group.startswith("body.") else group.split(".")[0]
    return _GROUP_ORDER.index(top), group


def group_of(path):
    """Report group of a variable path: ``body.stem``, ``body.layer1`` .., ``fpn``, ``rpn_head``,
    ``box_head``, ``mask_head``, and the class layers on their own."""
    path = tuple(str(p) for p in path)
    if path[0] == "body":
        return "body.stem" if path[1] in ("conv1", "bn1") else f"body.{path[1]}"
    if is_class_layer(path):
        return ".".join(path[:2])
    return path[0]


def _report(model, source, config, loaded, reinit, reason):
    variables = {tuple(p): v for p, v in nnx.to_flat_state(nnx.state(model))}
    frozen = [p for p, v in variables.items() if isinstance(v, Frozen)]
    trainable = [p for p, v in variables.items() if isinstance(v, nnx.Param)]
    groups = {}
    for key, paths in (("loaded", loaded), ("reinitialised", reinit), ("frozen", frozen),
                       ("trainable", trainable)):
        for p in paths:
            row = groups.setdefault(group_of(p), {"loaded": 0, "reinitialised": 0,
                                                  "frozen": 0, "trainable": 0, "values": 0})
            row[key] += 1
    for p, v in variables.items():
        groups[group_of(p)]["values"] += int(np.prod(v.shape))
    groups = dict(sorted(groups.items(), key=lambda item: _group_rank(item[0])))

    def size(paths):
        return int(sum(np.prod(variables[p].shape) for p in paths))

    return {
        "source": source.path, "kind": source.kind,
        "classes": (source.config.num_classes, config.num_classes),
        "trainable_backbone_layers": config.backbone.trainable_layers,
        "norm": config.backbone.norm,
        "reinit_reason": reason,
        "loaded": [_label(p) for p in loaded], "reinitialised": [_label(p) for p in reinit],
        "frozen": [_label(p) for p in frozen], "trainable": [_label(p) for p in trainable],
        "ignored": list(source.ignored),
        "values": {"loaded": size(loaded), "reinitialised": size(reinit),
                   "frozen": size(frozen), "trainable": size(trainable)},
        "groups": groups,
    }


def format_report(report, names=False):
    """What :func:`init_model` did, as text: one line per group (tensor counts loaded,
    re-initialised, frozen, trainable), the re-initialised tensors by name, the frozen groups;
    ``names=True`` lists every frozen tensor as well."""
    v, k = report["values"], report["trainable_backbone_layers"]
    lines = [f"--init {report['source']} ({report['kind']}): {report['classes'][0]} classes in "
             f"the weights, {report['classes'][1]} in the model (background included)",
             f"{'group':<28}{'tensors':>8}{'loaded':>8}{'re-init':>8}{'frozen':>8}"
             f"{'trained':>8}{'values':>12}"]
    for group, row in report["groups"].items():
        lines.append(f"{group:<28}{sum(row[x] for x in ('frozen', 'trainable')):>8}"
                     f"{row['loaded']:>8}{row['reinitialised']:>8}{row['frozen']:>8}"
                     f"{row['trainable']:>8}{row['values']:>12,}")
    lines.append(f"loaded {len(report['loaded'])} tensors ({v['loaded']:,} values)")
    if report["reinitialised"]:
        reinit = report["reinitialised"]
        lines.append(f"re-initialised {len(reinit)} tensors ({v['reinitialised']:,} values), "
                     f"{report['reinit_reason']}: {', '.join(reinit)}")
    else:
        lines.append("re-initialised nothing: the class layers fit and were loaded")
    whole = [g for g, row in report["groups"].items() if row["frozen"] and not row["trainable"]]
    norms = [g for g, row in report["groups"].items() if row["frozen"] and row["trainable"]]
    parts = [f"{', '.join(whole) if whole else 'no stage'} entirely (trainable_backbone_layers "
             f"{k}{'' if report['norm'] == 'frozen_bn' else '; GroupNorm scale and bias too'})"]
    if norms:
        parts.append(f"the frozen BatchNorms of {', '.join(norms)} (frozen in every stage, as "
                     "torchvision's)")
    lines.append(f"frozen {len(report['frozen'])} tensors ({v['frozen']:,} values): "
                 + "; ".join(parts))
    if names and report["frozen"]:
        lines.append("  " + ", ".join(report["frozen"]))
    lines.append(f"trained {len(report['trainable'])} tensors ({v['trainable']:,} values)")
    if report["ignored"]:
        lines.append(f"ignored {len(report['ignored'])} num_batches_tracked buffers "
                     "(no counterpart)")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- schedule

def finetune_defaults(config, batch_size=8, num_train=None):
    """Starting points for ``--lr``, ``--warmup`` and ``--steps`` with ``--init``, each with its
    reason under ``"reasons"``. Not tuned here: measure on your data and change them.

    ``num_train`` (training images), if given, sets the length to about 12 epochs.
    """
    lr = 0.00125 * batch_size
    steps = 500 if num_train is None else int(min(3000, max(200, 12 * num_train / batch_size)))
    warmup = max(10, min(100, steps // 10))
    return {
        "lr": lr, "warmup": warmup, "steps": steps,
        "reasons": {
            "lr": f"{lr:g} at batch {batch_size}: 0.00125 per image, Detectron's 0.02 at batch "
                  "16 for models started from pretrained weights, half our from-scratch 0.02 at "
                  "batch 8 (torchvision's Penn-Fudan tutorial uses 0.005 at batch 2, twice this "
                  "per image)",
            "warmup": f"{warmup} steps (a tenth of the run, at most 100): the re-initialised "
                      "class layers give large first gradients; torchvision warms up over its "
                      "first epoch",
            "steps": f"{steps} steps: "
                     + ("about 12 epochs of the training images (clipped to 200-3000); "
                        if num_train else "")
                     + "torchvision's tutorial fine-tunes 10 epochs of 120 images at batch 2 "
                       "(600 steps, 1200 images); from scratch we need 2800 steps at batch 8",
        },
    }
