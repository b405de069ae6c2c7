"""Referring (phrase) segmentation metrics: the PhraseCut authors' evaluator, as MDETR runs it.

Reference: ChenyunWu/PhraseCutDataset ``utils/evaluator.py`` (``Evaluator.eval_single_img``,
``Evaluator.analyze_stats``) and ``utils/iou.py`` (``iou_polygons_masks``, ``iou_boxes``),
which MDETR imports unchanged (``datasets/phrasecut_utils/``, driven by
``datasets/phrasecut_eval.py``). One *task* is an (image, phrase) pair. Its predicted mask
is the union of the masks of the phrase's detections scoring above a threshold
(:func:`phrase_mask`; MDETR's ``PostProcessPhrasecut``); its ground truth is the union of
the phrase's annotated polygons. Per task ``IoU = I / U``, and **0 whenever I = 0** (so 0
too when both masks are empty). Reported over the tasks:

- ``mIoU``: the mean of the per-task IoUs (``mean_mask_iou``);
- ``cIoU``: the cumulative IoU, total intersection / total union (``cum_mask_iou``; 0 here
  when every union is empty, where the evaluator divides 0 by 0);
- ``Pr@t``: the fraction of tasks whose IoU is **strictly above** ``t``, for ``t`` in 0.5,
  0.6, 0.7, 0.8, 0.9 (``pred_mask_acc``).

Box metrics (what MDETR's ``PhrasecutEvaluator`` returns, as ``Precision@t``): per task the
IoU of the union of the predicted boxes and the union of the ground-truth instance boxes,
both ``[x, y, w, h]``, measured on pixels as ``iou_boxes`` does (:func:`box_union_iou`);
``box_mIoU`` is their mean and ``box_Pr@t`` the fraction strictly above ``t``.

A task without any prediction counts as an empty prediction (IoU 0), as the evaluator's
"assuming empty prediction on missing tasks" mean; its precision and cumulative figures
instead leave such tasks out, which never happens in MDETR's runs (every task is predicted).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from glip.structures import Detections

__all__ = [
    "PHRASECUT_BOX_METRICS",
    "PHRASECUT_METRICS",
    "PRECISION_THRESHOLDS",
    "PhraseCutMeter",
    "box_union_iou",
    "phrase_mask",
    "phrasecut_metrics",
]

# Evaluator.analyze_stats: mask_threshs and box_threshs.
PRECISION_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)
PHRASECUT_METRICS = ("mIoU", "cIoU", *(f"Pr@{t}" for t in PRECISION_THRESHOLDS))
PHRASECUT_BOX_METRICS = ("box_mIoU", *(f"box_Pr@{t}" for t in PRECISION_THRESHOLDS))


def phrase_mask(dets: Detections, label: int, threshold: float = 0.5) -> Tensor:
    """``Tensor[H, W]`` bool: the union of the masks of ``label``'s detections scoring above
    ``threshold`` (empty when there is none). ``dets`` must carry masks."""
    if dets.masks is None:
        raise ValueError("phrase_mask needs Detections with masks (predict with masks=True)")
    keep = (dets.labels == int(label)) & (dets.scores > threshold)  # [N]
    height, width = dets.masks.shape[-2:]
    if not bool(keep.any()):
        return torch.zeros((height, width), dtype=torch.bool)
    return dets.masks[keep].any(dim=0)


def _as_bool(mask: Tensor | np.ndarray) -> np.ndarray:
    return mask.cpu().numpy().astype(bool) if isinstance(mask, Tensor) else np.asarray(mask, dtype=bool)


def _iou(inter: int, union: int) -> float:
    """``iou.py``: 0 whenever the intersection is empty, else I / U."""
    return 0.0 if inter == 0 else inter / union


def _boxes_mask(boxes: Sequence[Sequence[float]], height: int, width: int) -> np.ndarray:
    """``data_transfer.boxes_to_mask``: box ``[x, y, w, h]`` becomes corners ``(x, y)`` and
    ``(x + w - 1, y + h - 1)``, and fills rows ``int(y1):int(y2)``, columns
    ``int(x1):int(x2)`` (end excluded: a w-pixel-wide integer box fills w - 1 columns)."""
    mask = np.zeros((height, width), dtype=bool)
    for x, y, w, h in boxes:
        x1, y1, x2, y2 = x, y, x + w - 1, y + h - 1
        mask[int(y1) : int(y2), int(x1) : int(x2)] = True
    return mask


def box_union_iou(pred_boxes: Sequence[Sequence[float]], gt_boxes: Sequence[Sequence[float]]) -> float:
    """``iou.iou_boxes``: IoU of the pixels covered by ``pred_boxes`` and by ``gt_boxes``
    (each a list of ``[x, y, w, h]``), on a canvas from 0 to the largest ``x + w - 1`` and
    ``y + h - 1`` of all boxes; 0 when they share no pixel (or there is no predicted box)."""
    boxes = [[float(v) for v in b] for b in [*pred_boxes, *gt_boxes]]
    if not boxes:
        return 0.0
    width = max(0, int(max(x + w - 1 for x, _, w, _ in boxes) + 1))
    height = max(0, int(max(y + h - 1 for _, y, _, h in boxes) + 1))
    m1, m2 = _boxes_mask(pred_boxes, height, width), _boxes_mask(gt_boxes, height, width)
    return _iou(int((m1 & m2).sum()), int((m1 | m2).sum()))


def _precisions(ious: list[float], prefix: str) -> dict[str, float]:
    values = np.asarray(ious, dtype=np.float64)
    return {f"{prefix}Pr@{t}": float((values > t).mean()) for t in PRECISION_THRESHOLDS}


class PhraseCutMeter:
    """Accumulates tasks one by one (no masks are kept); :meth:`summary` gives the metrics."""

    def __init__(self) -> None:
        self.ious: list[float] = []
        self.intersection = 0
        self.union = 0
        self.box_ious: list[float] = []

    def add(self, pred: Tensor | np.ndarray, gt: Tensor | np.ndarray) -> float:
        """One task: predicted and ground-truth masks ``[H, W]`` (bool or 0/1); returns its IoU."""
        p, g = _as_bool(pred), _as_bool(gt)
        if p.shape != g.shape:
            raise ValueError(f"predicted mask {p.shape} and ground truth {g.shape} differ in size")
        inter, union = int((p & g).sum()), int((p | g).sum())
        iou = _iou(inter, union)
        self.ious.append(iou)
        self.intersection += inter
        self.union += union
        return iou

    def add_boxes(self, pred_boxes: Sequence[Sequence[float]], gt_boxes: Sequence[Sequence[float]]) -> float:
        """One task's boxes (``[x, y, w, h]`` lists, :func:`box_union_iou`); returns its box IoU."""
        iou = box_union_iou(pred_boxes, gt_boxes)
        self.box_ious.append(iou)
        return iou

    def summary(self) -> dict[str, float]:
        """:data:`PHRASECUT_METRICS` (all 0 without tasks), then :data:`PHRASECUT_BOX_METRICS`
        when boxes were added."""
        if not self.ious:
            out = dict.fromkeys(PHRASECUT_METRICS, 0.0)
        else:
            out = {"mIoU": float(np.mean(self.ious)), "cIoU": self.intersection / self.union if self.union else 0.0}
            out.update(_precisions(self.ious, ""))
        if self.box_ious:
            out["box_mIoU"] = float(np.mean(self.box_ious))
            out.update(_precisions(self.box_ious, "box_"))
        return out


def phrasecut_metrics(preds: Sequence[Tensor | np.ndarray], gts: Sequence[Tensor | np.ndarray]) -> dict[str, float]:
    """:data:`PHRASECUT_METRICS` of matching predicted and ground-truth masks (one pair per task)."""
    if len(preds) != len(gts):
        raise ValueError(f"got {len(preds)} predicted masks for {len(gts)} ground-truth masks")
    meter = PhraseCutMeter()
    for p, g in zip(preds, gts):
        meter.add(p, g)
    return meter.summary()
