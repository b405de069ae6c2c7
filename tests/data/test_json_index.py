"""The memory-mapped json index: the same records and the same samples as the parsed json."""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

import glip.data.json_stream as json_stream
from glip.data import CocoGroundingDataset, CocoIndex, MdetrGroundingDataset, TrainTransform
from glip.data.annotations import has_valid_annotation
from glip.data.caption_screen import CaptionScreen
from glip.data.json_index import MappedCocoIndex, build_index, index_folder, open_index

CAPTIONS = ["a red café ☕ near two dogs", "the man in a hat", "cats. dogs. a tiny bird"]


def _write_set(root: Path, seed: int = 0, indent: int | None = None) -> Path:
    """Eight images and an MDETR-style json with awkward records: annotations out of image
    order, fractional boxes, boxes of at most one pixel, crowd boxes, an image without
    boxes, missing scores, teacher concept scores on one image."""
    rng = random.Random(seed)
    (root / "img").mkdir(parents=True, exist_ok=True)
    images = []
    for i in range(8):
        h, w = rng.randint(20, 40), rng.randint(20, 40)
        Image.fromarray(np.full((h, w, 3), 30 * i, dtype=np.uint8)).save(root / "img" / f"{i}.png")
        images.append({"id": 100 - 7 * i, "file_name": f"{i}.png", "height": h, "width": w, "caption": CAPTIONS[i % 3]})
    anns = []
    for k in range(40):
        img = rng.choice(images[:7])
        x, y = rng.uniform(-3, 15), rng.uniform(0, 15)
        bw = rng.choice([0.5, 1.0, rng.uniform(1.01, 25.0)])
        ann = {"id": k, "image_id": img["id"], "bbox": [x, y, bw, rng.uniform(0.9, 25.0)], "category_id": 1 + k % 3}
        ann["tokens_positive"] = [[0, 5]] if k % 2 else [[2, 5], [6, 9]]
        ann["iscrowd"] = int(k % 11 == 0)
        if k % 3:
            ann["score"] = rng.random()
        anns.append(ann)
    concepts_image = images[3]
    concepts_image["concepts"] = [{"phrase": "man", "tokens_positive": [[4, 7]]}]
    for ann in anns:
        if ann["image_id"] == concepts_image["id"]:
            ann["concept_scores"] = [rng.random()]
    data = {
        "info": {"about": "test"},
        "annotations": anns,
        "images": images,
        "categories": [{"id": 1, "name": "dog"}, {"id": 2, "name": "cat"}, {"id": 3, "name": "bird"}],
    }
    path = root / "ann.json"
    path.write_text(json.dumps(data, indent=indent, ensure_ascii=indent is None), encoding="utf-8")
    return path


@pytest.mark.parametrize("indent", [None, 2])
def test_index_records_equal_the_parsed_json(tmp_path, monkeypatch, indent):
    """Every image record and annotation list, the categories, ids and usable images are
    those of CocoIndex.load, also when every record crosses a read-buffer boundary."""
    path = _write_set(tmp_path, indent=indent)
    monkeypatch.setattr(json_stream, "_CHUNK", 7)
    (tmp_path / "idx").mkdir()
    build_index(path, tmp_path / "idx")
    ref, mapped = CocoIndex.load(path), MappedCocoIndex(tmp_path / "idx")
    assert list(mapped.image_ids) == ref.image_ids and mapped.categories == ref.categories
    assert mapped.keys == ["info", "annotations", "images", "categories"]
    for image_id in ref.image_ids:
        assert mapped.images[image_id] == ref.images[image_id]
        assert mapped.annotations[image_id] == ref.annotations[image_id]
    assert list(mapped.valid_ids()) == [i for i in ref.image_ids if has_valid_annotation(ref.annotations[i])]
    assert 12345 not in mapped.images and dict(mapped.images) == ref.images
    mapped.annotations[ref.image_ids[0]]  # opens the file; a copy (spawned loader worker) opens its own
    copy = pickle.loads(pickle.dumps(mapped))
    assert all(copy.annotations[i] == ref.annotations[i] for i in ref.image_ids)


def _assert_same(a: Any, b: Any, where: str = "sample") -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif dataclasses.is_dataclass(a):
        assert type(a) is type(b), where
        for f in dataclasses.fields(a):
            _assert_same(getattr(a, f.name), getattr(b, f.name), f"{where}.{f.name}")
    else:
        assert type(a) is type(b) and a == b, where


