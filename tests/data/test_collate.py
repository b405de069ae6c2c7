"""Batch collation: padded images, padded ids, per-image targets."""

from __future__ import annotations

import torch

from glip.data import GroundingCollator, GroundingSample, collate_grounding
from glip.structures import GroundingTargets


def _sample(h: int, w: int, ids: list[int], boxes: int) -> GroundingSample:
    pmap = torch.zeros((boxes, 256), dtype=torch.bool)
    pmap[:, 1] = True
    targets = GroundingTargets(torch.rand(boxes, 4) * 10, pmap, torch.ones(boxes, dtype=torch.int64))
    return GroundingSample(torch.randn(3, h, w), targets, "x", torch.tensor(ids), [[(0, 1)]] * boxes, 1, (h, w))


def test_collate_pads_images_and_ids():
    batch = collate_grounding([_sample(40, 70, [101, 5, 102], 2), _sample(65, 33, [101, 7, 8, 102], 0)], 32, 256)
    assert batch.images.tensor.shape == (2, 3, 96, 96)
    assert batch.images.image_sizes == [(40, 70), (65, 33)]
    assert batch.input_ids.shape == (2, 256) and batch.input_ids.dtype == torch.int64
    assert batch.input_ids[1, :5].tolist() == [101, 7, 8, 102, 0]
    assert batch.attention_mask.sum(dim=1).tolist() == [3, 4]
    assert [len(t) for t in batch.targets] == [2, 0]
    assert batch.positive_map.shape == (2, 256) and batch.positive_map.dtype == torch.float32
    assert batch.images.tensor[1, :, 65:].abs().sum() == 0  # zero padding


def test_collator_is_the_function():
    samples = [_sample(32, 32, [101, 102], 1)]
    a, b = GroundingCollator(32, 256)(samples), collate_grounding(samples)
    assert torch.equal(a.images.tensor, b.images.tensor) and torch.equal(a.input_ids, b.input_ids)
