"""A learned scalar multiplier (FCOS / ATSS per-level box-regression scale)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["Scale"]


class Scale(nn.Module):
    """Multiplies its input by one learned scalar ``scale`` (``Tensor[1]``)."""

    def __init__(self, init_value: float = 1.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor([init_value], dtype=torch.float32))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale
