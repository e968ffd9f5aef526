"""mrcnn_jax/weights.py ``from_torchvision``: the whole model, imported from a torchvision state
dict, matches torchvision stage by stage (FPN, RPN, proposals, box head, mask head, detections).

The golden files come from tools/make_torchvision_parity.py (torchvision's outputs with the
weights of tests/whole_model_case.py); the same comparison runs live against torchvision when
it is installed.
"""

import dataclasses
import json
import pathlib
import sys

import jax
import numpy as np
import pytest
import whole_model_case as case_lib
from flax import nnx

from mrcnn_jax.config import resnet50_fpn_config, small_config
from mrcnn_jax.inference import predict
from mrcnn_jax.model import MaskRCNN
from mrcnn_jax.weights import (
    from_torchvision,
    infer_architecture,
    to_torchvision_layout,
    torchvision_name,
)

TOOLS = pathlib.Path(__file__).resolve().parent.parent / "tools"


def _config(name):
    case = case_lib.CASES[name]
    config = resnet50_fpn_config(image_size=case["image_size"])
    return config.replace(roi_heads=dataclasses.replace(
        config.roi_heads, score_threshold=case["score_threshold"]))


@pytest.fixture(scope="module", params=list(case_lib.CASES))
def imported(request):
    """(case name, our model from the case's weights, our outputs for the case's inputs)."""
    name = request.param
    model = from_torchvision(case_lib.synthetic_state(name), _config(name))
    return name, model, our_outputs(model, name)


def our_outputs(model, name):
    image = case_lib.synthetic_image(name)[None]
    boxes = case_lib.given_boxes(name)[None]  # (1, R, 4)
    heads = model.config.roi_heads

    @nnx.jit
    def stages(model, image, boxes):
        features = model.features(image)
        logits, deltas = model.rpn_head(features)
        rpn = model.proposals(features, training=False)
        class_logits, box_deltas = model.box_head(model.pool(features, boxes,
                                                             heads.box_roi_size))
        mask_logits = model.mask_head(model.pool(features, boxes, heads.mask_roi_size))
        return {"features": features, "rpn_logits": logits[0], "rpn_deltas": deltas[0],
                "proposals": rpn["proposals"][0], "proposal_scores": rpn["proposal_scores"][0],
                "proposal_valid": rpn["proposal_valid"][0], "box_class_logits": class_logits,
                "box_deltas": box_deltas, "mask_logits": mask_logits}

    out = jax.tree.map(np.asarray, stages(model, image, boxes))
    out["detections"] = jax.tree.map(lambda x: np.asarray(x)[0], predict(model, image))
    return out


def _close(ours, reference, tol=1e-3):
    """Agreement to ``tol`` relative to the reference's largest magnitude; the error found."""
    scale = max(float(np.abs(reference).max()), 1e-12)
    error = float(np.abs(np.asarray(ours, np.float64) - reference).max()) / scale
    assert error <= tol, f"relative error {error:.2e} > {tol}"
    return error


def _mask_iou(a, b):
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else np.logical_and(a, b).sum() / union


def _same_up_to_ties(boxes, scores, ref_boxes, ref_scores, score_tol=1e-5, box_tol=1e-2,
                     labels=None, ref_labels=None):
    """The same boxes (and labels) with the same scores, both sorted by score; boxes whose
    scores differ by less than ``score_tol`` may come in either order (a tie that rounding
    decides). Returns, for each of ours, the index of its counterpart in the reference."""
    assert np.all(np.diff(scores) <= 0) and np.all(np.diff(ref_scores) <= 0)
    np.testing.assert_allclose(scores, ref_scores, atol=score_tol)
    close = (np.abs(scores[:, None] - ref_scores[None]) <= 2 * score_tol) & (
        np.abs(boxes[:, None] - ref_boxes[None]).max(-1) <= box_tol)  # (N, N) candidates
    if labels is not None:
        close &= labels[:, None] == ref_labels[None]
    used, match = np.zeros(len(ref_boxes), bool), np.zeros(len(boxes), int)
    for i in range(len(boxes)):
        j = np.flatnonzero(close[i] & ~used)
        assert j.size, f"box {i} {boxes[i]} (score {scores[i]}) has no counterpart"
        used[j[0]], match[i] = True, j[0]
    return match


