"""Record torchvision's Mask R-CNN outputs, stage by stage, for the whole-model parity tests
(needs torch and torchvision; run once, commit the small .npz files):

    python tools/make_torchvision_parity.py            # both cases
    python tools/make_torchvision_parity.py resnet18   # one

For each case of ``tests/whole_model_case.py`` (torchvision ``maskrcnn_resnet50_fpn`` at
800x1056; ``MaskRCNN`` on ``resnet_fpn_backbone("resnet18")`` at 128x128) it builds the
torchvision model, loads the case's numpy-generated weights, runs the case's image and writes
``tests/golden/torchvision_<case>_parity.npz``: FPN values and RPN objectness/deltas at seeded
positions, every proposal with its score, box-head logits and deltas and mask logits for the
case's fixed boxes, and the final detections (masks as COCO RLE). The same function,
:func:`torchvision_outputs`, feeds the live tests when torch is installed.
"""

import json
import pathlib
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "tests"))
import whole_model_case as case_lib  # noqa: E402


def build_torchvision(name):
    """torchvision's model for case ``name`` with the case's weights, in eval mode."""
    import torch
    import torchvision
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

    h, w = case_lib.CASES[name]["image_size"]
    if name == "resnet50":  # no resize at 800x1056: scale min(800/800, 1333/1056) = 1
        model = torchvision.models.detection.maskrcnn_resnet50_fpn(weights=None,
                                                                   weights_backbone=None)
    else:
        backbone = resnet_fpn_backbone(backbone_name=name, weights=None)
        model = MaskRCNN(backbone, num_classes=91, min_size=min(h, w), max_size=max(h, w))
    state = {k: torch.from_numpy(v) for k, v in case_lib.synthetic_state(name).items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and all(k.endswith("num_batches_tracked") for k in missing), (
        missing, unexpected)
    model.roi_heads.score_thresh = case_lib.CASES[name]["score_threshold"]
    return model.eval()


def _nhwc(t):
    return t.detach().numpy().transpose(0, 2, 3, 1)


def masks_to_rle(masks):
    """``(N, H, W)`` bool -> list of COCO RLE dicts with str counts."""
    from pycocotools import mask as mask_utils

    rles = mask_utils.encode(np.asfortranarray(masks.astype(np.uint8).transpose(1, 2, 0)))
    return [{"size": r["size"], "counts": r["counts"].decode()} for r in rles]


def torchvision_outputs(name):
    """torchvision's outputs for case ``name`` as a dict of numpy arrays (see module doc)."""
    import torch
    from torchvision.models.detection.rpn import concat_box_prediction_layers

    torch.set_num_threads(2)
    model = build_torchvision(name)
    image = case_lib.synthetic_image(name)
    tensor = torch.from_numpy(image.transpose(2, 0, 1).copy()).float() / 255.0
    boxes = case_lib.given_boxes(name)
    out = {}
    with torch.no_grad():
        images, _ = model.transform([tensor])
        assert tuple(images.tensors.shape[-2:]) == tuple(image.shape[:2]), images.tensors.shape
        features = model.backbone(images.tensors)
        levels = list(features.values())
        for i, f in enumerate(levels):
            flat = _nhwc(f).reshape(-1)
            out[f"fpn{i}_index"] = case_lib.sample_index(name, f"fpn{i}", flat.size)
            out[f"fpn{i}_values"] = flat[out[f"fpn{i}_index"]]
            out[f"fpn{i}_absmax"] = np.abs(flat).max()
        objectness, deltas = model.rpn.head(levels)
        anchors = model.rpn.anchor_generator(images, levels)
        per_level = [o[0].numel() for o in objectness]
        objectness, deltas = concat_box_prediction_layers(objectness, deltas)
        logits, deltas_np = objectness.numpy().reshape(-1), deltas.numpy().reshape(-1, 4)
        out["rpn_index"] = case_lib.sample_index(name, "rpn", logits.size)
        out["rpn_logits"] = logits[out["rpn_index"]]
        out["rpn_deltas"] = deltas_np[out["rpn_index"]]
        decoded = model.rpn.box_coder.decode(deltas.detach(), anchors).view(1, -1, 4)
        proposals, scores = model.rpn.filter_proposals(decoded, objectness, images.image_sizes,
                                                       per_level)
        out["proposals"], out["proposal_scores"] = proposals[0].numpy(), scores[0].numpy()
        heads = model.roi_heads
        given = [torch.from_numpy(boxes)]
        x = heads.box_head(heads.box_roi_pool(features, given, images.image_sizes))
        class_logits, box_regression = heads.box_predictor(x)
        out["given_boxes"] = boxes
        out["box_class_logits"] = class_logits.numpy()
        out["box_deltas"] = box_regression.numpy().reshape(len(boxes), -1, 4)
        mask_logits = heads.mask_predictor(heads.mask_head(
            heads.mask_roi_pool(features, given, images.image_sizes))).numpy()  # (R, K, M, M)
        channels = case_lib.mask_channels(name, mask_logits.shape[1])
        out["mask_channels"] = channels
        out["mask_logits"] = mask_logits[np.arange(len(boxes)), channels]
        detections = model([tensor])[0]
    out["det_boxes"] = detections["boxes"].numpy()
    out["det_labels"] = detections["labels"].numpy()
    out["det_scores"] = detections["scores"].numpy()
    out["det_masks_rle"] = np.array(json.dumps(masks_to_rle(
        detections["masks"][:, 0].numpy() > 0.5)))
    return out


def main(names):
    import torchvision

    for name in names or case_lib.CASES:
        start = time.perf_counter()
        out = torchvision_outputs(name)
        out["torchvision_version"] = np.array(torchvision.__version__)
        path = case_lib.golden_path(name)
        np.savez_compressed(path, **out)
        print(f"{name}: {len(out['det_boxes'])} detections (scores "
              f"{np.round(out['det_scores'][:5], 3)}...), {len(out['proposals'])} proposals; "
              f"wrote {path} ({path.stat().st_size / 1e3:.0f} kB) in "
              f"{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main(sys.argv[1:])
