"""Multiclass (label-aware) non-maximum suppression with the official GPU semantics.

GLIP's published numbers were produced by the CUDA kernel ``ml_nms`` of
maskrcnn-benchmark (``csrc/cuda/ml_nms.cu``). Its semantics, reproduced here:

1. one global sort of all boxes by descending score;
2. greedy in that order: a kept box suppresses every later box **of the same label**
   whose IoU with it is ``> iou_threshold``, the IoU using inclusive-pixel areas
   (``x2 - x1 + 1``); suppressed boxes suppress nothing;
3. the kept indices are returned sorted ascending, i.e. in input order.

The official CPU branch (``boxlist_ml_nms`` on CPU) has an indexing bug (per-label
keep indices never mapped back to global ones), so it is deliberately not followed.

This is pure PyTorch and runs on any device. Since labels never interact, the boxes
are grouped by label (descending score inside each group) and each group runs an
exact greedy pass: its boxes are processed in blocks; a block is first cleared by
the kept boxes of the earlier blocks (one vectorised IoU), then resolved inside
itself by a fixed-point iteration whose unique fixed point is the sequential greedy
answer.
"""

from __future__ import annotations

import torch
from torch import Tensor

from glip.ops.boxes import box_iou

__all__ = ["multiclass_nms"]

# Boxes per block of the greedy pass. Any value gives the same result; 256 keeps the
# within-block fixed point short and the [K, block] IoU temporaries small.
_BLOCK = 256


def _greedy_nms(boxes: Tensor, iou_threshold: Tensor) -> Tensor:
    """Sequential greedy NMS of boxes of one label, already sorted by descending score.

    Args:
        boxes (Tensor[N, 4]): float32 ``(x1, y1, x2, y2)`` boxes, best first.
        iou_threshold (Tensor[]): float32 threshold; IoU (``+1`` areas) ``>`` it suppresses.

    Returns:
        Tensor[N]: bool, which boxes are kept.
    """
    n = boxes.shape[0]
    keep = torch.zeros(n, dtype=torch.bool, device=boxes.device)
    for start in range(0, n, _BLOCK):
        block = boxes[start : start + _BLOCK]  # [c, 4]
        kept_before = boxes[:start][keep[:start]]  # [K, 4], final
        alive = ~(box_iou(kept_before, block, offset=1.0) > iou_threshold).any(0)  # [c]
        # suppress[i, j]: block box i (better) would suppress block box j.
        suppress = (box_iou(block, block, offset=1.0) > iou_threshold).triu(1)  # [c, c]
        # keep_j = alive_j and no kept i < j suppresses j. Iterating this from "all kept"
        # reaches its unique fixed point, the greedy answer, in at most c steps
        # (position j is exact once every position before it is).
        current = alive
        while True:
            updated = alive & ~(suppress & current[:, None]).any(0)  # [c]
            if torch.equal(updated, current):
                break
            current = updated
        keep[start : start + _BLOCK] = current
    return keep


def multiclass_nms(boxes: Tensor, scores: Tensor, labels: Tensor, iou_threshold: float) -> Tensor:
    """Performs label-aware non-maximum suppression as the official CUDA ``ml_nms``.

    Boxes of different labels never suppress each other. Ties in score keep their
    input order (stable sort).

    Args:
        boxes (Tensor[N, 4]): boxes in ``(x1, y1, x2, y2)`` format, inclusive-pixel
            convention (IoU areas use ``x2 - x1 + 1``). Computed in float32, as the kernel.
        scores (Tensor[N]): score of each box.
        labels (Tensor[N]): integer (or float) label of each box.
        iou_threshold (float): boxes with IoU ``> iou_threshold`` are suppressed.

    Returns:
        Tensor[K]: int64 indices of the kept boxes, sorted ascending (input order).
    """
    n = boxes.shape[0]
    if n == 0:
        return torch.zeros((0,), dtype=torch.int64, device=boxes.device)
    order = torch.sort(scores, descending=True, stable=True).indices  # [N]
    # Group by label, keeping the descending score order inside each group.
    order = order[torch.sort(labels[order], stable=True).indices]  # [N]
    group_sizes = torch.unique_consecutive(labels[order], return_counts=True)[1].tolist()
    sorted_boxes = boxes[order].float()  # [N, 4]
    # The CUDA kernel compares a float32 IoU with a float32 threshold.
    threshold = torch.tensor(iou_threshold, dtype=torch.float32, device=boxes.device)
    keep = torch.cat([_greedy_nms(group, threshold) for group in sorted_boxes.split(group_sizes)])  # [N]
    return torch.sort(order[keep]).values