def compare(ours, ref):
    """Every stage of ``ours`` against torchvision's outputs ``ref`` (golden or live)."""
    for i, feature in enumerate(ours["features"]):  # FPN P2..P6 at the sampled positions
        flat = feature.reshape(-1)
        assert flat.size > ref[f"fpn{i}_index"].max()
        _close(flat[ref[f"fpn{i}_index"]], ref[f"fpn{i}_values"])
        assert abs(np.abs(flat).max() - ref[f"fpn{i}_absmax"]) <= 1e-3 * ref[f"fpn{i}_absmax"]
    _close(ours["rpn_logits"][ref["rpn_index"]], ref["rpn_logits"])
    _close(ours["rpn_deltas"][ref["rpn_index"]], ref["rpn_deltas"])

    valid = ours["proposal_valid"]
    assert valid.sum() == len(ref["proposals"]), (valid.sum(), len(ref["proposals"]))
    _same_up_to_ties(ours["proposals"][valid], ours["proposal_scores"][valid],
                     ref["proposals"], ref["proposal_scores"])

    _close(ours["box_class_logits"], ref["box_class_logits"])
    _close(ours["box_deltas"], ref["box_deltas"])
    rows = np.arange(len(ref["mask_channels"]))
    _close(ours["mask_logits"][rows, :, :, ref["mask_channels"]], ref["mask_logits"])

    from pycocotools import mask as mask_utils

    det = ours["detections"]
    keep = det["valid"]
    assert keep.sum() == len(ref["det_boxes"]) > 0, (keep.sum(), len(ref["det_boxes"]))
    match = _same_up_to_ties(det["boxes"][keep], det["scores"][keep], ref["det_boxes"],
                             ref["det_scores"], score_tol=1e-4, box_tol=0.5,
                             labels=det["labels"][keep], ref_labels=ref["det_labels"])
    rles = [dict(r, counts=r["counts"].encode()) for r in json.loads(str(ref["det_masks_rle"]))]
    theirs = mask_utils.decode(rles).transpose(2, 0, 1).astype(bool)[match]
    ious = [_mask_iou(a, b) for a, b in zip(det["masks"][keep] > 0.5, theirs, strict=True)]
    assert min(ious) >= 0.98, f"mask IoU {min(ious):.4f} (mean {np.mean(ious):.4f})"
    return ious


def test_matches_torchvision_golden(imported):
    name, _, ours = imported
    golden = dict(np.load(case_lib.golden_path(name)))
    ious = compare(ours, golden)
    assert np.mean(ious) > 0.99


def test_matches_torchvision_live(imported):
    pytest.importorskip("torchvision")
    sys.path.insert(0, str(TOOLS))
    from make_torchvision_parity import torchvision_outputs

    name, _, ours = imported
    compare(ours, torchvision_outputs(name))


def test_exports_back_to_the_same_state_dict(imported):
    name, model, _ = imported
    state = case_lib.synthetic_state(name)
    exported = {}
    for path, leaf in nnx.to_flat_state(nnx.state(model)):
        key = torchvision_name(path)
        exported[key] = to_torchvision_layout(key, leaf.get_value(), roi_size=7)
    assert exported.keys() == state.keys()
    for key, value in state.items():
        np.testing.assert_array_equal(exported[key], value, err_msg=key)


def _table_state(table):
    shapes = json.loads(case_lib.TABLES.read_text())[table]
    return {k: np.zeros(v, np.float32) for k, v in shapes.items()}


def test_infers_torchvision_architectures_from_names_and_shapes():
    r50 = infer_architecture(_table_state("maskrcnn_resnet50_fpn"))
    assert r50 == {"num_classes": 91, "fpn_channels": 256, "anchors_per_location": 3,
                   "backbone": {"depth": 50, "stem_width": 64, "widths": (64, 128, 256, 512),
                                "norm": "frozen_bn"},
                   "roi_heads": {"representation_size": 1024, "box_roi_size": 7,
                                 "mask_layers": (256, 256, 256, 256)}}
    r18 = infer_architecture(_table_state("maskrcnn_resnet18_fpn"))
    assert r18["backbone"]["depth"] == 18 and r18["backbone"]["widths"] == (64, 128, 256, 512)


