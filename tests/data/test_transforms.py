"""Training transforms: the official resize rule, box flips and the normalisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from glip.config.schema import InputConfig
from glip.data import SampleRNG, TrainTransform, build_train_transform, flip_boxes, resize_boxes
from glip.utils.image import resize_shape, to_model_input


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def test_flip_mirrors_boxes_with_inclusive_corners():
    """x1' = W - x2 - 1, x2' = W - x1 - 1: a box on pixel columns 2..5 of a 10-wide image
    lands on columns 4..7."""
    boxes = torch.tensor([[2.0, 1.0, 5.0, 3.0], [0.0, 0.0, 9.0, 9.0]])
    assert flip_boxes(boxes, 10).tolist() == [[4.0, 1.0, 7.0, 3.0], [0.0, 0.0, 9.0, 9.0]]
    assert torch.equal(flip_boxes(flip_boxes(boxes, 10), 10), boxes)


def test_flip_moves_pixels_and_boxes_together():
    img = np.zeros((20, 30, 3), dtype=np.uint8)
    img[4:9, 3:11] = 255  # rows 4..8, columns 3..10
    boxes = torch.tensor([[3.0, 4.0, 10.0, 8.0]])
    t = TrainTransform([20], 1000, flip_prob=1.0, mean=(0, 0, 0), std=(1, 1, 1), to_bgr255=True)
    out, fboxes, flipped = t(img, boxes, SampleRNG.from_seed(0))
    assert flipped and out.shape == (3, 20, 30)
    cols = torch.nonzero(out[0].amax(dim=0) > 0).flatten()
    assert fboxes.tolist() == [[float(cols.min()), 4.0, float(cols.max()), 8.0]]


@pytest.mark.parametrize(
    ("hw", "min_size", "max_size", "expected"),
    [
        ((300, 451), 320, 512, (320, 481)),  # official fixture chelsea
        ((512, 512), 320, 512, (320, 320)),  # official fixture astronaut
        ((480, 640), 800, 1333, (800, 1066)),  # int() truncates the long side
        ((100, 1000), 800, 1333, (133, 1330)),  # capped: short = round(133.3), long = int(133 * 10)
        ((800, 600), 600, 1000, (800, 600)),  # already the right size: unchanged
    ],
)
def test_resize_rule(hw, min_size, max_size, expected):
    assert resize_shape(hw[0], hw[1], min_size, max_size) == expected
    t = TrainTransform([min_size], max_size, 0.0)
    out, _, _ = t(_image(*hw), torch.zeros((0, 4)), SampleRNG.from_seed(0))
    assert tuple(out.shape[-2:]) == expected


def test_multi_scale_draws_python_random_choice():
    sizes = [480, 560, 640, 720, 800]
    t = TrainTransform(sizes, 1333, 0.5)
    img = _image(40, 60)
    for seed in range(4):
        rng = SampleRNG.from_seed(seed)
        ref = SampleRNG.from_seed(seed).py
        short = ref.choice(sizes)
        flip = ref.random() < 0.5
        out, _, flipped = t(img, torch.zeros((0, 4)), rng)
        assert out.shape[-2] == short and flipped == flip


def test_boxes_scale_with_the_image():
    boxes = torch.tensor([[97.0, 31.0, 372.0, 289.0]])
    got = resize_boxes(boxes, (300, 451), (320, 481))
    assert torch.equal(
        got, torch.tensor([[103.45233154296875, 33.06666946411133, 396.7450256347656, 308.2666931152344]])
    )


def test_normalisation_equals_the_test_path():
    """With one size and no flip, the training transform is the official test transform."""
    cfg = InputConfig()
    img = _image(90, 130, seed=1)
    t = build_train_transform(cfg, train=False)
    out, _, flipped = t(img, torch.zeros((0, 4)), SampleRNG.from_seed(0))
    ref = to_model_input(img, cfg.min_size_test, cfg.max_size_test, cfg.pixel_mean, cfg.pixel_std, cfg.to_bgr255)
    assert not flipped and torch.equal(out, ref)
    train = build_train_transform(cfg, flip_prob=0.25)
    assert list(train.min_sizes) == cfg.min_size_train and train.max_size == cfg.max_size_train
