"""COCO box and mask AP with pycocotools, for COCO and any COCO-format dataset (ODinW)."""

from __future__ import annotations

import contextlib
import copy
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Union

from glip.utils.coco_json import COCO_SECTIONS, check_coco_dataset, read_json

__all__ = [
    "CATEGORY_CHUNK",
    "COCO_METRICS",
    "IOU_TYPES",
    "CocoLike",
    "ResultsLike",
    "evaluate_coco",
    "load_coco_json",
    "load_json",
]

# What COCOeval compares: boxes, or instance masks (results carry RLE ``segmentation``).
IOU_TYPES = ("bbox", "segm")

# The twelve numbers of COCOeval.summarize(), in its order (stats[0..11]).
COCO_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")

CocoLike = Union[str, Path, Mapping[str, Any]]
ResultsLike = Union[str, Path, Sequence[Mapping[str, Any]]]


def load_json(value: Any) -> Any:
    """A path is read as JSON (a file that is not JSON raises a ``ValueError`` naming it);
    anything else is returned unchanged."""
    if isinstance(value, (str, Path)):
        return read_json(value)
    return value


def load_coco_json(value: CocoLike, required: Sequence[str] = COCO_SECTIONS, strict_boxes: bool = True) -> Any:
    """A COCO-format annotation file (path or parsed dict), checked: the ``required``
    sections are there and every image, category and annotation record has what the
    evaluation reads (:func:`glip.utils.coco_json.check_coco_dataset`; ``strict_boxes``
    false lets non-finite and negative-size boxes through, for training files); a
    ``ValueError`` names the file and the first bad entry."""
    data = load_json(value)
    source = value if isinstance(value, (str, Path)) else "the ground truth"
    check_coco_dataset(data, source, required, strict_boxes=strict_boxes)
    return data


# COCOeval keeps a record per (image, category, area range) until accumulate(): ~0.3 MB per
# image at 365 categories (docs/evaluation.md, "Memory"). Categories are evaluated this many at
# a time: a category's precision and recall depend on its own records only, so the chunks'
# arrays side by side are the whole run's, bit for bit, at a chunk's share of that memory.
CATEGORY_CHUNK = 16


def _coco_api(ground_truth: Mapping[str, Any]) -> Any:
    """pycocotools' COCO over ``ground_truth``. The annotation records are shallow copies
    (COCOeval writes ``ignore`` and, for masks, the RLE into them), their values shared:
    the caller's data is left as it was without a deep copy of the whole file."""
    from pycocotools.coco import COCO

    api = COCO()
    api.dataset = dict(ground_truth)
    api.dataset["annotations"] = [dict(a) for a in ground_truth.get("annotations", [])]
    for ann in api.dataset["annotations"]:
        ann.setdefault("iscrowd", 0)
        if "area" not in ann:
            ann["area"] = float(ann["bbox"][2] * ann["bbox"][3])
    with contextlib.redirect_stdout(io.StringIO()):
        api.createIndex()
    return api


def _summarized(gt: Any, dt: Any, iou_type: str, image_ids: Any, category_ids: Any, chunk: int) -> list[float]:
    """``COCOeval.stats`` of the whole run, evaluated and accumulated ``chunk`` categories at
    a time (:data:`CATEGORY_CHUNK`); the chunks' precision ``[T, R, K, A, M]``, recall
    ``[T, K, A, M]`` and scores are joined along K (the categories, in COCOeval's sorted
    order) before ``summarize``."""
    import numpy as np
    from pycocotools.cocoeval import COCOeval

    cats = [int(c) for c in np.unique(list(category_ids) if category_ids is not None else gt.getCatIds())]
    parts: dict[str, list[Any]] = {"precision": [], "recall": [], "scores": []}
    for start in range(0, max(len(cats), 1), chunk):
        evaluator = COCOeval(gt, dt, iou_type)
        if image_ids is not None:
            evaluator.params.imgIds = list(image_ids)
        evaluator.params.catIds = cats[start : start + chunk]
        evaluator.evaluate()
        evaluator.accumulate()
        for name, axis in (("precision", 2), ("recall", 1), ("scores", 2)):
            parts[name].append((evaluator.eval[name], axis))
        evaluator.evalImgs, evaluator.ious = [], {}  # this chunk's records, before the next
    evaluator.params.catIds = cats
    evaluator.eval.update({name: np.concatenate([a for a, _ in p], axis=p[0][1]) for name, p in parts.items()})
    evaluator.summarize()
    return [float(v) for v in evaluator.stats]


