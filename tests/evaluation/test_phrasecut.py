"""PhraseCut metrics (the authors' utils/evaluator.py and utils/iou.py, as MDETR imports
them) on hand-computed cases: empty intersections, IoUs exactly at a threshold, box IoU on
pixels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from glip.evaluation.phrasecut import (
    PHRASECUT_BOX_METRICS,
    PHRASECUT_METRICS,
    PhraseCutMeter,
    box_union_iou,
    phrase_mask,
    phrasecut_metrics,
)
from glip.structures import Detections


def _mask(rows: slice, cols: slice, size=(4, 4)) -> np.ndarray:
    m = np.zeros(size, dtype=bool)
    m[rows, cols] = True
    return m


def test_hand_cases() -> None:
    gt = _mask(slice(0, 2), slice(0, 4))  # 8 pixels
    preds = [
        gt.copy(),  # IoU 1
        _mask(slice(0, 1), slice(0, 4)),  # 4 / 8 = 0.5: exactly at the threshold, not above it
        _mask(slice(0, 3), slice(0, 4)),  # 8 / 12 = 0.667
        np.zeros((4, 4), dtype=bool),  # 0
    ]
    m = phrasecut_metrics(preds, [gt] * 4)
    assert m["mIoU"] == pytest.approx((1 + 0.5 + 2 / 3 + 0) / 4)
    assert m["cIoU"] == pytest.approx((8 + 4 + 8 + 0) / (8 + 8 + 12 + 8))
    # Evaluator.analyze_stats: IoU strictly above t, for t = 0.5 .. 0.9.
    assert {k: v for k, v in m.items() if k.startswith("Pr@")} == pytest.approx(
        {"Pr@0.5": 2 / 4, "Pr@0.6": 2 / 4, "Pr@0.7": 1 / 4, "Pr@0.8": 1 / 4, "Pr@0.9": 1 / 4}
    )
    # IoU exactly 0.6 (6 of 10 pixels): above 0.5, not above 0.6.
    ten = _mask(slice(0, 2), slice(0, 5), size=(2, 5))
    six = _mask(slice(0, 2), slice(0, 3), size=(2, 5))
    m = phrasecut_metrics([six], [ten])
    assert m["mIoU"] == 0.6 and m["Pr@0.5"] == 1.0 and m["Pr@0.6"] == 0.0
    meter = PhraseCutMeter()
    assert meter.summary()["mIoU"] == 0.0
    # iou.py: IoU 0 whenever the intersection is empty, so also when both masks are empty.
    assert meter.add(np.zeros((2, 2)), np.zeros((2, 2))) == 0.0
    assert meter.summary() == {"mIoU": 0.0, "cIoU": 0.0, **{f"Pr@{t}": 0.0 for t in (0.5, 0.6, 0.7, 0.8, 0.9)}}
    with pytest.raises(ValueError, match="differ in size"):
        meter.add(np.zeros((2, 2)), np.zeros((3, 2)))


def test_box_iou_on_pixels_as_the_evaluator() -> None:
    # iou_boxes fills rows int(y):int(y + h - 1): a 10 x 10 box covers 9 x 9 pixels, so
    # [0, 0, 10, 10] against [0, 0, 10, 19] is 81 / 162 = 0.5 exactly (100 / 190 as areas).
    assert box_union_iou([[0, 0, 10, 10]], [[0, 0, 10, 19]]) == 0.5
    assert box_union_iou([[0, 0, 10, 10]], [[0, 0, 10, 10]]) == 1.0
    assert box_union_iou([], [[0, 0, 10, 10]]) == 0.0  # no predicted box
    assert box_union_iou([[0, 0, 10, 10]], [[9, 0, 10, 10]]) == 0.0  # they touch, sharing no pixel
    # The union of the boxes on each side: two halves of the ground truth make it whole.
    assert box_union_iou([[0, 0, 6, 10], [5, 0, 6, 10]], [[0, 0, 11, 10]]) == 1.0
    meter = PhraseCutMeter()
    meter.add(np.ones((2, 2)), np.ones((2, 2)))
    meter.add_boxes([[0, 0, 10, 10]], [[0, 0, 10, 19]])  # 0.5: not above the 0.5 threshold
    meter.add(np.ones((2, 2)), np.ones((2, 2)))
    meter.add_boxes([[0, 0, 10, 10]], [[0, 0, 10, 10]])
    m = meter.summary()
    assert m["box_mIoU"] == 0.75 and m["box_Pr@0.5"] == 0.5 and m["box_Pr@0.9"] == 0.5
    assert set(m) == set(PHRASECUT_METRICS) | set(PHRASECUT_BOX_METRICS)


def test_phrase_mask_is_the_union_above_the_threshold() -> None:
    masks = torch.zeros(3, 4, 4, dtype=torch.bool)
    masks[0, 0, 0] = masks[1, 1, 1] = masks[2, 2, 2] = True
    det = Detections(torch.rand(3, 4), torch.tensor([0.9, 0.6, 0.3]), torch.tensor([1, 1, 1]), [], (4, 4), masks)
    union = phrase_mask(det, 1, threshold=0.5)
    assert union.sum() == 2 and union[0, 0] and union[1, 1] and not union[2, 2]
    assert not phrase_mask(det, 2).any()
    with pytest.raises(ValueError, match="masks"):
        phrase_mask(Detections.empty((4, 4)), 1)
