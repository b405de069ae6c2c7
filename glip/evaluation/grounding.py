"""Phrase grounding: Flickr30k Entities Recall@k and referring-expression Precision@k.

Both use the "any box" protocol of MDETR and GLIP (official ``flickr_eval.py``): the
predicted boxes of one phrase are ranked by score, and the phrase counts as found at ``k``
when any of its top ``k`` boxes overlaps any ground-truth box of the phrase with IoU at
least 0.5. A phrase without any predicted box is a miss (the official code appends an
all-zero box, which overlaps nothing).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["GroundingRecall", "box_iou"]


def box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """``[N, M]`` IoU of ``boxes1 [N, 4]`` and ``boxes2 [M, 4]``, both ``(x1, y1, x2, y2)``
    (areas without the +1 pixel convention, as the official Flickr evaluation)."""
    boxes1, boxes2 = boxes1.double(), boxes2.double()  # float64: IoU at the 0.5 boundary
    area1 = (boxes1[:, 2] - boxes1[:, 0]) * (boxes1[:, 3] - boxes1[:, 1])
    area2 = (boxes2[:, 2] - boxes2[:, 0]) * (boxes2[:, 3] - boxes2[:, 1])
    lt = torch.maximum(boxes1[:, None, :2], boxes2[None, :, :2])  # [N, M, 2]
    rb = torch.minimum(boxes1[:, None, 2:], boxes2[None, :, 2:])  # [N, M, 2]
    wh = (rb - lt).clamp(min=0)  # [N, M, 2]
    inter = wh[..., 0] * wh[..., 1]  # [N, M]
    return inter / (area1[:, None] + area2[None, :] - inter)


class GroundingRecall:
    """Counts, per ``k``, the phrases whose top-``k`` boxes hit a ground-truth box.

    Args:
        ks: the ranks to report (``-1``: every box, the official "upper bound").
        iou_threshold: a hit needs at least this IoU (0.5 for Flickr30k and RefCOCO).
        prefix: metric names are ``f"{prefix}@{k}"`` (``"R"`` for Flickr recall, ``"P"``
            for referring-expression precision); ``k = -1`` is named ``"upper_bound"``.
    """

    def __init__(self, ks: Sequence[int] = (1, 5, 10), iou_threshold: float = 0.5, prefix: str = "R") -> None:
        if any(k == 0 or k < -1 for k in ks):
            raise ValueError(f"ranks must be positive or -1, got {list(ks)}")
        self.ks = tuple(ks)
        self.iou_threshold = iou_threshold
        self.prefix = prefix
        self.hits = dict.fromkeys(self.ks, 0)
        self.total = 0

    def add(self, ranked_boxes: Tensor, target_boxes: Tensor) -> None:
        """One phrase: ``ranked_boxes [K, 4]`` best first, ``target_boxes [G, 4]`` (G >= 1)."""
        if target_boxes.numel() == 0:
            raise ValueError("a phrase to evaluate needs at least one ground-truth box")
        self.total += 1
        if ranked_boxes.numel() == 0:
            return
        best = box_iou(ranked_boxes.reshape(-1, 4), target_boxes.reshape(-1, 4)).amax(dim=1)  # [K]
        for k in self.ks:
            top = best if k == -1 else best[:k]
            if bool((top >= self.iou_threshold).any()):
                self.hits[k] += 1

    def merge(self, other: GroundingRecall) -> None:
        """Adds another tracker's counts (e.g. from another process)."""
        if other.ks != self.ks:
            raise ValueError("cannot merge trackers with different ranks")
        self.total += other.total
        for k in self.ks:
            self.hits[k] += other.hits[k]

    def summary(self) -> dict[str, float]:
        """``{"R@1": ..., "R@5": ..., "R@10": ...}`` as fractions (0 when nothing was added)."""
        out = {}
        for k in self.ks:
            name = "upper_bound" if k == -1 else f"{self.prefix}@{k}"
            out[name] = self.hits[k] / self.total if self.total else 0.0
        return out
