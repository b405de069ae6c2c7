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


@pytest.mark.parametrize("chunk", [1, 2, 3])
def test_categories_evaluated_in_chunks_equal_pycocotools_and_leave_the_inputs_alone(chunk):
    """evaluate_coco runs COCOeval a few categories at a time (memory) and joins the
    per-category arrays: the twelve numbers are pycocotools' own, bit for bit, also with
    an image and category subset; the caller's ground truth and results are not modified."""
    gt = random_ground_truth(3, num_images=14, num_categories=7)
    results = perturbed_results(gt, 103)
    gt_before, results_before = copy.deepcopy(gt), copy.deepcopy(results)
    images, cats = [im["id"] for im in gt["images"]][2:11], [6, 2, 3, 5]
    for subset in ({}, {"image_ids": images, "category_ids": cats}):
        with contextlib.redirect_stdout(io.StringIO()):
            api = COCO()
            api.dataset = copy.deepcopy(gt)
            api.createIndex()
            evaluator = COCOeval(api, api.loadRes(copy.deepcopy(results)), "bbox")
            if subset:
                evaluator.params.imgIds, evaluator.params.catIds = images, cats
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        ours = evaluate_coco(gt, results, category_chunk=chunk, **subset)
        assert [ours[k] for k in COCO_METRICS] == [float(v) for v in evaluator.stats]
    assert gt == gt_before and results == results_before


def test_no_results_and_unknown_images():
    gt = random_ground_truth(0)
    assert evaluate_coco(gt, [])["AP"] == 0.0
    with pytest.raises(ValueError, match="absent from the ground truth"):
        evaluate_coco(gt, [{"image_id": 999999, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 1.0}])
