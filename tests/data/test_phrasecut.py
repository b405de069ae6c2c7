"""PhraseCut annotations: the refer json reader, the dataset's polygon rasterisation, and the
PhraseCut-style file of the synthetic data (exact to the annotated masks)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from glip.data import generate_synthetic
from glip.data.masks import annotation_mask, outline_polygons
from glip.data.phrasecut import _pixel_centre_polygon, phrasecut_mask, read_phrasecut


def test_polygons_are_filled_with_their_outline_and_united() -> None:
    # A 3x2 rectangle through pixel centres (points truncated), and a 2-point "polygon" (a line).
    rect = [[1.9, 1.2], [3.0, 1.0], [3.7, 2.9], [1.0, 2.0]]
    line = [[0, 4], [2, 4]]
    mask = phrasecut_mask([[rect], [line, [[5, 5]]]], 6, 6)  # a 1-point polygon is skipped
    expected = np.zeros((6, 6), dtype=bool)
    expected[1:3, 1:4] = True
    expected[4, 0:3] = True
    assert np.array_equal(mask, expected)


def test_reader_takes_the_official_form_and_the_image_list(tmp_path) -> None:
    tasks = [
        {"task_id": "7__0", "image_id": 7, "phrase": "white plate", "instance_boxes": [[1, 1, 2, 2]],
         "Polygons": [[[[1, 1], [2, 1], [2, 2], [1, 2]]]], "phrase_structure": {}},
        {"task_id": "8__0", "image_id": 8, "phrase": "dog", "polygons": [], "file_name": "x/8.png",
         "height": 3, "width": 4},
    ]  # fmt: skip
    (tmp_path / "refer_val.json").write_text(json.dumps(tasks))
    (tmp_path / "image_data_split.json").write_text(json.dumps([{"image_id": 7, "height": 5, "width": 6}]))
    first, second = read_phrasecut(tmp_path / "refer_val.json")
    assert (first.task_id, first.image_id, first.phrase, first.file_name, first.size) == ("7__0", 7, "white plate",
                                                                                         "7.jpg", (5, 6))  # fmt: skip
    assert first.mask(5, 6).sum() == 4
    assert second.size == (3, 4) and second.file_name == "x/8.png" and not second.mask(3, 4).any()
    with pytest.raises(ValueError, match="repeated"):
        read_phrasecut([tasks[0], tasks[0]])
    with pytest.raises(ValueError, match="needs image_id, phrase and Polygons"):
        read_phrasecut([{"image_id": 1, "phrase": "a"}])


def test_pixel_outline_to_centre_polygon_is_exact_on_random_shapes() -> None:
    rng = np.random.default_rng(0)
    checked = 0
    for _ in range(200):
        mask = np.zeros((10, 10), dtype=bool)
        y, x = 5, 5
        for _ in range(int(rng.integers(1, 30))):  # a random walk: thin, concave, branching pieces
            mask[y, x] = True
            step = int(rng.integers(4))
            y = int(np.clip(y + (0, 0, 1, -1)[step], 0, 9))
            x = int(np.clip(x + (1, -1, 0, 0)[step], 0, 9))
        polygons = outline_polygons(mask)
        if polygons is None:  # a hole: PhraseCut polygons cannot express it
            continue
        back = phrasecut_mask([[_pixel_centre_polygon(p) for p in polygons]], 10, 10)
        assert np.array_equal(back, mask)
        checked += 1
    assert checked > 150


def test_synthetic_writes_phrasecut_tasks_matching_the_masks(tmp_path) -> None:
    ds = generate_synthetic(tmp_path, num_train=1, num_val=5, image_size=(64, 96), seed=3)
    coco = json.loads(ds.val_json.read_text())
    tasks = read_phrasecut(ds.phrasecut_json)
    names = {c["id"]: c["name"] for c in coco["categories"]}
    expected = {(a["image_id"], names[a["category_id"]]) for a in coco["annotations"]}
    assert {(t.image_id, t.phrase) for t in tasks} == expected
    images = {img["id"]: img for img in coco["images"]}
    for task in tasks:
        img = images[task.image_id]
        assert task.file_name == img["file_name"] and task.size == (img["height"], img["width"])
        anns = [
            a for a in coco["annotations"] if a["image_id"] == task.image_id and names[a["category_id"]] == task.phrase
        ]
        union = np.any([annotation_mask(a, img["height"], img["width"]) for a in anns], axis=0)
        assert np.array_equal(task.mask(*task.size), union)
