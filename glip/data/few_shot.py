"""k-shot training subsets of a COCO-format dataset, as the official few-shot protocol builds them.

Official counterpart: the ``few_shot`` branch of ``COCODataset``
(``maskrcnn_benchmark/data/datasets/coco.py``, ``DATASETS.FEW_SHOT`` and
``DATASETS.SHUFFLE_SEED``): image ids sorted, images without a valid annotation dropped,
the list shuffled with ``random.Random(seed)`` (seed 0: not shuffled), then images taken
in order while any of their categories still needs images; every category of a taken
image counts once (image level). Only classes need images
(:func:`glip.data.categories.class_categories`; the official run never lists id 0). Each category thus gets at least ``k`` images, hence at
least ``k`` instances, when the dataset has them. The released ODinW few-shot files
(``fewshot_train_shot{k}_seed{s}.json`` beside the full annotation file) are used instead
when present (:func:`official_few_shot_file`).
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from glip.data.annotations import has_valid_annotation
from glip.data.categories import class_categories

__all__ = ["FEW_SHOT_SEEDS", "FEW_SHOTS", "few_shot_subset", "instances_per_category", "official_few_shot_file"]

# The GLIP / ELEVATER protocol: 1, 3, 5 and 10 shots, three seeds each.
FEW_SHOTS = (1, 3, 5, 10)
FEW_SHOT_SEEDS = (3, 30, 300)


def few_shot_subset(coco: Mapping[str, Any], shots: int, seed: int) -> dict[str, Any]:
    """The ``shots``-shot subset of a COCO dict for ``seed``: a COCO dict with the chosen
    images (in the chosen order), all their annotations, and every category.

    ``shots`` 0 keeps every image with a valid annotation (the official full-data run).
    """
    if shots < 0:
        raise ValueError(f"shots must be >= 0, got {shots}")
    anns_by_image: dict[Any, list[Mapping[str, Any]]] = defaultdict(list)
    for ann in coco.get("annotations", []):
        anns_by_image[ann["image_id"]].append(ann)
    ids = sorted(img["id"] for img in coco.get("images", []))
    ids = [i for i in ids if has_valid_annotation(anns_by_image[i])]
    if shots > 0:
        if seed != 0:
            random.Random(seed).shuffle(ids)
        needed = {int(c["id"]): shots for c in _classes(coco)}
        chosen = []
        for image_id in ids:
            cats = {int(a["category_id"]) for a in anns_by_image[image_id]}
            if any(needed.get(c, 0) > 0 for c in cats):
                chosen.append(image_id)
                for c in cats:
                    needed[c] = needed.get(c, 0) - 1
        ids = chosen
    keep = set(ids)
    images = {img["id"]: img for img in coco.get("images", [])}
    out = {k: v for k, v in coco.items() if k not in ("images", "annotations")}
    out["images"] = [images[i] for i in ids]
    out["annotations"] = [a for a in coco.get("annotations", []) if a["image_id"] in keep]
    return out


def _classes(coco: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return class_categories(coco.get("categories", []), coco.get("annotations", []))


def instances_per_category(coco: Mapping[str, Any]) -> dict[int, int]:
    """``{class id: annotation count}`` (0 for classes without any), over the json's classes
    (:func:`glip.data.categories.class_categories`: not a Roboflow export's dataset-name entry)."""
    counts = {int(c["id"]): 0 for c in _classes(coco)}
    for ann in coco.get("annotations", []):
        counts[int(ann["category_id"])] = counts.get(int(ann["category_id"]), 0) + 1
    return counts


def official_few_shot_file(train_json: str | Path, shots: int, seed: int, split: str = "train") -> Path | None:
    """The released ODinW file ``fewshot_{split}_shot{k}_seed{s}.json`` beside
    ``train_json``, if it exists."""
    path = Path(train_json).parent / f"fewshot_{split}_shot{shots}_seed{seed}.json"
    return path if path.is_file() else None
