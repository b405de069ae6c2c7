"""Phrase grounding: Flickr30k Entities Recall@k and referring-expression Precision@k.

Both use the "any box" protocol: the predicted boxes of one phrase are ranked by score, and
the phrase counts as found at ``k`` when any of its top ``k`` boxes overlaps any
ground-truth box of the phrase by at least 0.5 (``>=``). A phrase without any predicted box
is a miss (the official code appends an all-zero box, which overlaps nothing).

- Flickr30k (MDETR ``datasets/flickr_eval.py``, copied by GLIP as
  ``maskrcnn_benchmark/data/datasets/evaluation/flickr/flickr_eval.py``:
  ``Flickr30kEntitiesRecallEvaluator.evaluate``): plain IoU (:func:`box_iou`, areas without
  the +1 pixel); with ``merged_gt`` (``FLICKR_GT_TYPE "merged"``; GLIP's configs use
  ``"separate"``) a phrase's ground-truth boxes are first replaced by their smallest
  enclosing box (``_merge_boxes``, :func:`merge_boxes`).
- RefCOCO / RefCOCO+ / RefCOCOg (MDETR ``datasets/refexp.py``, copied by GLIP as
  ``maskrcnn_benchmark/data/datasets/refexp.py``: ``RefExpEvaluator.summarize``): the
  overlap is the *generalized* IoU (:func:`generalized_box_iou`), not the IoU, so a box at
  IoU 0.5 counts only when it also fills the two boxes' enclosing box; boxes are ranked by
  ``(score, box)`` descending (ties of score broken by the larger coordinates).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["OVERLAPS", "GroundingRecall", "box_iou", "generalized_box_iou", "merge_boxes"]

# "iou": Flickr30k (flickr_eval.py); "giou": referring expressions (refexp.py).
OVERLAPS = ("iou", "giou")


def _inter_union(boxes1: Tensor, boxes2: Tensor) -> tuple[Tensor, Tensor]:
    """``[N, M]`` intersection and union areas of xyxy boxes, in float64 (overlaps at the 0.5
    boundary must not round)."""
    boxes1, boxes2 = boxes1.double(), boxes2.double()
    area1 = (boxes1[:, 2] - boxes1[:, 0]) * (boxes1[:, 3] - boxes1[:, 1])
    area2 = (boxes2[:, 2] - boxes2[:, 0]) * (boxes2[:, 3] - boxes2[:, 1])
    lt = torch.maximum(boxes1[:, None, :2], boxes2[None, :, :2])  # [N, M, 2]
    rb = torch.minimum(boxes1[:, None, 2:], boxes2[None, :, 2:])  # [N, M, 2]
    wh = (rb - lt).clamp(min=0)  # [N, M, 2]
    inter = wh[..., 0] * wh[..., 1]  # [N, M]
    return inter, area1[:, None] + area2[None, :] - inter


def box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """``[N, M]`` IoU (float64) of ``boxes1 [N, 4]`` and ``boxes2 [M, 4]``, both
    ``(x1, y1, x2, y2)`` (areas without the +1 pixel convention, as ``flickr_eval.box_iou``)."""
    inter, union = _inter_union(boxes1, boxes2)
    return inter / union


def generalized_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """``[N, M]`` generalized IoU (float64, Rezatofighi et al. 2019), ``IoU - (C - U) / C``
    with ``C`` the area of the smallest box enclosing both (``refexp.py`` calls GLIP's
    ``set_loss.generalized_box_iou`` / MDETR's ``box_ops.generalized_box_iou``)."""
    inter, union = _inter_union(boxes1, boxes2)
    boxes1, boxes2 = boxes1.double(), boxes2.double()
    lt = torch.minimum(boxes1[:, None, :2], boxes2[None, :, :2])  # [N, M, 2]
    rb = torch.maximum(boxes1[:, None, 2:], boxes2[None, :, 2:])  # [N, M, 2]
    wh = (rb - lt).clamp(min=0)  # [N, M, 2]
    enclosing = wh[..., 0] * wh[..., 1]  # [N, M]
    return inter / union - (enclosing - union) / enclosing


def merge_boxes(boxes: Tensor) -> Tensor:
    """``[1, 4]``: the smallest box enclosing ``boxes [G, 4]`` (xyxy), MDETR's ``_merge_boxes``."""
    boxes = boxes.reshape(-1, 4)
    if len(boxes) <= 1:
        return boxes
    return torch.cat([boxes[:, :2].amin(dim=0), boxes[:, 2:].amax(dim=0)])[None]  # [1, 4]


class GroundingRecall:
    """Counts, per ``k``, the phrases whose top-``k`` boxes hit a ground-truth box.

    Args:
        ks: the ranks to report (``-1``: every box, the official "upper bound").
        iou_threshold: a hit needs at least this overlap (0.5 for Flickr30k and RefCOCO).
        prefix: metric names are ``f"{prefix}@{k}"`` (``"R"`` for Flickr recall, ``"P"``
            for referring-expression precision); ``k = -1`` is named ``"upper_bound"``.
        overlap: ``"iou"`` (Flickr30k) or ``"giou"`` (referring expressions).
        merged_gt: replace each phrase's ground-truth boxes by their enclosing box (Flickr
            ``"merged"`` ground truth).
    """

    def __init__(
        self,
        ks: Sequence[int] = (1, 5, 10),
        iou_threshold: float = 0.5,
        prefix: str = "R",
        overlap: str = "iou",
        merged_gt: bool = False,
    ) -> None:
        if any(k == 0 or k < -1 for k in ks):
            raise ValueError(f"ranks must be positive or -1, got {list(ks)}")
        if overlap not in OVERLAPS:
            raise ValueError(f"overlap must be one of {OVERLAPS}, got {overlap!r}")
        self.overlap = overlap
        self.merged_gt = merged_gt
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
        target_boxes = merge_boxes(target_boxes) if self.merged_gt else target_boxes.reshape(-1, 4)
        measure = generalized_box_iou if self.overlap == "giou" else box_iou
        best = measure(ranked_boxes.reshape(-1, 4), target_boxes).amax(dim=1)  # [K]
        for k in self.ks:
            top = best if k == -1 else best[:k]
            if bool((top >= self.iou_threshold).any()):
                self.hits[k] += 1

    def merge(self, other: GroundingRecall) -> None:
        """Adds another tracker's counts (e.g. from another process)."""
        if (other.ks, other.overlap, other.merged_gt) != (self.ks, self.overlap, self.merged_gt):
            raise ValueError("cannot merge trackers with different ranks or overlap rules")
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
