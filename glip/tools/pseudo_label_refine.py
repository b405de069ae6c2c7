"""The student's data from a teacher's pseudo-labels (the self-training's refine step), one
rule per caption for a grounding json and for a shard set.

:class:`Refiner` screens one caption's boxes: the official ``CAPTION_CONF`` /
``CAPTION_NMS`` screen (:class:`~glip.data.caption_screen.CaptionScreen`: boxes scoring
above ``conf``, class-agnostic NMS at IoU ``nms``), then at most ``per_phrase`` boxes per
phrase (the best scoring; 0: all) and, with ``complete``, only captions whose every noun
phrase (the chunker's, as the teacher saw them) kept a box: a phrase left without a box
still sits in the student's prompt, where its tokens are negatives for every anchor, its
own object's too. A caption left without a box is dropped.

- :func:`refine_json`: an MDETR json (``glip pseudo-label --captions``) into another.
- :func:`refine_shards`: a caption shard set (``glip pseudo-label --shards``) into another,
  shard by shard at constant memory: one output shard per input shard, of the same name,
  each sample's members unchanged but its record's ``annotations``; atomic and resumable
  as ``glip pseudo-label --shards`` (:func:`~glip.tools.pseudo_label_shards.output_shard`:
  a finished shard has its stats file and is skipped; ``OUT/settings.json`` holds the
  options and the input digest), ``OUT/manifest.json`` once every shard is done.
- :func:`json_records` / :func:`shard_records`: ``(image record, annotations)`` of either,
  in order, which :func:`pseudo_label_quality` (precision / recall against gold boxes, for
  reports) streams.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from glip.data.caption_screen import CaptionScreen
from glip.data.shards import RecordError, ShardError, iter_shard, record_from_members
from glip.tools.pseudo_label import ShardStore
from glip.tools.pseudo_label_shards import (
    input_digest,
    output_shard,
    output_totals,
    shard_done,
    write_output_manifest,
)
from glip.tools.teachers import Chunker
from glip.utils.fs import atomic_write_text

__all__ = [
    "RefineOptions",
    "Refiner",
    "json_records",
    "print_quality",
    "pseudo_label_quality",
    "refine_json",
    "refine_records",
    "refine_shards",
    "shard_records",
]

logger = logging.getLogger(__name__)
Record = tuple[dict[str, Any], list[dict[str, Any]]]  # (image record, its annotations)


@dataclass(frozen=True)
class RefineOptions:
    """The screen (see the module docstring): ``conf``, ``nms`` (-1: none), ``per_phrase``
    (0: all), ``complete``."""

    conf: float
    nms: float = -1.0
    per_phrase: int = 0
    complete: bool = False


class Refiner:
    """One caption's boxes screened by ``options``; ``chunker``: the teacher's noun phrases."""

    def __init__(self, options: RefineOptions, chunker: Chunker) -> None:
        self.options, self.chunker = options, chunker
        self.screen = CaptionScreen(options.conf, options.nms, 0)

    def __call__(self, caption: str, annotations: Sequence[dict[str, Any]]) -> list[dict[str, Any]] | None:
        """The kept annotations (phrase by phrase, best score first), or None to drop the caption."""
        kept: dict[str, list[dict[str, Any]]] = {}
        for a in sorted(self.screen.screen(annotations), key=lambda a: -a["score"]):
            phrase = kept.setdefault(json.dumps(a["tokens_positive"]), [])
            if self.options.per_phrase <= 0 or len(phrase) < self.options.per_phrase:
                phrase.append(a)
        phrases = {json.dumps([list(span)]) for _, span in self.chunker(caption)}
        if not kept or (self.options.complete and not phrases <= set(kept)):
            return None
        return [a for boxes in kept.values() for a in boxes]


def refine_records(records: Iterable[Record], refiner: Refiner) -> Iterator[Record]:
    """The records ``refiner`` keeps, with their kept annotations."""
    for image, anns in records:
        kept = refiner(str(image["caption"]), anns)
        if kept is not None:
            yield image, kept


def json_records(path: str | Path) -> Iterator[Record]:
    """An MDETR json's captions (image records in file order) with their annotations."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    by_image: dict[Any, list[dict[str, Any]]] = {}
    for a in data["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    for image in data["images"]:
        yield image, by_image.get(image["id"], [])


def shard_records(shards: Iterable[Path]) -> Iterator[Record]:
    """The records of caption shards in order (unreadable samples skipped), one sample in memory."""
    for path in shards:
        for members in iter_shard(path):
            try:
                _, record = record_from_members(members)
            except RecordError:
                continue
            yield record["image"], record.get("annotations", [])


def refine_json(pseudo: str | Path, out: str | Path, refiner: Refiner) -> dict[str, int]:
    """Writes ``pseudo`` (an MDETR json) refined to ``out``, atomically; returns
    ``{"captions", "boxes"}`` kept. Image and annotation records are kept as they are."""
    data = json.loads(Path(pseudo).read_text(encoding="utf-8"))
    kept = list(refine_records(json_records(pseudo), refiner))
    data["images"] = [image for image, _ in kept]
    data["annotations"] = [a for _, anns in kept for a in anns]
    atomic_write_text(out, json.dumps(data))
    return {"captions": len(data["images"]), "boxes": len(data["annotations"])}


@dataclass(frozen=True)
class _Settings:
    """What a resumed :func:`refine_shards` must repeat."""

    inputs_sha256: str
    num_shards: int
    options: RefineOptions

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def refine_shards(inputs: Sequence[Path], out: str | Path, refiner: Refiner) -> dict[str, int]:
    """Writes each input shard refined to ``OUT/{name}`` (see the module docstring), skipping
    the finished ones; returns ``{"captions", "boxes"}`` kept over all shards (the finished
    ones re-read from their stats). A ``ValueError`` naming the options when ``out`` holds
    a run of other settings; a :class:`ShardError` for an unreadable input shard."""
    out = Path(out)
    settings = _Settings(input_digest(inputs), len(inputs), refiner.options)
    ShardStore(out).check_settings(settings)  # type: ignore[arg-type]  # any settings with to_json
    for src in inputs:
        if shard_done(out, src.name):
            continue
        with output_shard(out, src.name) as (writer, stats):
            for members in iter_shard(src):
                stats.read += 1
                try:
                    _, record = record_from_members(members)
                except RecordError as e:
                    stats.corrupt += 1
                    logger.warning("shard %s sample %s unreadable, skipped: %s", src, members.get("__key__"), e)
                    continue
                kept = refiner(str(record["image"].get("caption", "")), record.get("annotations", []))
                if kept is None:
                    stats.dropped += 1
                    continue
                stats.concept_scores = stats.concept_scores or any("concept_scores" in a for a in kept)
                others = {k: v for k, v in members.items() if not k.startswith("__") and k != "json"}
                writer.write(str(members["__key__"]), {**others, "json": {**record, "annotations": kept}})
                stats.samples, stats.boxes = stats.samples + 1, stats.boxes + len(kept)
    if write_output_manifest(inputs, out, source="refine") is None:
        raise ShardError(f"{out}: some shard is not refined")
    totals = output_totals(inputs, out)
    return {"captions": totals["samples"], "boxes": totals["boxes"]}


def _iou(a: list[list[float]], b: list[list[float]]) -> np.ndarray:
    """IoU of COCO ``[x, y, w, h]`` boxes ``a`` (N) and ``b`` (M): ``[N, M]``
    (:func:`glip.ops.boxes.box_iou`, continuous coordinates)."""
    import torch

    from glip.ops.boxes import box_iou

    def corners(boxes: list[list[float]]) -> torch.Tensor:  # [K, 4] xywh -> xyxy
        t = torch.tensor(boxes, dtype=torch.float64)
        return torch.cat([t[:, :2], t[:, :2] + t[:, 2:]], dim=1)

    return box_iou(corners(a), corners(b)).numpy()


def pseudo_label_quality(pseudo: str | Path | Iterable[Record], gold: str | Path, iou: float = 0.5) -> dict[str, Any]:
    """How good the boxes of ``pseudo`` (an MDETR json, or ``(image record, annotations)``
    pairs, e.g. :func:`shard_records`) are against the gold boxes of the same images
    (``gold``, a COCO json whose category names are what the phrases say, e.g. the synthetic
    set's ``train.json``): for reports only, the gold boxes never reach a student. A pseudo
    image is the gold image of the same file stem (shard keys are the stems); the pseudo
    records stream, the gold json is read whole.

    Per image, the boxes are matched one-to-one to gold boxes of the category their phrase
    names (``"a red circle"`` -> ``red circle``), best score first, at IoU >= ``iou``.
    Returns ``boxes``, ``captions`` (with a box), ``precision`` (matched / boxes),
    ``recall`` (matched / the gold boxes of these images), ``recall_named`` (matched / the
    gold boxes whose category the caption names: the captions name at most the three largest
    shapes) and ``duplicates`` (unmatched boxes on an already matched gold box of their
    category); precision and recalls in percent.
    """
    g = json.loads(Path(gold).read_text(encoding="utf-8"))
    names = {c["id"]: c["name"] for c in g["categories"]}
    gold_ids = {Path(im["file_name"]).stem: im["id"] for im in g["images"]}
    gold_boxes: dict[Any, list[tuple[str, list[float]]]] = {}
    for a in g["annotations"]:
        gold_boxes.setdefault(a["image_id"], []).append((names[a["category_id"]], a["bbox"]))
    boxes = matched = named = duplicates = captions = total = 0
    for im, anns in json_records(pseudo) if isinstance(pseudo, (str, Path)) else pseudo:
        truth = gold_boxes.get(gold_ids[Path(im["file_name"]).stem], [])
        named, total = named + sum(name in im["caption"] for name, _ in truth), total + len(truth)
        kept = sorted(anns, key=lambda a: -a["score"])
        boxes, captions = boxes + len(kept), captions + bool(kept)
        if not kept or not truth:
            continue
        overlap = _iou([a["bbox"] for a in kept], [b for _, b in truth])  # [K, G]
        taken = np.zeros(len(truth), dtype=bool)
        for k, a in enumerate(kept):
            same = np.array([name in a["phrase"] for name, _ in truth]) & (overlap[k] >= iou)  # [G]
            free = np.flatnonzero(same & ~taken)
            if len(free):
                taken[free[np.argmax(overlap[k, free])]] = True
                matched += 1
            elif same.any():
                duplicates += 1
    return {
        "boxes": boxes, "captions": captions, "duplicates": duplicates, "precision": 100.0 * matched / max(boxes, 1),
        "recall": 100.0 * matched / max(total, 1), "recall_named": 100.0 * matched / max(named, 1),
    }  # fmt: skip


def print_quality(rows: dict[str, dict[str, Any]]) -> None:
    """The table of :func:`pseudo_label_quality` rows, by name."""
    print("pseudo-label quality vs the gold training boxes (IoU >= 0.5, the phrase's category; report only):")
    print(f"  {'':<26} {'boxes':>6} {'captions':>8} {'precision':>9} {'recall':>6} {'named':>6} {'dup':>4}")
    for name, r in rows.items():
        print(f"  {name:<26} {r['boxes']:6d} {r['captions']:8d} {r['precision']:9.1f} {r['recall']:6.1f} "
              f"{r['recall_named']:6.1f} {r['duplicates']:4d}")  # fmt: skip
