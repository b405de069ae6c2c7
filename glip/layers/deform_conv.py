"""``ModulatedDeformConv2d``: the module form of :func:`glip.ops.deform_conv.modulated_deform_conv2d`."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from glip.ops.deform_conv import modulated_deform_conv2d

__all__ = ["ModulatedDeformConv2d"]


class ModulatedDeformConv2d(nn.Module):
    """Modulated deformable convolution (DCNv2) whose offsets and mask are computed by the caller.

    Parameters ``weight`` [Cout, Cin / groups, k, k] and ``bias`` [Cout] carry the official state-dict names
    (``...conv.weight``, ``...conv.bias`` in GLIP's DyConv). Runs in float32 at least, as the official module.

    Args:
        in_channels (int): Cin.
        out_channels (int): Cout.
        kernel_size (int): k, the square kernel size.
        stride, padding, dilation (int): as in :class:`torch.nn.Conv2d`.
        groups (int): convolution groups.
        deformable_groups (int): G, offset/mask groups, each shared by ``Cin / G`` input channels.
        bias (bool): whether to add a learnable bias.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        padding: int = 1,
        dilation: int = 1,
        groups: int = 1,
        deformable_groups: int = 1,
        bias: bool = True,
    ) -> None:
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ValueError(
                f"in_channels {in_channels} and out_channels {out_channels} must be divisible by groups {groups}"
            )
        if in_channels % deformable_groups:
            raise ValueError(f"in_channels {in_channels} must be divisible by deformable_groups {deformable_groups}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.stride = stride
        self.padding = padding
        self.dilation = dilation
        self.groups = groups
        self.deformable_groups = deformable_groups
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # The official initialisation: U(-1/sqrt(n), 1/sqrt(n)) with n = in_channels * k * k (all input
        # channels, even with groups), and a zero bias.
        bound = 1.0 / math.sqrt(self.in_channels * self.kernel_size * self.kernel_size)
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, x: Tensor, offset: Tensor, mask: Tensor) -> Tensor:
        """
        Args:
            x (Tensor[B, Cin, H, W]): input features.
            offset (Tensor[B, 2 * G * k * k, Ho, Wo]): interleaved (y, x) offsets per group and kernel point.
            mask (Tensor[B, G * k * k, Ho, Wo]): modulation scalars.

        Returns:
            Tensor[B, Cout, Ho, Wo]
        """
        return modulated_deform_conv2d(
            x,
            offset,
            mask,
            self.weight,
            self.bias,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            groups=self.groups,
            deformable_groups=self.deformable_groups,
        )

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}, "
            f"deformable_groups={self.deformable_groups}, bias={self.bias is not None}"
        )
