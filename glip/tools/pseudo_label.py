"""Pseudo-labelling image-caption pairs: sharded over processes, resumable, merged into
one MDETR-style grounding json that ``glip train`` reads (``data.format: mdetr``).

The work:

- **Inputs.** A COCO-captions json (``images`` + ``annotations`` with ``image_id`` and
  ``caption``). The unit of work is one image with all its captions, numbered by its
  position ``index`` among the json's captioned images; process ``k`` of ``n`` labels the
  images with ``index % n == k``.
- **Shard folder** (``OUT.shards`` by default). ``settings.json`` holds the options and
  the captions file's digest: a resumed run must use the same. Each process writes its
  results every ``chunk_size`` images to a new part file
  ``part-K-of-N-SEQ.json`` (a temporary file, then ``os.replace``: a part is whole or
  absent). A part holds one entry per image: ``{"index", "image_id", "file_name",
  "height", "width", "captions": [{"caption", "annotations": [...]}]}``, or ``{"index",
  "image_id", "file_name", "error"}`` for an image that could not be read or labelled
  (logged and skipped, never fatal, not retried).
- **Resume.** Every process reads all parts first and skips the images they hold, whatever
  the number of processes of the earlier run. At most the last unwritten chunk is redone.
- **Merge.** When every image has an entry, the entries are written in ``index`` order as
  one json: each caption with at least ``min_boxes`` boxes becomes an image record (``id``,
  ``file_name``, ``height``, ``width``, ``caption``, ``original_img_id``, ``caption_index``)
  and each box an annotation (``bbox`` ``[x, y, w, h]`` with ``w = x2 - x1 + 1``,
  ``tokens_positive``, ``phrase``, ``score``, ``category_id`` 1, ``area``, ``iscrowd`` 0).
  A teacher that scores each box against all the caption's phrases (the CLIP teacher) adds
  the caption's ``concepts`` to its image record (``[{"phrase", "tokens_positive"}]``, its
  noun phrases in caption order) and each box's ``concept_scores`` (the teacher's logits,
  one per concept, 4 decimals), which the distillation loss reads.
  The result depends only on the inputs and the teacher, not on the sharding.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from glip.data.annotations import read_image
from glip.data.caption_screen import CaptionScreen
from glip.data.captions import load_coco_captions
from glip.tools.teachers import Chunker, PseudoBox, Teacher, caption_prompt
from glip.utils.fs import atomic_write_text

__all__ = [
    "CATEGORIES",
    "ImageItem",
    "LabelSummary",
    "MergeSummary",
    "PseudoLabelSettings",
    "ShardStore",
    "annotation_record",
    "default_shard_dir",
    "label_captions",
    "label_images",
    "merge_shards",
    "read_caption_items",
]

logger = logging.getLogger(__name__)

_PART_FORMAT = "glip-pseudo-label-part/1"
CATEGORIES = [{"id": 1, "name": "object"}]  # one category, as MDETR's files (category_id 1)


@dataclass(frozen=True)
class ImageItem:
    """One captioned image: its position among the json's captioned images, its json id,
    its file (relative to the image folder) and its captions in json order."""

    index: int
    image_id: Any
    file_name: str
    captions: tuple[str, ...]


def read_caption_items(path: str | Path) -> list[ImageItem]:
    """The captioned images of a COCO-captions json, in json order."""
    data = load_coco_captions(path)
    return [
        ImageItem(i, image_id, str(data.images[image_id]["file_name"]), tuple(data.captions[image_id]))
        for i, image_id in enumerate(data.image_ids)
    ]


def file_digest(path: str | Path) -> str:
    """sha256 of a file, read in 4 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class PseudoLabelSettings:
    """What decides the labels; a resumed run must repeat it exactly.

    Attributes:
        captions_sha256: digest of the captions json.
        num_images: its captioned images.
        threshold: the teacher keeps boxes scoring above this.
        nms: class-agnostic NMS IoU over a caption's boxes (<= 0: none).
        min_boxes: captions with fewer boxes are left out of the merged file.
        teacher: ``"glip"`` or ``"clip"``.
        chunker: ``"offline"`` or ``"spacy"``.
        model: how the teacher was named (model, CLIP folder, box file...).
    """

    captions_sha256: str
    num_images: int
    threshold: float = 0.5
    nms: float = -1.0
    min_boxes: int = 1
    teacher: str = "glip"
    chunker: str = "offline"
    model: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def default_shard_dir(out: str | Path) -> Path:
    """``OUT.shards`` beside the merged file."""
    out = Path(out)
    return out.with_name(out.name + ".shards")


