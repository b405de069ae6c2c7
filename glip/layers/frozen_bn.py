"""Batch normalisation with fixed statistics and affine parameters."""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["FrozenBatchNorm2d"]


class FrozenBatchNorm2d(nn.Module):
    """``BatchNorm2d`` whose statistics and affine terms are constants.

    All four tensors are buffers (not parameters), named as in maskrcnn_benchmark's
    ``FrozenBatchNorm2d`` so that official ResNet checkpoints load unchanged:
    ``weight``, ``bias``, ``running_mean`` and ``running_var``, each ``Tensor[C]``.

    As in maskrcnn_benchmark, no epsilon is added to ``running_var``: the converted
    Caffe2/Detectron weights already fold it in.

    Args:
        num_features: number of channels ``C``.
    """

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, x: Tensor) -> Tensor:
        """``Tensor[B, C, H, W] -> Tensor[B, C, H, W]``: ``x * scale + shift`` per channel."""
        scale = self.weight * self.running_var.rsqrt()  # [C]
        shift = self.bias - self.running_mean * scale  # [C]
        return x * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1)

    def extra_repr(self) -> str:
        return f"{self.num_features}"
