"""The official caption options at load time: score filter, class-agnostic NMS, minimum boxes."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from glip.config import load_config
from glip.data import MdetrGroundingDataset, TrainTransform
from glip.data.annotations import CocoIndex
from glip.data.caption_screen import CaptionScreen
from glip.engine.data import build_dataset

CAPTION = "a cat and a dog and a ball"
CAT, DOG, BALL = [[0, 5]], [[12, 17]], [[22, 28]]


def _ann(i, image_id, bbox, tokens, score=None):
    ann = {"id": i, "image_id": image_id, "bbox": bbox, "category_id": 1, "iscrowd": 0, "tokens_positive": tokens}
    return ann if score is None else {**ann, "score": score}


def _write(tmp_path):
    """Image 1: a cat (0.9), a dog on the cat (IoU 0.67 with it, 0.8) and a ball (0.5, far away);
    image 2: one box (0.95); image 3: one box without a score."""
    images = [{"id": k, "file_name": "im.png", "height": 64, "width": 64, "caption": CAPTION} for k in (1, 2, 3)]
    annotations = [
        _ann(1, 1, [10, 10, 20, 20], CAT, 0.9),
        _ann(2, 1, [12, 12, 20, 20], DOG, 0.8),  # xyxy (12, 12, 31, 31) vs (10, 10, 29, 29): 17^2 / (2 * 19^2 - 17^2)
        _ann(3, 1, [40, 40, 10, 10], BALL, 0.5),
        _ann(4, 2, [5, 5, 30, 30], DOG, 0.95),
        _ann(5, 3, [5, 5, 30, 30], CAT),
    ]
    path = tmp_path / "pseudo.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "o"}]}))
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(tmp_path / "im.png")
    return path


def _kept(index):
    return {i: [a["id"] for a in index.annotations[i]] for i in index.image_ids}


def test_screen_filters_scores_strictly_then_nms_then_minimum(tmp_path):
    index = CocoIndex.load(_write(tmp_path))
    assert _kept(CaptionScreen().apply(index)) == {1: [1, 2, 3], 2: [4], 3: [5]}  # the defaults keep everything
    # score > 0.5: the ball (exactly 0.5) goes; unscored boxes count as 1.0
    assert _kept(CaptionScreen(conf=0.5).apply(index)) == {1: [1, 2], 2: [4], 3: [5]}
    # NMS across phrases: the dog (IoU 0.67 with the better cat) goes, the ball stays, file order kept
    assert _kept(CaptionScreen(nms=0.6).apply(index)) == {1: [1, 3], 2: [4], 3: [5]}
    assert _kept(CaptionScreen(nms=0.7).apply(index)) == {1: [1, 2, 3], 2: [4], 3: [5]}
    # fewer than 2 boxes left: images 2 and 3 are not used
    assert _kept(CaptionScreen(conf=0.5, nms=0.5, min_boxes=2).apply(index)) == {}
    assert _kept(CaptionScreen(conf=0.4, nms=0.5, min_boxes=2).apply(index)) == {1: [1, 3]}
    assert _kept(CaptionScreen(min_boxes=2).apply(index)) == {1: [1, 2, 3]}
    with pytest.raises(ValueError, match="below 1"):
        CaptionScreen(conf=1.0)


def test_grounding_reader_applies_the_config_options_to_training_data_only(tmp_path, tokenizer):
    path = _write(tmp_path)
    transform = TrainTransform([64], 64, 0.0)
    ds = MdetrGroundingDataset(path, tmp_path, tokenizer, transform, screen=CaptionScreen(conf=0.85, min_boxes=1))
    assert ds.image_ids == [1, 2, 3]
    assert len(ds[0].targets.boxes) == 1 and ds[0].tokens_positive == [[(0, 5)]]  # only the cat
    overrides = [
        "data.format=mdetr", f"data.train_json={path}", f"data.train_images={tmp_path}", f"data.val_json={path}",
        f"data.val_images={tmp_path}", "data.caption_conf=0.4", "data.caption_nms=0.5", "data.caption_min_box=2",
        "model.text.max_query_len=32",
    ]  # fmt: skip
    cfg = load_config(None, overrides)
    train = build_dataset(cfg, tokenizer, train=True)
    assert train.image_ids == [1] and len(train[0].targets.boxes) == 2
    assert build_dataset(cfg, tokenizer, train=False).image_ids == [1, 2, 3]
