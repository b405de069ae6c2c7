"""Visual backbones: a body (Swin, ResNet or a timm model) followed by an FPN giving P3..P7.

Dimension letters: B images, C FPN channels, L = 5 levels (P3..P7, strides 8..128).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor, nn

from glip.layers.dropblock import DropBlock2d
from glip.modeling.backbone.fpn import FPN
from glip.modeling.backbone.resnet import ResNet
from glip.modeling.backbone.swin import SwinTransformer
from glip.modeling.backbone.timm_body import TimmBody, TimmWeightsError, create_timm_body

__all__ = [
    "FPN",
    "ResNet",
    "SwinTransformer",
    "TimmBody",
    "TimmWeightsError",
    "VisionBackbone",
    "build_resnet",
    "build_swin",
    "build_timm",
]

# Official defaults of MODEL.FPN.DROP_BLOCK / DROP_PROB / DROP_SIZE (maskrcnn_benchmark
# config/defaults.py); no GLIP yaml overrides them, so GLIP was trained with them.
FPN_DROP_PROB = 0.3
FPN_DROP_SIZE = 3


class VisionBackbone(nn.Module):
    """``body`` then ``fpn``; the state-dict prefixes are ``body.`` and ``fpn.``.

    Args:
        body: returns a list of feature maps, finest first; the FPN consumes the last
            ``fpn.num_inputs`` of them (earlier ones, such as C2, are ignored as in the
            official FPN).
        fpn: the feature pyramid.
    """

    def __init__(self, body: nn.Module, fpn: FPN) -> None:
        super().__init__()
        self.body = body
        self.fpn = fpn

    @property
    def out_channels(self) -> int:
        return self.fpn.out_channels

    def forward(self, images: Tensor) -> list[Tensor]:
        """``Tensor[B, 3, H, W]`` (H, W multiples of 32 for the usual level sizes)
        -> L maps ``Tensor[B, C, H_l, W_l]``, P3 first."""
        return self.forward_with_body(images)[0]

    def forward_with_body(self, images: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """The FPN maps (as :meth:`forward`) and the body's maps they were made from
        (finest first)."""
        features = list(self.body(images))
        return self.fpn(features[-self.fpn.num_inputs :]), features


def _drop_block(prob: float, size: int) -> DropBlock2d | None:
    return DropBlock2d(prob, size) if prob > 0.0 else None


def build_swin(
    embed_dim: int = 96,
    depths: Sequence[int] = (2, 2, 6, 2),
    num_heads: Sequence[int] = (3, 6, 12, 24),
    window_size: int = 7,
    out_channels: int = 256,
    mlp_ratio: float = 4.0,
    drop_path_rate: float = 0.2,
    frozen_stages: int = -1,
    use_checkpoint: bool = False,
    fpn_drop_prob: float = FPN_DROP_PROB,
    fpn_drop_size: int = FPN_DROP_SIZE,
    fused_attention: bool = True,
) -> VisionBackbone:
    """Swin body + FPN as the official ``SWINT-FPN-RETINANET`` backbone.

    Defaults are Swin-T of GLIP-T (``MODEL.SWINT.*`` defaults, ``DROP_PATH_RATE`` 0.2);
    GLIP-L is ``embed_dim=192, depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48),
    window_size=12, drop_path_rate=0.4, frozen_stages=2``. The FPN reads C3..C5 and
    builds P6 on P5. ``fpn_drop_prob=0`` disables the (training-only) FPN DropBlock.
    """
    body = SwinTransformer(
        embed_dim,
        depths,
        num_heads,
        window_size,
        mlp_ratio=mlp_ratio,
        drop_path_rate=drop_path_rate,
        out_indices=(1, 2, 3),
        use_checkpoint=use_checkpoint,
        frozen_stages=frozen_stages,
        fused_attention=fused_attention,
    )
    fpn = FPN(body.out_channels, out_channels, p6_from_c5=False, drop_block=_drop_block(fpn_drop_prob, fpn_drop_size))
    return VisionBackbone(body, fpn)


def build_resnet(
    depth: int = 50,
    out_channels: int = 256,
    num_groups: int = 1,
    width_per_group: int = 64,
    stride_in_1x1: bool = True,
    freeze_at: int = 2,
    p6_from_c5: bool = True,
    fpn_drop_prob: float = FPN_DROP_PROB,
    fpn_drop_size: int = FPN_DROP_SIZE,
) -> VisionBackbone:
    """ResNet body + FPN as maskrcnn_benchmark's ``R-{50,101}-FPN-RETINANET`` backbone.

    P6 is built on C5 by default (maskrcnn_benchmark ``RETINANET.USE_C5 = True``); the
    official GLIP tree ships no ResNet-FPN builder, so this follows maskrcnn_benchmark.
    """
    body = ResNet(
        depth,
        out_indices=(1, 2, 3),
        num_groups=num_groups,
        width_per_group=width_per_group,
        stride_in_1x1=stride_in_1x1,
        freeze_at=freeze_at,
    )
    fpn = FPN(
        body.out_channels, out_channels, p6_from_c5=p6_from_c5, drop_block=_drop_block(fpn_drop_prob, fpn_drop_size)
    )
    return VisionBackbone(body, fpn)


def build_timm(
    name: str,
    out_channels: int = 256,
    pretrained: bool = False,
    checkpoint: str = "",
    kwargs: Mapping[str, Any] | None = None,
    fpn_drop_prob: float = FPN_DROP_PROB,
    fpn_drop_size: int = FPN_DROP_SIZE,
) -> VisionBackbone:
    """A timm ``features_only`` body (:func:`~glip.modeling.backbone.timm_body.create_timm_body`)
    + FPN on its stride-8/16/32 maps, P6 built on P5 as for GLIP's Swin bodies."""
    body = create_timm_body(name, pretrained=pretrained, checkpoint=checkpoint, kwargs=kwargs)
    fpn = FPN(body.out_channels, out_channels, p6_from_c5=False, drop_block=_drop_block(fpn_drop_prob, fpn_drop_size))
    return VisionBackbone(body, fpn)
