"""Grounding post-processing against the official fixtures (stored head outputs in,
per-level boxes, NMS output and final detections out), plus synthetic edge cases."""

from __future__ import annotations

import math

import pytest
import torch

from glip.modeling.heads.grounding.postprocess import GroundingPostProcessor, label_token_index
from glip.ops.boxes import rescale_boxes
from tests.conftest import CASES, TINY_CONFIGS, load_case

BOX_ATOL = 1e-3  # pixels
SCORE_ATOL = 1e-5


def _processor(**overrides) -> GroundingPostProcessor:
    params = {"pre_nms_thresh": 0.0, "pre_nms_top_n": 1000, "nms_thresh": 0.6, "detections_per_img": 100, "min_size": 0}
    params.update(overrides)  # the fixtures use INFERENCE_TH 0.0; the rest as the official config
    return GroundingPostProcessor(**params)


def _inputs(c: dict) -> dict:
    return {
        "box_regression": c["head_bbox_reg"],
        "centerness": c["head_centerness"],
        "dot_product_logits": c["head_dot_product_logits"],
        "anchors": c["anchors"],
        "positive_map": c["positive_map"],
        "num_classes": 80,
        "image_sizes": [tuple(s) for s in c["image_sizes_field_hw"]],
    }


def _match(boxes, scores, labels, ref: dict) -> tuple[float, float]:
    """Matches two box sets one to one by label, coordinates and score; returns the max deviations.

    Several anchors of a level can give the same clipped box with the same label, so the
    score takes part in the matching; rows are then assigned greedily to the nearest unused
    reference entry.
    """
    ref_boxes, ref_scores, ref_labels = ref["bbox"], ref["fields"]["scores"], ref["fields"]["labels"]
    assert boxes.shape == ref_boxes.shape, (boxes.shape, ref_boxes.shape)
    box_dist = (boxes[:, None, :] - ref_boxes[None, :, :]).abs().amax(-1)  # [K, K]
    score_dist = (scores[:, None] - ref_scores[None, :]).abs()  # [K, K]
    cost = torch.maximum(box_dist / BOX_ATOL, score_dist / SCORE_ATOL)
    cost[labels[:, None] != ref_labels[None, :]] = math.inf
    used = torch.zeros(len(ref_boxes), dtype=torch.bool)
    box_dev = score_dev = 0.0
    for row in cost.min(1).values.argsort().tolist():
        col = int(cost[row].masked_fill(used, math.inf).argmin())
        assert not used[col] and math.isfinite(cost[row, col]), "no one-to-one match"
        used[col] = True
        box_dev = max(box_dev, box_dist[row, col].item())
        score_dev = max(score_dev, score_dist[row, col].item())
    return box_dev, score_dev


@pytest.fixture(scope="module", params=[(cfg, case) for cfg in TINY_CONFIGS for case in CASES], ids=str)
def case(request) -> dict:
    return load_case(*request.param)


def test_per_level_boxes_match_official(case):
    levels = _processor().per_level(**_inputs(case))
    assert len(levels) == len(case["post_per_level"])
    for (dets,), ref in zip(levels, case["post_per_level"]):
        assert list(ref["size_wh"]) == [dets.image_size[1], dets.image_size[0]]
        box_dev, score_dev = _match(dets.boxes, dets.scores, dets.labels, ref)
        assert box_dev <= BOX_ATOL and score_dev <= SCORE_ATOL


def test_after_nms_matches_gpu_ml_nms(case):
    # detections_per_img <= 0 disables the cut: everything NMS keeps.
    (dets,) = _processor(detections_per_img=0)(**_inputs(case))
    ref = case["predictions"]["gpu_ml_nms_emulated"]["after_nms_before_topk_resized_coords"]
    box_dev, score_dev = _match(dets.boxes, dets.scores, dets.labels, ref)
    assert box_dev <= BOX_ATOL and score_dev <= SCORE_ATOL


def test_final_detections_match_gpu_ml_nms(case):
    (dets,) = _processor()(**_inputs(case))
    ref = case["predictions"]["gpu_ml_nms_emulated"]
    assert dets.image_size == tuple(case["image_sizes_field_hw"][0])
    assert torch.all(dets.scores[:-1] >= dets.scores[1:]), "not sorted by score"
    box_dev, score_dev = _match(dets.boxes, dets.scores, dets.labels, ref["final_resized_image_coords"])
    assert box_dev <= BOX_ATOL and score_dev <= SCORE_ATOL

    # Rescaled to the original image, as the demo's BoxList.resize.
    original = tuple(case["image_size_original_hw"])
    resized = tuple(case["image_sizes_field_hw"][0])
    rescaled = rescale_boxes(dets.boxes, resized, original)
    box_dev, score_dev = _match(rescaled, dets.scores, dets.labels, ref["final_original_image_coords"])
    assert box_dev <= BOX_ATOL and score_dev <= SCORE_ATOL
    (direct,) = _processor()(**_inputs(case), original_sizes=[original])
    assert direct.image_size == original and torch.equal(direct.boxes, rescaled)


def test_not_the_buggy_official_cpu_variant(case):
    (dets,) = _processor(detections_per_img=0)(**_inputs(case))
    buggy = case["predictions"]["official_cpu"]
    assert len(dets) != len(buggy["after_nms_before_topk_resized_coords"]["bbox"])
    # The official CPU branch returns the same (box, label) several times; we never do.
    ours = torch.cat([dets.boxes, dets.labels[:, None].float()], 1)
    theirs = torch.cat(
        [
            buggy["final_resized_image_coords"]["bbox"],
            buggy["final_resized_image_coords"]["fields"]["labels"][:, None].float(),
        ],
        1,
    )
    assert torch.unique(ours, dim=0).shape[0] == len(ours)
    assert torch.unique(theirs, dim=0).shape[0] < len(theirs)


