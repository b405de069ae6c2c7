"""The shard sample record, schema version 1: one image and everything any task knows about it.

A shard is a tar file (the webdataset / img2dataset layout): sample ``key`` is the members
``{key}.{ext}`` (the image: ``jpg``, ``jpeg``, ``png`` or ``webp``) and ``{key}.json`` (the
record below), next to each other. img2dataset's own ``{key}.txt`` caption member is read
too when the record has no caption (:func:`record_from_members`).

The record speaks the vocabulary of the COCO / MDETR json files, so the training readers
build a sample from it with the same code as from a json (the image record and the
annotation records of one image are exactly what
:meth:`glip.data.datasets.CocoGroundingDataset.build` and
:meth:`glip.data.datasets.MdetrGroundingDataset.build` take)::

    {
      "schema": 1,
      "key": "000000123",                 # the member key, unique in the shard set
      "image": {                          # the COCO image record
        "id": 123, "file_name": "...", "height": H, "width": W,
        "caption": "two dogs on a sofa",  # grounding / caption data
        "concepts": [{"phrase", "tokens_positive"}]   # a teacher's concept pool (optional)
      },
      "annotations": [{                   # the COCO / MDETR annotation records
        "bbox": [x, y, w, h],             # pixels, COCO convention
        "category_id": 3,                 # detection data: an id of the manifest's categories
        "tokens_positive": [[s, e]],      # grounding data: character spans in the caption
        "segmentation": {"size", "counts"},  # optional mask, COCO RLE (or polygons)
        "iscrowd": 0,
        "score": 0.87,                    # pseudo-label confidence (optional)
        "concept_scores": [0.1, ...]      # a teacher's scores, aligned with image.concepts
      }],
      "questions": [{"question_id", "question", "answers": [...]}],   # VQA (optional)
      "captions": ["reference caption", ...]                          # captioning (optional)
    }

Category names are a property of the shard set, not of a sample: they live in the
manifest (``categories``, COCO category records), like the label map of ODVG.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "IMAGE_EXTENSIONS",
    "SCHEMA_VERSION",
    "RecordError",
    "ShardSample",
    "image_sample",
    "make_record",
    "record_from_members",
    "validate_record",
]

SCHEMA_VERSION = 1
# Member extensions read as the image (webdataset's and img2dataset's names).
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
_OPTIONAL_LISTS = ("annotations", "questions", "captions")


@dataclass
class ShardSample:
    """One sample to write: its key, encoded image, the image's extension and its record."""

    key: str
    image: bytes
    ext: str
    record: dict[str, Any]


def image_sample(key: str, path: Path, record: dict[str, Any]) -> ShardSample:
    """A sample of the image file at ``path`` (its bytes; ``.jpeg`` stored as ``jpg``)."""
    ext = path.suffix.lower().lstrip(".") or "jpg"
    return ShardSample(key, path.read_bytes(), "jpg" if ext == "jpeg" else ext, record)


class RecordError(ValueError):
    """A sample whose members cannot be read as a schema record (the reader skips it)."""


def make_record(
    key: str,
    image: Mapping[str, Any],
    annotations: list[Mapping[str, Any]] | None = None,
    questions: list[Mapping[str, Any]] | None = None,
    captions: list[str] | None = None,
) -> dict[str, Any]:
    """A schema-1 record (see the module docstring) from an image record and its lists."""
    if not key or "." in key or "/" in key:
        raise ValueError(f"a sample key must be a non-empty name without '.' or '/', got {key!r}")
    record: dict[str, Any] = {"schema": SCHEMA_VERSION, "key": key, "image": dict(image)}
    record["annotations"] = [dict(a) for a in annotations or []]
    if questions:
        record["questions"] = [dict(q) for q in questions]
    if captions:
        record["captions"] = [str(c) for c in captions]
    return record


def validate_record(record: Any) -> dict[str, Any]:
    """``record`` if it is a readable schema record, else a :class:`RecordError` saying why."""
    if not isinstance(record, dict):
        raise RecordError(f"the json member is a {type(record).__name__}, not an object")
    version = record.get("schema", SCHEMA_VERSION)
    if version != SCHEMA_VERSION:
        raise RecordError(f"schema version {version!r}; this glip reads version {SCHEMA_VERSION}")
    if not isinstance(record.get("image"), dict):
        raise RecordError("the record has no 'image' object")
    for name in _OPTIONAL_LISTS:
        if not isinstance(record.get(name, []), list):
            raise RecordError(f"'{name}' is not a list")
    for ann in record.get("annotations", []):
        if not isinstance(ann, dict) or not isinstance(ann.get("bbox"), list) or len(ann["bbox"]) != 4:
            raise RecordError("an annotation has no 4-number 'bbox'")
    return record


def record_from_members(members: Mapping[str, Any]) -> tuple[bytes, dict[str, Any]]:
    """The image bytes and the validated record of one sample's tar members
    (``{"__key__": key, "jpg": bytes, "json": bytes, ...}``, webdataset's grouping).

    An img2dataset sample (``{key}.json`` holds its download metadata, ``{key}.txt`` the
    caption) becomes a caption record: image ``id`` the key, the caption from ``txt``, no
    boxes. A :class:`RecordError` when a member is missing or the json does not parse.
    """
    key = str(members.get("__key__", ""))
    image = next((members[e] for e in IMAGE_EXTENSIONS if e in members), None)
    if image is None:
        raise RecordError(f"sample {key}: no image member ({', '.join(IMAGE_EXTENSIONS)})")
    raw = members.get("json")
    try:
        record = json.loads(raw) if raw is not None else {}
    except (ValueError, UnicodeDecodeError) as e:
        raise RecordError(f"sample {key}: the json member does not parse ({e})") from None
    if isinstance(record, dict) and "image" not in record and "schema" not in record:
        # img2dataset: the json is download metadata (url, width, status...), the caption is .txt.
        text = members.get("txt", b"")
        caption = text.decode("utf-8", "replace").strip() if isinstance(text, bytes) else str(text or "")
        if not caption:
            caption = str(record.get("caption") or "")
        meta = {k: record[k] for k in ("url", "width", "height") if k in record}
        record = make_record(key, {"id": key, "file_name": key, "caption": caption, **meta})
    record = validate_record(record)
    record.setdefault("key", key)
    return bytes(image), record