def evaluate_coco(
    ground_truth: CocoLike,
    results: ResultsLike,
    image_ids: Sequence[int] | None = None,
    category_ids: Sequence[int] | None = None,
    iou_type: str = "bbox",
    category_chunk: int = CATEGORY_CHUNK,
) -> dict[str, float]:
    """Box (or mask) AP of COCO-results entries against a COCO-format ground truth.

    Args:
        ground_truth: the annotation file (path or parsed dict): ``images``,
            ``annotations`` (``bbox`` as ``[x, y, w, h]``), ``categories``.
        results: ``[{"image_id", "category_id", "bbox": [x, y, w, h], "score"}]``
            (path or list), as :meth:`glip.structures.Detections.to_coco` writes.
        image_ids: evaluate these images only (default: every image of the ground truth,
            as the official evaluation does).
        category_ids: average over these categories only (default: all).
        iou_type: ``"bbox"``, or ``"segm"``: masks, the results' ``segmentation`` (RLE, as
            :meth:`glip.structures.Detections.to_coco` writes with masks) against the
            annotations' polygons or RLE.
        category_chunk: categories evaluated at a time (memory only; the metrics are the
            same for any value).

    Returns:
        ``{name: value}`` for :data:`COCO_METRICS` (pycocotools ``COCOeval(..., iou_type)``:
        at most 100 detections per image; -1 where no ground truth exists). Without any
        result every metric is 0 (-1 where pycocotools would report no ground truth).
    """
    if iou_type not in IOU_TYPES:
        raise ValueError(f"iou_type must be one of {IOU_TYPES}, got {iou_type!r}")
    if category_chunk < 1:
        raise ValueError(f"category_chunk must be at least 1, got {category_chunk}")
    gt = _coco_api(load_coco_json(ground_truth))
    dets = [dict(r) for r in load_json(results)]
    if iou_type == "segm":
        if any("segmentation" not in d for d in dets):
            raise ValueError("mask AP needs a 'segmentation' in every result (predict with masks)")
        if any("segmentation" not in a for a in gt.dataset["annotations"]):
            raise ValueError("mask AP needs a 'segmentation' in every ground-truth annotation")
        for d in dets:
            d.pop("bbox", None)  # loadRes takes the box of the mask, as pycocotools' segm results do
    if not dets:
        empty = 0.0 if gt.dataset["annotations"] else -1.0
        return {name: empty for name in COCO_METRICS}
    unknown = {d["image_id"] for d in dets} - set(gt.getImgIds())
    if unknown:
        raise ValueError(f"results name {len(unknown)} image ids absent from the ground truth, e.g. {min(unknown)}")
    if iou_type == "bbox":
        # loadRes gives every box result a 4-corner polygon unless it has a segmentation;
        # box AP never reads it (COCOeval's bbox IoU and matching read bbox, area, score).
        for d in dets:
            d.setdefault("segmentation", None)
    else:
        dets = copy.deepcopy(dets)  # the RLE dicts too: pycocotools reads them as its own
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(dets)  # writes id, area, iscrowd into dets: fresh dicts
        stats = _summarized(gt, dt, iou_type, image_ids, category_ids, category_chunk)
    return dict(zip(COCO_METRICS, stats))
