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

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from glip.data.annotations import CocoIndex, has_valid_annotation
from glip.data.json_index import IdArray, MappedCocoIndex
from glip.ops.nms import nms

__all__ = ["CaptionScreen", "ScreenedIndex"]


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

    def apply(self, index: Any) -> CocoIndex | ScreenedIndex:
        """A copy of ``index`` with every image's annotations screened and the images left
        with fewer than ``min_boxes`` boxes removed (for a :class:`MappedCocoIndex`, a
        :class:`ScreenedIndex` view that screens each image when it is read; likewise for
        a :class:`~glip.data.tsv.TsvIndex`)."""
        if not isinstance(index, CocoIndex):  # mapped json or TSV: screened when read
            return ScreenedIndex(index, self)
        annotations = {image_id: self.screen(anns) for image_id, anns in index.annotations.items()}
        ids = [i for i in index.image_ids if len(annotations[i]) >= self.min_boxes]
        keep = set(ids)
        return CocoIndex(
            images={i: r for i, r in index.images.items() if i in keep},
            annotations={i: a for i, a in annotations.items() if i in keep},
            categories=list(index.categories),
            image_ids=ids,
        )


class ScreenedIndex:
    """A lazy index (:class:`MappedCocoIndex`, :class:`~glip.data.tsv.TsvIndex`) seen
    through a :class:`CaptionScreen`, at constant memory: the same attributes, each
    image's annotations screened when read.

    The kept images are found once: from a mapped index's score column without NMS (no
    json decoded), else by screening every image in turn (one image's records in memory).
    """

    def __init__(self, index: Any, screen: CaptionScreen) -> None:
        self.base, self.screen = index, screen
        self.categories = index.categories
        if hasattr(index, "read_image"):  # a TSV index holds the pixels too
            self.read_image = index.read_image
        ids = index.image_ids.values
        if isinstance(index, MappedCocoIndex) and screen.nms <= 0:
            bounds, scores = index.annotation_bounds(), index.scores()
            kept = scores > screen.conf if screen.conf > 0 else np.ones(len(scores), dtype=bool)  # [A]
            counts = _per_image_sum(kept, bounds)
            valid = _per_image_sum(kept & index.good_boxes(), bounds) > 0
        else:
            counts, valid = np.zeros(len(ids), dtype=np.int64), np.zeros(len(ids), dtype=bool)
            for pos, image_id in enumerate(index.image_ids):
                anns = screen.screen(index.annotations[image_id])
                counts[pos], valid[pos] = len(anns), has_valid_annotation(anns)
        chosen = counts >= screen.min_boxes  # [N]
        self.image_ids = IdArray(ids[chosen])
        self._valid = IdArray(ids[chosen & valid])
        self.images: Mapping[int, dict[str, Any]] = _Chosen(self, index.images)
        self.annotations: Mapping[int, list[dict[str, Any]]] = _Chosen(self, _Screened(index.annotations, screen))

    def valid_ids(self) -> IdArray:
        """The kept images usable for training (official ``has_valid_annotation`` on the screened boxes)."""
        return self._valid

    def has_concept_scores(self, ids: Sequence[int]) -> bool:
        """Whether some screened annotation of the images ``ids`` has ``concept_scores``."""
        if not self.base.has_concept_scores(ids):
            return False
        return any("concept_scores" in a for i in ids for a in self.annotations[i])


def _per_image_sum(flags: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """``int64 [N]``: the true ``flags`` of each image's rows ``bounds[i]:bounds[i+1]``."""
    total = np.concatenate([[0], np.cumsum(flags, dtype=np.int64)])
    return total[bounds[1:]] - total[bounds[:-1]]


class _Screened(Mapping[int, Any]):
    """``image_id -> screened annotations``."""

    def __init__(self, annotations: Mapping[int, list[dict[str, Any]]], screen: CaptionScreen) -> None:
        self.raw, self.screen = annotations, screen

    def __getitem__(self, image_id: Any) -> list[dict[str, Any]]:
        return self.screen.screen(self.raw[image_id])

    def __iter__(self) -> Iterator[int]:
        return iter(self.raw)

    def __len__(self) -> int:
        return len(self.raw)


class _Chosen(Mapping[int, Any]):
    """``mapping`` restricted to the view's kept image ids."""

    def __init__(self, view: ScreenedIndex, mapping: Mapping[int, Any]) -> None:
        self.view, self.mapping = view, mapping

    def __getitem__(self, image_id: Any) -> Any:
        if image_id not in self:
            raise KeyError(image_id)
        return self.mapping[image_id]

    def __contains__(self, image_id: object) -> bool:
        ids = self.view.image_ids.values
        pos = int(np.searchsorted(ids, image_id)) if isinstance(image_id, (int, np.integer)) else len(ids)
        return pos < len(ids) and int(ids[pos]) == image_id

    def __iter__(self) -> Iterator[int]:
        return iter(self.view.image_ids)

    def __len__(self) -> int:
        return len(self.view.image_ids)
