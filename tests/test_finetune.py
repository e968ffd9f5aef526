"""mrcnn_jax/finetune.py: ``--init`` from a torchvision state dict (.npz, .pth) or a work
directory; class layers re-initialised when the classes differ; frozen backbone stages; one
clear error per bad input.

The weights are our own tiny model exported under torchvision's names and layouts
(``weights.to_torchvision_layout``), so nothing is downloaded.
"""

import dataclasses
import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mrcnn_jax import checkpoints, finetune
from mrcnn_jax.config import small_config
from mrcnn_jax.layers import Frozen
from mrcnn_jax.model import MaskRCNN
from mrcnn_jax.training import make_optimizer
from mrcnn_jax.weights import to_torchvision_layout, torchvision_name

NAMES = ["background", "square", "circle", "triangle"]
CLASS_NAMES_TV = {f"roi_heads.{layer}.{kind}" for kind in ("weight", "bias") for layer in (
    "box_predictor.cls_score", "box_predictor.bbox_pred", "mask_predictor.mask_fcn_logits")}
STAGES = ("body.stem", "body.layer1", "body.layer2", "body.layer3", "body.layer4")


def tiny_config(num_classes=4):
    """``small_config`` narrowed (ResNet-18 layout, GroupNorm with 4 groups) at 64x64."""
    config = small_config(num_classes, image_size=(64, 64))
    return config.replace(
        fpn_channels=16,
        backbone=dataclasses.replace(config.backbone, stem_width=8, widths=(8, 16, 16, 16),
                                     group_norm_groups=4),
        roi_heads=dataclasses.replace(config.roi_heads, representation_size=32,
                                      mask_layers=(16, 16, 16, 16)))


def flat(model):
    return {".".join(map(str, p)): np.asarray(v.get_value())
            for p, v in nnx.to_flat_state(nnx.state(model))}


def export(model):
    """``{torchvision name: array in torchvision's layout}`` of our model."""
    return {torchvision_name(p): to_torchvision_layout(torchvision_name(p), v.get_value())
            for p, v in nnx.to_flat_state(nnx.state(model))}


def random_model(config, seed=1):
    """A model whose every tensor (biases and norms too) is random, so a copy shows; built
    without JAX's initialisers, which compile op by op (slow on a busy CPU)."""
    model = nnx.eval_shape(lambda: MaskRCNN(config, rngs=nnx.Rngs(0)))
    rng = np.random.default_rng(seed)
    updates = [(p, v.replace(value=jnp.asarray(rng.normal(0, 0.1, v.shape), jnp.float32)))
               for p, v in nnx.to_flat_state(nnx.state(model))]
    nnx.update(model, nnx.from_flat_state(updates))
    return model


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """The source model, its values and state dict, and files: ``npz`` (with reference/config
    and class names, as tools/export_torchvision_example.py writes) and ``bare`` (names only)."""
    tmp = tmp_path_factory.mktemp("finetune")
    model = random_model(tiny_config())
    state = export(model)
    npz, bare = tmp / "weights.npz", tmp / "bare.npz"
    np.savez(npz, **state, **{
        "reference/config": np.array(json.dumps(checkpoints.config_to_dict(model.config))),
        "reference/class_names": np.array(NAMES)})
    np.savez(bare, **state)
    return {"model": model, "values": flat(model), "state": state, "npz": npz, "bare": bare,
            "tmp": tmp}


@nnx.jit
def outputs(model, image, boxes):
    features = model.features(image)
    logits, deltas = model.rpn_head(features)
    class_logits, box_deltas = model.box_head(model.pool(features, boxes, 7))
    mask_logits = model.mask_head(model.pool(features, boxes, 14))
    return [*features, logits, deltas, class_logits, box_deltas, mask_logits]