def test_dict_positive_map_equals_tensor(case):
    inputs = _inputs(case)
    (from_tensor,) = _processor()(**inputs)
    inputs["positive_map"] = case["positive_map_label_to_token"]
    (from_dict,) = _processor()(**inputs)
    assert torch.equal(from_tensor.boxes, from_dict.boxes) and torch.equal(from_tensor.scores, from_dict.scores)


def test_batch_equals_one_by_one():
    # Two images with the same padded size (chelsea through both tiny models), different
    # unpadded sizes so the clipping differs per image.
    cases = [load_case(cfg, "chelsea") for cfg in TINY_CONFIGS]
    sizes = [(320, 481), (300, 450)]
    singles = []
    for c, size in zip(cases, sizes):
        inputs = _inputs(c)
        inputs["image_sizes"] = [size]
        singles += _processor()(**inputs)
    batch = _inputs(cases[0])
    for key, field in (
        ("box_regression", "head_bbox_reg"),
        ("centerness", "head_centerness"),
        ("dot_product_logits", "head_dot_product_logits"),
    ):
        batch[key] = [torch.cat([a, b]) for a, b in zip(cases[0][field], cases[1][field])]  # L x [2, ...]
    batch["image_sizes"] = sizes
    batched = _processor()(**batch)
    assert len(batched) == 2
    for one, many in zip(singles, batched):
        assert one.image_size == many.image_size
        assert torch.equal(one.boxes, many.boxes) and torch.equal(one.scores, many.scores)
        assert torch.equal(one.labels, many.labels)


def _synthetic(logits: torch.Tensor, anchors: torch.Tensor) -> dict:
    """One level of ``n`` locations in a 1 x n grid, zero deltas, centerness logit 0."""
    n = anchors.shape[0]
    return {
        "box_regression": [torch.zeros(1, 4, 1, n)],
        "centerness": [torch.zeros(1, 1, 1, n)],
        "dot_product_logits": [logits.reshape(1, n, -1)],
        "anchors": [anchors],
        "num_classes": 80,
        "image_sizes": [(1000, 1000)],
    }


def test_no_candidates_gives_empty_detections():
    c = load_case("tiny_glip_a", "astronaut")
    (dets,) = _processor(pre_nms_thresh=0.9)(**_inputs(c))
    assert len(dets) == 0 and dets.boxes.shape == (0, 4) and dets.labels.dtype == torch.int64
    assert dets.image_size == (320, 320)


def test_score_aggregation_mean_and_max():
    anchors = torch.tensor([[0.0, 0.0, 9.0, 9.0]])
    # sigmoid(0) = 0.5, sigmoid(log 3) = 0.75; label 1 = tokens {1, 2}, label 2 = token {3}.
    logits = torch.tensor([[-9.0, 0.0, math.log(3.0), -math.log(3.0)]])
    positive_map = {1: [1, 2], 2: [3]}
    centerness = 0.5  # sigmoid(0)
    for agg, label1 in (("MEAN", 0.625), ("MAX", 0.75)):
        (dets,) = _processor(score_agg=agg)(**_synthetic(logits, anchors), positive_map=positive_map)
        assert dets.labels.tolist() == [1, 2]
        expected = [math.sqrt(label1 * centerness), math.sqrt(0.25 * centerness)]
        assert dets.scores.tolist() == pytest.approx(expected, rel=1e-6)
        assert torch.equal(dets.boxes, anchors.expand(2, 4))  # zero deltas decode to the anchor


def test_detections_per_img_keeps_ties():
    # Four far-apart boxes with identical scores: the kthvalue cut keeps all of them.
    anchors = torch.tensor([[0.0, 0.0, 9.0, 9.0], [100.0, 0, 109, 9], [200.0, 0, 209, 9], [300.0, 0, 309, 9]])
    inputs = _synthetic(torch.zeros(4, 2), anchors)
    (dets,) = _processor(detections_per_img=2)(**inputs, positive_map=torch.tensor([[0.5, 0.5]]))
    assert len(dets) == 4
    inputs["dot_product_logits"] = [torch.tensor([[[0.0, 0.0], [1.0, 1.0], [2.0, 2.0], [3.0, 3.0]]])]
    (dets,) = _processor(detections_per_img=2)(**inputs, positive_map=torch.tensor([[0.5, 0.5]]))
    assert dets.boxes[:, 0].tolist() == [300.0, 200.0]


def test_pre_nms_top_n_and_too_many_phrases():
    anchors = torch.tensor([[i * 100.0, 0.0, i * 100.0 + 9, 9.0] for i in range(6)])
    inputs = _synthetic(torch.arange(6.0)[:, None], anchors)
    levels = _processor(pre_nms_top_n=3).per_level(**inputs, positive_map={1: [0]})
    assert levels[0][0].boxes[:, 0].tolist() == [500.0, 400.0, 300.0]
    with pytest.raises(ValueError, match="num_classes"):
        _processor()(**{**inputs, "num_classes": 2}, positive_map=torch.ones(3, 1))


def test_label_token_index():
    index, valid = label_token_index({1: [1, 2], 3: [5]})
    assert index.tolist() == [[1, 2], [0, 0], [5, 0]]
    assert valid.tolist() == [[True, True], [False, False], [True, False]]
    index, valid = label_token_index(torch.tensor([[0.0, 0.5, 0.5], [0.0, 0.0, 1.0]]))
    assert index.tolist() == [[1, 2], [2, 0]] and valid.tolist() == [[True, True], [True, False]]
