"""PhraseCut metrics (MDETR's protocol) on hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from glip.evaluation.phrasecut import PhraseCutMeter, phrase_mask, phrasecut_metrics
from glip.structures import Detections


def _mask(rows: slice, cols: slice, size=(4, 4)) -> np.ndarray:
    m = np.zeros(size, dtype=bool)
    m[rows, cols] = True
    return m


def test_hand_cases() -> None:
    gt = _mask(slice(0, 2), slice(0, 4))  # 8 pixels
    preds = [
        gt.copy(),  # IoU 1
        _mask(slice(0, 1), slice(0, 4)),  # 4 / 8 = 0.5
        _mask(slice(0, 3), slice(0, 4)),  # 8 / 12 = 0.667
        np.zeros((4, 4), dtype=bool),  # 0
    ]
    m = phrasecut_metrics(preds, [gt] * 4)
    assert m["mIoU"] == pytest.approx((1 + 0.5 + 2 / 3 + 0) / 4)
    assert m["cIoU"] == pytest.approx((8 + 4 + 8 + 0) / (8 + 8 + 12 + 8))
    assert m["Pr@0.5"] == pytest.approx(3 / 4) and m["Pr@0.7"] == pytest.approx(1 / 4)
    assert m["Pr@0.9"] == pytest.approx(1 / 4)
    meter = PhraseCutMeter()
    assert meter.summary()["mIoU"] == 0.0
    assert meter.add(np.zeros((2, 2)), np.zeros((2, 2))) == 1.0  # both empty: perfect
    with pytest.raises(ValueError, match="differ in size"):
        meter.add(np.zeros((2, 2)), np.zeros((3, 2)))


def test_phrase_mask_is_the_union_above_the_threshold() -> None:
    masks = torch.zeros(3, 4, 4, dtype=torch.bool)
    masks[0, 0, 0] = masks[1, 1, 1] = masks[2, 2, 2] = True
    det = Detections(torch.rand(3, 4), torch.tensor([0.9, 0.6, 0.3]), torch.tensor([1, 1, 1]), [], (4, 4), masks)
    union = phrase_mask(det, 1, threshold=0.5)
    assert union.sum() == 2 and union[0, 0] and union[1, 1] and not union[2, 2]
    assert not phrase_mask(det, 2).any()
    with pytest.raises(ValueError, match="masks"):
        phrase_mask(Detections.empty((4, 4)), 1)