class ShardStore:
    """The shard folder: ``settings.json`` and the part files."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    @property
    def settings_file(self) -> Path:
        return self.root / "settings.json"

    def read_settings(self) -> dict[str, Any] | None:
        if not self.settings_file.is_file():
            return None
        return json.loads(self.settings_file.read_text(encoding="utf-8"))

    def check_settings(self, settings: PseudoLabelSettings) -> None:
        """Records ``settings`` in a new folder; in an existing one, raises ``ValueError``
        naming the options that differ from those of the earlier run."""
        wanted = json.loads(json.dumps(settings.to_json()))  # tuples -> lists, as read back
        have = self.read_settings()
        if have is None:
            self.root.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.settings_file, json.dumps(wanted, indent=1, sort_keys=True))
            return
        differ = sorted(k for k in set(have) | set(wanted) if have.get(k) != wanted.get(k))
        if differ:
            shown = ", ".join(f"{k}: {have.get(k)!r} then, {wanted.get(k)!r} now" for k in differ)
            raise ValueError(
                f"{self.root} holds labels made with other settings ({shown}); "
                "rerun with the same options, or delete the folder to start over"
            )

    def parts(self) -> list[Path]:
        return sorted(self.root.glob("part-*.json"))

    def read_entries(self) -> dict[int, dict[str, Any]]:
        """Every labelled image's entry by ``index`` (the first part holding it wins; an
        unreadable part is logged and ignored, its images are labelled again)."""
        entries: dict[int, dict[str, Any]] = {}
        for part in self.parts():
            try:
                data = json.loads(part.read_text(encoding="utf-8"))
                if data.get("format") != _PART_FORMAT:
                    raise ValueError(f"format {data.get('format')!r}")
                items = data["entries"]
            except (OSError, ValueError, KeyError, AttributeError) as e:
                logger.warning("ignoring the unreadable part %s (%s)", part, e)
                continue
            for entry in items:
                entries.setdefault(int(entry["index"]), entry)
        return entries

    def write_part(self, shard: int, num_shards: int, entries: Sequence[dict[str, Any]]) -> Path:
        """Writes a new part of shard ``shard`` atomically; returns its path."""
        prefix = f"part-{shard:05d}-of-{num_shards:05d}-"
        seq = len(list(self.root.glob(prefix + "*.json")))
        path = self.root / f"{prefix}{seq:06d}.json"
        while path.exists():  # a part of a run that was killed between the glob and the write
            seq += 1
            path = self.root / f"{prefix}{seq:06d}.json"
        atomic_write_text(path, json.dumps({"format": _PART_FORMAT, "entries": list(entries)}, sort_keys=True))
        return path


def _annotation(box: PseudoBox, spans: tuple[tuple[int, int], ...], phrase: str) -> dict[str, Any]:
    x1, y1, x2, y2 = (round(v, 2) for v in box.box)  # corners rounded first: the reader gets them back
    bbox = [x1, y1, round(x2 - x1 + 1, 2), round(y2 - y1 + 1, 2)]
    ann = {"bbox": bbox, "score": round(box.score, 4), "phrase": phrase, "tokens_positive": [list(s) for s in spans]}
    if box.concept_scores is not None:
        ann["concept_scores"] = [round(float(v), 4) for v in box.concept_scores]
    return ann


def _concepts(prompt: Any) -> list[dict[str, Any]]:
    """The caption's concept pool as written in the json: each phrase with its spans."""
    return [
        {"phrase": phrase, "tokens_positive": [list(s) for s in spans]}
        for phrase, spans in zip(prompt.phrases, prompt.spans)
    ]


def label_captions(
    image: np.ndarray, captions: Sequence[str], image_id: Any, teacher: Teacher, chunker: Chunker, screen: CaptionScreen
) -> list[dict[str, Any]]:
    """One image's captions labelled: per caption ``{"caption", "annotations": [...]}`` (each
    box as :func:`_annotation` writes it, screened by ``screen``) and ``"concepts"`` when the
    teacher scores concepts. ``image``: ``uint8 [H, W, 3]`` stored pixels. The teacher's
    errors propagate."""
    prompts = [caption_prompt(c, chunker) for c in captions]
    found = teacher.label(image, [p for p in prompts if p is not None], image_id)
    records = []
    boxes = iter(found)
    for caption, prompt in zip(captions, prompts):
        record: dict[str, Any] = {"caption": caption, "annotations": []}
        if prompt is not None:
            labelled = next(boxes)
            annotations = [_annotation(b, prompt.spans[b.phrase], prompt.phrases[b.phrase]) for b in labelled]
            record["annotations"] = screen.screen(annotations)
            if any(b.concept_scores is not None for b in labelled):
                record["concepts"] = _concepts(prompt)
        records.append(record)
    return records


def annotation_record(ann: dict[str, Any]) -> dict[str, Any]:
    """A labelled box as a grounding annotation record: ``category_id`` 1, ``iscrowd`` 0 and
    its ``area`` added to :func:`_annotation`'s fields."""
    w, h = ann["bbox"][2], ann["bbox"][3]
    return {"category_id": 1, "iscrowd": 0, "area": round(w * h, 2), **ann}


