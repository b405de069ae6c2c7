"""Converting datasets to shard sets (``glip data shards``) and writing shard sets.

Every converter yields :class:`ShardSample` s; :func:`write_shard_set` packs them into tar
shards of ``shard_size`` samples, each written atomically, then writes the manifest.
Samples are written in a seeded random order (the reader streams each shard in stored
order and shuffles the shard order per epoch).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from glip.data.shards.manifest import Manifest, ShardEntry
from glip.data.shards.odvg import read_odvg
from glip.data.shards.schema import ShardSample, image_sample, make_record
from glip.data.shards.tario import ShardWriter

__all__ = ["SOURCES", "ShardSample", "convert", "shard_name", "write_shard_set"]

SOURCES = ("coco", "mdetr", "odvg", "vqa", "captions")


def shard_name(index: int) -> str:
    return f"shard-{index:06d}.tar"


def write_shard_set(
    samples: Iterable[ShardSample],
    out: str | Path,
    shard_size: int = 1000,
    source: str = "",
    kind: str = "grounding",
    categories: list[dict[str, Any]] | None = None,
) -> Manifest:
    """Writes ``samples`` as ``OUT/shard-NNNNNN.tar`` of ``shard_size`` samples each and
    ``OUT/manifest.json`` (last, so a set with a manifest is complete; it records whether
    some box carries a teacher's ``concept_scores``)."""
    if shard_size < 1:
        raise ValueError(f"--shard-size must be at least 1, got {shard_size}")
    out = Path(out)
    entries: list[ShardEntry] = []
    writer: ShardWriter | None = None
    concepts = False
    try:
        for sample in samples:
            concepts = concepts or any("concept_scores" in a for a in sample.record.get("annotations", []))
            if writer is None:
                writer = ShardWriter(out / shard_name(len(entries)))
            writer.write(sample.key, {sample.ext: sample.image, "json": sample.record})
            if writer.count == shard_size:
                entries.append(_close(writer))
                writer = None
        if writer is not None:
            entries.append(_close(writer))
            writer = None
    finally:
        if writer is not None:
            writer.discard()
    manifest = Manifest(entries, source, kind, concepts, categories=list(categories or []), root=out)
    manifest.write()
    return manifest


def _close(writer: ShardWriter) -> ShardEntry:
    count = writer.close()
    return ShardEntry(writer.path.name, count, writer.path.stat().st_size)


def _shuffled(items: list[Any], seed: int) -> list[Any]:
    items = list(items)
    random.Random(seed).shuffle(items)
    return items


def _from_coco(ann: Path, images: Path, seed: int) -> Iterator[ShardSample]:
    """COCO detection or MDETR grounding json: one sample per image with a usable box."""
    from glip.data.annotations import CocoIndex, has_valid_annotation

    index = CocoIndex.load(ann)
    for n, image_id in enumerate(_shuffled(index.image_ids, seed)):
        anns = index.annotations[image_id]
        if not has_valid_annotation(anns):
            continue
        record = index.images[image_id]
        yield image_sample(f"{n:09d}", images / record["file_name"], make_record(f"{n:09d}", record, anns))


def _from_vqa(ann: Path, images: Path, seed: int) -> Iterator[ShardSample]:
    """VQA questions (VQAv2 / combined json): one sample per image, its questions listed."""
    from glip.data.vqa import load_vqa_records

    by_image: dict[Any, list[Any]] = {}
    for r in load_vqa_records(ann):
        by_image.setdefault(r.image_id, []).append(r)
    for n, image_id in enumerate(_shuffled(list(by_image), seed)):
        rs = by_image[image_id]
        questions = [{"question_id": r.question_id, "question": r.question, "answers": r.answers,
                      "multiple_choice_answer": r.multiple_choice_answer, "answer_boxes": r.answer_boxes}
                     for r in rs]  # fmt: skip
        record = make_record(f"{n:09d}", {"id": image_id, "file_name": rs[0].file_name}, questions=questions)
        yield image_sample(f"{n:09d}", images / rs[0].file_name, record)


def _from_captions(ann: Path, images: Path, seed: int) -> Iterator[ShardSample]:
    """COCO-captions json: one sample per image, its reference captions listed."""
    from glip.data.captions import load_coco_captions

    data = load_coco_captions(ann)
    for n, image_id in enumerate(_shuffled(data.image_ids, seed)):
        record = dict(data.images[image_id])
        captions = data.captions[image_id]
        out = make_record(f"{n:09d}", {**record, "caption": captions[0]}, captions=captions)
        yield image_sample(f"{n:09d}", images / str(record["file_name"]), out)


def convert(source: str, ann: str | Path, images: str | Path, out: str | Path, shard_size: int = 1000,
            seed: int = 0, label_map: str | Path | None = None) -> Manifest:  # fmt: skip
    """``glip data shards --from SOURCE ANN --images DIR --out OUT``: the shard set of a
    dataset file (see :data:`SOURCES`); one-line errors for missing files."""
    ann, images = Path(ann), Path(images)
    if source not in SOURCES:
        raise ValueError(f"--from {source!r}: expected one of {', '.join(SOURCES)}")
    if not ann.is_file():
        raise FileNotFoundError(f"annotation file not found: {ann}")
    if not images.is_dir():
        raise FileNotFoundError(f"image folder not found: {images}")
    categories: list[dict[str, Any]] = []
    if source == "coco":
        from glip.data.annotations import CocoIndex

        categories = [{"id": c["id"], "name": c["name"]} for c in CocoIndex.load(ann).categories]
        samples, kind = _from_coco(ann, images, seed), "detection"
    elif source == "mdetr":
        samples, kind = _from_coco(ann, images, seed), "grounding"
    elif source == "odvg":
        odvg = read_odvg(ann, images, seed, label_map)
        samples, kind, categories = odvg.samples, odvg.kind, odvg.categories
    elif source == "vqa":
        samples, kind = _from_vqa(ann, images, seed), "vqa"
    else:
        samples, kind = _from_captions(ann, images, seed), "captions"
    try:
        return write_shard_set(samples, out, shard_size, source, kind, categories)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"image not found: {e.filename}") from None
