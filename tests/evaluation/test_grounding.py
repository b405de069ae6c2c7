"""Flickr30k any-box recall (MDETR flickr_eval.py) and referring-expression precision
(MDETR / GLIP refexp.py) on hand-made examples, at the 0.5 boundary."""

from __future__ import annotations

import pytest
import torch

from glip.evaluation import GroundingRecall, box_iou
from glip.evaluation.grounding import generalized_box_iou, merge_boxes


def test_box_iou_hand_computed():
    a = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    b = torch.tensor([[5.0, 0.0, 15.0, 10.0], [20.0, 20.0, 30.0, 30.0]])
    torch.testing.assert_close(box_iou(a, b), torch.tensor([[50 / 150, 0.0]], dtype=torch.float64))


def test_recall_at_k_any_box():
    gt_a = torch.tensor([[0.0, 0.0, 10.0, 10.0], [50.0, 50.0, 60.0, 60.0]])  # phrase with two boxes
    gt_b = torch.tensor([[100.0, 100.0, 120.0, 120.0]])
    miss = [200.0, 200.0, 210.0, 210.0]
    tracker = GroundingRecall((1, 5, 10, -1))
    # Phrase A: the 2nd ground-truth box is found at rank 1 (any box counts).
    tracker.add(torch.tensor([[50.0, 50.0, 60.0, 61.0], miss]), gt_a)
    # Phrase B: found at rank 3 (IoU 2/3), so for k >= 5 only.
    tracker.add(torch.tensor([miss, miss, [100.0, 100.0, 120.0, 130.0]]), gt_b)
    # Phrase B again: found at rank 7 only (not in the top 5).
    tracker.add(torch.tensor([miss] * 6 + [[100.0, 100.0, 120.0, 120.0]]), gt_b)
    # Phrase A again: found at rank 11, beyond k=10: only the upper bound.
    tracker.add(torch.tensor([miss] * 10 + [[0.0, 0.0, 10.0, 10.0]]), gt_a)
    # No prediction at all: a miss everywhere.
    tracker.add(torch.zeros((0, 4)), gt_b)
    assert tracker.summary() == {"R@1": 1 / 5, "R@5": 2 / 5, "R@10": 3 / 5, "upper_bound": 4 / 5}
    other = GroundingRecall((1, 5, 10, -1))
    other.add(torch.tensor([[0.0, 0.0, 10.0, 10.0]]), gt_a)
    tracker.merge(other)
    assert tracker.summary()["R@1"] == pytest.approx(2 / 6)


def test_precision_names_and_errors():
    tracker = GroundingRecall((1,), prefix="P")
    tracker.add(torch.tensor([[0.0, 0.0, 10.0, 10.0]]), torch.tensor([[0.0, 0.0, 10.0, 14.0]]))  # IoU 0.714
    assert tracker.summary() == {"P@1": 1.0}
    with pytest.raises(ValueError):
        tracker.add(torch.zeros((1, 4)), torch.zeros((0, 4)))
    with pytest.raises(ValueError):
        GroundingRecall((0,))


def test_flickr_boundary_and_merged_ground_truth():
    # flickr_eval.py: "maxi >= iou_thresh": an IoU of exactly 0.5 (100 / 200) is a hit.
    pred = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    tracker = GroundingRecall((1,))
    tracker.add(pred, torch.tensor([[0.0, 0.0, 10.0, 20.0]]))
    tracker.add(pred, torch.tensor([[0.0, 0.0, 10.0, 20.01]]))  # just under 0.5
    assert tracker.summary() == {"R@1": 0.5}
    # Two ground-truth boxes, each half of the predicted one (IoU 0.5 each, a hit either way);
    # and two far apart whose enclosing box dwarfs the prediction: a hit separately, a miss merged.
    halves = torch.tensor([[0.0, 0.0, 5.0, 10.0], [5.0, 0.0, 10.0, 10.0]])
    torch.testing.assert_close(merge_boxes(halves), torch.tensor([[0.0, 0.0, 10.0, 10.0]]))
    apart = torch.tensor([[0.0, 0.0, 10.0, 10.0], [30.0, 30.0, 40.0, 40.0]])
    separate, merged = GroundingRecall((1,)), GroundingRecall((1,), merged_gt=True)
    for t in (separate, merged):
        t.add(pred, halves)
        t.add(pred, apart)
    assert separate.summary() == {"R@1": 1.0} and merged.summary() == {"R@1": 0.5}
    with pytest.raises(ValueError, match="overlap"):
        separate.merge(merged)


def test_refexp_uses_generalized_iou_at_least_half():
    pred = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    # Nested boxes: the enclosing box is the union, GIoU = IoU = 0.5 exactly: a hit (>=).
    nested = torch.tensor([[0.0, 0.0, 10.0, 20.0]])
    assert generalized_box_iou(pred, nested).item() == 0.5
    # Shifted diagonally: IoU above 0.5, GIoU below it (the hull is bigger than the union).
    shifted = torch.tensor([[1.75, 1.75, 11.75, 11.75]])  # inter 8.25^2, union 200 - inter, hull 11.75^2
    iou, giou = box_iou(pred, shifted).item(), generalized_box_iou(pred, shifted).item()
    assert iou == pytest.approx(68.0625 / 131.9375) and iou > 0.5  # 0.516
    assert giou == pytest.approx(68.0625 / 131.9375 - (138.0625 - 131.9375) / 138.0625) and giou < 0.5  # 0.472
    flickr, refexp = GroundingRecall((1,)), GroundingRecall((1,), prefix="P", overlap="giou")
    for t in (flickr, refexp):
        t.add(pred, nested)
        t.add(pred, shifted)
    assert flickr.summary() == {"R@1": 1.0} and refexp.summary() == {"P@1": 0.5}
    with pytest.raises(ValueError, match="overlap"):
        GroundingRecall((1,), overlap="dice")
