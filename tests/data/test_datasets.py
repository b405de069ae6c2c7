"""Datasets: the official Flickr-style batch, box sanitising, seeding."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from glip.data import (
    CaptionRecipe,
    CocoGroundingDataset,
    MdetrGroundingDataset,
    TrainTransform,
    clean_boxes,
    collate_grounding,
)
from tests.conftest import OFFICIAL_TRAIN
from tests.data.conftest import GROUNDING_DIR, IMAGE_DIR


@pytest.fixture(scope="module")
def train_case():
    return torch.load(OFFICIAL_TRAIN / "tiny_glip_t" / "train_case.pth", weights_only=True)


@pytest.mark.needs_fixtures
def test_mdetr_batch_equals_official(tokenizer, train_case):
    """FlickrDataset + BatchCollator of the training fixture: image tensor, ids, mask,
    binary positive map and resized boxes, bit for bit."""
    ds = MdetrGroundingDataset(
        GROUNDING_DIR / "tiny_flickr_style_train.json", IMAGE_DIR, tokenizer, TrainTransform([320], 512, 0.0)
    )
    assert len(ds) == 2
    batch = collate_grounding([ds[0], ds[1]], size_divisibility=32, max_query_len=256)
    assert torch.equal(batch.images.tensor, train_case["image_tensor"])
    assert [list(s) for s in batch.images.image_sizes] == train_case["image_sizes_hw"]
    assert torch.equal(batch.input_ids, train_case["input_ids"])
    assert torch.equal(batch.attention_mask, train_case["attention_mask"])
    assert torch.equal(batch.positive_map, train_case["positive_map"])
    assert batch.captions == train_case["captions"]
    for t, ref in zip(batch.targets, train_case["target_boxes_resized_xyxy"]):
        assert torch.equal(t.boxes, ref)


@pytest.mark.needs_fixtures
def test_grounding_samples_carry_no_classes_and_a_whole_caption_greenlight(tokenizer):
    """GLIPv2's per-sample inputs for grounding data: no global classes (own block only in
    L_inter), the whole caption (not [CLS]/[SEP]/padding) scored by MLM, the dataset index."""
    args = (GROUNDING_DIR / "tiny_flickr_style_train.json", IMAGE_DIR, tokenizer, TrainTransform([320], 512, 0.0))
    ds = MdetrGroundingDataset(*args)
    sample = ds[1]
    assert sample.kind == "grounding" and sample.box_class is None and sample.index == 1
    assert (sample.token_class == -1).all()
    n = len(sample.input_ids)
    assert sample.greenlight[1 : n - 1].all() and sample.greenlight[0] == 0 and not sample.greenlight[n - 1 :].any()
    batch = collate_grounding([ds[0], sample], size_divisibility=32, max_query_len=256)
    assert batch.kinds == ["grounding", "grounding"] and batch.box_class == [None, None] and batch.indices == [0, 1]
    assert torch.equal(batch.greenlight[1], sample.greenlight) and (batch.token_class == -1).all()
    assert MdetrGroundingDataset(*args, kind="caption")[0].kind == "caption"
    with pytest.raises(ValueError, match="kind"):
        MdetrGroundingDataset(*args, kind="detection")


def _write(tmp_path, images, annotations):
    data = {"images": images, "annotations": annotations, "categories": [{"id": 5, "name": "thing"}]}
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(data))
    return path


def _ann(i, image_id, bbox, **extra):
    return {"id": i, "image_id": image_id, "bbox": bbox, "category_id": 5, "area": 1.0, "iscrowd": 0, **extra}


@pytest.mark.needs_fixtures
def test_degenerate_boxes_are_dropped_counted_and_logged(tmp_path, tokenizer, caplog):
    chelsea = {"id": 7, "file_name": "chelsea.png", "height": 300, "width": 451}
    anns = [
        _ann(1, 7, [10, 20, 30, 40]),
        _ann(2, 7, [400, 250, 100, 100]),  # partly outside: clipped to (400, 250, 450, 299)
        _ann(3, 7, [500, 10, 20, 20]),  # fully outside
        _ann(4, 7, [10, 10, 0, 20]),  # zero width
        _ann(5, 7, [10, 10, 1, 20]),  # one pixel wide: x2 == x1
        _ann(6, 7, [50, 50, -10, 20]),  # negative width
        _ann(7, 7, [float("nan"), 0, 10, 10]),  # not finite
        _ann(8, 7, [0, 0, 50, 50], iscrowd=1),  # crowd
        # Image 8 has only sub-pixel boxes: skipped (official has_valid_annotation).
        _ann(9, 8, [0, 0, 1, 1]),
        # Image 9 has only a crowd box: kept, with no target box, as official.
        _ann(10, 9, [0, 0, 30, 30], iscrowd=1),
    ]
    images = [chelsea, {**chelsea, "id": 8}, {**chelsea, "id": 9}]
    path = _write(tmp_path, images, anns)
    ds = CocoGroundingDataset(path, IMAGE_DIR, tokenizer, TrainTransform([300], 1000, 0.0))
    assert ds.image_ids == [7, 9]
    with caplog.at_level(logging.INFO, logger="glip.data"):
        s = ds[0]
    assert "5 empty or invalid boxes dropped, 1 boxes clipped" in caplog.text
    assert s.num_dropped_boxes == 6
    assert s.targets.boxes.tolist() == [[10.0, 20.0, 39.0, 59.0], [400.0, 250.0, 450.0, 299.0]]
    assert s.caption == "thing" and s.targets.positive_map[:, 1].all()
    empty = ds[1]
    assert len(empty.targets) == 0 and empty.targets.positive_map.shape == (0, 256) and empty.num_dropped_boxes == 1


def test_box_conversion_orders_follow_official():
    """Both official conversions keep and drop the same boxes."""
    anns = [{"bbox": [0.3, 0.7, 10.9, 5.1]}, {"bbox": [3, 3, 0.5, 9]}, {"bbox": [440.5, 1, 30, 30]}]
    a, b = clean_boxes(anns, 300, 451), clean_boxes(anns, 300, 451, mdetr_rounding=True)
    assert a.keep == b.keep == [0, 2]
    torch.testing.assert_close(a.boxes, b.boxes)
    assert a.boxes[1].tolist() == [440.5, 1.0, 450.0, 30.0] and a.num_clipped == 1


@pytest.mark.needs_fixtures
def test_samples_are_seeded_by_seed_epoch_and_index(tokenizer):
    ds = CocoGroundingDataset(
        OFFICIAL_TRAIN / "data" / "od" / "tiny200.json",
        IMAGE_DIR,
        tokenizer,
        TrainTransform([64, 96], 200, 0.5),
        CaptionRecipe.pretrain(),
        seed=3,
    )
    first, again = ds[1], ds[1]
    assert first.caption == again.caption and torch.equal(first.image, again.image)
    captions = {first.caption}
    for epoch in (1, 2):
        ds.set_epoch(epoch)
        captions.add(ds[1].caption)
    assert len(captions) == 3  # 200 categories: each epoch draws other negatives


@pytest.mark.needs_fixtures
def test_override_category_renames(tokenizer, tmp_path):
    path = _write(
        tmp_path, [{"id": 1, "file_name": "astronaut.png", "height": 512, "width": 512}], [_ann(1, 1, [0, 0, 9, 9])]
    )
    ds = CocoGroundingDataset(
        path, IMAGE_DIR, tokenizer, TrainTransform([64], 100, 0.0), override_category=[{"id": 5, "name": "astro_naut"}]
    )
    assert ds[0].caption == "astro naut"
    with pytest.raises(ValueError):
        CocoGroundingDataset(
            path, IMAGE_DIR, tokenizer, TrainTransform([64], 100, 0.0), override_category=[{"id": 6, "name": "x"}]
        )
