"""LVIS AP against the LVIS API itself, a hand-computed Fixed AP, and the top-k collector."""

from __future__ import annotations

import json
import random

import pytest

from glip.evaluation.lvis import TopKPerCategory, evaluate_lvis
from tests.evaluation.synthetic_gt import ground_truth_as_results, perturbed_results, random_ground_truth


def _reference(api, gt, results, tmp_path, max_dets):
    LVIS, LVISResults, LVISEval = api
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(gt))
    lvis_gt = LVIS(str(path))
    dt = LVISResults(lvis_gt, [dict(r) for r in results], max_dets=max_dets)
    evaluator = LVISEval(lvis_gt, dt, iou_type="bbox")
    evaluator.params.max_dets = max_dets
    evaluator.run()
    return {k: float(v) for k, v in evaluator.results.items() if k.startswith("AP")}


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("max_dets", [-1, 300, 4])
def test_equals_lvis_api(lvis_api, tmp_path, seed, max_dets):
    gt = random_ground_truth(seed, num_images=10, num_categories=6, lvis=True)
    results = perturbed_results(gt, seed + 10)
    ours = evaluate_lvis(gt, results, max_dets=max_dets)
    ref = _reference(lvis_api, gt, results, tmp_path, max_dets)
    assert set(ours) == set(ref)
    for key in ref:
        assert ours[key] == pytest.approx(ref[key], abs=1e-12), key


def test_ground_truth_as_predictions_is_perfect():
    gt = random_ground_truth(3, lvis=True)
    metrics = evaluate_lvis(gt, ground_truth_as_results(gt))
    assert metrics["AP"] == 1.0 and metrics["AP50"] == 1.0
    for key in ("APr", "APc", "APf"):
        assert metrics[key] in (1.0, -1.0)


def _one_category_example():
    box1, box2 = [10.0, 10.0, 50.0, 50.0], [100.0, 100.0, 50.0, 50.0]
    gt = {
        "images": [
            {"id": 1, "neg_category_ids": [], "not_exhaustive_category_ids": []},
            {"id": 2, "neg_category_ids": [], "not_exhaustive_category_ids": []},
        ],
        "categories": [{"id": 7, "name": "thing", "frequency": "f"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 7, "bbox": box1, "area": 2500.0},
            {"id": 2, "image_id": 2, "category_id": 7, "bbox": box2, "area": 2500.0},
        ],
    }
    dets = [
        {"image_id": 1, "category_id": 7, "bbox": box1, "score": 0.9},  # hit
        {"image_id": 1, "category_id": 7, "bbox": [300.0, 300.0, 40.0, 40.0], "score": 0.8},  # false positive
        {"image_id": 2, "category_id": 7, "bbox": box2, "score": 0.7},  # hit
    ]
    return gt, dets


def test_hand_computed_fixed_ap():
    gt, dets = _one_category_example()
    # All three kept: precision 1 up to recall 0.5 (51 of the 101 recall points), then the
    # interpolated precision of the third detection, 2/3, for the 50 points above 0.5.
    collector = TopKPerCategory(k=3)
    for index, image_id in enumerate((1, 2)):
        collector.add(index, [d for d in dets if d["image_id"] == image_id])
    metrics = evaluate_lvis(gt, collector.results(), max_dets=-1)
    expected = (51 * 1.0 + 50 * (2 / 3)) / 101
    assert metrics["AP"] == pytest.approx(expected, abs=1e-12)
    assert metrics["APf"] == metrics["AP"] and metrics["APr"] == -1.0 and metrics["APm"] == metrics["AP"]
    # Top-2 per category over the dataset drops the 0.7 hit: recall stops at 0.5.
    top2 = TopKPerCategory(k=2)
    for index, image_id in enumerate((1, 2)):
        top2.add(index, [d for d in dets if d["image_id"] == image_id])
    assert len(top2.results()) == 2 and top2.categories_below_k() == []
    assert evaluate_lvis(gt, top2.results())["AP"] == pytest.approx(51 / 101, abs=1e-12)
    # A per-image cap of one detection instead drops the false positive: AP 1.
    assert evaluate_lvis(gt, dets, max_dets=1)["AP"] == pytest.approx(1.0)


def test_top_k_split_between_collectors_equals_one():
    rng = random.Random(0)
    images = [
        [{"image_id": i, "category_id": rng.randint(1, 3), "bbox": [0, 0, 1, 1], "score": rng.choice([0.1, 0.5, 0.9])}
         for _ in range(rng.randint(0, 6))]
        for i in range(20)
    ]  # fmt: skip
    single = TopKPerCategory(k=5)
    for index, entries in enumerate(images):
        single.add(index, entries)
    parts = [TopKPerCategory(k=5), TopKPerCategory(k=5)]
    for index, entries in enumerate(images):
        parts[index % 2].add(index, entries)
    merged = TopKPerCategory(k=5)
    for part in reversed(parts):
        merged.merge(part)
    assert merged.results() == single.results()
    assert all(sum(r["category_id"] == c for r in single.results()) <= 5 for c in (1, 2, 3))


def test_top_k_at_the_cap_keeps_earlier_arrivals_on_ties():
    """GLIP lvis_eval.py LvisEvaluatorFixedAP.update / _merge_lists (from Dave et al.'s
    evaluate_ap_fixed.py): per category the top k over the whole set; an entry displaces a
    kept one only with a strictly higher score, so among equal scores the earlier image
    (and within an image the earlier detection) stays."""

    def entry(image: int, score: float, cat: int = 1) -> dict:
        return {"image_id": image, "category_id": cat, "bbox": [0, 0, 1, 1], "score": score}

    exactly = TopKPerCategory(k=3)
    exactly.add(0, [entry(0, 0.2), entry(0, 0.9)])
    exactly.add(1, [entry(1, 0.5), entry(1, 0.7, cat=2)])
    assert [r["score"] for r in exactly.results() if r["category_id"] == 1] == [0.9, 0.5, 0.2]  # k entries: all kept
    assert exactly.categories_below_k() == [2]  # category 2 has one detection, under the cap
    over = TopKPerCategory(k=3)
    over.add(0, [entry(0, 0.5), entry(0, 0.9)])
    over.add(1, [entry(1, 0.5), entry(1, 0.2)])  # a 4th entry: the lowest (0.2) goes
    over.add(2, [entry(2, 0.5)])  # ties the lowest kept (0.5): the earlier ones stay
    kept = [(r["image_id"], r["score"]) for r in over.results()]
    assert kept == [(0, 0.9), (0, 0.5), (1, 0.5)]
    over.add(3, [entry(3, 0.6)])  # strictly higher: displaces the latest 0.5
    assert [(r["image_id"], r["score"]) for r in over.results()] == [(0, 0.9), (3, 0.6), (0, 0.5)]
