"""Feature extractors of the mask head: ROI-pooled maps -> mask features (official
``roi_heads/mask_head/roi_mask_feature_extractors.py`` and ``hourglass.py``).

Both take the pooled regions ``Tensor[R, C, S, S]`` (S = the pooler resolution, 14) and
return ``Tensor[R, C_out, S, S]``; the pooling itself is :func:`glip.ops.roi_align.multilevel_roi_align`,
run by :class:`~glip.modeling.heads.mask.head.MaskHead`. Convolutions are initialised as
the official ``make_conv3x3``: Kaiming normal (fan-out, ReLU gain), zero bias.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["Hourglass", "HourglassExtractor", "MaskConvExtractor", "Residual", "conv3x3"]


def conv3x3(in_channels: int, out_channels: int, dilation: int = 1, use_gn: bool = False) -> nn.Module:
    """A 3x3 convolution, padding = dilation, official init; with ``use_gn`` bias-free + GroupNorm(32)."""
    conv = nn.Conv2d(in_channels, out_channels, 3, padding=dilation, dilation=dilation, bias=not use_gn)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    if not use_gn:
        return conv
    # official group_norm(): 32 groups (MODEL.GROUP_NORM.NUM_GROUPS default), eps 1e-5
    return nn.Sequential(conv, nn.GroupNorm(32, out_channels))


class MaskConvExtractor(nn.Module):
    """Official ``MaskRCNNFPNFeatureExtractor`` after its pooler: ``len(layers)`` x (3x3 conv + ReLU).

    Args:
        in_channels: C, the pooled maps' width (the trunk's channels).
        layers: output width of each conv (official ``CONV_LAYERS``, (256,) * 4).
        dilation: official ``ROI_MASK_HEAD.DILATION`` (1).
        use_gn: official ``ROI_MASK_HEAD.USE_GN`` (False).

    Parameters ``mask_fcn<i>`` (1-based, official names).
    """

    def __init__(self, in_channels: int, layers: Sequence[int], dilation: int = 1, use_gn: bool = False) -> None:
        super().__init__()
        self.names: list[str] = []
        width = in_channels
        for i, out in enumerate(layers, 1):
            name = f"mask_fcn{i}"
            self.add_module(name, conv3x3(width, out, dilation, use_gn))
            self.names.append(name)
            width = out
        self.out_channels = width

    def forward(self, x: Tensor) -> Tensor:
        for name in self.names:
            x = F.relu(getattr(self, name)(x))
        return x


class Residual(nn.Module):
    """Official hourglass ``Residual``: ReLU -> conv(dil 1) -> ReLU -> conv(dil 3) -> ReLU -> conv(dil 1),
    all 3x3 (the official third argument of ``make_conv3x3`` is the dilation), widths
    ``in -> out/2 -> out/2 -> out``, plus the input (or a 3x3 conv of it when the widths differ)."""

    def __init__(self, in_channels: int, out_channels: int, use_gn: bool = False) -> None:
        super().__init__()
        mid = out_channels // 2
        self.conv1 = conv3x3(in_channels, mid, 1, use_gn)
        self.conv2 = conv3x3(mid, mid, 3, use_gn)
        self.conv3 = conv3x3(mid, out_channels, 1, use_gn)
        self.skip_layer = conv3x3(in_channels, out_channels, 1, False) if in_channels != out_channels else None

    def forward(self, x: Tensor) -> Tensor:
        residual = x if self.skip_layer is None else self.skip_layer(x)
        out = self.conv1(F.relu(x))
        out = self.conv2(F.relu(out))
        out = self.conv3(F.relu(out))
        return out + residual


class Hourglass(nn.Module):
    """Official ``Hourglass(n, f)``: ``up1(x) + upsample2(low3(low2(low1(maxpool2(x)))))``,
    ``low2`` a nested hourglass of depth ``n - 1`` or a :class:`Residual` at depth 1.

    As in the official code only ``low2`` (at depth 1) and ``low3`` receive ``use_gn``.
    The map size must survive ``n`` halvings and doublings: with 14 x 14 regions only
    ``n = 1`` works (7 -> 3 -> 6 breaks the sum), which the constructor cannot check;
    :class:`HourglassExtractor` does.
    """

    def __init__(self, depth: int, channels: int, use_gn: bool = False) -> None:
        super().__init__()
        self.up1 = Residual(channels, channels)
        self.low1 = Residual(channels, channels)
        self.low2: nn.Module = (
            Hourglass(depth - 1, channels, use_gn) if depth > 1 else Residual(channels, channels, use_gn)
        )
        self.low3 = Residual(channels, channels, use_gn)

    def forward(self, x: Tensor) -> Tensor:
        low = self.low3(self.low2(self.low1(F.max_pool2d(x, 2, 2))))
        return self.up1(x) + F.interpolate(low, scale_factor=2.0, mode="nearest")


class HourglassExtractor(nn.Module):
    """Official ``HourglassFPNFeatureExtractor`` after its pooler: ``len(layers)`` x
    (:class:`Hourglass` + ReLU), all of width ``in_channels``.

    Args:
        in_channels: C (must equal every entry of ``layers``, as the official asserts).
        layers: official ``CONV_LAYERS``.
        depth: official ``HG_SCALE`` (1).
        resolution: the pooled size S (official ``POOLER_RESOLUTION``, 14).
        use_gn: official ``USE_GN``.

    Parameters ``mask_hg<i>`` (official names).
    """

    def __init__(
        self, in_channels: int, layers: Sequence[int], depth: int = 1, resolution: int = 14, use_gn: bool = False
    ) -> None:
        super().__init__()
        if any(width != in_channels for width in layers):
            raise ValueError(f"the hourglass extractor keeps the width: every CONV_LAYERS entry must be {in_channels}")
        size = resolution
        for _ in range(depth):
            if size % 2:
                raise ValueError(
                    f"an hourglass of depth {depth} cannot run on {resolution}x{resolution} regions "
                    "(every level halves and doubles the map: the size must stay even)"
                )
            size //= 2
        self.names: list[str] = []
        for i in range(1, len(layers) + 1):
            name = f"mask_hg{i}"
            self.add_module(name, Hourglass(depth, in_channels, use_gn))
            self.names.append(name)
        self.out_channels = in_channels

    def forward(self, x: Tensor) -> Tensor:
        for name in self.names:
            x = F.relu(getattr(self, name)(x))
        return x
