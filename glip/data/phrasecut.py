"""PhraseCut (referring segmentation) annotations: the refer json reader, the dataset's
ground-truth rasterisation, and a PhraseCut-style file made from a COCO json with masks.

A PhraseCut ``refer_<split>.json`` (VGPhraseCut v0) is a list of *tasks*, one per
(image, phrase)::

    {"task_id": "...", "image_id": 2344, "phrase": "white plate",
     "instance_boxes": [[x, y, w, h], ...],
     "Polygons": [[[[x, y], [x, y], ...], ...], ...]}   # per instance: its polygons

Image sizes come from ``image_data_split.json`` beside it (``image_id``, ``width``,
``height``); the images are ``images/<image_id>.jpg``. This reader also takes ``polygons``
for ``Polygons`` and, per task, ``file_name``, ``height`` and ``width`` (what
:func:`phrasecut_from_coco` writes).

Ground truth (:func:`phrasecut_mask`): the dataset's ``polygons_to_mask`` rule, every
polygon's points truncated to integer pixel coordinates and filled with its outline
(PIL ``ImageDraw.polygon(fill=1, outline=1)``), the union over polygons and instances.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from glip.data.masks import outline_polygons

__all__ = ["IMAGE_INFO_NAME", "PhraseCutTask", "phrasecut_from_coco", "phrasecut_mask", "read_phrasecut"]

# The dataset's image list (VGPhraseCut v0), beside the refer jsons.
IMAGE_INFO_NAME = "image_data_split.json"

Polygon = Sequence[Sequence[float]]  # [[x, y], ...]


@dataclass(frozen=True)
class PhraseCutTask:
    """One (image, phrase) sample.

    Attributes:
        task_id: unique over the file.
        image_id: the image's id.
        phrase: the referring phrase (the whole prompt at evaluation).
        polygons: per instance, its polygons (``[[x, y], ...]`` in pixel coordinates).
        file_name: the image file, relative to the image folder (default ``<image_id>.jpg``).
        size: ``(height, width)`` when the file or the image list gives it, else None.
        boxes: the instances' ``instance_boxes`` (``[x, y, w, h]``), empty when the file has none.
    """

    task_id: str
    image_id: int | str
    phrase: str
    polygons: tuple[tuple[Polygon, ...], ...]
    file_name: str
    size: tuple[int, int] | None = None
    boxes: tuple[tuple[float, ...], ...] = ()

    def mask(self, height: int, width: int) -> np.ndarray:
        """``bool [H, W]``: the union of the instances (:func:`phrasecut_mask`)."""
        return phrasecut_mask(self.polygons, height, width)


def phrasecut_mask(instances: Sequence[Sequence[Polygon]], height: int, width: int) -> np.ndarray:
    """``bool [H, W]``: PhraseCut's ground truth of a phrase, every polygon of every instance
    (``[[x, y], ...]``, points truncated to integers) filled with its outline, then united.
    Polygons of fewer than 2 points are skipped, as the dataset's ``polygons_to_mask`` does."""
    canvas = Image.new("L", (int(width), int(height)), 0)
    draw = ImageDraw.Draw(canvas)
    for polygons in instances:
        for polygon in polygons:
            if len(polygon) < 2:
                continue
            draw.polygon([(int(x), int(y)) for x, y in polygon], fill=1, outline=1)
    return np.asarray(canvas, dtype=np.uint8) > 0


def _image_sizes(refer_path: Path) -> dict[Any, tuple[int, int]]:
    info = refer_path.parent / IMAGE_INFO_NAME
    if not info.is_file():
        return {}
    with open(info, encoding="utf-8") as f:
        return {img["image_id"]: (int(img["height"]), int(img["width"])) for img in json.load(f)}


