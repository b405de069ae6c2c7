"""`glip evaluate` refuses malformed annotation and results files with one line that names
the file and its first bad entry (glip/evaluation/inputs.py, glip/utils/coco_json.py)."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from glip.cli import main
from glip.data import CocoIndex

# Two 20x30 images, two categories; every annotation has a box and a polygon.
GT = {
    "images": [{"id": 1, "file_name": "a.png", "height": 20, "width": 30}, {"id": 2, "file_name": "b.png", "height": 20, "width": 30}],
    "categories": [{"id": 1, "name": "circle", "frequency": "f"}, {"id": 2, "name": "square", "frequency": "f"}],
    "annotations": [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 3, 10, 8], "area": 80, "iscrowd": 0,
         "segmentation": [[2, 3, 12, 3, 12, 11, 2, 11]]},
        {"id": 2, "image_id": 2, "category_id": 2, "bbox": [5, 5, 6, 6], "area": 36, "iscrowd": 0,
         "segmentation": [[5, 5, 11, 5, 11, 11, 5, 11]]},
    ],
}  # fmt: skip


def _rle(height: int = 20, width: int = 30) -> dict:
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[3:11, 2:12] = 1
    rle = mask_utils.encode(np.asfortranarray(mask))
    return {"size": [height, width], "counts": rle["counts"].decode("ascii")}


def _results() -> list[dict]:
    """Good results: the ground truth itself, with masks."""
    return [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": list(a["bbox"]), "score": 0.9,
         "segmentation": _rle()}
        for a in GT["annotations"]
    ]  # fmt: skip


def _evaluate(tmp_path: Path, capsys, results, gt=GT, task="coco", iou=("bbox",)) -> tuple[int, str, Path, Path]:
    ann, res = tmp_path / "gt.json", tmp_path / "results.json"
    ann.write_text(gt if isinstance(gt, str) else json.dumps(gt))
    res.write_text(results if isinstance(results, str) else json.dumps(results))
    capsys.readouterr()
    args = ["--ann", str(ann), "--results", str(res), "--out", str(tmp_path / "out"), "--iou-type", *iou]
    rc = main(["evaluate", "--task", task, *args])
    return rc, capsys.readouterr().err, ann, res


def _second(change) -> list[dict]:
    """Good results whose entry 1 (the second) is changed by ``change(entry)``."""
    results = _results()
    change(results[1])
    return results


def test_good_files_score(tmp_path, capsys):
    rc, err, _, _ = _evaluate(tmp_path, capsys, _results(), iou=("bbox", "segm"))
    assert rc == 0 and err == ""
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["AP"] == pytest.approx(1.0) and "segm_AP" in metrics


@pytest.mark.parametrize(
    "change, problem",
    [
        (lambda e: e.update(score=math.nan), "score is nan, not a finite number"),  # AP 100 before
        (lambda e: e.update(score=math.inf), "score is inf, not a finite number"),
        (lambda e: e["bbox"].__setitem__(2, -4), "bbox has a negative width or height"),  # scored before
        (lambda e: e.update(category_id=77), "category_id 77 is not a category of the ground truth"),  # scored
        (lambda e: e.update(image_id=9), "image_id 9 is not an image of the ground truth"),
        (lambda e: e.pop("score"), "has no 'score'"),  # a KeyError traceback before
        (lambda e: e.pop("category_id"), "has no 'category_id'"),
        (lambda e: e.update(bbox="2 3 10 8"), "bbox must be [x, y, w, h], four numbers"),  # IndexError before
        (lambda e: e.update(bbox=[2, 3, 10]), "bbox must be [x, y, w, h], four numbers"),
        (lambda e: e.update(score="0.9"), 'score "0.9" is not a number'),
        (lambda e: e.update(score=True), "score true is not a number"),
        (lambda e: e.update(image_id=[2]), "image_id must be a number or a string"),
    ],
)
def test_bad_box_result_is_one_line_naming_file_and_entry(tmp_path, capsys, change, problem):
    rc, err, _, res = _evaluate(tmp_path, capsys, _second(change))
    assert rc == 1 and err.count("\n") == 1
    assert err.startswith(f"glip evaluate: error: {res}: entry 1 {{") and err.rstrip().endswith(problem)


def test_lvis_results_are_checked_too(tmp_path, capsys):
    rc, err, _, res = _evaluate(tmp_path, capsys, _second(lambda e: e.update(score=math.nan)), task="lvis")
    assert rc == 1 and err.count("\n") == 1 and f"{res}: entry 1 " in err and "score is nan" in err


@pytest.mark.parametrize("task", ["coco", "lvis"])
@pytest.mark.parametrize(
    "change, problem",
    [
        (lambda e: e.pop("segmentation"), "has no 'segmentation'"),
        (
            lambda e: e.update(segmentation=[[2, 3, 12, 3, 12, 11]]),
            "segmentation must be a compressed RLE {size, counts}",
        ),
        (
            lambda e: e.update(segmentation=_rle(10, 30)),
            "segmentation size [10, 30] is not its image's [height, width] [20, 30]",
        ),
        (lambda e: e["segmentation"].update(counts=[0, 600]), "segmentation counts must be a string (compressed RLE)"),
        (lambda e: e["segmentation"].update(size=[20]), "segmentation size must be [height, width]"),
    ],
)
def test_bad_mask_result(tmp_path, capsys, task, change, problem):
    rc, err, _, res = _evaluate(tmp_path, capsys, _second(change), task=task, iou=("segm",))
    assert rc == 1 and err.count("\n") == 1
    assert err.startswith(f"glip evaluate: error: {res}: entry 1 {{") and err.rstrip().endswith(problem)


def test_bad_ground_truth_polygon_for_mask_ap(tmp_path, capsys):
    gt = copy.deepcopy(GT)
    gt["annotations"][1]["segmentation"] = [[5, 5, 11, 5]]  # two points
    rc, err, ann, _ = _evaluate(tmp_path, capsys, _results(), gt=gt, iou=("segm",))
    assert rc == 1 and err.count("\n") == 1 and f"{ann}: annotations[1] " in err and "at least 3 points" in err


@pytest.mark.parametrize(
    "results, problem",
    [
        (
            json.dumps({"a": 1}),
            'COCO results are a JSON list [{"image_id", "category_id", "bbox": [x, y, w, h], "score"}',
        ),
        (json.dumps(_results())[:150], "not valid JSON, the file ends early (truncated?)"),
        ("[1, 2]", "entry 0 1: is a number, not an object with keys"),
    ],
)
def test_results_file_that_is_not_a_list_of_entries(tmp_path, capsys, results, problem):
    rc, err, _, res = _evaluate(tmp_path, capsys, results)
    assert rc == 1 and err.count("\n") == 1 and err.startswith(f"glip evaluate: error: {res}: ") and problem in err


@pytest.mark.parametrize(
    "change, problem",
    [
        (lambda gt: gt.pop("images"), "no 'images' (a COCO annotation file has 'images', 'annotations', 'categories')"),
        (lambda gt: gt.pop("categories"), "no 'categories'"),  # a KeyError traceback before
        (lambda gt: gt.update(images={}), "'images' must be a list, not an object"),
        (lambda gt: gt["images"][1].update(id=1), "images[1] {"),  # ... "id 1 is repeated"
        (lambda gt: gt["annotations"][1].update(category_id=5), "annotations[1] {"),
        (lambda gt: gt["annotations"][1]["bbox"].__setitem__(3, math.nan), "annotations[1] {"),
    ],
)
def test_bad_annotation_file(tmp_path, capsys, change, problem):
    gt = copy.deepcopy(GT)
    change(gt)
    rc, err, ann, _ = _evaluate(tmp_path, capsys, _results(), gt=gt)
    assert rc == 1 and err.count("\n") == 1 and err.startswith(f"glip evaluate: error: {ann}: ") and problem in err


def test_truncated_annotation_file_is_named(tmp_path, capsys):
    rc, err, ann, _ = _evaluate(tmp_path, capsys, _results(), gt=json.dumps(GT)[:-1])
    assert rc == 1 and err.startswith(f"glip evaluate: error: {ann}: not valid JSON, the file ends early")


class _NoModel:
    """Stands in for glip.api.Predictor: predicts nothing (each image, no detection)."""

    def __init__(self, *args, **kwargs):
        pass

    def iter_predict(self, images, prompt, **kwargs):
        yield from ()


def test_model_run_on_a_file_without_images_fails(tmp_path, capsys, monkeypatch):
    """It gave AP 0.0 with exit 0: no image was predicted."""
    monkeypatch.setattr("glip.api.Predictor", _NoModel)
    ann = tmp_path / "gt.json"
    ann.write_text(json.dumps({k: v for k, v in GT.items() if k != "images"}))
    rc = main(["evaluate", "--task", "coco", "--ann", str(ann), "--images", str(tmp_path), "--model", "demo-shapes",
               "--out", str(tmp_path / "out"), "--quiet"])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1 and f"{ann}: no 'images'" in err
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_training_index_checks_the_file(tmp_path):
    path = tmp_path / "train.json"
    path.write_text(json.dumps({"annotations": []}))
    with pytest.raises(ValueError, match=f"^{path}: no 'images'"):
        CocoIndex.load(path)
    path.write_text(json.dumps(dict(GT, annotations=[dict(GT["annotations"][0], image_id=3)])))
    with pytest.raises(ValueError, match=rf"^{path}: annotations\[0\] .*image_id 3 is not the id of an image"):
        CocoIndex.load(path)
    assert CocoIndex.load(_write(tmp_path / "ok.json", GT)).image_ids == [1, 2]


def _write(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(data))
    return path