def test_infers_our_small_preset_exported_to_torchvision_names():
    config = small_config(num_classes=7)
    model = nnx.eval_shape(lambda: MaskRCNN(config, rngs=nnx.Rngs(0)))
    from mrcnn_jax.weights import torchvision_shapes

    state = {k: np.zeros(v, np.float32) for k, v in torchvision_shapes(model).items()}
    arch = infer_architecture(state)
    assert arch["backbone"] == {"depth": 18, "stem_width": 32, "widths": (32, 64, 128, 256),
                                "norm": "group_norm"}
    assert (arch["num_classes"], arch["fpn_channels"]) == (7, 64)
    assert arch["roi_heads"] == {"representation_size": 256, "box_roi_size": 7,
                                 "mask_layers": (64, 64, 64, 64)}


def test_config_keeps_thresholds_and_image_size_and_takes_layers_from_weights():
    state = _table_state("maskrcnn_resnet18_fpn")
    from mrcnn_jax.weights import config_for

    given = _config("resnet18")
    config = config_for(state, given)
    assert config.image_size == (128, 128) and config.roi_heads.score_threshold == 0.5
    assert config.backbone.depth == 18 and given.backbone.depth == 50
    assert config_for(state).rpn == resnet50_fpn_config().rpn  # torchvision eval defaults


def test_bad_state_dicts_get_one_clear_error():
    state = _table_state("maskrcnn_resnet18_fpn")
    del state["backbone.body.layer2.1.conv1.weight"]
    state["roi_heads.extra.weight"] = np.zeros(3, np.float32)
    state["rpn.head.conv.0.0.bias"] = np.zeros(5, np.float32)
    with pytest.raises(ValueError) as error:
        from_torchvision(state)
    message = str(error.value)
    assert "missing (1)" in message and "layer2.1.conv1.weight" in message
    assert "unexpected (1)" in message and "roi_heads.extra.weight" in message
    assert "mis-shaped (1)" in message and "rpn.head.conv.0.0.bias" in message

    state = _table_state("maskrcnn_resnet18_fpn")
    for key in [k for k in state if ".layer3.1." in k]:
        del state[key]  # a ResNet with (2, 2, 1, 2) blocks
    with pytest.raises(ValueError, match=r"unknown ResNet: basic blocks per stage \(2, 2, 1, 2\)"):
        from_torchvision(state)
    with pytest.raises(ValueError, match="not a torchvision Mask R-CNN state dict"):
        from_torchvision({"conv.weight": np.zeros((3, 3, 1, 1))})


def test_anchor_count_mismatch_is_refused():
    state = _table_state("maskrcnn_resnet18_fpn")
    config = small_config().replace(rpn=dataclasses.replace(
        small_config().rpn, anchor_sizes=((16, 24),) * 5))
    with pytest.raises(ValueError, match="RPN head predicts 3 anchors per location"):
        from_torchvision(state, config)


@pytest.mark.parametrize("depth", [18, 34, 50, 101])
def test_imports_every_resnet_fpn_backbone_live(depth):
    pytest.importorskip("torchvision")
    from torchvision.models.detection import MaskRCNN as TorchMaskRCNN
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

    torch_model = TorchMaskRCNN(resnet_fpn_backbone(backbone_name=f"resnet{depth}", weights=None),
                                num_classes=5)
    state = torch_model.state_dict()
    model = from_torchvision(state)
    assert (model.config.backbone.depth, model.config.num_classes) == (depth, 5)
    kernel = np.asarray(model.body.layer3[-1].conv1.kernel.get_value())
    name = f"backbone.body.layer3.{len(model.body.layer3) - 1}.conv1.weight"
    np.testing.assert_array_equal(kernel, state[name].numpy().transpose(2, 3, 1, 0))
