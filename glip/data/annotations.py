"""COCO-format annotation files: indexing, image reading, box sanitising, token maps.

No pycocotools: the few look-ups the datasets need are done on the parsed json, in the
order pycocotools gives (image ids sorted, annotations in file order, categories in file
order).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from glip.text import span_token_range
from glip.utils.coco_json import check_coco_dataset, read_json
from glip.utils.image import ImageLoadError, load_image

__all__ = [
    "BoxCleanup",
    "CocoIndex",
    "clean_boxes",
    "has_valid_annotation",
    "read_image",
    "teacher_concepts",
    "token_positive_map",
]

logger = logging.getLogger(__name__)

_EXIF_ORIENTATION = 0x0112


@dataclass
class CocoIndex:
    """A parsed COCO-format json.

    Attributes:
        images: ``{image_id: image record}``.
        annotations: ``{image_id: [annotation records]}`` in file order.
        categories: the category records in file order.
        image_ids: image ids in ascending order (the official ``sorted(self.ids)``).
    """

    images: dict[Any, dict[str, Any]]
    annotations: dict[Any, list[dict[str, Any]]]
    categories: list[dict[str, Any]]
    image_ids: list[Any]

    @staticmethod
    def load(path: str | Path) -> CocoIndex:
        """Reads and checks ``path`` (:func:`glip.utils.coco_json.check_coco_dataset`:
        ``images`` and ``annotations`` required, ``categories`` checked when present; boxes
        need only be four numbers, :func:`clean_boxes` drops the degenerate ones); a
        ``ValueError`` names the file and its first bad entry."""
        data = read_json(path)
        check_coco_dataset(
            data, path, required=("images", "annotations"), strict_boxes=False, annotation_categories=False
        )
        images = {img["id"]: img for img in data["images"]}
        annotations: dict[Any, list[dict[str, Any]]] = {img_id: [] for img_id in images}
        for ann in data["annotations"]:
            annotations[ann["image_id"]].append(ann)
        return CocoIndex(images, annotations, list(data.get("categories", [])), sorted(images))


def has_valid_annotation(annotations: Sequence[Mapping[str, Any]]) -> bool:
    """Whether an image is used for training (official ``has_valid_annotation``): it has
    at least one annotation, and not every box is at most 1 pixel wide or high. Crowd
    annotations count here although their boxes are dropped later."""
    if not annotations:
        return False
    return not all(any(v <= 1 for v in ann["bbox"][2:]) for ann in annotations)


def read_image(path: str | Path) -> np.ndarray:
    """``uint8 [H, W, 3]`` RGB pixels in their stored orientation.

    Box annotations refer to the stored pixels (pycocotools and the official loader
    ``Image.open(..).convert("RGB")`` ignore EXIF), so an EXIF orientation tag is not
    applied; it is logged, because such an image shows rotated in viewers.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageLoadError(f"image not found: {path}")
    with Image.open(path) as img:
        img.load()
        if img.getexif().get(_EXIF_ORIENTATION, 1) != 1:
            logger.warning("%s has an EXIF orientation tag; boxes are taken in the stored pixel frame", path)
        rgb = img.convert("RGB")
    return load_image(np.asarray(rgb))


@dataclass
class BoxCleanup:
    """Boxes of one image after sanitising.

    Attributes:
        boxes: ``Tensor[G, 4]`` float32 xyxy, inclusive corners, inside the image.
        keep: indices (into the input annotations) of the kept boxes.
        num_crowd: crowd annotations dropped.
        num_degenerate: boxes dropped as empty after clipping (or not finite).
        num_clipped: kept boxes that were partly outside the image.
    """

    boxes: Tensor
    keep: list[int]
    num_crowd: int
    num_degenerate: int
    num_clipped: int

    @property
    def num_dropped(self) -> int:
        return self.num_crowd + self.num_degenerate


