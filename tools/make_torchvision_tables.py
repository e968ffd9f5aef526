"""Write the tables of torchvision's Mask R-CNN parameter names and shapes that tests compare
our presets against (needs torch and torchvision; run once, commit the JSON):

    python tools/make_torchvision_tables.py

Writes ``tests/golden/torchvision_maskrcnn_shapes.json``: for ``maskrcnn_resnet50_fpn`` and for
``MaskRCNN`` on ``resnet_fpn_backbone("resnet18")`` with 91 classes, every state-dict tensor
except the ``num_batches_tracked`` counters, as ``{name: shape}``.
"""

import json
import pathlib

import torchvision
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

GOLDEN = pathlib.Path(__file__).resolve().parent.parent / "tests/golden"
OUT = GOLDEN / "torchvision_maskrcnn_shapes.json"


def table(model):
    return {k: list(v.shape) for k, v in model.state_dict().items()
            if not k.endswith("num_batches_tracked")}


def main():
    r50 = torchvision.models.detection.maskrcnn_resnet50_fpn(weights=None, weights_backbone=None)
    r18 = MaskRCNN(resnet_fpn_backbone(backbone_name="resnet18", weights=None), num_classes=91)
    tables = {"maskrcnn_resnet50_fpn": table(r50), "maskrcnn_resnet18_fpn": table(r18),
              "torchvision": torchvision.__version__}
    OUT.write_text(json.dumps(tables, indent=0, sort_keys=True))
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
