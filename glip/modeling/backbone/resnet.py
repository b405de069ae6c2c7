"""ResNet body with frozen batch norm, as maskrcnn_benchmark's ``ResNet``.

He et al., "Deep Residual Learning for Image Recognition" (arXiv:1512.03385), in the
form maskrcnn_benchmark uses with ``StemWithFixedBatchNorm`` and
``BottleneckWithFixedBatchNorm``: MSRA-style stride in the first 1x1 conv
(``STRIDE_IN_1X1``), FrozenBatchNorm2d everywhere, optional grouped convs (ResNeXt).

Module names equal the official ones (``stem.conv1``, ``stem.bn1``,
``layer{1..4}.{k}.{conv1..3, bn1..3, downsample.0, downsample.1}``), so official
``backbone.body.*`` keys load without renaming.

Dimension letters: B images, C channels, H x W the input size.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from glip.layers.frozen_bn import FrozenBatchNorm2d

__all__ = ["RESNET_BLOCKS", "Bottleneck", "ResNet", "Stem"]

# Residual blocks per stage (layer1..layer4), from the paper's Table 1 and
# maskrcnn_benchmark's ``ResNet{50,101,152}*StagesTo5``.
RESNET_BLOCKS: dict[int, tuple[int, int, int, int]] = {
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
}


def _conv(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    conv = nn.Conv2d(
        in_channels,
        out_channels,
        kernel_size,
        stride=stride,
        padding=(kernel_size - 1) // 2,
        groups=groups,
        bias=False,
    )
    nn.init.kaiming_uniform_(conv.weight, a=1)  # maskrcnn_benchmark's initialisation
    return conv


class Stem(nn.Module):
    """7x7 stride-2 conv, frozen BN, ReLU, 3x3 stride-2 max-pool: stride 4 overall.

    Args:
        out_channels: channels of the stem output (64).
    """

    def __init__(self, out_channels: int = 64) -> None:
        super().__init__()
        self.conv1 = _conv(3, out_channels, 7, stride=2)
        self.bn1 = FrozenBatchNorm2d(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        """``Tensor[B, 3, H, W] -> Tensor[B, C, ceil(H/4), ceil(W/4)]``."""
        x = F.relu_(self.bn1(self.conv1(x)))
        return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> 1x1 residual block with frozen BN.

    Args:
        in_channels: input channels.
        bottleneck_channels: width of the 3x3 conv.
        out_channels: output channels; a 1x1 projection shortcut (``downsample``) is
            built whenever they differ from ``in_channels``.
        stride: spatial stride of the block.
        num_groups: groups of the 3x3 conv (1 for ResNet, 32 for ResNeXt-32x...).
        stride_in_1x1: put the stride in the first 1x1 conv (MSRA/Caffe2 weights)
            instead of the 3x3 conv (torchvision weights).
    """

    def __init__(
        self,
        in_channels: int,
        bottleneck_channels: int,
        out_channels: int,
        stride: int = 1,
        num_groups: int = 1,
        stride_in_1x1: bool = True,
    ) -> None:
        super().__init__()
        self.downsample: nn.Sequential | None = None
        if in_channels != out_channels:
            self.downsample = nn.Sequential(
                _conv(in_channels, out_channels, 1, stride=stride), FrozenBatchNorm2d(out_channels)
            )
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = _conv(in_channels, bottleneck_channels, 1, stride=stride_1x1)
        self.bn1 = FrozenBatchNorm2d(bottleneck_channels)
        self.conv2 = _conv(bottleneck_channels, bottleneck_channels, 3, stride=stride_3x3, groups=num_groups)
        self.bn2 = FrozenBatchNorm2d(bottleneck_channels)
        self.conv3 = _conv(bottleneck_channels, out_channels, 1)
        self.bn3 = FrozenBatchNorm2d(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        """``Tensor[B, C_in, H, W] -> Tensor[B, C_out, ceil(H/s), ceil(W/s)]``."""
        out = F.relu_(self.bn1(self.conv1(x)))
        out = F.relu_(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu_(out + shortcut)


class ResNet(nn.Module):
    """ResNet/ResNeXt body returning the outputs of selected stages.

    Stage ``i`` (``layer{i+1}``, feature ``C{i+2}``) has ``res2_out_channels * 2**i``
    channels at stride ``4 * 2**i``.

    Args:
        depth: 50, 101 or 152 (see ``RESNET_BLOCKS``).
        out_indices: stages to return, increasing; ``(1, 2, 3)`` gives C3..C5.
        num_groups: groups of the 3x3 convs (official ``RESNETS.NUM_GROUPS``).
        width_per_group: 3x3 width per group in the first stage (``RESNETS.WIDTH_PER_GROUP``).
        stride_in_1x1: see :class:`Bottleneck` (``RESNETS.STRIDE_IN_1X1``, default True).
        stem_out_channels: stem width (``RESNETS.STEM_OUT_CHANNELS``, 64).
        res2_out_channels: output width of the first stage (``RESNETS.RES2_OUT_CHANNELS``, 256).
        freeze_at: parameters of the stem (``freeze_at >= 1``) and of ``layer1 ..
            layer{freeze_at-1}`` get ``requires_grad=False`` (official
            ``BACKBONE.FREEZE_CONV_BODY_AT``, default 2); values <= 0 freeze nothing.
    """

    def __init__(
        self,
        depth: int = 50,
        out_indices: Sequence[int] = (1, 2, 3),
        num_groups: int = 1,
        width_per_group: int = 64,
        stride_in_1x1: bool = True,
        stem_out_channels: int = 64,
        res2_out_channels: int = 256,
        freeze_at: int = 2,
    ) -> None:
        super().__init__()
        if depth not in RESNET_BLOCKS:
            raise ValueError(f"unsupported ResNet depth {depth}; choose from {sorted(RESNET_BLOCKS)}")
        blocks = RESNET_BLOCKS[depth]
        if sorted(set(out_indices)) != list(out_indices) or not all(0 <= i < len(blocks) for i in out_indices):
            raise ValueError(f"out_indices must be increasing stage indices < {len(blocks)}, got {out_indices}")
        self.out_indices = tuple(out_indices)
        self.stem = Stem(stem_out_channels)
        self.num_features: list[int] = []
        in_channels = stem_out_channels
        for i, count in enumerate(blocks):
            out_channels = res2_out_channels * 2**i
            bottleneck_channels = num_groups * width_per_group * 2**i
            stage = nn.Sequential(
                *(
                    Bottleneck(
                        in_channels if k == 0 else out_channels,
                        bottleneck_channels,
                        out_channels,
                        stride=(2 if i > 0 else 1) if k == 0 else 1,
                        num_groups=num_groups,
                        stride_in_1x1=stride_in_1x1,
                    )
                    for k in range(count)
                )
            )
            self.add_module(f"layer{i + 1}", stage)
            self.num_features.append(out_channels)
            in_channels = out_channels
        self.freeze_at = freeze_at
        for index in range(max(freeze_at, 0)):
            module = self.stem if index == 0 else getattr(self, f"layer{index}")
            for param in module.parameters():
                param.requires_grad_(False)

    @property
    def out_channels(self) -> list[int]:
        """Channels of each returned map, in order."""
        return [self.num_features[i] for i in self.out_indices]

    def forward(self, images: Tensor) -> list[Tensor]:
        """``Tensor[B, 3, H, W]`` -> one ``Tensor[B, C_i, H_i, W_i]`` per ``out_indices`` entry,
        at stride ``4 * 2**i``."""
        x = self.stem(images)  # [B, 64, H/4, W/4]
        outputs: list[Tensor] = []
        for i in range(len(self.num_features)):
            x = getattr(self, f"layer{i + 1}")(x)  # [B, C_i, H/(4*2**i), W/(4*2**i)]
            if i in self.out_indices:
                outputs.append(x)
        return outputs