def read_phrasecut(refer_json: str | Path | Sequence[Mapping[str, Any]]) -> list[PhraseCutTask]:
    """The tasks of a PhraseCut refer json (a path, or the parsed list), in file order.

    Raises ``ValueError`` naming the first malformed task (no phrase, no polygons, a
    repeated ``task_id``)."""
    sizes: dict[Any, tuple[int, int]] = {}
    if isinstance(refer_json, (str, Path)):
        path = Path(refer_json)
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
        sizes = _image_sizes(path)
    else:
        raw = list(refer_json)
    if not isinstance(raw, list):
        raise ValueError("a PhraseCut refer json is a list of tasks (image_id, phrase, Polygons)")
    tasks: list[PhraseCutTask] = []
    seen: set[str] = set()
    for i, t in enumerate(raw):
        polygons = t.get("Polygons", t.get("polygons"))
        if "image_id" not in t or not isinstance(t.get("phrase"), str) or polygons is None:
            raise ValueError(f"PhraseCut task {i} needs image_id, phrase and Polygons")
        task_id = str(t.get("task_id", f"{t['image_id']}__{i}"))
        if task_id in seen:
            raise ValueError(f"PhraseCut task_id {task_id!r} is repeated")
        seen.add(task_id)
        size = (int(t["height"]), int(t["width"])) if "height" in t and "width" in t else sizes.get(t["image_id"])
        tasks.append(
            PhraseCutTask(
                task_id=task_id,
                image_id=t["image_id"],
                phrase=t["phrase"],
                polygons=tuple(tuple(tuple(tuple(p) for p in poly) for poly in inst) for inst in polygons),
                file_name=str(t.get("file_name", f"{t['image_id']}.jpg")),
                size=size,
                boxes=tuple(tuple(float(v) for v in b) for b in t.get("instance_boxes", [])),
            )
        )
    return tasks


def _pixel_centre_polygon(flat: Sequence[int]) -> list[list[int]]:
    """A pixel-edge outline (:func:`glip.data.masks.outline_polygons`: corners of pixels,
    clockwise on screen, interior on the right) as the polygon through its boundary pixels,
    which :func:`phrasecut_mask` fills back to the same pixels: a vertex on a downward edge
    (the shape's right side) moves one pixel left, one on a westward edge (its bottom) one up."""
    pts = np.asarray(flat, dtype=np.int64).reshape(-1, 2)  # [K, 2] (x, y)
    prev, nxt = np.roll(pts, 1, axis=0), np.roll(pts, -1, axis=0)
    out = []
    for p, a, b in zip(pts, prev, nxt):
        # Corners alternate horizontal and vertical edges: one of (a -> p), (p -> b) is vertical.
        vertical = (p - a) if a[0] == p[0] else (b - p)
        horizontal = (p - a) if a[1] == p[1] else (b - p)
        out.append([int(p[0] - (vertical[1] > 0)), int(p[1] - (horizontal[0] < 0))])
    return out


def phrasecut_from_coco(coco: Mapping[str, Any]) -> list[dict[str, Any]]:
    """PhraseCut-style tasks of a COCO json with instance masks: one task per image and
    category present, the phrase the category's name, its instances' masks as polygons
    that :func:`phrasecut_mask` rasterises back to exactly the annotated pixels (plus
    ``file_name``, ``height`` and ``width``). A category whose instances include a mask
    with a hole (COCO RLE; PhraseCut polygons cannot express it) or no mask is left out
    of that image."""
    from glip.data.masks import annotation_mask, has_segmentation

    names = {c["id"]: c["name"] for c in coco["categories"]}
    by_image: dict[Any, dict[int, list[Mapping[str, Any]]]] = {}
    for ann in coco["annotations"]:
        by_image.setdefault(ann["image_id"], {}).setdefault(ann["category_id"], []).append(ann)
    tasks = []
    for image in sorted(coco["images"], key=lambda img: img["id"]):
        h, w = int(image["height"]), int(image["width"])
        for cat, anns in sorted(by_image.get(image["id"], {}).items()):
            instances, boxes = [], []
            for ann in anns:
                if not has_segmentation(ann):
                    break
                outline = outline_polygons(annotation_mask(ann, h, w))
                if not outline:
                    break
                instances.append([_pixel_centre_polygon(p) for p in outline])
                boxes.append([float(v) for v in ann["bbox"]])
            else:
                tasks.append({
                    "task_id": f"{image['id']}__{cat}", "image_id": image["id"], "phrase": names[cat],
                    "instance_boxes": boxes, "Polygons": instances,
                    "file_name": image["file_name"], "height": h, "width": w,
                })  # fmt: skip
    return tasks
