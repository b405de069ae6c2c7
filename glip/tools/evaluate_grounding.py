"""Phrase-grounding evaluation on MDETR-format annotations: Flickr30k Entities recall and
RefCOCO / RefCOCO+ / RefCOCOg precision.

An MDETR-format file is COCO-format: each image record is one sentence (``caption``,
``file_name``, optionally ``tokens_positive_eval``: the character spans of each phrase to
evaluate) and each annotation a box (``bbox`` as ``[x, y, w, h]``) with the character
spans it grounds (``tokens_positive``). A phrase's ground truth is every box whose spans
overlap the phrase's; phrases without a box are not evaluated (as the official Flickr
evaluation filters them). Without ``tokens_positive_eval`` the phrases are the distinct
span lists of the boxes (Flickr) or the whole caption (referring expressions, one object).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from glip.evaluation import GroundingRecall, format_metrics, write_json
from glip.evaluation.coco import load_coco_json
from glip.structures import Detections
from glip.text import Prompt
from glip.tools.evaluate import PredictorLike, image_path, progress_bar
from glip.utils.distributed import all_gather_objects, is_main_process, rank, world_size

__all__ = ["GROUNDING_TASKS", "evaluate_grounding", "sentence_phrases"]

# task -> (ranks, metric prefix, overlap): flickr_eval.py (IoU), refexp.py (generalized IoU).
GROUNDING_TASKS = {"flickr": ((1, 5, 10, -1), "R", "iou"), "refcoco": ((1, 5, 10), "P", "giou")}


def _overlaps(a: Sequence[Sequence[int]], b: Sequence[Sequence[int]]) -> bool:
    return any(s1 < e2 and s2 < e1 for s1, e1 in a for s2, e2 in b)


def sentence_phrases(
    record: Mapping[str, Any], annotations: Sequence[Mapping[str, Any]], task: str
) -> tuple[Prompt | None, list[torch.Tensor]]:
    """The prompt of one sentence and each phrase's ground-truth boxes ``[G, 4]`` (xyxy).

    Returns ``(None, [])`` when no phrase has a box.
    """
    caption = str(record["caption"])
    ann_spans = [[(int(a), int(b)) for a, b in ann.get("tokens_positive", [])] for ann in annotations]
    if record.get("tokens_positive_eval"):
        phrase_spans = [[(int(a), int(b)) for a, b in spans] for spans in record["tokens_positive_eval"]]
    elif task == "refcoco":
        phrase_spans = [[(0, len(caption))]]
    else:
        phrase_spans = []
        for spans in ann_spans:
            if spans and spans not in phrase_spans:
                phrase_spans.append(spans)
    kept_spans, targets = [], []
    for spans in phrase_spans:
        if task == "refcoco" and not record.get("tokens_positive_eval"):
            boxes = [ann["bbox"] for ann in annotations]
        else:
            boxes = [ann["bbox"] for ann, s in zip(annotations, ann_spans) if _overlaps(s, spans)]
        if boxes:
            xywh = torch.tensor(boxes, dtype=torch.float64).reshape(-1, 4)
            targets.append(torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], dim=1))  # [G, 4] xyxy
            kept_spans.append(spans)
    if not kept_spans:
        return None, []
    return Prompt.from_spans(caption, kept_spans), targets


def _ranked_boxes(dets: Detections, label: int, ties_by_box: bool = False) -> torch.Tensor:
    """``[K, 4]`` the boxes of ``label`` best first; equal scores keep the detection order,
    or with ``ties_by_box`` go by larger box coordinates (``refexp.py`` sorts
    ``(score, box)`` pairs in reverse)."""
    keep = dets.labels == label
    boxes, scores = dets.boxes[keep], dets.scores[keep]
    if ties_by_box:
        pairs = sorted(zip(scores.tolist(), boxes.tolist()), reverse=True)
        return torch.tensor([b for _, b in pairs], dtype=boxes.dtype).reshape(-1, 4)
    order = torch.sort(scores, descending=True, stable=True).indices
    return boxes[order]  # [K, 4] best first


def evaluate_grounding(
    predictor: PredictorLike,
    ann_file: str | Path,
    image_dir: str | Path,
    *,
    task: str = "flickr",
    out_dir: str | Path | None = None,
    progress: bool = True,
) -> dict[str, float] | None:
    """Grounds every sentence of an MDETR-format file and scores the phrases.

    Each sentence is its own prompt, so images run one at a time. Detections keep the
    model's ``detections_per_img`` (100) best boxes over all phrases, as the official
    Flickr evaluation. Returns the metrics on the main process, ``None`` on the others.
    """
    if task not in GROUNDING_TASKS:
        raise ValueError(f"task must be one of {tuple(GROUNDING_TASKS)}, got {task!r}")
    data = load_coco_json(ann_file, required=("images", "annotations"))
    records = sorted(data.get("images", []), key=lambda r: r["id"])
    by_image: dict[Any, list[dict[str, Any]]] = {r["id"]: [] for r in records}
    for ann in data.get("annotations", []):
        by_image[ann["image_id"]].append(ann)
    ks, prefix, overlap = GROUNDING_TASKS[task]
    tracker = GroundingRecall(ks, 0.5, prefix, overlap)
    shard = list(range(rank(), len(records), world_size()))
    bar = progress_bar(len(shard), task, progress)
    for index in shard:
        record = records[index]
        prompt, targets = sentence_phrases(record, by_image[record["id"]], task)
        if prompt is not None:
            path = image_path(record, image_dir)
            if not path.is_file():
                raise FileNotFoundError(f"image {record['id']} of {ann_file} is missing: {path}")
            dets = predictor.predict(str(path), prompt, threshold=0.0)
            for j, target in enumerate(targets):
                tracker.add(_ranked_boxes(dets, j + 1, ties_by_box=task == "refcoco"), target)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    parts = all_gather_objects(tracker)
    if not is_main_process():
        return None
    total = GroundingRecall(ks, 0.5, prefix, overlap)
    for part in parts:
        total.merge(part)
    metrics = total.summary()
    metrics["num_phrases"] = float(total.total)
    if out_dir is not None:
        write_json(Path(out_dir) / "metrics.json", metrics)
    return metrics


def grounding_table(metrics: Mapping[str, float]) -> str:
    return format_metrics({k: v for k, v in metrics.items() if k != "num_phrases"})
