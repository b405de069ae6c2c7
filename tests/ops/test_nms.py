"""NMS and batched NMS against a scalar transcription of torchvision's CPU kernel, and backends against each other."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from glip.ops.backend import torchvision_available
from glip.ops.nms import batched_nms, nms

NO_TORCHVISION = "torchvision is not usable here, so there is no second backend to compare the pure path with"


def _nms_loop(boxes: torch.Tensor, scores: torch.Tensor, threshold: float) -> list[int]:
    """Scalar transcription of torchvision's CPU NMS kernel.

    The visiting order is the kernel's stable descending sort (ties: lower index first); the IoU is evaluated in
    the boxes' dtype with numpy scalars and compared in double.
    """
    scalar = np.float32 if boxes.dtype == torch.float32 else np.float64
    zero = scalar(0)
    b = [[scalar(v) for v in row] for row in boxes.tolist()]
    areas = [(x2 - x1) * (y2 - y1) for x1, y1, x2, y2 in b]
    order = scores.sort(dim=0, descending=True, stable=True)[1].tolist()
    suppressed = [False] * len(b)
    keep = []
    with np.errstate(invalid="ignore", divide="ignore"):  # 0/0 for zero-area pairs, as in the kernel
        for pos, i in enumerate(order):
            if suppressed[i]:
                continue
            keep.append(i)
            for j in order[pos + 1 :]:
                if suppressed[j]:
                    continue
                w = max(zero, min(b[i][2], b[j][2]) - max(b[i][0], b[j][0]))
                h = max(zero, min(b[i][3], b[j][3]) - max(b[i][1], b[j][1]))
                inter = w * h
                if float(inter / (areas[i] + areas[j] - inter)) > threshold:
                    suppressed[j] = True
    return keep


def _random_set(seed: int, n: int, dtype: torch.dtype = torch.float32, ties: bool = False):
    gen = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=gen) * 100
    wh = torch.rand(n, 2, generator=gen) * 40 + 0.5
    boxes = torch.cat([xy, xy + wh], dim=1).to(dtype)
    if n > 3:
        boxes[n // 2] = boxes[0]  # an exact duplicate
    scores = torch.rand(n, generator=gen, dtype=dtype)
    if ties:
        scores = (scores * 4).round() / 4  # only 5 distinct values
    return boxes, scores


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.7])
def test_nms_matches_scalar_reference(dtype: torch.dtype, ties: bool, threshold: float) -> None:
    for seed, n in enumerate([1, 2, 7, 60, 150]):
        boxes, scores = _random_set(seed, n, dtype, ties)
        keep = nms(boxes, scores, threshold, backend="torch")
        assert keep.dtype == torch.int64
        assert keep.tolist() == _nms_loop(boxes, scores, threshold)


def test_nms_hand_computed() -> None:
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 10.0]])
    scores = torch.tensor([0.5, 0.9, 0.8, 0.1])
    # IoU(box1, box0) = 81 / 119 = 0.68; box3 duplicates box0 (suppressed by box1 too: 0.68 > 0.5).
    assert nms(boxes, scores, 0.5, backend="torch").tolist() == [1, 2]
    assert nms(boxes, scores, 0.7, backend="torch").tolist() == [1, 2, 0]  # box3 == box0: IoU 1
    assert nms(boxes, scores, 1.0, backend="torch").tolist() == [1, 2, 0, 3]  # "> 1.0" never holds


def test_threshold_is_compared_in_double() -> None:
    """IoU 60/100 rounds to float32 0.60000002 > 0.6 (double): suppressed, as in torchvision's CPU kernel."""
    boxes = torch.tensor([[0, 0, 10, 10], [0, 0, 6, 10.0]])
    scores = torch.tensor([1.0, 0.9])
    assert nms(boxes, scores, 0.6, backend="torch").tolist() == [0]
    assert nms(boxes.double(), scores.double(), 0.6, backend="torch").tolist() == [0, 1]  # exactly 0.6 in double


