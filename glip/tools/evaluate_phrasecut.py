"""Referring segmentation on PhraseCut: a segmenting predictor over a refer json, or a
results file, scored with the PhraseCut authors' evaluator as MDETR runs it
(:mod:`glip.evaluation.phrasecut`): mask mIoU, cIoU and Pr@0.5..0.9, and, when the refer
json has ``instance_boxes`` and the results have ``bbox``, the box mIoU and box Pr@t.

Each task's phrase is the whole prompt (one phrase, one forward, as MDETR runs it); the
detections scoring above ``score_threshold`` (MDETR's ``PostProcessPhrasecut``: 0.7) are
kept with their masks, and their union is compared with the union of the task's
ground-truth polygons (:func:`glip.data.phrasecut.phrasecut_mask`). Under
``accelerate launch`` / ``torchrun`` each process predicts a shard of the tasks and the
main process scores the gathered predictions.

Results file (``results.json``): one entry per kept detection,
``{"task_id", "image_id", "score", "bbox": [x, y, w, h], "segmentation": RLE}``; a task
without an entry predicted nothing. Scoring it again applies the threshold again, so a
file written at one threshold can be scored at a higher one.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from glip.data.phrasecut import PhraseCutTask, read_phrasecut
from glip.evaluation import PHRASECUT_METRICS, PhraseCutMeter, format_metrics, write_json
from glip.evaluation.coco import load_json
from glip.evaluation.phrasecut import PHRASECUT_BOX_METRICS
from glip.tools.evaluate import PredictorLike, progress_bar
from glip.utils.distributed import all_gather_objects, is_main_process, rank, world_size

__all__ = [
    "MDETR_SCORE_THRESHOLD",
    "evaluate_phrasecut",
    "phrasecut_table",
    "resolve_phrasecut_files",
    "score_phrasecut",
]

# MDETR's PostProcessPhrasecut(score_thresh=0.7): detections kept for the phrase's mask.
MDETR_SCORE_THRESHOLD = 0.7
# Tried in order when --data is a folder: the VGPhraseCut release, then `glip data synthetic`'s file.
_REFER_NAMES = ("refer_test.json", "refer_val.json", "refer_miniv.json", "phrasecut_val.json")


def resolve_phrasecut_files(
    data: str | None, ann: str | None, images: str | None, split: str | None = None
) -> tuple[Path, Path]:
    """``(refer json, image folder)`` from ``--data`` (a refer json, or a folder holding
    ``refer_<split>.json`` or ``phrasecut_<split>.json``; default: the first of
    refer_test/val/miniv and phrasecut_val), ``--ann`` (the refer json) and ``--images``
    (default: ``images/`` beside the refer json)."""
    if ann:
        refer = Path(ann)
    elif data is None:
        raise ValueError("--task phrasecut needs --data (a PhraseCut refer json or its folder) or --ann")
    elif Path(data).is_dir():
        root = Path(data)
        names = (f"refer_{split}.json", f"phrasecut_{split}.json") if split else _REFER_NAMES
        found = [root / n for n in names if (root / n).is_file()]
        if not found:
            raise FileNotFoundError(f"no PhraseCut refer json under {root} (looked for {', '.join(names)})")
        refer = found[0]
    else:
        refer = Path(data)
    if not refer.is_file():
        raise FileNotFoundError(f"PhraseCut refer json {refer} does not exist")
    image_dir = Path(images) if images else refer.parent / "images"
    if not image_dir.is_dir():
        raise FileNotFoundError(f"image folder {image_dir} does not exist (use --images)")
    return refer, image_dir


def _task_size(task: PhraseCutTask, image_dir: Path) -> tuple[int, int]:
    if task.size is not None:
        return task.size
    from PIL import Image

    path = image_dir / task.file_name
    if not path.is_file():
        raise FileNotFoundError(f"image {path} of PhraseCut task {task.task_id} is missing (its size is needed)")
    with Image.open(path) as img:  # the header only
        return img.height, img.width


def _score(
    tasks: Sequence[PhraseCutTask],
    results: Sequence[Mapping[str, Any]],
    image_dir: Path,
    score_threshold: float,
) -> dict[str, float]:
    """:data:`PHRASECUT_METRICS` of ``results`` (entries as the module docstring says), and
    :data:`PHRASECUT_BOX_METRICS` when every task has boxes and every result a ``bbox``."""
    from pycocotools import mask as mask_utils

    by_task: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    known = {t.task_id for t in tasks}
    for r in results:
        task_id = str(r["task_id"])
        if task_id not in known:
            raise ValueError(f"results name task {task_id!r}, absent from the PhraseCut annotations")
        if "segmentation" not in r:
            raise ValueError(f"a result of task {task_id!r} has no 'segmentation' (predict with masks)")
        if float(r["score"]) > score_threshold:
            by_task[task_id].append(r)
    with_boxes = all(t.boxes for t in tasks) and all("bbox" in r for r in results)
    meter = PhraseCutMeter()
    for task in tasks:
        height, width = _task_size(task, image_dir)
        pred = np.zeros((height, width), dtype=bool)
        for r in by_task.get(task.task_id, []):
            rle = dict(r["segmentation"])
            if [int(v) for v in rle["size"]] != [height, width]:
                raise ValueError(f"task {task.task_id}: mask size {rle['size']} != image size {[height, width]}")
            if isinstance(rle["counts"], str):
                rle["counts"] = rle["counts"].encode("ascii")
            pred |= mask_utils.decode(rle).astype(bool)
        meter.add(pred, task.mask(height, width))
        if with_boxes:
            meter.add_boxes([r["bbox"] for r in by_task.get(task.task_id, [])], task.boxes)
    return meter.summary()


def evaluate_phrasecut(
    predictor: PredictorLike,
    refer_json: str | Path,
    image_dir: str | Path,
    *,
    out_dir: str | Path | None = None,
    score_threshold: float = MDETR_SCORE_THRESHOLD,
    progress: bool = True,
) -> dict[str, float] | None:
    """Segments every task's phrase and scores the masks.

    Args:
        predictor: a :class:`glip.api.Predictor` of a model with a mask head (or anything
            with its ``iter_predict`` taking ``masks=True``).
        refer_json: a PhraseCut refer json (:func:`glip.data.phrasecut.read_phrasecut`).
        image_dir: the folder the tasks' ``file_name`` are relative to.
        score_threshold: detections scoring above it form the phrase's mask.
        out_dir: writes ``results.json`` and ``metrics.json``.

    Returns:
        :data:`PHRASECUT_METRICS` on the main process, ``None`` on the others.
    """
    from glip.text import Prompt

    image_dir = Path(image_dir)
    tasks = read_phrasecut(refer_json)
    if not tasks:
        raise ValueError(f"{refer_json} holds no PhraseCut task")
    shard = list(range(rank(), len(tasks), world_size()))
    missing = [image_dir / tasks[i].file_name for i in shard if not (image_dir / tasks[i].file_name).is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} images of {refer_json} are missing, e.g. {missing[0]}")
    bar = progress_bar(len(shard), "phrasecut", progress)
    predicted: list[tuple[int, list[dict[str, Any]]]] = []
    for index in shard:
        task = tasks[index]
        prompt = Prompt.from_spans(task.phrase, [(0, len(task.phrase))])
        for _, dets in predictor.iter_predict(
            [image_dir / task.file_name], prompt, threshold=score_threshold, max_detections=0, masks=True
        ):
            if isinstance(dets, Exception):
                raise dets
            entries = [dict(e, task_id=task.task_id) for e in dets.to_coco(task.image_id)]
            for e in entries:
                del e["category_id"]  # always the phrase
                e["bbox"] = [round(float(v), 3) for v in e["bbox"]]
                e["score"] = round(float(e["score"]), 5)
            predicted.append((index, entries))
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    gathered = all_gather_objects(predicted)
    if not is_main_process():
        return None
    ordered = sorted((item for part in gathered for item in part), key=lambda item: item[0])
    results = [e for _, entries in ordered for e in entries]
    metrics = _score(tasks, results, image_dir, score_threshold)
    if out_dir is not None:
        write_json(Path(out_dir) / "results.json", results)
        write_json(Path(out_dir) / "metrics.json", metrics)
    return metrics


def score_phrasecut(
    refer_json: str | Path,
    results: str | Path | Sequence[Mapping[str, Any]],
    image_dir: str | Path | None = None,
    *,
    out_dir: str | Path | None = None,
    score_threshold: float = MDETR_SCORE_THRESHOLD,
) -> dict[str, float]:
    """Scores a PhraseCut results file (no model). ``image_dir`` is read only for image
    sizes that neither the refer json nor ``image_data_split.json`` gives."""
    if isinstance(results, (str, Path)) and not Path(results).is_file():
        raise FileNotFoundError(f"no such file: {results}")
    tasks = read_phrasecut(refer_json)
    folder = Path(image_dir) if image_dir is not None else Path(refer_json).parent / "images"
    metrics = _score(tasks, load_json(results), folder, score_threshold)
    if out_dir is not None:
        write_json(Path(out_dir) / "metrics.json", metrics)
    return metrics


def phrasecut_table(metrics: Mapping[str, float], title: str = "phrasecut") -> str:
    """The printed table of a PhraseCut evaluation."""
    names = (*PHRASECUT_METRICS, *PHRASECUT_BOX_METRICS)
    return format_metrics({k: metrics[k] for k in names if k in metrics}, title)
