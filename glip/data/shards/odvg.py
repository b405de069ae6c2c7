"""ODVG jsonl (the detection / grounding format of Open-GroundingDino and MM-Grounding-DINO)
in and out.

One json object per line, about one image (``filename``, ``height``, ``width``) and either

- ``"detection": {"instances": [{"bbox": [x1, y1, x2, y2], "label": 3, "category": "cat"}]}``
  (object detection; the label map, a separate ``{"3": "cat", ...}`` json, names the
  labels), or
- ``"grounding": {"caption": "...", "regions": [{"bbox": [x1, y1, x2, y2] (or a list of
  them), "phrase": "...", "tokens_positive": [[start, end]]}]}`` (visual grounding).

Boxes are absolute pixel corners; the shard records hold COCO ``[x, y, w, h]`` with
``w = x2 - x1``, so a file converted in and written out again is the same.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from glip.data.shards.schema import image_sample, make_record

__all__ = ["OdvgInput", "read_odvg", "write_odvg"]


@dataclass
class OdvgInput:
    """A parsed ODVG file: its samples (to :func:`glip.data.shards.convert.write_shard_set`),
    the reader kind (``detection`` or ``grounding``) and the category records."""

    samples: Iterator[Any]
    kind: str
    categories: list[dict[str, Any]]


def _lines(path: Path) -> list[dict[str, Any]]:
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as e:
            raise ValueError(f"{path}:{n}: not a json line ({e})") from None
        if not isinstance(row, dict) or "filename" not in row or not ("detection" in row or "grounding" in row):
            raise ValueError(f"{path}:{n}: an ODVG line needs 'filename' and 'detection' or 'grounding'")
        rows.append(row)
    return rows


def _xywh(box: list[float]) -> list[float]:
    x1, y1, x2, y2 = (float(v) for v in box)
    return [x1, y1, x2 - x1, y2 - y1]


def _xyxy(box: list[float]) -> list[float]:
    x, y, w, h = (float(v) for v in box)
    return [x, y, x + w, y + h]


def _record(key: str, row: dict[str, Any]) -> dict[str, Any]:
    image = {"id": key, "file_name": row["filename"], "height": row.get("height"), "width": row.get("width")}
    anns: list[dict[str, Any]] = []
    if "detection" in row:
        for inst in row["detection"].get("instances", []):
            anns.append({"bbox": _xywh(inst["bbox"]), "category_id": int(inst["label"]), "iscrowd": 0})
    else:
        g = row["grounding"]
        image["caption"] = str(g["caption"])
        for region in g.get("regions", []):
            boxes = region["bbox"] if isinstance(region["bbox"][0], list) else [region["bbox"]]
            spans = region.get("tokens_positive")
            if spans is None:  # the phrase's first occurrence in the caption
                start = image["caption"].find(region["phrase"])
                if start < 0:
                    raise ValueError(f"{row['filename']}: phrase {region['phrase']!r} is not in the caption")
                spans = [[start, start + len(region["phrase"])]]
            for box in boxes:
                anns.append({"bbox": _xywh(box), "tokens_positive": spans, "phrase": region["phrase"], "iscrowd": 0})
    return make_record(key, image, anns)


def read_odvg(path: str | Path, images: str | Path, seed: int = 0, label_map: str | Path | None = None) -> OdvgInput:
    """The samples of an ODVG jsonl (images under ``images``), in a seeded random order.
    Detection files take their category names from ``label_map`` or, without one, from the
    instances' ``category``."""
    path, images = Path(path), Path(images)
    rows = _lines(path)
    kinds = {"detection" if "detection" in r else "grounding" for r in rows}
    if len(kinds) > 1:
        raise ValueError(f"{path} mixes detection and grounding lines: convert them as two shard sets")
    kind = kinds.pop() if kinds else "grounding"
    categories: list[dict[str, Any]] = []
    if kind == "detection":
        names: dict[int, str] = {}
        if label_map is not None:
            names = {int(k): str(v) for k, v in json.loads(Path(label_map).read_text(encoding="utf-8")).items()}
        for r in rows:
            for inst in r["detection"].get("instances", []):
                names.setdefault(int(inst["label"]), str(inst.get("category", inst["label"])))
        categories = [{"id": i, "name": names[i]} for i in sorted(names)]
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)

    def samples() -> Iterator[Any]:
        for n, i in enumerate(order):
            key = f"{n:09d}"
            yield image_sample(key, images / rows[i]["filename"], _record(key, rows[i]))

    return OdvgInput(samples(), kind, categories)


def write_odvg(shards: str | Path, out: str | Path) -> tuple[Path, Path | None]:
    """Writes the shard set ``shards`` (a folder, manifest or glob) as ODVG jsonl ``out``
    (one line per sample, in shard order); detection sets also get ``OUT_label_map.json``.
    Returns the two paths (the label map None for grounding)."""
    from glip.data.shards.manifest import open_shard_set
    from glip.data.shards.schema import record_from_members
    from glip.data.shards.tario import iter_shard

    manifest = open_shard_set(shards)
    if manifest.kind not in ("detection", "grounding", "caption"):
        raise ValueError(f"{manifest.root}: {manifest.kind!r} shards have no ODVG form")
    names = {int(c["id"]): str(c["name"]) for c in manifest.categories}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        for entry in manifest.shards:
            for members in iter_shard(manifest.path(entry)):
                _, record = record_from_members(members)
                image = record["image"]
                row: dict[str, Any] = {"filename": image["file_name"], "height": image.get("height"),
                                       "width": image.get("width")}  # fmt: skip
                anns = record.get("annotations", [])
                if manifest.kind == "detection":
                    row["detection"] = {"instances": [
                        {"bbox": _xyxy(a["bbox"]), "label": int(a["category_id"]),
                         "category": names.get(int(a["category_id"]), "")} for a in anns
                    ]}  # fmt: skip
                else:
                    regions = [{"bbox": _xyxy(a["bbox"]), "phrase": a.get("phrase") or _phrase(image, a),
                                "tokens_positive": a["tokens_positive"]} for a in anns]  # fmt: skip
                    row["grounding"] = {"caption": image.get("caption", ""), "regions": regions}
                f.write(json.dumps(row) + "\n")
    label_map = None
    if manifest.kind == "detection":
        label_map = out.with_name(out.stem + "_label_map.json")
        label_map.write_text(json.dumps({str(k): v for k, v in sorted(names.items())}), encoding="utf-8")
    return out, label_map


def _phrase(image: dict[str, Any], ann: dict[str, Any]) -> str:
    caption = str(image.get("caption", ""))
    return " ".join(caption[int(a) : int(b)] for a, b in ann.get("tokens_positive", []))
