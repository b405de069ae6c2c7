"""Flickr30k any-box recall and referring-expression precision on hand-made examples."""

from __future__ import annotations

import pytest
import torch

from glip.evaluation import GroundingRecall, box_iou


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
