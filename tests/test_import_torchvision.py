"""mrcnn_jax/import_torchvision.py: torchvision weights -> a work directory that predict loads."""

import pathlib

import numpy as np
import pytest
import whole_model_case as case_lib

from mrcnn_jax.checkpoints import read_run, restore_model
from mrcnn_jax.import_torchvision import COCO_CATEGORY_NAMES, load_state_dict, main


def test_coco_names_are_torchvisions_91_labels():
    assert len(COCO_CATEGORY_NAMES) == 91
    assert COCO_CATEGORY_NAMES[:3] == ["__background__", "person", "bicycle"]
    assert COCO_CATEGORY_NAMES[10] == "traffic light" and COCO_CATEGORY_NAMES[12] == "N/A"
    assert COCO_CATEGORY_NAMES[-1] == "toothbrush"


def test_coco_names_match_torchvision_live():
    torchvision = pytest.importorskip("torchvision")
    weights = torchvision.models.detection.MaskRCNN_ResNet50_FPN_Weights.COCO_V1
    assert weights.meta["categories"] == COCO_CATEGORY_NAMES


def test_imports_an_npz_state_dict_into_a_restorable_work_directory(tmp_path):
    state = case_lib.synthetic_state("resnet18")
    np.savez(tmp_path / "r18.npz", **state)
    main([str(tmp_path / "r18.npz"), "--workdir", str(tmp_path / "run"),
          "--image_size", "128", "128"])
    model, run = restore_model(tmp_path / "run")
    assert run["class_names"] == COCO_CATEGORY_NAMES == read_run(tmp_path / "run")["class_names"]
    assert model.config.backbone.depth == 18 and model.config.image_size == (128, 128)
    kernel = np.asarray(model.body.conv1.kernel.get_value())  # HWIO of torchvision's OIHW
    np.testing.assert_array_equal(kernel, state["backbone.body.conv1.weight"].transpose(2, 3, 1, 0))


def test_missing_file_and_wrong_class_names_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="no weights file"):
        load_state_dict(tmp_path / "nothing.npz")
    np.savez(tmp_path / "r18.npz", **case_lib.synthetic_state("resnet18"))
    (tmp_path / "names.txt").write_text("background\ncat\n")
    with pytest.raises(ValueError, match="91 classes .* 2 class names given"):
        main([str(tmp_path / "r18.npz"), "--workdir", str(tmp_path / "run"),
              "--class_names", str(tmp_path / "names.txt")])


def test_shipped_example_imports_with_its_own_config(tmp_path):
    example = pathlib.Path(__file__).resolve().parent.parent / "data/torchvision_shapes_example.npz"
    main([str(example), "--workdir", str(tmp_path / "run")])
    model, run = restore_model(tmp_path / "run")
    assert run["class_names"] == ["background", "square", "circle", "triangle"]
    assert model.config.image_size == (128, 128) and model.config.backbone.group_norm_groups == 4