def test_same_classes_load_every_tensor_and_give_the_same_outputs(source):
    config = finetune.init_config(source["npz"], num_classes=4, image_size=(64, 64))
    assert config.backbone.trainable_layers == 3  # torchvision's default with pretrained weights
    config = config.replace(backbone=dataclasses.replace(config.backbone, trainable_layers=5))
    assert config == source["model"].config  # so one compiled forward serves both models
    model, report = finetune.init_model(source["npz"], config, nnx.Rngs(0), class_names=NAMES)
    values = flat(model)
    assert report["reinitialised"] == [] and sorted(report["loaded"]) == sorted(values)
    for name, value in source["values"].items():
        np.testing.assert_array_equal(values[name], value, err_msg=name)
    image = jax.random.uniform(jax.random.key(0), (1, 64, 64, 3), maxval=255.0)
    boxes = jnp.array([[[4.0, 6.0, 40.0, 30.0], [20.0, 10.0, 60.0, 60.0]]])
    for ours, theirs in zip(outputs(model, image, boxes), outputs(source["model"], image, boxes),
                            strict=True):
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)
    text = finetune.format_report(report)
    assert f"loaded {len(values)} tensors" in text and "re-initialised nothing" in text


def test_other_classes_reinitialise_exactly_the_three_predictor_layers(source):
    config = finetune.init_config(source["npz"], num_classes=7, image_size=(64, 64))
    model, report = finetune.init_model(source["npz"], config, nnx.Rngs(0))
    fresh = flat(MaskRCNN(config, rngs=nnx.Rngs(0)))
    values = flat(model)
    reinit = set(report["reinitialised"])
    assert {torchvision_name(n) for n in reinit} == CLASS_NAMES_TV
    assert reinit == {"box_head.cls_score.kernel", "box_head.cls_score.bias",
                      "box_head.bbox_pred.kernel", "box_head.bbox_pred.bias",
                      "mask_head.mask_fcn_logits.kernel", "mask_head.mask_fcn_logits.bias"}
    assert len(report["loaded"]) == len(values) - 6
    for name, value in values.items():
        expected = fresh[name] if name in reinit else source["values"][name]
        np.testing.assert_array_equal(value, expected, err_msg=name)
    assert values["box_head.cls_score.kernel"].shape == (32, 7)
    assert values["mask_head.mask_fcn_logits.kernel"].shape[-1] == 7
    text = finetune.format_report(report)
    assert "re-initialised 6 tensors" in text and "class count 4 -> 7" in text
    assert "box_head.cls_score.kernel" in text


def test_same_count_other_class_list_reinitialises_when_both_lists_are_known(source):
    config = finetune.init_config(source["npz"], num_classes=4, image_size=(64, 64))
    names = ["background", "cat", "dog", "bird"]
    _, report = finetune.init_model(source["npz"], config, nnx.Rngs(0), class_names=names)
    assert len(report["reinitialised"]) == 6 and "class list" in report["reinit_reason"]
    _, report = finetune.init_model(source["bare"], config, nnx.Rngs(0), class_names=names)
    assert report["reinitialised"] == []  # the bare file records no names: shapes decide


def trainable_values(report):
    return report["values"]["trainable"]


@pytest.mark.parametrize("layers", [0, 3, 5])
def test_trainable_backbone_layers_freeze_the_stages_and_their_norms(source, layers):
    config = finetune.init_config(source["npz"], num_classes=4, image_size=(64, 64))
    config = config.replace(backbone=dataclasses.replace(config.backbone,
                                                         trainable_layers=layers))
    model, report = finetune.init_model(source["npz"], config, nnx.Rngs(0))
    frozen_groups = {g for g, row in report["groups"].items() if row["frozen"]}
    assert frozen_groups == set(STAGES[:5 - layers])  # 5 trains all, 3 freezes stem+layer1
    for g in frozen_groups:  # a frozen stage is frozen whole, its GroupNorms included
        row = report["groups"][g]
        assert row["trainable"] == 0 and row["frozen"] == row["loaded"]
    assert isinstance(model.body.bn1.scale, Frozen if layers < 5 else nnx.Param)
    assert isinstance(model.body.layer4[0].bn1.bias, Frozen if layers == 0 else nnx.Param)
    stage_values = {g: report["groups"][g]["values"] for g in STAGES}
    all_values = report["values"]["trainable"] + report["values"]["frozen"]
    assert report["values"]["frozen"] == sum(stage_values[g] for g in STAGES[:5 - layers])
    assert trainable_values(report) == all_values - report["values"]["frozen"]
    if layers == 5:  # nothing frozen: no optimizer step to check
        assert "frozen 0 tensors" in finetune.format_report(report)
        return
    before = flat(model)  # one optimizer step with a gradient of ones on every nnx.Param
    optimizer = make_optimizer(model, learning_rate=0.1, warmup_steps=0)
    grads = jax.tree.map(jnp.ones_like, nnx.state(model, nnx.Param))
    nnx.jit(lambda opt, m, g: opt.update(m, g))(optimizer, model, grads)
    after, frozen = flat(model), set(report["frozen"])
    assert frozen == {n for n in after if n.startswith("body.")
                      and finetune.group_of(n.split(".")) in STAGES[:5 - layers]}
    for name in after:
        changed = not np.array_equal(after[name], before[name])
        assert changed == (name not in frozen), name


