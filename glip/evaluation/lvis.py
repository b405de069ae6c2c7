"""LVIS box and mask AP, including the Fixed AP protocol the official GLIP evaluation reports.

:func:`evaluate_lvis` follows the LVIS API (``lvis.LVISEval`` 0.5.3, which the official
``lvis_eval.py`` copies) step for step: federated filtering of detections (only categories
verified present or absent in an image count), unmatched detections of not-exhaustively
annotated categories ignored, COCO-style greedy matching at IoU 0.50:0.95, 101-point
interpolated precision, and the rare / common / frequent groups; boxes or masks
(``iou_type``) as ``LVISEval(..., iou_type)``. The tests compare it with the LVIS API itself.

Fixed AP (Dave et al. 2021, "Evaluating Large-Vocabulary Object Detectors: The Devil is in
the Details"; achalddave/large-vocab-devil ``scripts/evaluate_ap_fixed.py``, adapted by
the official GLIP as ``maskrcnn_benchmark/data/datasets/evaluation/lvis/lvis_eval.py``
``LvisEvaluatorFixedAP(topk=10000)``, ``update`` / ``_merge_lists`` / ``_summarize_fixed``):
instead of a 300-per-image cap, every category keeps its top ``10,000`` detections over the
whole dataset (:class:`TopKPerCategory`) and ``max_dets=-1`` lifts the per-image limit. At
the cap a new detection displaces a kept one only with a strictly higher score, so equal
scores keep the earlier image's (and within an image the earlier detection). The official
multi-GPU run instead concatenates the processes' lists, so its exact ties at the cap go to
the lower rank; here they go by dataset order however the images were split.
"""

from __future__ import annotations

import heapq
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from glip.evaluation.coco import CocoLike, ResultsLike, load_json

__all__ = ["FIXED_AP_TOPK", "LVIS_METRICS", "TopKPerCategory", "evaluate_lvis"]

LVIS_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf")
# Official LvisEvaluatorFixedAP(topk=10000): detections kept per category over the dataset.
FIXED_AP_TOPK = 10_000
# LVIS API Params: IoU thresholds 0.50:0.05:0.95, 101 recall points, area ranges.
_IOU_THRESHOLDS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
_RECALL_THRESHOLDS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)
_AREA_RANGES = ((0**2, 1e5**2), (0**2, 32**2), (32**2, 96**2), (96**2, 1e5**2))  # all, small, medium, large
_FREQUENCIES = ("r", "c", "f")


class TopKPerCategory:
    """The ``k`` best-scoring COCO-results entries of each category, fed image by image.

    Ties are broken by arrival order, so feeding images in dataset order gives the same
    selection however the images were split between processes (see :meth:`merge`).
    Entries carry a private ``"_order"`` key (image index, position) until :meth:`results`.
    """

    def __init__(self, k: int = FIXED_AP_TOPK) -> None:
        if k < 1:
            raise ValueError(f"k must be positive, got {k}")
        self.k = k
        self._heaps: dict[int, list[tuple[float, tuple[int, int], dict[str, Any]]]] = defaultdict(list)

    def add(self, image_index: int, entries: Iterable[Mapping[str, Any]]) -> None:
        """Adds the entries of one image (``image_index``: its position in the dataset)."""
        for position, entry in enumerate(entries):
            self._push((int(image_index), position), entry)

    def merge(self, other: TopKPerCategory) -> None:
        """Adds another collector's entries (e.g. gathered from another process); the
        result equals feeding both collectors' images to one."""
        for heap in other._heaps.values():
            for _, _, item in heap:
                self._push(item["_order"], item)

    def _push(self, order: tuple[int, int], entry: Mapping[str, Any]) -> None:
        item = dict(entry)
        item["_order"] = (int(order[0]), int(order[1]))
        heap = self._heaps[int(item["category_id"])]
        # A min-heap on (score, -order): its root is the entry to drop first (the lowest
        # score, the latest arrival among equal scores). Orders are unique, so the
        # comparison never reaches the dict.
        key = (float(item["score"]), (-item["_order"][0], -item["_order"][1]), item)
        if len(heap) < self.k:
            heapq.heappush(heap, key)
        elif key[:2] > heap[0][:2]:
            heapq.heapreplace(heap, key)

    def categories_below_k(self) -> list[int]:
        """Categories with fewer than ``k`` detections (Fixed AP is lower for them)."""
        return sorted(c for c, h in self._heaps.items() if len(h) < self.k)

    def results(self) -> list[dict[str, Any]]:
        """Entries by category id, then score (descending), then arrival order."""
        out = []
        for cat in sorted(self._heaps):
            items = sorted(self._heaps[cat], key=lambda t: (-t[0], t[2]["_order"]))
            for _, _, item in items:
                clean = {k: v for k, v in item.items() if k != "_order"}
                out.append(clean)
        return out


