"""Zero-shot detection evaluation: a predictor over a COCO-format or LVIS dataset.

The prompt is built from the category names as the official evaluation builds it
(``create_queries_and_maps``): categories in contiguous-id order (a Roboflow export's
dataset-name entry, id 0, and ``"__background__"`` left out, by the rule training follows
too: :func:`glip.data.categories.class_categories`), names replaced by an
``OVERRIDE_CATEGORY`` entry of the same id, cleaned (:func:`glip.data.clean_name`),
optionally wrapped in ``CAPTION_PROMPT`` prefixes/suffixes, joined with ``". "``. Prompts over the text encoder's 256 tokens are
chunked by the predictor; LVIS uses chunks of 40 classes (official
``TEST.CHUNKED_EVALUATION 40``). Under ``accelerate launch`` / ``torchrun`` each process
predicts a shard of the images and the main process scores the gathered predictions.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from glip.data import CaptionPromptEntry, build_caption, clean_name
from glip.data.categories import class_categories
from glip.evaluation import (
    COCO_METRICS,
    FIXED_AP_TOPK,
    TopKPerCategory,
    evaluate_coco,
    evaluate_lvis,
    format_metrics,
    write_json,
)
from glip.evaluation.coco import IOU_TYPES, load_coco_json, load_json
from glip.evaluation.inputs import check_ground_truth_masks, check_results
from glip.structures import Detections
from glip.text import Prompt
from glip.utils.distributed import all_gather_objects, is_main_process, rank, world_size

__all__ = [
    "DETECTION_TASKS",
    "LVIS_CHUNK_SIZE",
    "PredictorLike",
    "category_prompt",
    "coco_metrics",
    "evaluate_detection",
    "image_path",
    "lvis_metrics",
    "progress_bar",
    "score_results_file",
]

DETECTION_TASKS = ("coco", "lvis")
# Official LVIS evaluation: TEST.CHUNKED_EVALUATION 40 (classes per prompt).
LVIS_CHUNK_SIZE = 40
_TABLE_METRICS = {"coco": COCO_METRICS[:6], "lvis": ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf")}


class PredictorLike(Protocol):
    """What the runners need of :class:`glip.api.Predictor`."""

    def iter_predict(self, images: Sequence[Any], prompt: Any, **kwargs: Any) -> Any: ...

    def predict(self, images: Any, prompt: Any, **kwargs: Any) -> Any: ...


def category_prompt(
    categories: Sequence[Mapping[str, Any]],
    override: Sequence[tuple[int, str]] | None = None,
    caption_prompt: Sequence[tuple[str, str, str]] | None = None,
    annotations: Sequence[Mapping[str, Any]] | None = None,
) -> tuple[Prompt, list[int]]:
    """The official evaluation prompt of a COCO-format category list.

    Args:
        categories: the annotation file's ``categories`` (their order is the contiguous-id
            order, as pycocotools' ``getCatIds``); its classes are kept
            (:func:`glip.data.categories.class_categories`, the rule training follows too).
        annotations: the file's boxes (id 0 is a class when some box uses it); None: id 0
            is left out.
        override: ``(id, name)`` pairs replacing names by id (``OVERRIDE_CATEGORY``).
        caption_prompt: ``(prefix, name, suffix)`` per kept category, in order
            (``CAPTION_PROMPT``); the span covers the name.

    Returns:
        ``(prompt, category_ids)``: label ``j`` of a detection is category
        ``category_ids[j - 1]``.
    """
    names = {int(c["id"]): str(c["name"]) for c in categories}
    if override is not None:
        names.update({int(i): str(n) for i, n in override})
    ids = [int(c["id"]) for c in class_categories(categories, annotations)]
    if not ids:
        raise ValueError("the annotation file names no category")
    entries = None
    if caption_prompt is not None:
        entries = [CaptionPromptEntry(p, n, s) for p, n, s in caption_prompt]
    caption = build_caption(list(range(len(ids))), {i: names[c] for i, c in enumerate(ids)}, ". ", entries)
    spans = [caption.label_to_span[i] for i in range(len(ids))]
    prompt = Prompt.from_spans(caption.caption, spans)
    if entries is None and any(p != clean_name(names[c]) for p, c in zip(prompt.phrases, ids)):
        raise ValueError("category names must not start or end with spaces")
    return prompt, ids


def image_path(image: Mapping[str, Any], image_dir: str | Path) -> Path:
    """An image record's file: ``file_name`` under ``image_dir``, or for LVIS records
    without one, the last two parts of ``coco_url`` (``val2017/000000397133.jpg``) as the
    official LVIS loader does."""
    if "file_name" in image:
        return Path(image_dir) / str(image["file_name"])
    if "coco_url" in image:
        return Path(image_dir) / "/".join(str(image["coco_url"]).split("/")[-2:])
    raise ValueError(f"image {image.get('id')} has neither file_name nor coco_url")


def progress_bar(total: int, desc: str, enabled: bool) -> Any:
    """A tqdm bar on stderr (main process only), or ``None``."""
    if not enabled or not is_main_process():
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="img", desc=desc, file=sys.stderr, dynamic_ncols=True)


def _check_images(paths: Sequence[Path], ann_file: str | Path) -> None:
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} images of {ann_file} are missing, e.g. {missing[0]}")


def evaluate_detection(
    predictor: PredictorLike,
    ann_file: str | Path,
    image_dir: str | Path,
    *,
    task: str = "coco",
    out_dir: str | Path | None = None,
    batch_size: int | None = None,
    chunk_size: int | None = None,
    override: Sequence[tuple[int, str]] | None = None,
    caption_prompt: Sequence[tuple[str, str, str]] | None = None,
    topk: int = FIXED_AP_TOPK,
    progress: bool = True,
    title: str = "",
    iou_types: Sequence[str] = ("bbox",),
) -> dict[str, float] | None:
    """Predicts every image of ``ann_file`` and scores the detections.

    Args:
        predictor: a :class:`glip.api.Predictor` (or anything with its ``iter_predict``).
        task: ``"coco"`` (pycocotools AP, at most 100 per image; boxes written as the
            official ``BoxList.convert("xywh")``, one pixel wider) or ``"lvis"`` (Fixed AP:
            the top ``topk`` detections per category over the dataset, LVIS AP).
        chunk_size: classes per prompt (default: only when over 256 tokens; 40 for LVIS).
        out_dir: writes ``results.json`` (COCO-results entries) and ``metrics.json``.
        iou_types: ``"bbox"`` and/or ``"segm"`` (the predictor segments, the results carry
            RLE masks, mask AP is scored: pycocotools for coco, LVIS AP for lvis).

    Returns:
        the metrics on the main process, ``None`` on the others: see :func:`coco_metrics`.
    """
    if task not in DETECTION_TASKS:
        raise ValueError(f"task must be one of {DETECTION_TASKS}, got {task!r}")
    _check_iou_types(task, iou_types)
    masks = "segm" in iou_types
    gt = load_coco_json(ann_file)
    if masks:
        check_ground_truth_masks(gt, ann_file)
    images = sorted(gt.get("images", []), key=lambda img: img["id"])
    prompt, category_ids = category_prompt(gt.get("categories", []), override, caption_prompt, gt.get("annotations"))
    if task == "lvis" and chunk_size is None:
        chunk_size = LVIS_CHUNK_SIZE
    paths = [image_path(img, image_dir) for img in images]
    shard = list(range(rank(), len(images), world_size()))
    _check_images([paths[i] for i in shard], ann_file)

    per_image: list[tuple[int, list[dict[str, Any]]]] = []
    collector = TopKPerCategory(topk) if task == "lvis" else None
    bar = progress_bar(len(shard), title or task, progress)
    for j, dets in predictor.iter_predict(
        [paths[i] for i in shard],
        prompt,
        threshold=0.0,
        batch_size=batch_size,
        chunk_size=chunk_size,
        max_detections=0,
        **({"masks": True} if masks else {}),
    ):
        if isinstance(dets, Exception):
            raise dets
        index = shard[j]
        entries = _to_results(dets, images[index]["id"], category_ids, pixel_inclusive=task == "coco")
        if collector is not None:
            collector.add(index, entries)
        else:
            per_image.append((index, entries))
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()

    gathered = all_gather_objects(collector if collector is not None else per_image)
    if not is_main_process():
        return None
    if collector is not None:
        merged = TopKPerCategory(topk)
        for part in gathered:
            merged.merge(part)
        results = merged.results()
        metrics = lvis_metrics(gt, results, iou_types)
    else:
        ordered = sorted((item for part in gathered for item in part), key=lambda item: item[0])
        results = [entry for _, entries in ordered for entry in entries]
        metrics = coco_metrics(gt, results, iou_types)
    if out_dir is not None:
        write_json(Path(out_dir) / "results.json", results)
        write_json(Path(out_dir) / "metrics.json", metrics)
    return metrics


def _check_iou_types(task: str, iou_types: Sequence[str]) -> None:
    if not iou_types or any(t not in IOU_TYPES for t in iou_types):
        raise ValueError(f"iou types must be among {IOU_TYPES}, got {list(iou_types)}")


def coco_metrics(gt: Any, results: Sequence[Mapping[str, Any]], iou_types: Sequence[str]) -> dict[str, float]:
    """pycocotools AP of each IoU type: box metrics under :data:`COCO_METRICS`' names, mask
    metrics prefixed ``segm_`` (``segm_AP``...); mask metrics alone when only ``segm`` is asked."""
    metrics: dict[str, float] = {}
    for iou_type in iou_types:
        values = evaluate_coco(gt, results, iou_type=iou_type)
        prefix = "segm_" if iou_type == "segm" else ""
        metrics.update({prefix + k: v for k, v in values.items()})
    return metrics


def lvis_metrics(gt: Any, results: Sequence[Mapping[str, Any]], iou_types: Sequence[str]) -> dict[str, float]:
    """LVIS AP (Fixed AP's unlimited detections per image) of each IoU type, named as
    :func:`coco_metrics` names them (mask metrics prefixed ``segm_``)."""
    metrics: dict[str, float] = {}
    for iou_type in iou_types:
        values = evaluate_lvis(gt, results, max_dets=-1, iou_type=iou_type)
        prefix = "segm_" if iou_type == "segm" else ""
        metrics.update({prefix + k: v for k, v in values.items()})
    return metrics


def _to_results(
    dets: Detections, image_id: Any, category_ids: Sequence[int], pixel_inclusive: bool
) -> list[dict[str, Any]]:
    """COCO-results entries. ``pixel_inclusive``: width ``x2 - x1 + 1`` (the official COCO
    path converts boxes with ``BoxList.convert("xywh")``, which adds one pixel; its LVIS
    path does not)."""
    entries = dets.to_coco(image_id, category_ids)
    for e in entries:
        if pixel_inclusive:
            e["bbox"][2] += 1.0
            e["bbox"][3] += 1.0
        e["bbox"] = [round(float(v), 3) for v in e["bbox"]]  # smaller files; far below a pixel
        e["score"] = round(float(e["score"]), 5)
    return entries


def score_results_file(
    task: str,
    ann_file: str | Path,
    results_file: str | Path,
    out_dir: str | Path | None = None,
    iou_types: Sequence[str] = ("bbox",),
) -> dict[str, float]:
    """Scores an existing COCO-results file (no model): pycocotools AP for ``"coco"`` (box
    and/or mask, see :func:`coco_metrics`), LVIS AP with Fixed AP's unlimited detections
    per image for ``"lvis"`` (box and/or mask, see :func:`lvis_metrics`). Both files are
    checked first (:func:`glip.evaluation.coco.load_coco_json`,
    :func:`glip.evaluation.inputs.check_results`): a bad entry is a ``ValueError`` naming
    its file."""
    if task not in DETECTION_TASKS:
        raise ValueError(f"scoring a results file needs --task coco or lvis, got {task!r}")
    _check_iou_types(task, iou_types)
    for path in (ann_file, results_file):
        if not Path(path).is_file():
            raise FileNotFoundError(f"no such file: {path}")
    gt = load_coco_json(ann_file)
    results = load_json(results_file)
    check_results(results, gt, results_file, iou_types)
    if "segm" in iou_types:
        check_ground_truth_masks(gt, ann_file)
    if task == "lvis":
        metrics = lvis_metrics(gt, results, iou_types)
    else:
        metrics = coco_metrics(gt, results, iou_types)
    if out_dir is not None:
        write_json(Path(out_dir) / "metrics.json", metrics)
    return metrics


def metrics_table(task: str, metrics: Mapping[str, float], title: str = "") -> str:
    """The printed table of one detection evaluation (box metrics, then ``segm_`` ones)."""
    names = [*_TABLE_METRICS[task], *(f"segm_{k}" for k in _TABLE_METRICS[task])]
    return format_metrics({k: metrics[k] for k in names if k in metrics}, title)
