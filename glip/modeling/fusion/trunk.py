"""The fused trunk: the DyHead tower with early vision-language fusion, shared by every head.

Official counterpart: the ``dyhead_tower`` of ``VLDyHead`` (``maskrcnn_benchmark/modeling/
rpn/vldyhead.py``): per block a ``VLFuse`` (X-MHA), an in-head ``BertEncoderLayer`` and a
``DyConv``. Everything after the tower (box, centerness, alignment, MDETR branches, and
GLIPv2's inter-image and MLM heads) lives in :mod:`glip.modeling.heads`.

Dimension letters: B images, L levels, C channels, T tokens, D text width.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from glip.modeling.fusion.bi_attention import FUSION_EMBED_DIM, FUSION_NUM_HEADS, BiAttentionBlock
from glip.modeling.fusion.dyhead import DyConv, HeadBlock
from glip.modeling.language.text_layer import TextLayer
from glip.structures.text import TextFeatures

__all__ = ["FusionSpec", "FusionTrunk", "TextLayerSpec", "TrunkOutput", "TrunkSpec"]


@dataclass
class TrunkOutput:
    """What the trunk gives every head.

    Attributes:
        visual: L tensors ``Tensor[B, C, H_l, W_l]``, the tower's (post-fusion) visual maps.
        text: ``Tensor[B, T, D]``, the tower's text hidden states (post-fusion with early
            fusion; the encoder's ``hidden`` unchanged without).
        features: L tensors ``Tensor[B, C_in, H_l, W_l]``, the FPN maps entering the tower
            (pre-fusion; GLIPv2's inter-image loss reads these).
        text_input: the language backbone's :class:`TextFeatures` entering the tower
            (pre-fusion; ``mask`` is the prompt's attention mask).
        early_fusion: whether the tower fused text and image (official EARLY_FUSE_ON).
        fused_dot_product: whether the heads read the fused ``text`` or the unfused
            ``text_input.embedded`` (official USE_FUSED_FEATURES_DOT_PRODUCT).
        backbone: the visual body's maps before the FPN (finest first), kept only when a
            training head asks for them (:attr:`glip.modeling.heads.Head.needs_backbone`);
            None otherwise.
    """

    visual: list[Tensor]
    text: Tensor
    features: list[Tensor]
    text_input: TextFeatures
    early_fusion: bool = True
    fused_dot_product: bool = True
    backbone: list[Tensor] | None = None

    @property
    def mask(self) -> Tensor:
        """``Tensor[B, T]``, the prompt's attention mask (non-zero = attended)."""
        return self.text_input.mask

    @property
    def head_text(self) -> Tensor:
        """``Tensor[B, T, D]``: the text the dot-product heads read (``text`` when
        ``fused_dot_product``, else the unfused ``text_input.embedded``)."""
        return self.text if self.fused_dot_product else self.text_input.embedded

    @property
    def fused_text(self) -> Tensor | None:
        """``Tensor[B, T, D]`` after the fusion layers, or None without early fusion."""
        return self.text if self.early_fusion else None


@dataclass(frozen=True)
class FusionSpec:
    """The image-text fusion of every block (:class:`BiAttentionBlock`).

    Attributes:
        embed_dim, num_heads: the attention's width and heads (GLIP: 2048 and 8 at every
            tower width).
        dropout: attention dropout (official 0.1, training only).
        drop_path: stochastic depth (official 0.0).
        clamp_min_for_underflow, clamp_max_for_overflow: the fusion logit clamps.
    """

    embed_dim: int = FUSION_EMBED_DIM
    num_heads: int = FUSION_NUM_HEADS
    dropout: float = 0.1
    drop_path: float = 0.0
    clamp_min_for_underflow: bool = True
    clamp_max_for_overflow: bool = True


@dataclass(frozen=True)
class TextLayerSpec:
    """The in-head BERT layer of every block (:class:`TextLayer`), sized from the language
    model's config (BERT-base: the defaults).

    Attributes:
        num_heads, intermediate_size, activation, layer_norm_eps, hidden_dropout,
        attention_dropout: the layer's sizes and dropouts.
        clamp_min_for_underflow, clamp_max_for_overflow: the attention clamps (official
            ``CLAMP_BERTATTN_*``).
    """

    num_heads: int = 12
    intermediate_size: int = 3072
    activation: str = "gelu"
    layer_norm_eps: float = 1e-12
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1
    clamp_min_for_underflow: bool = True
    clamp_max_for_overflow: bool = True


@dataclass(frozen=True)
class TrunkSpec:
    """What :class:`FusionTrunk` is built from (the builder maps ``model.trunk`` to it).

    Attributes:
        in_channels: width of the FPN features (official BACKBONE.OUT_CHANNELS).
        channels: C, the tower width (official DYHEAD.CHANNELS). When it differs from
            ``in_channels`` the first DyConv drops DyReLU, DyFuse and deformable convs,
            as the official head does; combined with early fusion or deformable convs
            the official head cannot run, so that raises ``ValueError``.
        text_dim: D, the text width (official LANG_DIM = the BERT hidden size).
        num_blocks: tower depth (official DYHEAD.NUM_CONVS: 6 for T/A, 8 for L).
        early_fusion: a fusion block (and an in-head BERT layer) before every DyConv
            (official FUSE_CONFIG.EARLY_FUSE_ON: T/L True, A False).
        fused_dot_product: the heads read the fused text, else the unfused ``embedded``
            (official USE_FUSED_FEATURES_DOT_PRODUCT). When early fusion is on but this
            is off, the last block has no text layer (official DummyLayer).
        use_gn, gn_groups: GroupNorm after each DyHead conv (official USE_GN and
            MODEL.GROUP_NORM.NUM_GROUPS, default 16).
        use_dyrelu, use_dyfuse, use_dfconv: DyConv switches (all True in GLIP).
        fusion: the fusion blocks' settings.
        text_layer: the in-head text layers' settings.
        use_checkpoint: activation checkpointing of the fusion blocks while training.
    """

    in_channels: int
    channels: int
    text_dim: int
    num_blocks: int
    early_fusion: bool = True
    fused_dot_product: bool = True
    use_gn: bool = True
    gn_groups: int = 16
    use_dyrelu: bool = True
    use_dyfuse: bool = True
    use_dfconv: bool = True
    fusion: FusionSpec = field(default_factory=FusionSpec)
    text_layer: TextLayerSpec = field(default_factory=TextLayerSpec)
    use_checkpoint: bool = False

    @classmethod
    def from_flat(cls, *args: Any, **kwargs: Any) -> TrunkSpec:
        """A spec from the official head's flat argument names (as the parity tests spell
        them): ``text_<x>`` is ``text_layer.<x>``, ``clamp_bertattn_<x>`` is
        ``text_layer.clamp_<x>``, ``fusion_<x>`` and ``clamp_<x>`` are ``fusion.<x>`` and
        ``fusion.clamp_<x>``; the rest are this class's own fields."""
        text, fusion, own = {}, {}, {}
        for key, value in kwargs.items():
            if key.startswith("text_") and key != "text_dim":
                text[key.removeprefix("text_")] = value
            elif key.startswith("clamp_bertattn_"):
                text["clamp_" + key.removeprefix("clamp_bertattn_")] = value
            elif key.startswith("fusion_"):
                fusion[key.removeprefix("fusion_")] = value
            elif key.startswith("clamp_"):
                fusion[key] = value
            else:
                own[key] = value
        return cls(*args, fusion=FusionSpec(**fusion), text_layer=TextLayerSpec(**text), **own)


class FusionTrunk(nn.Module):
    """The DyHead tower with early fusion: FPN maps + text -> :class:`TrunkOutput`.

    Args:
        spec: its :class:`TrunkSpec`. The flat form ``FusionTrunk(in_channels, channels,
            text_dim, num_blocks, **keywords)`` (the official head's argument names) is
            :meth:`TrunkSpec.from_flat`.

    ``forward(features, text)``: L tensors ``Tensor[B, C_in, H_l, W_l]`` and
    :class:`TextFeatures` -> :class:`TrunkOutput`. When ``text.causal`` (captioning) every
    block runs in causal mode: the fused text at token ``i`` depends on the image and on
    tokens ``<= i`` only. Its only parameters are ``blocks``
    (``blocks.<i>.fusion``, ``.text_layer``, ``.dyconv``; official ``dyhead_tower``).
    """

    def __init__(self, spec: TrunkSpec | int, *args: Any, **kwargs: Any) -> None:
        super().__init__()
        if not isinstance(spec, TrunkSpec):
            spec = TrunkSpec.from_flat(spec, *args, **kwargs)
        elif args or kwargs:
            raise TypeError("FusionTrunk takes a TrunkSpec alone, or the flat arguments")
        if spec.in_channels != spec.channels and (spec.early_fusion or spec.use_dfconv):
            raise ValueError(
                f"in_channels ({spec.in_channels}) != channels ({spec.channels}) is only possible without early "
                "fusion and deformable convs: the official head would feed the first fusion and all "
                "later ones different widths, and call its first deformable convs without offsets"
            )
        self.spec = spec
        self.channels = spec.channels
        self.text_dim = spec.text_dim
        self.early_fusion = spec.early_fusion
        self.fused_dot_product = spec.fused_dot_product
        self.blocks = nn.ModuleList(_block(spec, i) for i in range(spec.num_blocks))

    def forward(self, features: list[Tensor], text: TextFeatures) -> TrunkOutput:
        visual, hidden = list(features), text.hidden
        for block in self.blocks:
            # A block's two halves (HeadBlock.forward) called apart: once fused, the block's
            # input maps are referenced by no name, so they are freed before its DyConv runs
            # (at inference, one pyramid fewer alive in the tower: 20.8 MiB at 800 x 1216);
            # the fusion empties this list, its own, as soon as it has concatenated the maps.
            fused = block.fuse(visual, hidden, text.mask, text.causal, consume=True)
            visual, hidden = fused.visual, fused.text
            del fused
            visual = block.dyconv(visual)
        return TrunkOutput(
            visual=visual,
            text=hidden,
            features=list(features),
            text_input=text,
            early_fusion=self.early_fusion,
            fused_dot_product=self.fused_dot_product,
        )


def _block(spec: TrunkSpec, i: int) -> HeadBlock:
    """Block ``i`` of the tower, its modules created in the official order (fusion, text
    layer, DyConv: the same random initialisation for a seed)."""
    fusion, text_layer = None, None
    f, t = spec.fusion, spec.text_layer
    if spec.early_fusion:
        fusion = BiAttentionBlock(
            spec.channels,
            spec.text_dim,
            embed_dim=f.embed_dim,
            num_heads=f.num_heads,
            dropout=f.dropout,
            drop_path=f.drop_path,
            init_values=1.0 / spec.num_blocks,  # official VLFuse: 1 / DYHEAD.NUM_CONVS
            clamp_min_for_underflow=f.clamp_min_for_underflow,
            clamp_max_for_overflow=f.clamp_max_for_overflow,
        )
        if i < spec.num_blocks - 1 or spec.fused_dot_product:
            text_layer = TextLayer(
                spec.text_dim,
                t.num_heads,
                t.intermediate_size,
                activation=t.activation,
                layer_norm_eps=t.layer_norm_eps,
                hidden_dropout=t.hidden_dropout,
                attention_dropout=t.attention_dropout,
                clamp_min_for_underflow=t.clamp_min_for_underflow,
                clamp_max_for_overflow=t.clamp_max_for_overflow,
            )
    reduced = i == 0 and spec.in_channels != spec.channels
    dyconv = DyConv(
        spec.in_channels if i == 0 else spec.channels,
        spec.channels,
        gn_groups=spec.gn_groups if spec.use_gn else None,
        use_dyrelu=spec.use_dyrelu and not reduced,
        use_dyfuse=spec.use_dyfuse and not reduced,
        use_dfconv=spec.use_dfconv and not reduced,
    )
    return HeadBlock(dyconv, fusion, text_layer, use_checkpoint=spec.use_checkpoint)