@pytest.mark.parametrize(
    "screen", [None, CaptionScreen(conf=0.4, min_boxes=2), CaptionScreen(conf=0.2, nms=0.3, min_boxes=1)]
)
def test_mdetr_samples_from_the_index_equal_the_json_path(tmp_path, tokenizer, screen):
    """Every item (two epochs, caption screen and teacher scores on) is bit-identical."""
    path = _write_set(tmp_path)
    transform = TrainTransform([32, 48], 64, 0.5)
    kwargs = dict(kind="caption", screen=screen, concept_scores=True)
    ref = MdetrGroundingDataset(path, tmp_path / "img", tokenizer, transform, index_mode="memory", **kwargs)
    mapped = MdetrGroundingDataset(path, tmp_path / "img", tokenizer, transform, index_mode="mapped", **kwargs)
    assert isinstance(mapped.index.annotations, type(ref.index.annotations)) is False  # really mapped
    assert list(mapped.ids) == list(ref.ids) and len(ref) >= 3
    assert mapped.has_concept_scores == ref.has_concept_scores
    for epoch in (0, 1):
        ref.set_epoch(epoch), mapped.set_epoch(epoch)
        for item in range(len(ref)):
            _assert_same(ref[item], mapped[item], f"item {item}")


def test_coco_samples_from_the_index_equal_the_json_path(tmp_path, tokenizer):
    path = _write_set(tmp_path, seed=1)
    transform = TrainTransform([32], 64, 0.5)
    ref = CocoGroundingDataset(path, tmp_path / "img", tokenizer, transform, index_mode="memory")
    mapped = CocoGroundingDataset(path, tmp_path / "img", tokenizer, transform, index_mode="mapped")
    assert len(ref) == len(mapped) >= 3
    for item in range(len(ref)):
        _assert_same(ref[item], mapped[item], f"item {item}")


def test_index_is_built_once_and_rebuilt_when_the_json_changes(tmp_path):
    path = _write_set(tmp_path)
    first = open_index(path, "mapped")
    folder = index_folder(path)
    assert isinstance(first, MappedCocoIndex) and first.folder == folder and folder.parent == tmp_path
    stamp = (folder / "meta.json").stat().st_mtime_ns
    assert open_index(path, "mapped").folder == folder and (folder / "meta.json").stat().st_mtime_ns == stamp
    data = json.loads(path.read_text(encoding="utf-8"))
    data["images"] = data["images"][:3]
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] in {i["id"] for i in data["images"]}]
    path.write_text(json.dumps(data), encoding="utf-8")
    os.utime(path, ns=(stamp + 10**9, stamp + 10**9))
    changed = open_index(path, "mapped", cache_dir=tmp_path / "cache")
    assert changed.folder.parent == tmp_path / "cache" and list(changed.image_ids) == CocoIndex.load(path).image_ids
    assert isinstance(open_index(path, "auto"), CocoIndex)  # small jsons are parsed under "auto"


def test_bad_jsons_are_one_line_errors(tmp_path):
    bad = tmp_path / "unknown.json"
    bad.write_text(json.dumps({"images": [{"id": 1}], "annotations": [{"id": 7, "image_id": 2, "bbox": [0, 0, 2, 2]}]}))
    with pytest.raises(ValueError, match=r"unknown.json: annotation 7 names unknown image 2"):
        open_index(bad, "mapped")
    broken = tmp_path / "broken.json"
    broken.write_text('{"images": [{"id": 1}, {"id": 2,')
    with pytest.raises(ValueError, match=r"broken.json: invalid json"):
        open_index(broken, "mapped")
    named = tmp_path / "named.json"  # string image ids: parsed instead
    named.write_text(json.dumps({"images": [{"id": "a"}], "annotations": [], "categories": []}))
    assert open_index(named, "mapped").image_ids == ["a"]


def test_a_repeated_image_id_is_a_one_line_error_as_in_cocoindex(tmp_path):
    """One rule with CocoIndex.load: an image id appears once."""
    path = tmp_path / "dup.json"
    images = [{"id": 5, "file_name": "a.png"}, {"id": 3, "file_name": "b.png"}, {"id": 5, "file_name": "c.png"}]
    path.write_text(json.dumps({"images": images, "annotations": [], "categories": [{"id": 1, "name": "dog"}]}))
    (tmp_path / "idx").mkdir()
    with pytest.raises(ValueError, match=r"dup\.json: images\[2\]: id 5 is repeated"):
        build_index(path, tmp_path / "idx")
    with pytest.raises(ValueError, match="id 5 is repeated"):
        CocoIndex.load(path)
