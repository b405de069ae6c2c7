"""The official TSV layout: hand-made files round-trip, and give the json path's samples."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from glip.config import GLIPConfig
from glip.data import CocoGroundingDataset, MdetrGroundingDataset, TrainTransform, clean_boxes
from glip.data.caption_screen import CaptionScreen
from glip.data.tsv import TsvFile, TsvIndex, lineidx_path, write_lineidx, write_tsv
from glip.engine.data import build_dataset
from tests.data.test_json_index import _assert_same

CAPTIONS = ["two dogs on a red sofa", "a man with a hat", "the cat sleeps"]
RECTS = [[[2, 3, 20, 18], [5, 5, 9, 30]], [[0, 0, 15, 15]], [[4, 1, 25, 12], [1, 1, 3, 3], [6, 2, 22, 17]]]
SPANS = [[[[0, 8]], [[18, 22]]], [[[0, 5]]], [[[4, 7]], [[0, 3]], [[4, 7]]]]
CLASSES = [["dog", "dog"], ["person"], ["cat", "cat", "toy"]]


def _png(i: int) -> str:
    buf = io.BytesIO()
    pixels = (np.arange(24 * 32 * 3).reshape(24, 32, 3) * (i + 3) % 251).astype(np.uint8)
    Image.fromarray(pixels).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _write(tmp_path, detection: bool = False):
    """The published layout by hand: ``key \\t base64`` images, ``key \\t json`` labels."""
    labels = []
    for i in range(3):
        if detection:
            label = json.dumps([{"rect": r, "class": c} for r, c in zip(RECTS[i], CLASSES[i])])
        else:
            label = json.dumps({"caption": CAPTIONS[i], "bboxes": RECTS[i], "tokens_positive": SPANS[i]})
        labels.append((f"img{i}", label))
    write_tsv(tmp_path / "train.img.tsv", [(f"img{i}", _png(i)) for i in range(3)])
    write_tsv(tmp_path / "train.label.tsv", labels)
    (tmp_path / "labelmap.json").write_text(json.dumps({"label_to_idx": {"dog": 1, "person": 2, "cat": 3, "toy": 4}}))
    return tmp_path / "train.label.tsv", tmp_path / "train.img.tsv"


def _json_twin(tmp_path, detection: bool = False):
    """The same data as a json with image files (``bbox`` xywh, ``w = x2 - x1 + 1``)."""
    (tmp_path / "img").mkdir()
    images, anns = [], []
    for i in range(3):
        Image.open(io.BytesIO(base64.b64decode(_png(i)))).save(tmp_path / "img" / f"{i}.png")
        images.append({"id": i, "file_name": f"{i}.png", "caption": CAPTIONS[i]})
        for j, (x1, y1, x2, y2) in enumerate(RECTS[i]):
            ann = {"id": len(anns), "image_id": i, "bbox": [x1, y1, x2 - x1 + 1, y2 - y1 + 1]}
            ann.update({"category_id": {"dog": 1, "person": 2, "cat": 3, "toy": 4}[CLASSES[i][j]]} if detection else {})
            ann.update({} if detection else {"tokens_positive": SPANS[i][j]})
            anns.append(ann)
    cats = [{"id": k, "name": n} for n, k in (("dog", 1), ("person", 2), ("cat", 3), ("toy", 4))]
    path = tmp_path / "twin.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return path


def test_rows_round_trip_and_lineidx_is_regenerated(tmp_path):
    label_tsv, image_tsv = _write(tmp_path)
    written = lineidx_path(label_tsv).read_text()
    lineidx_path(label_tsv).unlink()
    rows = TsvFile(label_tsv)
    assert lineidx_path(label_tsv).read_text() == written and len(rows) == 3
    assert [json.loads(rows.row(i)[1])["caption"] for i in range(3)] == CAPTIONS
    assert rows.row(2)[0] == "img2" and TsvFile(image_tsv).row(1) == ["img1", _png(1)]


@pytest.mark.parametrize("damage", ["drop_last", "shift", "extra_row"])
def test_a_lineidx_that_disagrees_is_a_one_line_error(tmp_path, damage):
    label_tsv, _ = _write(tmp_path)
    idx = lineidx_path(label_tsv)
    offsets = idx.read_text().split()
    if damage == "drop_last":
        idx.write_text("\n".join(offsets[:-1]) + "\n")
    elif damage == "shift":
        idx.write_text("\n".join([offsets[0], str(int(offsets[1]) + 3), offsets[2]]) + "\n")
    else:
        with open(label_tsv, "a") as f:
            f.write("img3\t{}\n")
    with pytest.raises(ValueError, match=r"^\S*train.label.lineidx does not match train.label.tsv \(.*\); delete it"):
        TsvFile(label_tsv)
    idx.unlink()
    write_lineidx(label_tsv)
    assert len(TsvFile(label_tsv)) == (4 if damage == "extra_row" else 3)


@pytest.mark.parametrize("screen", [None, CaptionScreen(nms=0.5, min_boxes=2)])
def test_grounding_tsv_samples_equal_the_json_path(tmp_path, tokenizer, screen):
    label_tsv, image_tsv = _write(tmp_path)
    transform = TrainTransform([32, 40], 64, 0.5)
    kwargs = dict(kind="caption", screen=screen)
    tsv = MdetrGroundingDataset(TsvIndex(label_tsv, image_tsv), "", tokenizer, transform, **kwargs)
    ref = MdetrGroundingDataset(_json_twin(tmp_path), tmp_path / "img", tokenizer, transform, **kwargs)
    assert len(tsv) == len(ref) == (3 if screen is None else 2)
    for item in range(len(ref)):
        _assert_same(tsv[item], ref[item], f"item {item}")


def test_detection_tsv_samples_equal_the_json_path(tmp_path, tokenizer):
    label_tsv, image_tsv = _write(tmp_path, detection=True)
    transform = TrainTransform([32], 64, 0.5)
    index = TsvIndex(label_tsv, image_tsv, tmp_path / "labelmap.json")
    tsv = CocoGroundingDataset(index, "", tokenizer, transform)
    ref = CocoGroundingDataset(_json_twin(tmp_path, detection=True), tmp_path / "img", tokenizer, transform)
    for item in range(3):
        _assert_same(tsv[item], ref[item], f"item {item}")


def test_training_reads_tsv_from_the_config_in_loader_workers(tmp_path, tokenizer):
    label_tsv, image_tsv = _write(tmp_path, detection=True)
    cfg = GLIPConfig()
    cfg.data.train_json, cfg.data.train_images = str(label_tsv), str(image_tsv)
    with pytest.raises(ValueError, match="data.tsv_labelmap"):
        build_dataset(cfg, tokenizer)
    cfg.data.tsv_labelmap = str(tmp_path / "labelmap.json")
    dataset = build_dataset(cfg, tokenizer)
    loader = DataLoader(dataset, batch_size=None, num_workers=2, collate_fn=lambda s: (s.image_id, s.targets.boxes))
    seen = dict(loader)
    assert sorted(seen) == [0, 1, 2] and all(isinstance(b, torch.Tensor) and len(b) for b in seen.values())


@pytest.mark.parametrize("mdetr_rounding", [False, True])
def test_tsv_boxes_keep_their_xyxy_corners(mdetr_rounding):
    """A TSV ``rect`` is used as is (official); through ``w = x2 - x1 + 1`` the float32
    sums would move this x2 by a few ulps."""
    rect = [25.564, 3.0, 42.951, 20.0]
    ann = {"bbox": [25.564, 3.0, 42.951 - 25.564 + 1, 18.0], "rect": rect}
    boxes = clean_boxes([ann], 100, 100, mdetr_rounding=mdetr_rounding).boxes
    assert torch.equal(boxes, torch.tensor([rect], dtype=torch.float32))
