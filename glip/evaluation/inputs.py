"""Checks of detection results before they are scored (COCO and LVIS, boxes and masks).

pycocotools and the LVIS API trust their input: a NaN score ranks first and gives AP 100,
a negative width or an unknown category is scored silently, a missing key ends in a
traceback. :func:`check_results` refuses such a file with one line that names it and its
first bad entry. The checks are column-wise (:class:`glip.utils.coco_json.RecordChecker`):
about a second per 10^6 entries.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from glip.utils.coco_json import RecordChecker, check_segmentations, json_kind

__all__ = ["check_ground_truth_masks", "check_results"]

_FORMAT = '[{"image_id", "category_id", "bbox": [x, y, w, h], "score"}, ...]'


def check_results(
    results: Any, ground_truth: Mapping[str, Any], source: str | Path, iou_types: Sequence[str] = ("bbox",)
) -> None:
    """Checks COCO-results entries against a (checked) ground truth; a ``ValueError`` names
    ``source`` and the first bad entry.

    ``results`` must be a list of objects, each with an ``image_id`` of a ground-truth
    image, a ``category_id`` of a ground-truth category and a finite number ``score``;
    for ``"bbox"`` in ``iou_types`` a ``bbox`` ``[x, y, w, h]`` of finite numbers with
    ``w, h >= 0``; for ``"segm"`` a ``segmentation``, compressed RLE ``{"size": [H, W],
    "counts": str}`` (what pycocotools' ``loadRes`` and the LVIS API read) whose size is its
    image's ``height`` and ``width`` when the ground truth gives them.
    """
    if not isinstance(results, list):
        raise ValueError(f"{source}: COCO results are a JSON list {_FORMAT}, not {json_kind(results)}")
    records = RecordChecker(results, source)
    images = {img["id"]: img for img in ground_truth.get("images", [])}
    image_ids = records.known("image_id", images, "an image of the ground truth")
    records.known(
        "category_id", {c["id"] for c in ground_truth.get("categories", [])}, "a category of the ground truth"
    )
    records.numbers("score")
    if "bbox" in iou_types:
        records.boxes("bbox")
    if "segm" in iou_types:
        sizes = {k: _size(img) for k, img in images.items()}
        check_segmentations(records, records.column("segmentation"), [sizes[i] for i in image_ids], polygons=False)


def check_ground_truth_masks(ground_truth: Mapping[str, Any], source: str | Path) -> None:
    """Checks that every annotation has a ``segmentation``: polygons or RLE of its image's
    size (mask AP needs them); a ``ValueError`` names ``source`` and the first bad one."""
    images = {img["id"]: _size(img) for img in ground_truth.get("images", [])}
    annotations = ground_truth.get("annotations", [])
    records = RecordChecker(annotations, source, "annotations")
    values = records.column("segmentation")
    check_segmentations(records, values, [images.get(a["image_id"]) for a in annotations], polygons=True)


def _size(image: Mapping[str, Any]) -> tuple[int, int] | None:
    height, width = image.get("height"), image.get("width")
    if type(height) is int and type(width) is int:
        return height, width
    return None
