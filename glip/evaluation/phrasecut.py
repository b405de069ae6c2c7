"""Referring (phrase) segmentation metrics, MDETR's PhraseCut protocol.

One *sample* is an (image, phrase) pair. Its predicted mask is the union of the masks of
the phrase's detections scoring above a threshold (:func:`phrase_mask`); its ground truth
is the union of the phrase's annotated regions. Per sample ``IoU = |P & G| / |P | G|``
(1 when both are empty, 0 when only one is). Reported over the samples:

- ``mIoU``: the mean of the per-sample IoUs;
- ``cIoU``: the cumulative (overall) IoU, total intersection / total union;
- ``Pr@0.5``, ``Pr@0.7``, ``Pr@0.9``: the fraction of samples whose IoU is at least the threshold.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from glip.structures import Detections

__all__ = ["PHRASECUT_METRICS", "PRECISION_THRESHOLDS", "PhraseCutMeter", "phrase_mask", "phrasecut_metrics"]

PRECISION_THRESHOLDS = (0.5, 0.7, 0.9)
PHRASECUT_METRICS = ("mIoU", "cIoU", *(f"Pr@{t}" for t in PRECISION_THRESHOLDS))


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


class PhraseCutMeter:
    """Accumulates samples one by one (no masks are kept); :meth:`summary` gives the metrics."""

    def __init__(self) -> None:
        self.ious: list[float] = []
        self.intersection = 0
        self.union = 0

    def add(self, pred: Tensor | np.ndarray, gt: Tensor | np.ndarray) -> float:
        """One sample: predicted and ground-truth masks ``[H, W]`` (bool or 0/1); returns its IoU."""
        p, g = _as_bool(pred), _as_bool(gt)
        if p.shape != g.shape:
            raise ValueError(f"predicted mask {p.shape} and ground truth {g.shape} differ in size")
        inter, union = int((p & g).sum()), int((p | g).sum())
        iou = 1.0 if union == 0 else inter / union
        self.ious.append(iou)
        self.intersection += inter
        self.union += union
        return iou

    def summary(self) -> dict[str, float]:
        """:data:`PHRASECUT_METRICS` (all 0 without samples)."""
        if not self.ious:
            return {name: 0.0 for name in PHRASECUT_METRICS}
        ious = np.asarray(self.ious, dtype=np.float64)
        out = {"mIoU": float(ious.mean()), "cIoU": self.intersection / self.union if self.union else 1.0}
        for t in PRECISION_THRESHOLDS:
            out[f"Pr@{t}"] = float((ious >= t).mean())
        return out


def phrasecut_metrics(preds: Sequence[Tensor | np.ndarray], gts: Sequence[Tensor | np.ndarray]) -> dict[str, float]:
    """:data:`PHRASECUT_METRICS` of matching predicted and ground-truth masks (one pair per sample)."""
    if len(preds) != len(gts):
        raise ValueError(f"got {len(preds)} predicted masks for {len(gts)} ground-truth masks")
    meter = PhraseCutMeter()
    for p, g in zip(preds, gts):
        meter.add(p, g)
    return meter.summary()
