"""`--data` takes a Roboflow/ODinW export (train/, valid/, test/ with
_annotations.coco.json, images beside) as well as the `glip data synthetic` layout, in
train, finetune and evaluate; every command accepts a zoo name (demo-shapes, bundled)."""

from __future__ import annotations

import json
import os

import pytest
import yaml
from PIL import Image

from glip.cli import main
from glip.data import generate_synthetic, read_dataset_dir
from glip.tools.finetune import TransferData

SHORT = ["solver.max_epoch=0", "solver.max_iter=2", "solver.ims_per_batch=2", "solver.warmup_iters=1",
         "solver.checkpoint_period=0", "train.log_period=1", "data.general_copy=1"]  # fmt: skip


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return generate_synthetic(tmp_path_factory.mktemp("shapes"), num_train=4, num_val=2, image_size=96, seed=2,
                              colors=("red", "blue"), shapes=("circle", "square"), max_objects=2)  # fmt: skip


@pytest.fixture(scope="module")
def roboflow(shapes, tmp_path_factory):
    """The same data as a Roboflow COCO export: split folders, images beside each json."""
    root = tmp_path_factory.mktemp("export") / "my-dataset"
    for split, src in (("train", shapes.train_json), ("valid", shapes.val_json), ("test", shapes.val_json)):
        (root / split).mkdir(parents=True)
        data = json.loads(src.read_text())
        for image in data["images"]:
            os.symlink(shapes.image_dir / image["file_name"], root / split / image["file_name"])
        (root / split / "_annotations.coco.json").write_text(json.dumps(data))
    return root


def test_both_layouts_are_read(shapes, roboflow, tmp_path):
    rf = read_dataset_dir(roboflow)
    assert rf.layout == "roboflow" and rf.train.json == roboflow / "train" / "_annotations.coco.json"
    assert rf.val.images == roboflow / "valid" and rf.split("test").json.parent == roboflow / "test"
    ours = read_dataset_dir(shapes.root)
    assert ours.layout == "synthetic" and ours.train.images == shapes.image_dir and ours.test is None
    data = TransferData.from_dir(roboflow)
    assert data.name == "my-dataset" and data.val_images == roboflow / "valid" and data.test_images == roboflow / "test"
    with pytest.raises(FileNotFoundError, match="_annotations.coco.json"):
        read_dataset_dir(tmp_path)


def test_evaluate_on_both_layouts(shapes, roboflow, tmp_path, capsys):
    from glip.tools.evaluate_cli import resolve_detection_files

    assert resolve_detection_files("coco", str(shapes.root), None, None) == (shapes.val_json, shapes.image_dir)
    assert resolve_detection_files("coco", str(roboflow), None, None, "test") == (
        roboflow / "test" / "_annotations.coco.json", roboflow / "test",
    )  # fmt: skip
    assert resolve_detection_files("coco", str(roboflow / "valid"), None, None)[1] == roboflow / "valid"
    out = tmp_path / "eval"
    args = ["evaluate", "--task", "coco", "--data", str(roboflow), "--split", "test", "--model", "demo-shapes",
            "--out", str(out), "--quiet", "--device", "cpu"]  # fmt: skip
    assert main(args) == 0, capsys.readouterr().err
    assert "AP" in json.loads((out / "metrics.json").read_text())


def test_finetune_from_a_zoo_name_on_a_roboflow_export(roboflow, tmp_path, capsys):
    out = tmp_path / "ft"
    rc = main(["finetune", "--data", str(roboflow), "--model", "demo-shapes", "--mode", "prompt", "--out", str(out),
               "--quiet", "--device", "cpu", *SHORT, "train.eval_period=1000"])  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    tuned = json.loads((out / "model" / "tuned.json").read_text())
    assert tuned["base"]["zoo"] == "demo-shapes" and tuned["mode"] == "prompt"
    # All the data (no --shots) is called so; AP on the 0-100 scale, as glip evaluate prints it.
    ap = json.loads((out / "metrics.json").read_text())["AP"]
    assert f"{roboflow.name} prompt all data seed 3: test AP {100 * ap:.1f}\n" in capsys.readouterr().out
    assert Image.open(out / "curves.png").format == "PNG"  # the training curves, beside TensorBoard


def test_train_from_a_zoo_name_on_a_roboflow_export(roboflow, tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(
        [
            "train",
            "--model",
            "demo-shapes",
            "--data",
            str(roboflow),
            "--output-dir",
            str(out),
            "--no-progress",
            "--cpu",
            *SHORT,
        ]
    )  # fmt: skip  (the old spellings still work)
    assert rc == 0, capsys.readouterr().err
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["data"]["train_json"] == str(roboflow / "train" / "_annotations.coco.json")
    assert cfg["data"]["val_images"] == str(roboflow / "valid")
    assert (out / "model" / "model.safetensors").is_file()
    assert (out / "curves.png").is_file()
