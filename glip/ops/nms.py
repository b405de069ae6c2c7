"""Non-maximum suppression with torchvision semantics: torchvision's kernel when usable, else pure PyTorch.

Semantics (those of ``torchvision.ops.nms``, which the official GLIP calls):

- boxes are ``(x1, y1, x2, y2)``; areas are ``(x2 - x1) * (y2 - y1)`` (no ``+ 1``);
- boxes are visited in the order of a stable descending score sort (torchvision >= 0.2x's kernel sorts
  with ``stable=True``, so among equal scores the lower index comes first); a visited, not yet suppressed
  box is kept and suppresses every later box whose IoU with it is ``> iou_threshold``. The IoU is
  computed in the boxes' dtype and compared with the threshold in float64, as the C++ kernel does;
- the kept indices are returned in decreasing score order.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from glip.ops.backend import resolve_backend

__all__ = ["batched_nms", "nms"]

# Rows of the IoU matrix computed at once by the pure path: bounds its float temporaries to
# _IOU_BLOCK_ROWS * N elements (the boolean "suppresses" matrix itself is N * N bytes).
_IOU_BLOCK_ROWS = 1024


def _check_inputs(boxes: Tensor, scores: Tensor) -> None:
    if boxes.dim() != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"boxes should have shape [N, 4], got {tuple(boxes.shape)}")
    if scores.dim() != 1 or scores.shape[0] != boxes.shape[0]:
        raise ValueError(f"scores should have shape [{boxes.shape[0]}], got {tuple(scores.shape)}")


def _upcast(t: Tensor) -> Tensor:
    # fp16/bf16 lack the range (areas of large boxes, batched_nms coordinate offsets) and the precision
    # for a reliable IoU; torchvision's CPU kernel does not even accept them. Same choice as detectron2.
    return t.float() if t.is_floating_point() and t.element_size() < 4 else t


def _threshold_for(dtype: torch.dtype, iou_threshold: float) -> float:
    """A threshold ``t`` such that ``iou > t`` in ``dtype`` equals the C++ kernel's ``double(iou) > iou_threshold``.

    A float32 tensor compared with a Python float rounds the float to nearest float32, which can flip the
    result when the IoU lands on that value (IoU 0.6f = 0.60000002 > 0.6 in double, but not > 0.6f). For a
    float32 IoU, ``iou > iou_threshold`` (double) holds iff ``iou > r`` with ``r`` the largest float32 <= it.
    """
    if dtype != torch.float32:
        return iou_threshold  # float64: the comparison is already in double
    rounded = np.float32(iou_threshold)
    if float(rounded) > iou_threshold:
        rounded = np.nextafter(rounded, np.float32(-np.inf))
    return float(rounded)


def _nms_torch(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Pure-PyTorch NMS: the upper triangle of the "suppresses" matrix by row blocks, then a greedy scan on CPU."""
    n = boxes.shape[0]
    if n == 0:
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    order = scores.sort(dim=0, descending=True, stable=True)[1]
    x1, y1, x2, y2 = boxes[order].unbind(1)  # 4 x [N], in visiting order
    areas = (x2 - x1) * (y2 - y1)  # [N]
    threshold = _threshold_for(boxes.dtype, iou_threshold)

    # suppresses[i, j] for j > i: box i (if kept) suppresses box j. Only columns >= the block's first row are
    # computed; the greedy scan reads only j > i. Same operation order as the C++ kernel: bit-identical IoU.
    suppresses = torch.zeros((n, n), dtype=torch.bool, device=boxes.device)  # [N, N]
    for start in range(0, n, _IOU_BLOCK_ROWS):
        rows, cols = slice(start, min(start + _IOU_BLOCK_ROWS, n)), slice(start, n)
        inter = (torch.minimum(x2[rows, None], x2[cols]) - torch.maximum(x1[rows, None], x1[cols])).clamp_(min=0)
        inter *= (torch.minimum(y2[rows, None], y2[cols]) - torch.maximum(y1[rows, None], y1[cols])).clamp_(min=0)
        union = (areas[rows, None] + areas[cols]).sub_(inter)  # [rows, N - start]
        suppresses[rows, cols] = inter.div_(union) > threshold  # [rows, N - start]

    over = suppresses.cpu().numpy()  # [N, N]
    removed = np.zeros(n, dtype=bool)
    kept: list[int] = []
    for i in range(n):
        if not removed[i]:
            kept.append(i)
            later = removed[i + 1 :]
            later |= over[i, i + 1 :]
    return order[torch.tensor(kept, dtype=torch.int64, device=order.device)]


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float, *, backend: str | None = None) -> Tensor:
    """Non-maximum suppression with torchvision semantics (see the module docstring).

    Args:
        boxes (Tensor[N, 4]): boxes in ``(x1, y1, x2, y2)`` format.
        scores (Tensor[N]): score of each box.
        iou_threshold (float): a kept box suppresses the lower-scored boxes with IoU ``> iou_threshold``.
        backend (str, optional): ``"torch"`` or ``"torchvision"``; default: see :func:`resolve_backend`.

    Returns:
        Tensor[K]: int64 indices of the kept boxes, in decreasing order of score.

    fp16/bf16 inputs are upcast to float32, and scores are cast to the boxes' dtype (the kernel needs both equal).
    """
    _check_inputs(boxes, scores)
    if boxes.shape[0] == 0:
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    boxes, scores = _upcast(boxes), _upcast(scores)
    if scores.dtype != boxes.dtype:
        scores = scores.to(boxes.dtype)
    if resolve_backend(backend, op="nms", device=boxes.device) == "torchvision":
        return torch.ops.torchvision.nms(boxes, scores, float(iou_threshold))
    return _nms_torch(boxes, scores, float(iou_threshold))


