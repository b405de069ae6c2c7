"""Load-time screening of pseudo-labelled grounding boxes (the official caption options).

The official caption dataset (``CaptionTSV`` in ``maskrcnn_benchmark/data/datasets/caption.py``)
screens a teacher's boxes when it reads them, with ``DATASETS.FURTHER_SCREEN``: boxes
scoring at most ``CAPTION_CONF`` are dropped, the rest go through class-agnostic NMS at
``CAPTION_NMS`` (only when it is > 0; torchvision semantics on the teacher's xyxy boxes),
and an image left with fewer than ``CAPTION_MIN_BOX`` boxes is not used (that check runs
with or without the screen). The official loader then draws another random image; here
such images are left out of the index when the dataset is built, so the sample order
stays deterministic. Kept boxes stay in file order (the official reorders them by score;
the training targets do not depend on the order).

Boxes are read from an MDETR-style json (:mod:`glip.tools.pseudo_label` writes one):
``bbox`` is ``[x, y, w, h]`` with ``w = x2 - x1 + 1`` (the inclusive-pixel convention of
the grounding reader), ``score`` the teacher's confidence. An annotation without a
``score`` counts as certain (1.0), so gold boxes pass any confidence filter.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from glip.data.annotations import CocoIndex
from glip.ops.nms import nms

__all__ = ["CaptionScreen"]


@dataclass(frozen=True)
class CaptionScreen:
    """The official caption options.

    Attributes:
        conf: keep boxes whose ``score`` is strictly greater (official ``CAPTION_CONF``,
            with ``FURTHER_SCREEN``); ``<= 0`` keeps every box.
        nms: class-agnostic NMS IoU threshold (official ``CAPTION_NMS``); ``<= 0``: no NMS.
        min_boxes: images with fewer boxes after the screen are left out (official
            ``CAPTION_MIN_BOX``).
    """

    conf: float = 0.0
    nms: float = -1.0
    min_boxes: int = 1

    def __post_init__(self) -> None:
        if self.conf >= 1.0:
            raise ValueError(f"the caption confidence filter must be below 1 (got {self.conf}): it keeps scores > it")
        if self.nms > 1.0:
            raise ValueError(f"the caption NMS threshold must be at most 1 (got {self.nms})")
        if self.min_boxes < 0:
            raise ValueError(f"the minimum box count must be >= 0 (got {self.min_boxes})")

    def screen(self, annotations: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """One image's annotations -> those kept by the confidence filter and the NMS."""
        scores = [float(a.get("score", 1.0)) for a in annotations]
        kept = [i for i, s in enumerate(scores) if self.conf <= 0 or s > self.conf]
        if self.nms > 0 and len(kept) > 1:
            xywh = torch.tensor([[float(v) for v in annotations[i]["bbox"]] for i in kept], dtype=torch.float32)
            xywh = xywh.reshape(-1, 4)  # [K, 4]
            # Back to the teacher's xyxy (x2 = x + w - 1), on which the official NMS runs.
            boxes = torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:] - 1], dim=1)  # [K, 4]
            survivors = nms(boxes, torch.tensor([scores[i] for i in kept]), self.nms)
            kept = [kept[i] for i in sorted(survivors.tolist())]
        return [annotations[i] for i in kept]

    def apply(self, index: CocoIndex) -> CocoIndex:
        """A copy of ``index`` with every image's annotations screened and the images left
        with fewer than ``min_boxes`` boxes removed."""
        annotations = {image_id: self.screen(anns) for image_id, anns in index.annotations.items()}
        ids = [i for i in index.image_ids if len(annotations[i]) >= self.min_boxes]
        keep = set(ids)
        return CocoIndex(
            images={i: r for i, r in index.images.items() if i in keep},
            annotations={i: a for i, a in annotations.items() if i in keep},
            categories=list(index.categories),
            image_ids=ids,
        )