def test_degenerate_boxes_are_kept() -> None:
    """Zero-area boxes have IoU 0/0 = NaN with each other, which never exceeds the threshold."""
    boxes = torch.tensor([[5, 5, 5, 5], [5, 5, 5, 5.0]])
    assert nms(boxes, torch.tensor([0.2, 0.3]), 0.5, backend="torch").tolist() == [1, 0]


def test_empty_and_half_inputs() -> None:
    empty = nms(torch.zeros(0, 4), torch.zeros(0), 0.5, backend="torch")
    assert empty.dtype == torch.int64 and empty.shape == (0,)
    empty = batched_nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64), 0.5, backend="torch")
    assert empty.dtype == torch.int64 and empty.shape == (0,)
    boxes, scores = _random_set(0, 50)
    boxes = boxes.round()  # exactly representable in fp16
    keep = nms(boxes.half(), scores.half(), 0.5, backend="torch")
    assert keep.tolist() == _nms_loop(boxes, scores.half().float(), 0.5)


def test_bad_shapes_raise() -> None:
    with pytest.raises(ValueError):
        nms(torch.zeros(3, 5), torch.zeros(3), 0.5)
    with pytest.raises(ValueError):
        nms(torch.zeros(3, 4), torch.zeros(2), 0.5)


@pytest.mark.parametrize("n", [80, 1500])  # coordinate-offset trick (<= 4000 coordinates), then per category
def test_batched_nms_is_per_category(n: int) -> None:
    boxes, scores = _random_set(3, n)
    boxes = boxes.round()  # integer coordinates: the offset trick shifts them exactly
    gen = torch.Generator().manual_seed(4)
    idxs = torch.randint(0, 5, (n,), generator=gen)
    keep = batched_nms(boxes, scores, idxs, 0.5, backend="torch")
    expected = set()
    for c in range(5):
        members = torch.where(idxs == c)[0]
        expected |= {members[i].item() for i in _nms_loop(boxes[members], scores[members], 0.5)}
    assert set(keep.tolist()) == expected and len(keep) == len(expected)
    assert bool((scores[keep][1:] <= scores[keep][:-1]).all())  # decreasing score
    same_category = batched_nms(boxes, scores, torch.zeros_like(idxs), 0.5, backend="torch")
    assert set(same_category.tolist()) == set(_nms_loop(boxes, scores, 0.5))


def test_nms_handles_thousands_of_boxes() -> None:
    boxes, scores = _random_set(5, 3000)
    keep = nms(boxes, scores, 0.5, backend="torch")
    kept = boxes[keep]
    # No two kept boxes overlap by more than the threshold, and every dropped box overlaps a better kept one.
    x1, y1, x2, y2 = kept.unbind(1)
    inter = (torch.minimum(x2[:, None], x2) - torch.maximum(x1[:, None], x1)).clamp(min=0) * (
        torch.minimum(y2[:, None], y2) - torch.maximum(y1[:, None], y1)
    ).clamp(min=0)
    area = (x2 - x1) * (y2 - y1)
    iou = inter / (area[:, None] + area - inter)
    iou.fill_diagonal_(0)
    assert bool((iou <= 0.5).all())
    assert 0 < len(keep) < 3000


@pytest.mark.skipif(not torchvision_available(), reason=NO_TORCHVISION)
@pytest.mark.parametrize("ties", [False, True])
def test_backends_agree(ties: bool) -> None:
    for seed, n in enumerate([1, 30, 500, 2500]):
        boxes, scores = _random_set(seed, n, ties=ties)
        torch.testing.assert_close(
            nms(boxes, scores, 0.5, backend="torch"), nms(boxes, scores, 0.5, backend="torchvision")
        )
        idxs = torch.randint(0, 4, (n,), generator=torch.Generator().manual_seed(seed))
        pure = batched_nms(boxes, scores, idxs, 0.5, backend="torch")
        native = batched_nms(boxes, scores, idxs, 0.5, backend="torchvision")
        if ties:  # the final score sort of the per-category strategy is unstable: compare as sets
            assert set(pure.tolist()) == set(native.tolist())
        else:
            torch.testing.assert_close(pure, native)