def _batched_nms_coordinate_trick(
    boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float, backend: str
) -> Tensor:
    # Shift each category's boxes by idx * (max coordinate + 1) so that categories never overlap.
    max_coordinate = boxes.max()
    offsets = idxs.to(boxes) * (max_coordinate + torch.tensor(1).to(boxes))  # [N]
    return nms(boxes + offsets[:, None], scores, iou_threshold, backend=backend)


def _batched_nms_per_category(
    boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float, backend: str
) -> Tensor:
    keep_mask = torch.zeros_like(scores, dtype=torch.bool)  # [N]
    for category in torch.unique(idxs):
        members = torch.where(idxs == category)[0]  # [M]
        keep_mask[members[nms(boxes[members], scores[members], iou_threshold, backend=backend)]] = True
    keep = torch.where(keep_mask)[0]  # [K]
    return keep[scores[keep].sort(descending=True)[1]]


def batched_nms(
    boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float, *, backend: str | None = None
) -> Tensor:
    """NMS independently per category, with torchvision's ``batched_nms`` semantics.

    Like torchvision, small inputs use the coordinate-offset trick (one NMS over shifted boxes) and large
    ones (more than 4000 box coordinates on CPU, 100000 on GPU: torchvision's benchmarked switch points)
    one NMS per category, so both backends return identical indices.

    Args:
        boxes (Tensor[N, 4]): boxes in ``(x1, y1, x2, y2)`` format.
        scores (Tensor[N]): score of each box.
        idxs (Tensor[N]): integer category of each box; boxes of different categories never suppress each other.
        iou_threshold (float): a kept box suppresses the lower-scored boxes of its category with IoU ``> iou_threshold``.
        backend (str, optional): ``"torch"`` or ``"torchvision"``; default: see :func:`resolve_backend`.

    Returns:
        Tensor[K]: int64 indices of the kept boxes, in decreasing order of score.
    """
    _check_inputs(boxes, scores)
    if idxs.shape != scores.shape:
        raise ValueError(f"idxs should have shape {tuple(scores.shape)}, got {tuple(idxs.shape)}")
    if boxes.shape[0] == 0:
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    boxes, scores = _upcast(boxes), _upcast(scores)
    resolved = resolve_backend(backend, op="nms", device=boxes.device)
    if boxes.numel() > (4000 if boxes.device.type == "cpu" else 100_000):
        return _batched_nms_per_category(boxes, scores, idxs, iou_threshold, resolved)
    return _batched_nms_coordinate_trick(boxes, scores, idxs, iou_threshold, resolved)
