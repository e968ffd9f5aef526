"""``python -m mrcnn_jax.train`` on a COCO-format folder: data preparation, held-out split,
resume without duplicated metrics, a class-list mismatch on resume, one-line user errors."""

import json

import pytest

from mrcnn_jax import train
from mrcnn_jax.data.shapes_coco import write_shapes_coco

TINY = ["--preset", "small", "--image_size", "64", "--batch_size", "2", "--steps", "4",
        "--warmup", "1", "--eval_every", "2", "--checkpoint_every", "2", "--max_instances", "6",
        "--mask_crop", "28"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("own")
    write_shapes_coco(root / "coco", "train", 20, vary=True)
    return root


def _steps(workdir):
    return [json.loads(line)["step"] for line in (workdir / "metrics.jsonl").open()]


def test_train_stop_resume_and_evaluate(folder, capsys):
    work = folder / "run"
    data = ["--train_annotations", str(folder / "coco" / "train.json"),
            "--train_images", str(folder / "coco" / "train"), "--val_fraction", "0.2",
            "--data_dir", str(folder / "prepared"), "--workdir", str(work)]
    train.main([*TINY, *data, "--stop_after", "3", "--no_final_eval"])
    out = capsys.readouterr().out
    assert "kept 20 images" in out and "nothing skipped" in out
    assert "data: 16 training images, 4 held out; classes ['square', 'circle', 'triangle']" in out
    assert _steps(work) == [1, 2, 3]
    # a crash after step 3 leaves checkpoint 3... the last checkpoint here is step 3 (stop_after);
    # pretend the run died after logging step 4 without a checkpoint: the row must go
    with (work / "metrics.jsonl").open("a") as f:
        f.write(json.dumps({"step": 4, "loss": 99.0}) + "\n")
    train.main([*TINY, *data, "--resume", "--eval_every", "100"])
    out = capsys.readouterr().out
    assert "resumed from step 3" in out
    rows = [json.loads(line) for line in (work / "metrics.jsonl").open()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and rows[-1]["loss"] != 99.0
    run = json.loads((work / "run.json").read_text())
    assert run["data"]["kind"] == "coco" and run["data"]["category_ids"] == [1, 2, 3]
    assert run["mask_crop"] == 28 and run["schedule"]["total_steps"] == 4
    evaluation = json.loads((work / "evaluation.json").read_text())
    assert evaluation["num_images"] == 4
    assert (work / "predictions.png").stat().st_size > 0

    # another class list in the same work directory: one clear line, exit code 2
    other = folder / "coco2"
    path = write_shapes_coco(other, "train", 6)
    coco = json.loads(path.read_text())
    coco["categories"][0]["name"] = "box"
    path.write_text(json.dumps(coco))
    with pytest.raises(SystemExit) as exit_info:
        train.main([*TINY, "--train_annotations", str(path), "--train_images",
                    str(other / "train"), "--data_dir", str(folder / "prepared"),
                    "--workdir", str(work), "--resume", "--val_fraction", "0.5"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "was trained on classes" in err and "'box'" in err and "Traceback" not in err


@pytest.mark.parametrize("argv, message", [
    (["--train_annotations", "nowhere.json", "--train_images", "."],
     "--train_annotations nowhere.json does not exist"),
    (["--init", "nowhere.npz"], "nowhere.npz"),
])
def test_user_errors_are_one_line(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train.main([*TINY, *argv, "--workdir", str(tmp_path / "w"), "--data_dir",
                    str(tmp_path / "d"), "--num_train", "8", "--num_val", "4"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_argument_errors(capsys):
    for argv, message in ((["--image_size", "64", "--min_size", "50", "--max_size", "80"],
                           "not both"),
                          (["--min_size", "90", "--max_size", "80"], "larger than"),
                          (["--train_images", "x"], "go together")):
        with pytest.raises(SystemExit):
            train.parse_args(argv)
        assert message in capsys.readouterr().err
