"""COCO AP: known answers and equality with pycocotools called directly."""

from __future__ import annotations

import contextlib
import copy
import io

import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from glip.evaluation import COCO_METRICS, evaluate_coco
from tests.evaluation.synthetic_gt import ground_truth_as_results, perturbed_results, random_ground_truth


def test_ground_truth_as_predictions_gives_ap_one():
    gt = random_ground_truth(0, num_images=12)
    metrics = evaluate_coco(gt, ground_truth_as_results(gt))
    assert metrics["AP"] == 1.0 and metrics["AP50"] == 1.0 and metrics["AP75"] == 1.0
    assert all(metrics[k] in (1.0, -1.0) for k in ("APs", "APm", "APl"))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_perturbed_equals_pycocotools(seed, tmp_path):
    gt = random_ground_truth(seed, num_images=10)
    results = perturbed_results(gt, seed + 100)
    with contextlib.redirect_stdout(io.StringIO()):
        api = COCO()
        api.dataset = copy.deepcopy(gt)
        api.createIndex()
        evaluator = COCOeval(api, api.loadRes(copy.deepcopy(results)), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    ours = evaluate_coco(gt, results)
    assert list(ours) == list(COCO_METRICS)
    assert [ours[k] for k in COCO_METRICS] == [float(v) for v in evaluator.stats]
    assert 0.0 < ours["AP"] < 1.0


def test_no_results_and_unknown_images():
    gt = random_ground_truth(0)
    assert evaluate_coco(gt, [])["AP"] == 0.0
    with pytest.raises(ValueError, match="absent from the ground truth"):
        evaluate_coco(gt, [{"image_id": 999999, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 1.0}])
