"""A batch of images padded to one size."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class ImageBatch:
    """Images zero-padded at the right and bottom into one tensor.

    Attributes:
        tensor: ``Tensor[B, 3, H, W]``, normalised images, zero in the padding.
        image_sizes: ``B`` pairs ``(h, w)``, each image's size before padding.
    """

    tensor: Tensor
    image_sizes: list[tuple[int, int]]

    def to(self, device: torch.device | str) -> ImageBatch:
        return ImageBatch(self.tensor.to(device), list(self.image_sizes))

    @staticmethod
    def from_tensors(images: list[Tensor], size_divisibility: int = 0) -> ImageBatch:
        """Pads ``images`` (each ``Tensor[3, h, w]``) to a common size.

        The padded height and width are the batch maxima rounded up to a multiple of
        ``size_divisibility`` (when positive).
        """
        if not images:
            raise ValueError("ImageBatch.from_tensors needs at least one image")
        max_h = max(int(im.shape[-2]) for im in images)
        max_w = max(int(im.shape[-1]) for im in images)
        if size_divisibility > 0:
            stride = size_divisibility
            max_h = (max_h + stride - 1) // stride * stride
            max_w = (max_w + stride - 1) // stride * stride
        batch = images[0].new_zeros((len(images), images[0].shape[0], max_h, max_w))
        for padded, im in zip(batch, images):
            padded[:, : im.shape[-2], : im.shape[-1]].copy_(im)
        sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
        return ImageBatch(batch, sizes)
