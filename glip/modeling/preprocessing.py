"""Test-time image preprocessing of a model: user image -> network input."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from glip.utils.image import ImageInput, load_image, to_model_input

__all__ = ["Preprocessing"]


@dataclass(frozen=True)
class Preprocessing:
    """Test-time image preprocessing (official ``INPUT.*`` and ``SIZE_DIVISIBILITY``)."""

    min_size: int = 800
    max_size: int = 1333
    pixel_mean: tuple[float, ...] = (103.53, 116.28, 123.675)
    pixel_std: tuple[float, ...] = (57.375, 57.12, 58.395)
    to_bgr255: bool = True
    size_divisibility: int = 32

    def __call__(self, image: ImageInput) -> tuple[Tensor, tuple[int, int]]:
        """One image -> (``Tensor[3, h, w]`` network input, original ``(H, W)``)."""
        rgb = load_image(image)
        x = to_model_input(rgb, self.min_size, self.max_size, self.pixel_mean, self.pixel_std, self.to_bgr255)
        return x, (int(rgb.shape[0]), int(rgb.shape[1]))
