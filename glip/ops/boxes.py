"""Box utilities for ``(x1, y1, x2, y2)`` boxes, with the legacy "+1" pixel convention.

The official GLIP code (maskrcnn-benchmark lineage) treats box corners as inclusive
pixel indices: a box ``(x1, y1, x2, y2)`` has width ``x2 - x1 + 1``. The functions
here take that ``+1`` as an explicit ``offset`` argument (``1`` for the legacy
convention, ``0`` for the continuous one torchvision uses), so both can be served
and every call site says which one it means.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["box_area", "box_iou", "clip_boxes", "remove_small_boxes", "rescale_boxes"]


def box_area(boxes: Tensor, offset: float = 0.0) -> Tensor:
    """Computes the area of a set of boxes.

    Args:
        boxes (Tensor[N, 4]): boxes in ``(x1, y1, x2, y2)`` format.
        offset (float): added to each side length; ``1`` gives the legacy
            inclusive-pixel areas ``(x2 - x1 + 1) * (y2 - y1 + 1)``.

    Returns:
        Tensor[N]: the area of each box (not clamped: an inverted box gives a
        negative or zero area, as in the official code).
    """
    return (boxes[:, 2] - boxes[:, 0] + offset) * (boxes[:, 3] - boxes[:, 1] + offset)


def box_iou(boxes1: Tensor, boxes2: Tensor, offset: float = 0.0) -> Tensor:
    """Returns the intersection-over-union (Jaccard index) of two sets of boxes.

    With ``offset=1`` this is the official ``boxlist_iou`` and the IoU of the CUDA
    ``ml_nms`` kernel: side lengths ``x2 - x1 + 1`` and intersections
    ``max(min(x2) - max(x1) + 1, 0)``, evaluated in the same order of operations,
    ``inter / (area1 + area2 - inter)``.

    Args:
        boxes1 (Tensor[N, 4]): first set of boxes, ``(x1, y1, x2, y2)``.
        boxes2 (Tensor[M, 4]): second set of boxes, ``(x1, y1, x2, y2)``.
        offset (float): ``0`` (continuous coordinates) or ``1`` (inclusive pixels).

    Returns:
        Tensor[N, M]: the pairwise IoU values.
    """
    area1 = box_area(boxes1, offset)  # [N]
    area2 = box_area(boxes2, offset)  # [M]
    lt = torch.max(boxes1[:, None, :2], boxes2[None, :, :2])  # [N, M, 2]
    rb = torch.min(boxes1[:, None, 2:], boxes2[None, :, 2:])  # [N, M, 2]
    wh = (rb - lt + offset).clamp(min=0)  # [N, M, 2]
    inter = wh[..., 0] * wh[..., 1]  # [N, M]
    return inter / (area1[:, None] + area2[None, :] - inter)


def clip_boxes(boxes: Tensor, image_size: tuple[int, int], offset: float = 1.0) -> Tensor:
    """Clips boxes to an image, as the official ``BoxList.clip_to_image``.

    Args:
        boxes (Tensor[N, 4]): boxes in ``(x1, y1, x2, y2)`` format.
        image_size (tuple[int, int]): ``(height, width)`` of the image.
        offset (float): ``1`` (the official ``TO_REMOVE``) clamps x to
            ``[0, width - 1]`` and y to ``[0, height - 1]``; ``0`` clamps to
            ``[0, width]`` and ``[0, height]``.

    Returns:
        Tensor[N, 4]: the clipped boxes (a new tensor; empty boxes are kept).
    """
    height, width = image_size
    x = boxes[:, 0::2].clamp(min=0, max=width - offset)  # [N, 2]
    y = boxes[:, 1::2].clamp(min=0, max=height - offset)  # [N, 2]
    return torch.stack((x[:, 0], y[:, 0], x[:, 1], y[:, 1]), dim=1)


def remove_small_boxes(boxes: Tensor, min_size: float) -> Tensor:
    """Indices of the boxes whose sides are both at least ``min_size``.

    Side lengths use the official inclusive-pixel convention, ``x2 - x1 + 1``
    (``TO_REMOVE = 1`` of ``BoxList.convert("xywh")``), so ``min_size=0`` keeps
    every box with ``x2 >= x1 - 1`` and ``y2 >= y1 - 1``.

    Args:
        boxes (Tensor[N, 4]): boxes in ``(x1, y1, x2, y2)`` format.
        min_size (float): minimum width and height.

    Returns:
        Tensor[K]: int64 indices of the kept boxes, in increasing order.
    """
    widths = boxes[:, 2] - boxes[:, 0] + 1
    heights = boxes[:, 3] - boxes[:, 1] + 1
    return torch.nonzero((widths >= min_size) & (heights >= min_size)).squeeze(1)


def rescale_boxes(boxes: Tensor, from_size: tuple[int, int], to_size: tuple[int, int]) -> Tensor:
    """Maps boxes from an image of size ``from_size`` to one of size ``to_size``.

    Matches the official ``BoxList.resize``: ``x * (w_to / w_from)`` and
    ``y * (h_to / h_from)``, with no ``+-1`` correction. The ratios are computed
    in Python (double) and applied to the boxes' dtype, as the official code does.

    Args:
        boxes (Tensor[N, 4]): boxes in ``(x1, y1, x2, y2)`` format.
        from_size (tuple[int, int]): ``(height, width)`` the boxes refer to.
        to_size (tuple[int, int]): ``(height, width)`` of the target image.

    Returns:
        Tensor[N, 4]: the rescaled boxes.
    """
    ratio_h = float(to_size[0]) / float(from_size[0])
    ratio_w = float(to_size[1]) / float(from_size[1])
    x = boxes[:, 0::2] * ratio_w  # [N, 2]
    y = boxes[:, 1::2] * ratio_h  # [N, 2]
    return torch.stack((x[:, 0], y[:, 0], x[:, 1], y[:, 1]), dim=1)