def label_image(
    item: ImageItem, image_dir: Path, teacher: Teacher, chunker: Chunker, screen: CaptionScreen
) -> dict[str, Any]:
    """One image's part entry (see the module docstring); an error becomes an error entry."""
    head = {"index": item.index, "image_id": item.image_id, "file_name": item.file_name}
    try:
        # The stored pixels, as the training reader sees them (no EXIF rotation).
        image = read_image(image_dir / item.file_name)
        captions = label_captions(image, item.captions, item.image_id, teacher, chunker, screen)
    except Exception as e:  # a bad image (or one the teacher cannot run) must not stop the job
        logger.warning("image %s (%s) skipped: %s: %s", item.image_id, item.file_name, type(e).__name__, e)
        return {**head, "error": f"{type(e).__name__}: {e}"}
    return {**head, "height": int(image.shape[0]), "width": int(image.shape[1]), "captions": captions}


@dataclass
class LabelSummary:
    """One process's run: images labelled now, of which failed, and those found done."""

    labelled: int = 0
    failed: int = 0
    already_done: int = 0
    remaining: int = 0
    parts: list[Path] = field(default_factory=list)


def label_images(
    items: Sequence[ImageItem],
    image_dir: str | Path,
    teacher: Teacher,
    chunker: Chunker,
    store: ShardStore,
    settings: PseudoLabelSettings,
    *,
    shard_index: int = 0,
    num_shards: int = 1,
    chunk_size: int = 64,
    max_images: int | None = None,
    progress: bool = True,
) -> LabelSummary:
    """Labels this shard's images that no part holds yet, writing a part every
    ``chunk_size`` images (and what is done when interrupted). ``max_images``: stop after
    that many (the rest is left for a later run)."""
    if not 0 <= shard_index < num_shards:
        raise ValueError(f"shard index {shard_index} is not in [0, {num_shards})")
    if chunk_size < 1:
        raise ValueError(f"the chunk size must be at least 1, got {chunk_size}")
    store.check_settings(settings)
    done = store.read_entries()
    mine = [it for it in items if it.index % num_shards == shard_index]
    todo = [it for it in mine if it.index not in done]
    summary = LabelSummary(already_done=len(mine) - len(todo))
    if max_images is not None:
        summary.remaining = max(len(todo) - max_images, 0)
        todo = todo[:max_images]
    screen = CaptionScreen(conf=0.0, nms=settings.nms, min_boxes=0)
    bar = None
    if progress and todo:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), unit="img", desc=f"pseudo-label {shard_index + 1}/{num_shards}", file=sys.stderr)
    buffer: list[dict[str, Any]] = []
    try:
        for item in todo:
            entry = label_image(item, Path(image_dir), teacher, chunker, screen)
            buffer.append(entry)
            summary.labelled += 1
            summary.failed += "error" in entry
            if len(buffer) >= chunk_size:
                summary.parts.append(store.write_part(shard_index, num_shards, buffer))
                buffer = []
            if bar is not None:
                bar.update(1)
    finally:  # an interruption keeps what is done
        if buffer:
            summary.parts.append(store.write_part(shard_index, num_shards, buffer))
        if bar is not None:
            bar.close()
    return summary


@dataclass
class MergeSummary:
    """The merged file: captions written (image records), boxes, images that failed."""

    path: Path
    captions: int
    boxes: int
    failed: list[dict[str, Any]]
    dropped_captions: int


def merge_shards(items: Sequence[ImageItem], store: ShardStore, out: str | Path) -> MergeSummary:
    """Writes the MDETR-style json of every part (see the module docstring) atomically.

    Raises ``ValueError`` when some image has no entry yet (a run is unfinished).
    """
    settings = store.read_settings()
    if settings is None:
        raise ValueError(f"{store.root} holds no pseudo-labels (no settings.json): label the captions first")
    if settings.get("num_images") != len(items):
        raise ValueError(
            f"{store.root} was made from {settings.get('num_images')} images, the captions have {len(items)}"
        )
    min_boxes = int(settings.get("min_boxes", 1))
    entries = store.read_entries()
    missing = [it for it in items if it.index not in entries]
    if missing:
        raise ValueError(
            f"{len(missing)} of {len(items)} images are not labelled yet (e.g. image id {missing[0].image_id}): "
            "run glip pseudo-label again, it resumes where it stopped"
        )
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    failed, dropped = [], 0
    for item in items:
        entry = entries[item.index]
        if "error" in entry:
            failed.append({"image_id": entry["image_id"], "file_name": entry["file_name"], "error": entry["error"]})
            continue
        for k, cap in enumerate(entry["captions"]):
            if len(cap["annotations"]) < min_boxes:
                dropped += 1
                continue
            image_id = len(images) + 1
            images.append({
                "id": image_id, "file_name": entry["file_name"], "height": entry["height"], "width": entry["width"],
                "caption": cap["caption"], "original_img_id": entry["image_id"], "caption_index": k,
                **({"concepts": cap["concepts"]} if "concepts" in cap else {}),
            })  # fmt: skip
            for ann in cap["annotations"]:
                annotations.append({"id": len(annotations) + 1, "image_id": image_id, **annotation_record(ann)})
    merged = {
        "images": images,
        "annotations": annotations,
        "categories": CATEGORIES,
        "pseudo_label": {**{k: v for k, v in settings.items()}, "failed_images": failed},
    }
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(merged, sort_keys=True))
    return MergeSummary(out, len(images), len(annotations), failed, dropped)
