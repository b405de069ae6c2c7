"""Box utilities and the GPU-semantics multiclass NMS, against hand-computed values,
float64 loop references and the official fixtures."""

from __future__ import annotations

import pytest
import torch

from glip.ops.boxes import box_area, box_iou, clip_boxes, remove_small_boxes, rescale_boxes
from glip.ops.multiclass_nms import multiclass_nms
from tests.conftest import CASES, TINY_CONFIGS, load_case


def _iou_loop(a: torch.Tensor, b: torch.Tensor, offset: float) -> torch.Tensor:
    """Scalar float64 reference of box_iou."""
    out = torch.zeros(len(a), len(b), dtype=torch.float64)
    for i, p in enumerate(a.double().tolist()):
        for j, q in enumerate(b.double().tolist()):
            iw = max(min(p[2], q[2]) - max(p[0], q[0]) + offset, 0.0)
            ih = max(min(p[3], q[3]) - max(p[1], q[1]) + offset, 0.0)
            inter = iw * ih
            area_p = (p[2] - p[0] + offset) * (p[3] - p[1] + offset)
            area_q = (q[2] - q[0] + offset) * (q[3] - q[1] + offset)
            out[i, j] = inter / (area_p + area_q - inter)
    return out


def _random_boxes(n: int, generator: torch.Generator, extent: float = 100.0) -> torch.Tensor:
    xy = torch.rand(n, 2, generator=generator) * extent
    wh = torch.rand(n, 2, generator=generator) * extent / 3 + 1
    return torch.cat([xy, xy + wh], dim=1)


def _ml_nms_loop(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, thr: float) -> list[int]:
    """Sequential transcription of the CUDA ml_nms semantics (float32 IoU, +1 areas)."""
    order = torch.sort(scores, descending=True, stable=True).indices.tolist()
    iou = box_iou(boxes.float(), boxes.float(), offset=1.0).tolist()  # float32 values, exact as doubles
    thr32 = float(torch.tensor(thr, dtype=torch.float32))
    label = labels.tolist()
    removed = [False] * len(order)
    keep = []
    for a, i in enumerate(order):
        if removed[a]:
            continue
        keep.append(i)
        for b in range(a + 1, len(order)):
            j = order[b]
            if label[i] == label[j] and iou[i][j] > thr32:
                removed[b] = True
    return sorted(keep)


# ---------------------------------------------------------------- box utilities


def test_box_area_offsets():
    boxes = torch.tensor([[0.0, 0.0, 9.0, 4.0], [2.0, 3.0, 2.0, 3.0]])
    assert box_area(boxes).tolist() == [36.0, 0.0]
    assert box_area(boxes, offset=1.0).tolist() == [50.0, 1.0]


def test_box_iou_hand_computed():
    a = torch.tensor([[0.0, 0.0, 4.0, 4.0]])
    b = torch.tensor([[1.0, 0.0, 5.0, 4.0], [10.0, 10.0, 12.0, 12.0]])
    # Continuous: inter 3*4 = 12, union 16 + 16 - 12 = 20. Inclusive pixels: 4*5 / (25 + 25 - 20).
    assert box_iou(a, b)[0].tolist() == pytest.approx([0.6, 0.0])
    assert box_iou(a, b, offset=1.0)[0].tolist() == pytest.approx([20 / 30, 0.0])


@pytest.mark.parametrize("offset", [0.0, 1.0])
def test_box_iou_matches_float64_loop(offset):
    g = torch.Generator().manual_seed(0)
    a, b = _random_boxes(17, g), _random_boxes(11, g)
    torch.testing.assert_close(box_iou(a, b, offset).double(), _iou_loop(a, b, offset), atol=1e-6, rtol=1e-6)
    assert box_iou(a[:0], b).shape == (0, 11)


def test_clip_boxes_official_convention():
    boxes = torch.tensor([[-5.0, -1.0, 500.0, 330.0], [10.0, 20.0, 30.0, 40.0]])
    # Official clip_to_image (TO_REMOVE = 1): x in [0, w - 1], y in [0, h - 1].
    clipped = clip_boxes(boxes, (320, 481))
    assert clipped.tolist() == [[0.0, 0.0, 480.0, 319.0], [10.0, 20.0, 30.0, 40.0]]
    assert clip_boxes(boxes, (320, 481), offset=0.0)[0].tolist() == [0.0, 0.0, 481.0, 320.0]
    assert clip_boxes(boxes[:0], (320, 481)).shape == (0, 4)


def test_remove_small_boxes_inclusive_sides():
    boxes = torch.tensor(
        [
            [0.0, 0.0, 9.0, 9.0],  # 10 x 10
            [5.0, 5.0, 4.0, 5.0],  # width x2 - x1 + 1 = 0: kept at min_size 0
            [5.0, 5.0, 3.5, 5.0],  # width -0.5: removed even at min_size 0
            [0.0, 0.0, 2.0, 8.0],  # 3 x 9
        ]
    )
    assert remove_small_boxes(boxes, 0).tolist() == [0, 1, 3]
    assert remove_small_boxes(boxes, 3).tolist() == [0, 3]
    assert remove_small_boxes(boxes, 4).tolist() == [0]
    assert remove_small_boxes(boxes[:0], 0).shape == (0,)


