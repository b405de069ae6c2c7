"""Training and test transforms of an image and its boxes (official ``data/transforms``).

The official training pipeline is ``Resize(MULT_MIN_SIZE_TRAIN or MIN_SIZE_TRAIN,
MAX_SIZE_TRAIN) -> RandomHorizontalFlip(FLIP_PROB_TRAIN) -> ToTensor -> Normalize(BGR255)``
(``data/transforms/build.py``). Boxes are ``(x1, y1, x2, y2)`` with inclusive pixel
corners (``x2 = x + w - 1``), as the official ``BoxList`` holds them.

The official flip mirrors boxes only: captions keep their words, so "left" and "right"
are *not* swapped (neither in the transforms nor in the datasets); we do the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from glip.config.schema import InputConfig
from glip.data.od_to_grounding import SampleRNG
from glip.utils.image import normalize_image, resize_shape

__all__ = [
    "DEFAULT_FLIP_PROB",
    "TrainTransform",
    "build_train_transform",
    "flip_boxes",
    "resize_boxes",
    "resize_image",
    "to_normalized_tensor",
]

# Official AUGMENT.FLIP_PROB_TRAIN default (config/defaults.py).
DEFAULT_FLIP_PROB = 0.5


def resize_image(image: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """``uint8 [H, W, 3]`` -> ``uint8 [h, w, 3]`` with PIL bilinear, as torchvision's
    ``F.resize`` on a PIL image (the official ``Resize``); same size -> unchanged."""
    if (image.shape[0], image.shape[1]) == tuple(size_hw):
        return image
    pil = Image.fromarray(image).resize((size_hw[1], size_hw[0]), Image.BILINEAR)
    return np.asarray(pil)


def resize_boxes(boxes: Tensor, old_hw: tuple[int, int], new_hw: tuple[int, int]) -> Tensor:
    """``Tensor[N, 4]`` xyxy scaled by ``w'/w`` on x and ``h'/h`` on y, no ±1 (official
    ``BoxList.resize``)."""
    ratio_w = float(new_hw[1]) / float(old_hw[1])
    ratio_h = float(new_hw[0]) / float(old_hw[0])
    if ratio_w == ratio_h:
        return boxes * ratio_w
    scale = torch.tensor([ratio_w, ratio_h, ratio_w, ratio_h], dtype=boxes.dtype)
    return boxes * scale


def flip_boxes(boxes: Tensor, width: int) -> Tensor:
    """Horizontal mirror of ``Tensor[N, 4]`` xyxy boxes in an image ``width`` pixels wide:
    ``x1' = W - x2 - 1``, ``x2' = W - x1 - 1`` (official ``BoxList.transpose``, TO_REMOVE = 1)."""
    flipped = boxes.clone()
    flipped[:, 0] = width - boxes[:, 2] - 1
    flipped[:, 2] = width - boxes[:, 0] - 1
    return flipped


def to_normalized_tensor(
    image: np.ndarray, mean: Sequence[float], std: Sequence[float], to_bgr255: bool = True
) -> Tensor:
    """``uint8 [H, W, 3]`` RGB -> ``Tensor[3, H, W]`` float32: ``/255`` (``ToTensor``), then
    :func:`glip.utils.image.normalize_image` (``Normalize``, BGR 0-255 by default)."""
    rgb = torch.from_numpy(np.array(image, dtype=np.uint8, copy=True)).permute(2, 0, 1)  # [3, H, W]
    return normalize_image(rgb.to(torch.float32) / 255.0, mean, std, to_bgr255)


@dataclass
class TrainTransform:
    """Multi-scale resize, random horizontal flip and normalisation.

    Attributes:
        min_sizes: candidate short-side sizes; one is drawn per image with
            ``rng.py.choice`` (official ``AUGMENT.MULT_MIN_SIZE_TRAIN``, else
            ``INPUT.MIN_SIZE_TRAIN``). One value gives single-scale (test) resizing.
        max_size: cap on the long side (official ``INPUT.MAX_SIZE_TRAIN``).
        flip_prob: probability of a horizontal flip (``AUGMENT.FLIP_PROB_TRAIN``); the
            draw ``rng.py.random()`` is made even when it is 0, as officially.
        mean, std: per-channel normalisation in BGR 0-255 units (``INPUT.PIXEL_MEAN/STD``).
        to_bgr255: official ``INPUT.TO_BGR255``.
    """

    min_sizes: Sequence[int]
    max_size: int
    flip_prob: float = DEFAULT_FLIP_PROB
    mean: Sequence[float] = (103.53, 116.28, 123.675)
    std: Sequence[float] = (57.375, 57.12, 58.395)
    to_bgr255: bool = True

    def __call__(self, image: np.ndarray, boxes: Tensor, rng: SampleRNG) -> tuple[Tensor, Tensor, bool]:
        """Transforms one image and its boxes.

        Args:
            image: ``uint8 [H, W, 3]`` RGB.
            boxes: ``Tensor[N, 4]`` float32 xyxy in the pixels of ``image``.
            rng: draws the size (``py.choice``) then the flip (``py.random``).

        Returns:
            ``(Tensor[3, h, w] normalised image, Tensor[N, 4] boxes in the resized frame,
            whether the image was flipped)``.
        """
        height, width = int(image.shape[0]), int(image.shape[1])
        size = rng.py.choice(list(self.min_sizes))
        new_hw = resize_shape(height, width, int(size), self.max_size)
        image = resize_image(image, new_hw)
        boxes = resize_boxes(boxes, (height, width), new_hw)
        flipped = rng.py.random() < self.flip_prob
        if flipped:
            image = np.ascontiguousarray(image[:, ::-1])
            boxes = flip_boxes(boxes, new_hw[1])
        return to_normalized_tensor(image, self.mean, self.std, self.to_bgr255), boxes, flipped


def build_train_transform(cfg: InputConfig, flip_prob: float = DEFAULT_FLIP_PROB, train: bool = True) -> TrainTransform:
    """The official training transform from an :class:`InputConfig` (``train=False``: the
    test resize ``min_size_test``/``max_size_test`` and no flip)."""
    if train:
        return TrainTransform(
            list(cfg.min_size_train), cfg.max_size_train, flip_prob, cfg.pixel_mean, cfg.pixel_std, cfg.to_bgr255
        )
    return TrainTransform([cfg.min_size_test], cfg.max_size_test, 0.0, cfg.pixel_mean, cfg.pixel_std, cfg.to_bgr255)
