"""DyHead blocks of the GLIP head: scale-aware deformable convolution (+ early fusion).

One :class:`DyConv` mixes every FPN level with its two neighbours (Dai et al., 2021,
"Dynamic Head"): for level l it averages

* ``same``:         a 3x3 conv on level l (stride 1),
* ``from_finer``:   a 3x3 stride-2 conv on level l-1 (higher resolution), if l > 0,
* ``from_coarser``: a 3x3 conv on level l+1 (lower resolution), bilinearly upsampled
                    to level l (``align_corners=True``), if l < L-1,

weighted by a per-branch scalar attention (DyFuse), then applies a dynamic ReLU.
With deformable convolution all three branches sample with the offsets and
modulation mask predicted from level l (see :func:`_reinterpret_raw_buffer` for how
the official kernel applies them to the smaller level l+1).

Official counterparts: ``DyConv`` and ``Conv3x3Norm`` in ``modeling/rpn/vldyhead.py``;
``same`` / ``from_finer`` / ``from_coarser`` are the official ``DyConv.1`` / ``.2`` / ``.0``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from glip.layers.deform_conv import ModulatedDeformConv2d
from glip.layers.dyrelu import DyReLU, h_sigmoid
from glip.modeling.fusion.bi_attention import BiAttentionBlock, FusedFeatures
from glip.modeling.language.text_layer import TextLayer
from glip.utils.graph import needs_graph

__all__ = ["ConvNorm", "DyConv", "HeadBlock"]

# A 3x3 kernel has K = 9 sampling points; the offset conv predicts 2K offsets
# (y, x per point, official channel layout) followed by K modulation-mask logits.
_KERNEL_POINTS = 9
_OFFSET_CHANNELS = 2 * _KERNEL_POINTS  # 18
_SAMPLING_CHANNELS = 3 * _KERNEL_POINTS  # 27


class ConvNorm(nn.Module):
    """3x3 convolution (modulated deformable or plain) followed by GroupNorm.

    Args:
        in_channels, out_channels: channel counts.
        stride: 1, or 2 for the ``from_finer`` branch.
        deformable: a :class:`ModulatedDeformConv2d` that takes offsets and a mask,
            else a plain ``nn.Conv2d``.
        gn_groups: GroupNorm groups (official MODEL.GROUP_NORM.NUM_GROUPS = 16, eps
            1e-5), or None for no normalisation (official USE_GN False).

    Shapes:
        x ``Tensor[B, C_in, H, W]``, offset ``Tensor[B, 18, Ho, Wo]``, mask
        ``Tensor[B, 9, Ho, Wo]`` -> ``Tensor[B, C_out, Ho, Wo]``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int,
        deformable: bool,
        gn_groups: int | None,
    ) -> None:
        super().__init__()
        self.conv: nn.Module
        if deformable:
            # Keeps ModulatedDeformConv2d's own init, as the official DyConv only re-inits nn.Conv2d.
            self.conv = ModulatedDeformConv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1)
        else:
            self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1)
            nn.init.normal_(self.conv.weight, std=0.01)
            nn.init.zeros_(self.conv.bias)
        self.norm = nn.GroupNorm(gn_groups, out_channels) if gn_groups else nn.Identity()

    def forward(self, x: Tensor, offset: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        y = self.conv(x) if offset is None else self.conv(x, offset, mask)
        return self.norm(y)


def _reinterpret_raw_buffer(t: Tensor, out_hw: tuple[int, int]) -> Tensor:
    """Re-reads a level's offset or mask map the way the official CUDA kernel does.

    The official ``from_coarser`` conv runs on level l+1 (output ``Ho x Wo``) but is
    given level l's offsets / mask (``H x W``, about twice as large). Its kernel never
    checks shapes: it reads ``offset[b]`` as a raw contiguous buffer indexed with the
    *output's* height and width. So it uses the first ``c * Ho * Wo`` values of each
    image's buffer, re-interpreted as ``[c, Ho, Wo]``: not a resized or spatially
    aligned map. GLIP's weights were trained with this; we reproduce it exactly.

    Args:
        t: ``Tensor[B, c, H, W]``.
        out_hw: ``(Ho, Wo)`` with ``c * Ho * Wo <= c * H * W``.

    Returns:
        ``Tensor[B, c, Ho, Wo]`` (``t`` itself when the sizes already match).
    """
    b, c, h, w = t.shape
    ho, wo = out_hw
    if (h, w) == (ho, wo):
        return t
    if ho * wo > h * w:
        raise ValueError(f"cannot read a {ho}x{wo} sampling map from a {h}x{w} buffer")
    flat = t.reshape(b, c * h * w)  # [B, c*H*W], each image's raw buffer
    return flat[:, : c * ho * wo].reshape(b, c, ho, wo)  # [B, c, Ho, Wo]


class DyConv(nn.Module):
    """One scale-aware DyHead convolution over all L levels.

    Args:
        in_channels: input width (= ``out_channels`` whenever DyReLU, DyFuse or
            deformable convs are on, as in the official head).
        out_channels: C.
        gn_groups: GroupNorm groups after each conv, or None.
        use_dyrelu: DyReLU after the fusion, else a plain ReLU (official USE_DYRELU).
        use_dyfuse: weight the branches with a scalar attention each, else a plain
            mean (official USE_DYFUSE).
        use_dfconv: modulated deformable convs with offsets predicted from the
            current level, else plain convs (official USE_DFCONV).

    Shapes:
        L tensors ``Tensor[B, C_in, H_l, W_l]`` -> L tensors ``Tensor[B, C, H_l, W_l]``.
        ``H_{l+1} = ceil(H_l / 2)`` (FPN levels) so that the stride-2 branch lands on
        level l's grid.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        gn_groups: int | None = 16,
        use_dyrelu: bool = True,
        use_dyfuse: bool = True,
        use_dfconv: bool = True,
    ) -> None:
        super().__init__()
        self.same = ConvNorm(in_channels, out_channels, 1, use_dfconv, gn_groups)
        self.from_finer = ConvNorm(in_channels, out_channels, 2, use_dfconv, gn_groups)
        self.from_coarser = ConvNorm(in_channels, out_channels, 1, use_dfconv, gn_groups)
        # Offsets and mask logits for the 3x3 sampling grid (official init: PyTorch default).
        self.offset = nn.Conv2d(in_channels, _SAMPLING_CHANNELS, kernel_size=3, padding=1) if use_dfconv else None
        # DyFuse: global average pool -> 1x1 conv to one scalar -> ReLU -> hard sigmoid.
        self.scale_attn: nn.Conv2d | None = None
        if use_dyfuse:
            self.scale_attn = nn.Conv2d(in_channels, 1, kernel_size=1)
            nn.init.normal_(self.scale_attn.weight, std=0.01)
            nn.init.zeros_(self.scale_attn.bias)
        self.dyrelu = DyReLU(out_channels) if use_dyrelu else None

    def _sampling(self, x: Tensor) -> tuple[Tensor | None, Tensor | None]:
        """Offsets ``Tensor[B, 18, H, W]`` and mask ``Tensor[B, 9, H, W]`` for level ``x``."""
        if self.offset is None:
            return None, None
        raw = self.offset(x)  # [B, 27, H, W]
        return raw[:, :_OFFSET_CHANNELS], raw[:, _OFFSET_CHANNELS:].sigmoid()

    def _fuse(self, branches: list[Tensor]) -> Tensor:
        """Averages K branch outputs ``Tensor[B, C, H, W]``, attention-weighted with DyFuse.

        The weighted terms are summed into one accumulator, in branch order, and divided by
        K: bit for bit what ``(torch.stack(branches) * weights).mean(0)`` gives, without the
        two ``[K, B, C, H, W]`` temporaries (at the finest level of an 800 x 1216 input,
        2 x 47 MiB per DyConv).
        """
        k, b = len(branches), branches[0].shape[0]
        if self.scale_attn is None:
            weights = [None] * k
        else:
            pooled = torch.cat([F.adaptive_avg_pool2d(x, 1) for x in branches])  # [K*B, C, 1, 1]
            attn = h_sigmoid(F.relu(self.scale_attn(pooled)).view(k, b, 1, 1, 1))  # [K, B, 1, 1, 1]
            weights = list(attn.unbind(0))  # K x [B, 1, 1, 1]
        if not needs_graph(*branches, *weights):
            # Inference: the branches are this DyConv's own, so each is weighted in place and
            # summed into the first (the same products and sums): no map beyond the K branches.
            total = branches[0].mul_(weights[0]) if weights[0] is not None else branches[0]
            for x, w in zip(branches[1:], weights[1:]):
                total += x.mul_(w) if w is not None else x
            return total.div_(k)
        total = branches[0] * weights[0] if weights[0] is not None else branches[0].clone()
        for x, w in zip(branches[1:], weights[1:]):
            total += x * w if w is not None else x
        return total.div_(k)

    def _branches(self, features: list[Tensor], level: int) -> list[Tensor]:
        """The branch outputs at ``level``, each ``Tensor[B, C, H_l, W_l]``: the same level,
        the finer level (stride 2) when there is one, the coarser one (upsampled) when there is one."""
        x = features[level]
        offset, mask = self._sampling(x)
        branches = [self.same(x, offset, mask)]
        if level > 0:
            branches.append(self.from_finer(features[level - 1], offset, mask))
        if level < len(features) - 1:
            coarser = features[level + 1]
            coarse_hw = (coarser.shape[-2], coarser.shape[-1])
            coarse_offset, coarse_mask = offset, mask
            if offset is not None and mask is not None:
                # Official quirk: level l's sampling buffers, re-read at level l+1's size.
                coarse_offset = _reinterpret_raw_buffer(offset, coarse_hw)
                coarse_mask = _reinterpret_raw_buffer(mask, coarse_hw)
            # [B, C, H_{l+1}, W_{l+1}], then upsampled to [B, C, H_l, W_l]
            up = self.from_coarser(coarser, coarse_offset, coarse_mask)
            branches.append(F.interpolate(up, size=x.shape[-2:], mode="bilinear", align_corners=True))
        return branches

    def forward(self, features: list[Tensor]) -> list[Tensor]:
        outputs = []
        for level in range(len(features)):
            # The branches (and their sampling maps) are freed once fused, before the activation,
            # and no name keeps a level's fused map alive while the next level is computed.
            outputs.append(self._activate(self._fuse(self._branches(features, level))))
        return outputs

    def _activate(self, fused: Tensor) -> Tensor:
        """DyReLU (or ReLU) of a fused map this DyConv owns (overwritten without gradients)."""
        if self.dyrelu is None:
            return F.relu(fused)
        return self.dyrelu(fused, inplace=True)


class HeadBlock(nn.Module):
    """One tower step: [fusion -> text layer ->] DyConv.

    Args:
        dyconv: the visual convolution.
        fusion: image <-> text cross-attention (GLIP-T/L), or None (GLIP-A).
        text_layer: in-head BERT layer on the fused text, or None (GLIP-A, and the
            last block when the dot product uses the unfused ``embedded`` text).
        use_checkpoint: recompute the fusion in the backward pass (activation
            checkpointing, official DYHEAD.USE_CHECKPOINT); only while training with
            gradients, where it changes memory, never values.

    ``forward(visual, hidden, mask)``: L tensors ``Tensor[B, C, H_l, W_l]``, text hidden
    ``Tensor[B, T, D]`` and mask ``Tensor[B, T]`` -> :class:`FusedFeatures`.
    """

    def __init__(
        self,
        dyconv: DyConv,
        fusion: BiAttentionBlock | None = None,
        text_layer: TextLayer | None = None,
        use_checkpoint: bool = False,
    ) -> None:
        super().__init__()
        self.fusion = fusion
        self.text_layer = text_layer
        self.dyconv = dyconv
        self.use_checkpoint = use_checkpoint

    def forward(self, visual: list[Tensor], hidden: Tensor, mask: Tensor, causal: bool = False) -> FusedFeatures:
        """``causal``: the captioning mode of the fusion and the text layer (see
        :class:`glip.modeling.fusion.bi_attention.BiAttentionBlock`)."""
        fused = self.fuse(visual, hidden, mask, causal)
        return FusedFeatures(visual=self.dyconv(fused.visual), text=fused.text)

    def fuse(
        self, visual: list[Tensor], hidden: Tensor, mask: Tensor, causal: bool = False, consume: bool = False
    ) -> FusedFeatures:
        """The block's first half, fusion then text layer: the maps and text the DyConv reads
        (``visual`` itself without fusion). :class:`FusionTrunk` calls it and ``dyconv``
        separately, so that the block's input maps can be freed before the DyConv runs
        (during the fusion, with ``consume``: :class:`BiAttentionBlock`)."""
        if self.fusion is not None:
            if self.use_checkpoint and self.training and torch.is_grad_enabled():
                fused = checkpoint(self.fusion, visual, hidden, mask, causal, use_reentrant=False)
            else:
                fused = self.fusion(visual, hidden, mask, causal, consume=consume)
            visual, hidden = fused.visual, fused.text
        if self.text_layer is not None:
            hidden = self.text_layer(hidden, mask, causal) if causal else self.text_layer(hidden, mask)
        return FusedFeatures(visual=visual, text=hidden)
