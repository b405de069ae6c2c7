"""Feature pyramid (P3..P7) on top of three backbone stages (C3..C5).

Lin et al., "Feature Pyramid Networks for Object Detection" (arXiv:1612.03144), with
RetinaNet's extra levels P6 and P7 (arXiv:1708.02002), as GLIP builds it
(maskrcnn_benchmark ``FPN`` + ``LastLevelP6P7``, without GN, ReLU, SPP or PAN).

Dimension letters: B images, C_i input channels of stage i, C output channels.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from glip.layers.dropblock import DropBlock2d

__all__ = ["FPN"]


def _conv(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1) -> nn.Conv2d:
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=(kernel_size - 1) // 2)
    # maskrcnn_benchmark's initialisation (its "XavierFill" equivalent): kaiming uniform, a=1, zero bias.
    nn.init.kaiming_uniform_(conv.weight, a=1)
    nn.init.zeros_(conv.bias)
    return conv


class FPN(nn.Module):
    """Top-down pathway with lateral connections, plus two strided levels.

    For inputs ``C3, C4, C5`` (strides 8, 16, 32):

    - ``inner5 = lateral_convs[2](C5)``; ``inner_i = lateral_convs[i](C_i) + nearest_up(inner_{i+1})``,
      resized to the lateral's exact size (so odd sizes work);
    - ``P_i = output_convs[i](inner_i)`` (3x3); during training an optional DropBlock
      is applied to ``inner_i`` before ``output_convs`` for every level but the top one,
      as the official FPN does;
    - ``P6 = p6(P5)`` (3x3, stride 2), or ``p6(C5)`` with ``p6_from_c5``;
      ``P7 = p7(relu(P6))`` (3x3, stride 2).

    The official rule (``LastLevelP6P7.use_P5``) reads P5 when the P6 conv's input
    width equals ``out_channels``: that is the case for GLIP's Swin bodies
    (``SWINT-FPN-RETINANET``), while maskrcnn_benchmark's ResNet RetinaNet builds it on
    C5 (``RETINANET.USE_C5``).

    Args:
        in_channels: channels of the consecutive input stages, finest first (C3..C5).
        out_channels: channels C of every output level.
        p6_from_c5: build P6 on the last input instead of the last FPN output.
        drop_block: optional DropBlock (official ``MODEL.FPN.DROP_BLOCK``), training only.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        out_channels: int,
        p6_from_c5: bool = False,
        drop_block: DropBlock2d | None = None,
    ) -> None:
        super().__init__()
        if len(in_channels) < 1:
            raise ValueError("FPN needs at least one input level")
        self.in_channels = tuple(in_channels)
        self.out_channels = out_channels
        self.p6_from_c5 = p6_from_c5
        self.lateral_convs = nn.ModuleList(_conv(c, out_channels, 1) for c in in_channels)
        self.output_convs = nn.ModuleList(_conv(out_channels, out_channels, 3) for _ in in_channels)
        self.p6 = _conv(in_channels[-1] if p6_from_c5 else out_channels, out_channels, 3, stride=2)
        self.p7 = _conv(out_channels, out_channels, 3, stride=2)
        self.drop_block = drop_block

    @property
    def num_inputs(self) -> int:
        """Number of backbone maps consumed (the last ones of the body's outputs)."""
        return len(self.in_channels)

    def forward(self, features: Sequence[Tensor]) -> list[Tensor]:
        """Args:
            features: ``len(in_channels)`` maps ``Tensor[B, C_i, H_i, W_i]``, finest first.

        Returns:
            ``len(in_channels) + 2`` maps ``Tensor[B, C, H_l, W_l]``, finest first
            (P3..P7), each level at half the previous size (rounded up).
        """
        if len(features) != self.num_inputs:
            raise ValueError(f"FPN expects {self.num_inputs} feature maps, got {len(features)}")
        inner = self.lateral_convs[-1](features[-1])  # [B, C, H5, W5]
        outputs = [self.output_convs[-1](inner)]
        for level in range(self.num_inputs - 2, -1, -1):
            lateral = self.lateral_convs[level](features[level])  # [B, C, H_l, W_l]
            if inner.shape[-2:] != lateral.shape[-2:]:
                inner = F.interpolate(inner, size=lateral.shape[-2:], mode="nearest")
            inner = lateral + inner
            smoothed_input = self.drop_block(inner) if self.drop_block is not None else inner
            outputs.insert(0, self.output_convs[level](smoothed_input))
        p6 = self.p6(features[-1] if self.p6_from_c5 else outputs[-1])
        p7 = self.p7(F.relu(p6))
        return outputs + [p6, p7]