def clean_boxes(
    annotations: Sequence[Mapping[str, Any]], height: int, width: int, mdetr_rounding: bool = False
) -> BoxCleanup:
    """COCO ``[x, y, w, h]`` boxes -> xyxy inside an ``height x width`` image, as official.

    ``x2 = x + w - 1``, ``y2 = y + h - 1`` (official TO_REMOVE = 1); corners clamped to
    ``[0, W - 1] x [0, H - 1]``; boxes with ``x2 <= x1`` or ``y2 <= y1`` dropped (official
    ``clip_to_image(remove_empty=True)``); crowd boxes dropped (official ``iscrowd == 0``
    filter). Non-finite boxes are dropped too (the official code would crash). An
    annotation with a ``rect`` (``[x1, y1, x2, y2]`` of an official TSV label, see
    :mod:`glip.data.tsv`) takes those corners as they are, as the official TSV readers do.

    The float32 sums follow the official order so fractional coordinates round alike:
    ``x + max(w - 1, 0)`` (``BoxList.convert``, the detection datasets) or, with
    ``mdetr_rounding``, ``w + (x - 1)`` (``ConvertCocoPolysToMask``, the grounding datasets).
    Both drop the same boxes.
    """
    rows: list[list[float]] = []
    crowd: list[bool] = []
    rects: list[list[float] | None] = []
    for ann in annotations:
        crowd.append(bool(ann.get("iscrowd", 0)))
        rows.append([float(v) for v in ann["bbox"]])
        rects.append([float(v) for v in ann["rect"]] if "rect" in ann else None)
    xywh = torch.tensor(rows, dtype=torch.float32).reshape(-1, 4)  # [A, 4]
    if mdetr_rounding:
        corner = xywh[:, 2:] + (xywh[:, :2] - 1)  # [A, 2]
    else:
        corner = xywh[:, :2] + (xywh[:, 2:] - 1).clamp(min=0)  # [A, 2]
    raw = torch.cat([xywh[:, :2], corner], dim=1)  # [A, 4] xyxy
    for i, rect in enumerate(rects):
        if rect is not None:  # TSV labels: the official reader takes the xyxy "rect" as is
            raw[i] = torch.tensor(rect, dtype=torch.float32)
    boxes = raw.clone()
    boxes[:, 0::2] = boxes[:, 0::2].clamp(min=0, max=width - 1)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(min=0, max=height - 1)
    finite = torch.isfinite(xywh).all(dim=1) & torch.isfinite(raw).all(dim=1)  # [A]
    non_empty = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])  # [A]
    is_crowd = torch.tensor(crowd, dtype=torch.bool)
    kept = ~is_crowd & finite & non_empty  # [A]
    clipped = kept & (boxes != raw).any(dim=1)
    keep = torch.nonzero(kept, as_tuple=True)[0].tolist()
    return BoxCleanup(
        boxes=boxes[kept],
        keep=keep,
        num_crowd=int(is_crowd.sum()),
        num_degenerate=int((~is_crowd & ~kept).sum()),
        num_clipped=int(clipped.sum()),
    )


def token_positive_map(encoding: Any, spans: Sequence[Sequence[Sequence[int]]], width: int = 256) -> Tensor:
    """``Tensor[G, width]`` bool: box ``g`` is positive on the tokens from the one holding
    the first character of each of its spans to the one holding the last, inclusive.

    The character fall-backs are the official ``create_positive_map``'s
    (:func:`glip.text.span_token_range`). Unlike the inference helper
    it never raises: a span cut off by truncation gives an all-False row, as the official
    training data does. The map is binary because the official ``BatchCollator`` casts the
    row-normalised map to bool before the loss.

    Args:
        encoding: a fast-tokenizer encoding of one caption (``char_to_token``).
        spans: per box, a list of ``(start, end)`` character spans (end exclusive).
    """
    pmap = torch.zeros((len(spans), width), dtype=torch.bool)
    for g, group in enumerate(spans):
        for start, end in group:
            tokens = span_token_range(encoding, start, end)
            if tokens is not None:
                pmap[g, tokens[0] : tokens[1] + 1] = True
    return pmap


def teacher_concepts(
    image_id: Any, record: Mapping[str, Any], annotations: Sequence[Mapping[str, Any]]
) -> tuple[list[list[tuple[int, int]]], Tensor] | None:
    """A pseudo-labelled caption's concept pool and its boxes' teacher scores.

    Args:
        image_id: for the error messages.
        record: the image record; its ``concepts`` is ``[{"phrase", "tokens_positive"}]``,
            the K concepts a teacher scored the boxes against (``glip pseudo-label
            --teacher clip`` writes the caption's noun phrases there).
        annotations: the G boxes (each with ``concept_scores``, K numbers in the order of
            ``concepts``).

    Returns:
        The K concepts' ``(start, end)`` character spans and the ``Tensor[G, K]`` float32
        scores, or None when no box has ``concept_scores``. A ``ValueError`` when only some
        have them, the record lists no concepts, or a row's length differs from K.
    """
    scored = ["concept_scores" in a for a in annotations]
    if not any(scored):
        return None
    pool = record.get("concepts")
    if not all(scored) or not isinstance(pool, list) or not pool:
        raise ValueError(
            f"image {image_id}: teacher concept_scores need every box to have them and the image record "
            "to list its 'concepts' (as glip pseudo-label --teacher clip writes them)"
        )
    spans = [[(int(a), int(b)) for a, b in c["tokens_positive"]] for c in pool]
    rows = [[float(v) for v in a["concept_scores"]] for a in annotations]
    if any(len(r) != len(spans) for r in rows):
        raise ValueError(f"image {image_id}: a box's concept_scores do not match its {len(spans)} concepts")
    return spans, torch.tensor(rows, dtype=torch.float32).reshape(len(annotations), len(spans))  # [G, K]
