"""DropBlock: zero contiguous square regions of a feature map during training."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["DropBlock2d"]


class DropBlock2d(nn.Module):
    """Randomly zeroes ``block_size x block_size`` regions, shared across channels.

    Ghiasi et al., "DropBlock: A regularization method for convolutional networks"
    (arXiv:1810.12890), in the form GLIP's FPN uses (``MODEL.FPN.DROP_BLOCK``):

    - block centres are drawn per image and position with probability
      ``gamma = drop_prob / block_size**2`` (no correction for the valid-seed area);
    - each centre is grown to a block by a stride-1 max-pool (for an even
      ``block_size`` the last row and column of the pooled map are dropped);
    - the kept activations are rescaled by ``numel(mask) / sum(mask)`` over the batch.

    The identity in eval mode or when ``drop_prob == 0``.

    Args:
        drop_prob: target fraction of dropped positions.
        block_size: side of a dropped square, in pixels of the feature map.
    """

    def __init__(self, drop_prob: float, block_size: int) -> None:
        super().__init__()
        if not 0.0 <= drop_prob <= 1.0:
            raise ValueError(f"drop_prob must be in [0, 1], got {drop_prob}")
        if block_size < 1:
            raise ValueError(f"block_size must be positive, got {block_size}")
        self.drop_prob = float(drop_prob)
        self.block_size = int(block_size)

    def forward(self, x: Tensor) -> Tensor:
        """``Tensor[B, C, H, W] -> Tensor[B, C, H, W]``."""
        if x.ndim != 4:
            raise ValueError(f"DropBlock2d expects [B, C, H, W], got shape {tuple(x.shape)}")
        if not self.training or self.drop_prob == 0.0:
            return x
        gamma = self.drop_prob / self.block_size**2
        b, _, h, w = x.shape
        seeds = (torch.rand(b, 1, h, w, device=x.device) < gamma).to(x.dtype)  # [B, 1, H, W]
        dropped = F.max_pool2d(seeds, self.block_size, stride=1, padding=self.block_size // 2)
        if self.block_size % 2 == 0:
            dropped = dropped[:, :, :-1, :-1]  # even kernels pool to [H + 1, W + 1]
        keep = 1.0 - dropped  # [B, 1, H, W]
        # Rescale by the kept fraction of the whole batch; clamp so an all-dropped
        # batch gives zeros instead of NaN.
        return x * keep * (keep.numel() / keep.sum().clamp_min(1.0))

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob:g}, block_size={self.block_size}"