def _limit_per_image(results: list[dict[str, Any]], max_dets: int) -> list[dict[str, Any]]:
    """LVIS API ``limit_dets_per_image``: per image (first-seen order) the top ``max_dets``."""
    by_image: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    for r in results:
        by_image[r["image_id"]].append(r)
    out = []
    for anns in by_image.values():
        if len(anns) > max_dets:
            anns = sorted(anns, key=lambda a: a["score"], reverse=True)[:max_dets]
        out.extend(anns)
    return out


def _match(ious: np.ndarray, gt_ignore: np.ndarray, gt_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Greedy matching of score-sorted detections at every IoU threshold (LVIS API rules).

    Args:
        ious: ``[D, G]`` IoU of detection ``d`` (descending score) and ground truth ``g``
            (non-ignored first).
        gt_ignore: ``[G]`` bool. gt_ids: ``[G]`` annotation ids (non-zero).

    Returns:
        ``(dt_match [T, D] matched gt id or 0, dt_ignore [T, D] bool: matched an ignored gt)``.
    """
    num_t, (num_d, num_g) = len(_IOU_THRESHOLDS), ious.shape
    dt_match = np.zeros((num_t, num_d))
    dt_ignore = np.zeros((num_t, num_d), dtype=bool)
    if num_d == 0 or num_g == 0:
        return dt_match, dt_ignore
    gt_taken = np.zeros((num_t, num_g), dtype=bool)
    thresholds = np.minimum(_IOU_THRESHOLDS, 1 - 1e-10)[:, None]  # [T, 1]
    rows = np.arange(num_t)
    for d in range(num_d):
        candidate = ~gt_taken & (ious[d][None, :] >= thresholds)  # [T, G]
        regular = candidate & ~gt_ignore[None, :]
        # A regular ground truth always wins over an ignored one; among the chosen kind the
        # highest IoU wins, ties going to the later ground truth (the LVIS API loop's ">=").
        pool = np.where(regular.any(1, keepdims=True), regular, candidate & gt_ignore[None, :])  # [T, G]
        values = np.where(pool, ious[d][None, :], -1.0)  # [T, G]
        best = num_g - 1 - np.argmax(values[:, ::-1], axis=1)  # [T] last index of the maximum
        found = pool.any(1)  # [T]
        t = rows[found]
        gt_taken[t, best[found]] = True
        dt_match[t, d] = gt_ids[best[found]]
        dt_ignore[t, d] = gt_ignore[best[found]]
    return dt_match, dt_ignore


def _precision_recall(scores: np.ndarray, matched: np.ndarray, ignored: np.ndarray, num_gt: int) -> np.ndarray:
    """``[T, R]`` interpolated precision at the recall thresholds (LVIS API ``accumulate``)."""
    order = np.argsort(-scores, kind="mergesort")
    matched, ignored = matched[:, order], ignored[:, order]
    tps = np.logical_and(matched, np.logical_not(ignored))
    fps = np.logical_and(np.logical_not(matched), np.logical_not(ignored))
    tp_sum = np.cumsum(tps, axis=1).astype(np.float64)
    fp_sum = np.cumsum(fps, axis=1).astype(np.float64)
    out = np.zeros((len(_IOU_THRESHOLDS), len(_RECALL_THRESHOLDS)))
    for t, (tp, fp) in enumerate(zip(tp_sum, fp_sum)):
        recall = tp / num_gt
        precision = tp / (fp + tp + np.spacing(1))
        # Each precision becomes the maximum precision at any higher recall.
        precision = np.maximum.accumulate(precision[::-1])[::-1] if len(precision) else precision
        idx = np.searchsorted(recall, _RECALL_THRESHOLDS, side="left")
        valid = idx < len(precision)
        out[t, valid] = precision[idx[valid]]
    return out


def _segmentation_rle(ann: Mapping[str, Any], height: int, width: int) -> Any:
    """An annotation's ``segmentation`` as one compressed RLE (LVIS API ``ann_to_rle``):
    polygons merged, an uncompressed RLE compressed, a compressed one as it is."""
    from pycocotools import mask as mask_utils

    seg = ann["segmentation"]
    if isinstance(seg, list):
        return mask_utils.merge(mask_utils.frPyObjects(seg, height, width))
    if isinstance(seg.get("counts"), list):
        return mask_utils.frPyObjects(seg, height, width)
    return seg


def _prepare_segm(gt: Mapping[str, Any], dets: list[dict[str, Any]]) -> None:
    """Puts an RLE ``_region`` on every ground-truth annotation and detection, and the
    detections' ``area`` (their mask's pixel count); raises when a mask is missing."""
    from pycocotools import mask as mask_utils

    sizes = {img["id"]: (img.get("height"), img.get("width")) for img in gt["images"]}
    for ann in gt["annotations"]:
        if "segmentation" not in ann:
            raise ValueError("mask AP needs a 'segmentation' in every ground-truth annotation")
        height, width = sizes[ann["image_id"]]
        if height is None or width is None:
            raise ValueError(f"mask AP needs the height and width of image {ann['image_id']}")
        ann["_region"] = _segmentation_rle(ann, int(height), int(width))
    for d in dets:
        if "segmentation" not in d:
            raise ValueError("mask AP needs a 'segmentation' in every result (predict with masks)")
        d["_region"] = d["segmentation"]
        d["area"] = float(mask_utils.area(d["segmentation"]))


def evaluate_lvis(
    ground_truth: CocoLike, results: ResultsLike, max_dets: int = -1, iou_type: str = "bbox"
) -> dict[str, float]:
    """LVIS box or mask AP (default: Fixed AP's unlimited detections per image).

    Args:
        ground_truth: an LVIS annotation file (path or dict): images with
            ``neg_category_ids`` and ``not_exhaustive_category_ids``, categories with
            ``frequency`` in ``"r"/"c"/"f"``, annotations with ``area``.
        results: COCO-results entries (path or list); for Fixed AP, the output of
            :class:`TopKPerCategory`.
        max_dets: detections kept per image (300 for the standard LVIS AP; -1 none).
        iou_type: ``"bbox"``, or ``"segm"``: mask IoU of the results' RLE ``segmentation``
            against the annotations' polygons or RLE (the images need ``height`` and
            ``width``). A detection's area range is its mask's pixel count, as the LVIS API
            computes it for segmentation results (the official ones carry no box); a result's
            ``bbox`` is not used.

    Returns:
        ``{name: value}`` for :data:`LVIS_METRICS`; -1 where no category qualifies.
    """
    if iou_type not in ("bbox", "segm"):
        raise ValueError(f"iou_type must be 'bbox' or 'segm', got {iou_type!r}")
    gt = load_json(ground_truth)
    dets = [dict(r) for r in load_json(results)]
    if max_dets >= 0:
        dets = _limit_per_image(dets, max_dets)
    if iou_type == "segm":
        gt = dict(gt, annotations=[dict(a) for a in gt["annotations"]])  # _region added below, not to the caller's
        _prepare_segm(gt, dets)
    images = {img["id"]: img for img in gt["images"]}
    unknown = {d["image_id"] for d in dets} - set(images)
    if unknown:
        raise ValueError(f"results name {len(unknown)} image ids absent from the ground truth, e.g. {min(unknown)}")
    img_ids = sorted(images)
    cat_ids = sorted(c["id"] for c in gt["categories"])
    cat_index = {c: i for i, c in enumerate(cat_ids)}
    frequency = {c["id"]: c.get("frequency") for c in gt["categories"]}

    gts: dict[tuple[Any, int], list[dict[str, Any]]] = defaultdict(list)
    present: dict[Any, set[int]] = defaultdict(set)
    for ann in gt["annotations"]:
        if ann["category_id"] in cat_index:
            gts[ann["image_id"], ann["category_id"]].append(ann)
            present[ann["image_id"]].add(ann["category_id"])
    negatives = {img: set(images[img].get("neg_category_ids", [])) for img in img_ids}
    dts: dict[tuple[Any, int], list[dict[str, Any]]] = defaultdict(list)
    for i, d in enumerate(dets):
        d["id"] = i + 1
        if iou_type == "bbox":
            d["area"], d["_region"] = d["bbox"][2] * d["bbox"][3], d["bbox"]
        img, cat = d["image_id"], d["category_id"]
        # Federated filter: a category neither verified present nor verified absent in the
        # image says nothing about the detector.
        if cat in cat_index and (cat in present[img] or cat in negatives[img]):
            dts[img, cat].append(d)

    # per (category, area): lists of (scores [D], matches [T, D], ignore [T, D], #gt)
    from pycocotools import mask as mask_utils

    pools: dict[tuple[int, int], list[tuple[np.ndarray, np.ndarray, np.ndarray, int]]] = defaultdict(list)
    position = {img: i for i, img in enumerate(img_ids)}
    # Pairs in image order (the order the LVIS API concatenates them in, which decides ties).
    for img, cat in sorted(set(gts) | set(dts), key=lambda pair: (position[pair[0]], cat_index[pair[1]])):
        not_exhaustive = set(images[img].get("not_exhaustive_category_ids", []))
        g, d = gts.get((img, cat), []), dts.get((img, cat), [])
        d = [d[i] for i in np.argsort([-x["score"] for x in d], kind="mergesort")]
        if g and d:
            regions = [x["_region"] if iou_type == "segm" else x["bbox"] for x in g]
            ious = np.asarray(mask_utils.iou([x["_region"] for x in d], regions, [0] * len(g)))
        else:
            ious = np.zeros((len(d), len(g)))
        scores = np.array([x["score"] for x in d], dtype=np.float64)
        dt_area = np.array([x["area"] for x in d], dtype=np.float64)
        gt_area = np.array([x["area"] for x in g], dtype=np.float64)
        gt_flag = np.array([bool(x.get("ignore", 0)) for x in g], dtype=bool)
        for a, (lo, hi) in enumerate(_AREA_RANGES):
            gt_ignore = gt_flag | (gt_area < lo) | (gt_area > hi)
            order = np.argsort(gt_ignore, kind="mergesort")
            gt_ignore = gt_ignore[order]
            gt_ids = np.array([g[i]["id"] for i in order])
            matched, ignored = _match(ious[:, order], gt_ignore, gt_ids)
            # Unmatched detections outside the area range, or of a category not
            # exhaustively annotated in this image, are ignored.
            outside = (dt_area < lo) | (dt_area > hi) | (cat in not_exhaustive)  # [D]
            ignored = ignored | ((matched == 0) & outside[None, :])
            pools[cat_index[cat], a].append((scores, matched, ignored, int((~gt_ignore).sum())))

    num_t, num_r = len(_IOU_THRESHOLDS), len(_RECALL_THRESHOLDS)
    precision = -np.ones((num_t, num_r, len(cat_ids), len(_AREA_RANGES)))
    for (k, a), entries in pools.items():
        num_gt = sum(e[3] for e in entries)
        if num_gt == 0:
            continue
        scores = np.concatenate([e[0] for e in entries])
        matched = np.concatenate([e[1] for e in entries], axis=1)
        ignored = np.concatenate([e[2] for e in entries], axis=1)
        precision[:, :, k, a] = _precision_recall(scores, matched, ignored, num_gt)

    def mean(p: np.ndarray) -> float:
        valid = p[p > -1]
        return float(np.mean(valid)) if valid.size else -1.0

    groups = {f: [cat_index[c] for c in cat_ids if frequency[c] == f] for f in _FREQUENCIES}
    t50, t75 = int(np.where(_IOU_THRESHOLDS == 0.5)[0][0]), int(np.where(_IOU_THRESHOLDS == 0.75)[0][0])
    return {
        "AP": mean(precision[:, :, :, 0]),
        "AP50": mean(precision[t50, :, :, 0]),
        "AP75": mean(precision[t75, :, :, 0]),
        "APs": mean(precision[:, :, :, 1]),
        "APm": mean(precision[:, :, :, 2]),
        "APl": mean(precision[:, :, :, 3]),
        "APr": mean(precision[:, :, groups["r"], 0]),
        "APc": mean(precision[:, :, groups["c"], 0]),
        "APf": mean(precision[:, :, groups["f"], 0]),
    }