def test_frozen_batchnorm_weights_freeze_their_norms_in_every_stage(tmp_path):
    config = tiny_config()
    config = config.replace(backbone=dataclasses.replace(config.backbone, norm="frozen_bn"))
    state = export(random_model(config))
    np.savez(tmp_path / "bn.npz", **state)  # a bare state dict: torchvision's defaults apply
    config = finetune.init_config(tmp_path / "bn.npz", num_classes=4, image_size=(64, 64))
    assert (config.backbone.norm, config.backbone.frozen_bn_eps) == ("frozen_bn", 0.0)
    config = config.replace(rpn=tiny_config().rpn)  # only the anchor count is in the weights
    model, report = finetune.init_model(tmp_path / "bn.npz", config, nnx.Rngs(0))
    assert len(report["loaded"]) == len(state)
    norm_stats = [n for n in report["frozen"] if n.startswith("body.layer4")]
    assert norm_stats and all(".bn" in n or "downsample.1" in n for n in norm_stats)
    assert isinstance(model.body.layer4[0].bn1.running_var, Frozen)
    text = finetune.format_report(report)
    assert "body.stem, body.layer1 entirely" in text
    assert "the frozen BatchNorms of body.layer2, body.layer3, body.layer4" in text


def test_work_directory_init(source):
    workdir = source["tmp"] / "workdir"
    model = source["model"]
    workdir.mkdir()
    checkpoints.write_run(workdir, {
        "config": checkpoints.config_to_dict(model.config), "class_names": NAMES})
    checkpoints.save(checkpoints.manager(workdir), 7, model, make_optimizer(model))

    config = finetune.init_config(workdir, num_classes=4, image_size=(64, 64))
    assert config == model.config.replace(backbone=dataclasses.replace(
        model.config.backbone, trainable_layers=3))
    loaded, report = finetune.init_model(workdir, config, nnx.Rngs(0), class_names=NAMES)
    assert report["kind"] == "work directory, step 7" and report["reinitialised"] == []
    for name, value in flat(loaded).items():
        np.testing.assert_array_equal(value, source["values"][name], err_msg=name)

    config = finetune.init_config(workdir, num_classes=3, image_size=(96, 96))
    assert config.image_size == (96, 96) and config.rpn == model.config.rpn
    loaded, report = finetune.init_model(workdir, config, nnx.Rngs(0))
    assert {torchvision_name(n) for n in report["reinitialised"]} == CLASS_NAMES_TV
    values = flat(loaded)
    for name in report["loaded"]:
        np.testing.assert_array_equal(values[name], source["values"][name], err_msg=name)


def test_pth_state_dict_and_the_documented_npz_one_liner(source):
    torch = pytest.importorskip("torch", reason="torch not installed: .pth reading untested")
    tmp = source["tmp"]
    state = {k: torch.from_numpy(np.array(v)) for k, v in source["state"].items()}
    state["backbone.body.bn1.num_batches_tracked"] = torch.tensor(3)
    torch.save({"model": state, "epoch": 3}, tmp / "wrapped.pth")  # reference-script layout
    torch.save(state, tmp / "plain.pth")
    config = finetune.init_config(tmp / "plain.pth", num_classes=4, base_config=tiny_config())
    for path in (tmp / "plain.pth", tmp / "wrapped.pth"):
        model, report = finetune.init_model(path, config, nnx.Rngs(0))
        assert report["reinitialised"] == [] and report["ignored"] == [
            "backbone.body.bn1.num_batches_tracked"]
        for name, value in flat(model).items():
            np.testing.assert_array_equal(value, source["values"][name], err_msg=name)
    assert "ignored 1 num_batches_tracked" in finetune.format_report(report)

    command = finetune.NPZ_ONE_LINER.replace("python", sys.executable, 1).replace(
        "weights.pth", str(tmp / "wrapped.pth")).replace("weights.npz", str(tmp / "conv.npz"))
    subprocess.run(command, shell=True, check=True)
    model, _ = finetune.init_model(tmp / "conv.npz", config, nnx.Rngs(0))
    np.testing.assert_array_equal(flat(model)["fpn.layer_blocks.0.kernel"],
                                  source["values"]["fpn.layer_blocks.0.kernel"])


