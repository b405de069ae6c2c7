"""The one rule for category id 0: a Roboflow export's dataset-name entry is no class in the
training captions, the k-shot sampling or the evaluation prompt; an id 0 that boxes use is."""

from __future__ import annotations

import json

import pytest

from glip.data import CocoGroundingDataset, TrainTransform, generate_synthetic
from glip.data.categories import class_categories
from glip.data.few_shot import few_shot_subset, instances_per_category
from glip.engine.tuning import dataset_prompt
from glip.tools.evaluate import category_prompt
from tests.conftest import write_roboflow_export

NAMES = {"red circle": "tomato", "red square": "sky", "red triangle": "lemon"}
CLASSES = ("tomato", "sky", "lemon")


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    root = tmp_path_factory.mktemp("rf")
    ds = generate_synthetic(root / "shapes", num_train=6, num_val=2, image_size=64, seed=4, colors=("red",),
                            shapes=("circle", "square", "triangle"), max_objects=2)  # fmt: skip
    return write_roboflow_export(ds, root / "fruit-sky", NAMES)


def _dataset(path, tokenizer):
    from glip.data import CaptionRecipe

    return CocoGroundingDataset(path, path.parent, tokenizer, TrainTransform([64], 64, 0.0), CaptionRecipe())


def test_the_dataset_name_entry_is_no_class_anywhere(export, tokenizer):
    train = export / "train" / "_annotations.coco.json"
    coco = json.loads(train.read_text())
    assert coco["categories"][0] == {"id": 0, "name": "fruit-sky", "supercategory": "none"}  # the export's layout
    assert [c["name"] for c in class_categories(coco["categories"], coco["annotations"])] == list(CLASSES)
    # Training captions: the dataset's classes and fixed caption are the evaluation prompt.
    ds = _dataset(train, tokenizer)
    assert tuple(ds.ind_to_class[k] for k in sorted(ds.ind_to_class)) == CLASSES
    assert dataset_prompt(ds).caption == "tomato. sky. lemon"
    test = json.loads((export / "test" / "_annotations.coco.json").read_text())
    prompt, ids = category_prompt(test["categories"], annotations=test["annotations"])
    assert prompt.caption == "tomato. sky. lemon" and ids == [1, 2, 3]
    # k-shot sampling: the dataset name needs no image and counts no instance.
    assert set(instances_per_category(coco)) == {1, 2, 3}
    assert min(instances_per_category(few_shot_subset(coco, 1, 3)).values()) >= 1


def test_an_id_zero_that_boxes_use_is_a_class(export, tokenizer, tmp_path):
    """0-based ids (some annotation tools): category 0 is a real class, kept by training and
    evaluation alike; "__background__" never is."""
    coco = json.loads((export / "train" / "_annotations.coco.json").read_text())
    coco["categories"] = [{"id": c["id"] - 1, "name": c["name"]} for c in coco["categories"][1:]]
    coco["categories"].append({"id": 9, "name": "__background__"})
    coco["annotations"] = [dict(a, category_id=a["category_id"] - 1) for a in coco["annotations"]]
    path = export / "train" / "zero_based.json"
    path.write_text(json.dumps(coco))
    assert tuple(_dataset(path, tokenizer).ind_to_class.values()) == CLASSES
    assert category_prompt(coco["categories"], annotations=coco["annotations"])[0].caption == "tomato. sky. lemon"
    assert set(instances_per_category(coco)) == {0, 1, 2}
    coco["annotations"][0]["category_id"] = 9  # a box of a category that is no class
    path.write_text(json.dumps(coco))
    with pytest.raises(ValueError, match=r"category ids \[9\]"):
        _dataset(path, tokenizer)