def test_rescale_boxes_no_offset():
    boxes = torch.tensor([[10.0, 20.0, 30.0, 40.0]])
    out = rescale_boxes(boxes, from_size=(320, 481), to_size=(300, 451))
    expected = [10 * 451 / 481, 20 * 300 / 320, 30 * 451 / 481, 40 * 300 / 320]
    assert out[0].tolist() == pytest.approx(expected, rel=1e-6)


# ---------------------------------------------------------------- multiclass NMS


def test_nms_uses_plus_one_areas():
    boxes = torch.tensor([[0.0, 0.0, 4.0, 4.0], [1.0, 0.0, 5.0, 4.0]])
    scores = torch.tensor([0.9, 0.8])
    labels = torch.tensor([1, 1])
    # IoU is 0.6 without the +1 and 20/30 = 0.667 with it: suppressed at 0.62.
    assert multiclass_nms(boxes, scores, labels, 0.62).tolist() == [0]
    assert multiclass_nms(boxes, scores, labels, 0.7).tolist() == [0, 1]


def test_nms_threshold_is_strict():
    # +1 IoU exactly 2 / 4 = 0.5.
    boxes = torch.tensor([[0.0, 0.0, 2.0, 0.0], [1.0, 0.0, 3.0, 0.0]])
    scores = torch.tensor([0.9, 0.8])
    labels = torch.tensor([3, 3])
    assert multiclass_nms(boxes, scores, labels, 0.5).tolist() == [0, 1]
    assert multiclass_nms(boxes, scores, labels, 0.49).tolist() == [0]


def test_nms_labels_suppressed_separately_and_input_order_returned():
    box = [0.0, 0.0, 10.0, 10.0]
    boxes = torch.tensor([box, box, box, box])
    scores = torch.tensor([0.1, 0.9, 0.5, 0.7])
    labels = torch.tensor([2, 1, 2, 1])
    # Best of label 1 is index 1, of label 2 index 2; returned ascending, not by score.
    assert multiclass_nms(boxes, scores, labels, 0.6).tolist() == [1, 2]


def test_nms_suppressed_boxes_do_not_suppress():
    # A overlaps B and B overlaps C (+1 IoU 85 / 115 = 0.74), A and C less (70 / 130 = 0.54).
    boxes = torch.tensor([[0.0, 0.0, 9.0, 9.0], [1.5, 0.0, 10.5, 9.0], [3.0, 0.0, 12.0, 9.0]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    labels = torch.tensor([1, 1, 1])
    assert multiclass_nms(boxes, scores, labels, 0.6).tolist() == [0, 2]


def test_nms_ties_keep_lower_index():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0]] * 3)
    scores = torch.tensor([0.5, 0.5, 0.5])
    labels = torch.tensor([1, 1, 1])
    assert multiclass_nms(boxes, scores, labels, 0.6).tolist() == [0]


def test_nms_empty():
    keep = multiclass_nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64), 0.6)
    assert keep.dtype == torch.int64 and keep.shape == (0,)


@pytest.mark.parametrize("n", [40, 700])
def test_nms_matches_sequential_loop(n):
    # 700 boxes in a small field: long suppression chains across several 256-box blocks.
    g = torch.Generator().manual_seed(n)
    boxes = _random_boxes(n, g, extent=60.0)
    scores = torch.rand(n, generator=g)
    scores[::7] = scores[0]  # exact ties
    labels = torch.randint(1, 4, (n,), generator=g)
    for thr in (0.3, 0.6):
        assert multiclass_nms(boxes, scores, labels, thr).tolist() == _ml_nms_loop(boxes, scores, labels, thr)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_nms_cuda_equals_cpu():
    g = torch.Generator().manual_seed(1)
    boxes, scores, labels = _random_boxes(900, g, 80.0), torch.rand(900, generator=g), torch.randint(1, 5, (900,))
    cpu = multiclass_nms(boxes, scores, labels, 0.6)
    cuda = multiclass_nms(boxes.cuda(), scores.cuda(), labels.cuda(), 0.6)
    assert cuda.device.type == "cuda" and torch.equal(cpu, cuda.cpu())


@pytest.mark.parametrize("config", TINY_CONFIGS)
@pytest.mark.parametrize("case", CASES)
def test_nms_reproduces_gpu_ml_nms_fixture(config, case):
    c = load_case(config, case)
    pre = c["post_pre_nms_concat"]
    keep = multiclass_nms(pre["bbox"], pre["fields"]["scores"], pre["fields"]["labels"], 0.6)
    ref = c["predictions"]["gpu_ml_nms_emulated"]["after_nms_before_topk_resized_coords"]
    # Same input order and the same ascending keep order: the boxes agree element-wise.
    assert torch.equal(pre["bbox"][keep], ref["bbox"])
    assert torch.equal(pre["fields"]["labels"][keep], ref["fields"]["labels"])
    # The buggy official CPU branch keeps other (duplicated) boxes.
    buggy = c["predictions"]["official_cpu"]["after_nms_before_topk_resized_coords"]["bbox"]
    assert buggy.shape[0] != keep.shape[0]