def _error(path, config=None):
    with pytest.raises(finetune.InitError) as error:
        if config is None:
            finetune.init_config(path, num_classes=4)
        else:
            finetune.init_model(path, config, nnx.Rngs(0))
    return str(error.value)


def test_bad_inputs_get_one_clear_error(source, tmp_path, monkeypatch):
    text = tmp_path / "notes.txt"
    text.write_text("not weights\n")
    assert "expected a torchvision Mask R-CNN state dict" in _error(text)
    assert "got a .txt file" in _error(text)
    fake_pth, fake_npz = tmp_path / "notes.pth", tmp_path / "notes.npz"
    fake_npz.write_text("not weights\n")
    assert "not a zip archive, as every .npz is" in _error(fake_npz)
    np.savez(tmp_path / "objects.npz", a=np.array([{"x": 1}], dtype=object))
    assert "numpy cannot read it" in _error(tmp_path / "objects.npz")
    np.savez(tmp_path / "random.npz", a=np.zeros(3), b=np.ones((2, 2)))
    message = _error(tmp_path / "random.npz")
    assert "not a torchvision Mask R-CNN state dict" in message and "'a'" in message
    (tmp_path / "folder").mkdir()
    assert "has no run.json" in _error(tmp_path / "folder")
    with pytest.raises(FileNotFoundError, match="no such file"):
        finetune.init_config(tmp_path / "absent.pth", num_classes=4)

    extra = dict(source["state"], **{"roi_heads.extra.weight": np.zeros(3, np.float32)})
    extra["backbone.fpn.layer_blocks.0.0.bias"] = np.zeros(5, np.float32)
    np.savez(tmp_path / "misfit.npz", **extra)
    message = _error(tmp_path / "misfit.npz", tiny_config())
    assert "does not fit the model" in message and "unexpected (1)" in message
    assert "roi_heads.extra.weight" in message and "mis-shaped (1)" in message
    assert ("fpn.layer_blocks.0.bias (backbone.fpn.layer_blocks.0.0.bias): model (16,), "
            "weights (5,)") in message

    monkeypatch.setitem(sys.modules, "torch", None)  # as if torch were not installed
    fake_pth.write_text("not weights\n")
    message = _error(fake_pth)
    assert "needs torch, which is not installed" in message and "numpy.savez" in message


def test_bad_torch_files(tmp_path):
    torch = pytest.importorskip("torch", reason="torch not installed: .pth errors untested")
    torch.save(torch.nn.Linear(2, 2), tmp_path / "model.pth")  # a whole pickled model
    message = _error(tmp_path / "model.pth")
    assert "a whole pickled model? save model.state_dict() instead" in message
    assert "Unsupported global" in message and "\x1b" not in message
    (tmp_path / "notes.pth").write_text("not weights\n")
    assert "not one torch.save wrote" in _error(tmp_path / "notes.pth")
    torch.save([torch.zeros(2)], tmp_path / "list.pth")
    assert "the file holds a list" in _error(tmp_path / "list.pth")
    torch.save({"conv.weight": torch.zeros(2)}, tmp_path / "other.pth")
    assert "'backbone.body.conv1.weight' is missing" in _error(tmp_path / "other.pth")


def test_finetune_defaults_are_documented_starting_points():
    defaults = finetune.finetune_defaults(tiny_config())
    assert (defaults["lr"], defaults["warmup"], defaults["steps"]) == (0.01, 50, 500)
    assert set(defaults["reasons"]) == {"lr", "warmup", "steps"}
    assert finetune.finetune_defaults(tiny_config(), batch_size=2)["lr"] == 0.0025
    assert finetune.finetune_defaults(tiny_config(), num_train=120)["steps"] == 200
    assert finetune.finetune_defaults(tiny_config(), num_train=1000)["steps"] == 1500
