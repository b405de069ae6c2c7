"""The fused trunk: the DyHead tower with early vision-language fusion, shared by every head.

Official counterpart: the ``dyhead_tower`` of ``VLDyHead`` (``maskrcnn_benchmark/modeling/
rpn/vldyhead.py``): per block a ``VLFuse`` (X-MHA), an in-head ``BertEncoderLayer`` and a
``DyConv``. Everything after the tower (box, centerness, alignment, MDETR branches, and
GLIPv2's inter-image and MLM heads) lives in :mod:`glip.modeling.heads`.

Dimension letters: B images, L levels, C channels, T tokens, D text width.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from glip.modeling.fusion.bi_attention import FUSION_EMBED_DIM, FUSION_NUM_HEADS, BiAttentionBlock
from glip.modeling.fusion.dyhead import DyConv, HeadBlock
from glip.modeling.fusion.text_layer import TextLayer
from glip.structures.text import TextFeatures

__all__ = ["FusionTrunk", "TrunkOutput"]


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


class FusionTrunk(nn.Module):
    """The DyHead tower with early fusion: FPN maps + text -> :class:`TrunkOutput`.

    Args:
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
        text_num_heads, text_intermediate_size, text_activation, text_layer_norm_eps,
        text_hidden_dropout, text_attention_dropout: the in-head BERT layers, from the
            language model's config (BERT-base: 12, 3072, "gelu", 1e-12, 0.1, 0.1).
        fusion_dropout: attention dropout in the fusion (official 0.1, training only).
        fusion_drop_path: stochastic depth in the fusion (official 0.0).
        clamp_min_for_underflow, clamp_max_for_overflow: fusion logit clamps.
        clamp_bertattn_min_for_underflow, clamp_bertattn_max_for_overflow: in-head
            BERT attention clamps.
        use_checkpoint: activation checkpointing of the fusion blocks while training.
        fusion_embed_dim, fusion_num_heads: the fusion attention's width and heads (GLIP:
            2048 and 8 at every head width).

    ``forward(features, text)``: L tensors ``Tensor[B, C_in, H_l, W_l]`` and
    :class:`TextFeatures` -> :class:`TrunkOutput`. When ``text.causal`` (captioning) every
    block runs in causal mode: the fused text at token ``i`` depends on the image and on
    tokens ``<= i`` only. Its only parameters are ``blocks``
    (``blocks.<i>.fusion``, ``.text_layer``, ``.dyconv``; official ``dyhead_tower``).
    """

    def __init__(
        self,
        in_channels: int,
        channels: int,
        text_dim: int,
        num_blocks: int,
        early_fusion: bool = True,
        fused_dot_product: bool = True,
        use_gn: bool = True,
        gn_groups: int = 16,
        use_dyrelu: bool = True,
        use_dyfuse: bool = True,
        use_dfconv: bool = True,
        text_num_heads: int = 12,
        text_intermediate_size: int = 3072,
        text_activation: str = "gelu",
        text_layer_norm_eps: float = 1e-12,
        text_hidden_dropout: float = 0.1,
        text_attention_dropout: float = 0.1,
        fusion_dropout: float = 0.1,
        fusion_drop_path: float = 0.0,
        fusion_embed_dim: int = FUSION_EMBED_DIM,
        fusion_num_heads: int = FUSION_NUM_HEADS,
        clamp_min_for_underflow: bool = True,
        clamp_max_for_overflow: bool = True,
        clamp_bertattn_min_for_underflow: bool = True,
        clamp_bertattn_max_for_overflow: bool = True,
        use_checkpoint: bool = False,
    ) -> None:
        super().__init__()
        if in_channels != channels and (early_fusion or use_dfconv):
            raise ValueError(
                f"in_channels ({in_channels}) != channels ({channels}) is only possible without early "
                "fusion and deformable convs: the official head would feed the first fusion and all "
                "later ones different widths, and call its first deformable convs without offsets"
            )
        self.channels = channels
        self.text_dim = text_dim
        self.early_fusion = early_fusion
        self.fused_dot_product = fused_dot_product
        blocks = []
        for i in range(num_blocks):
            fusion, text_layer = None, None
            if early_fusion:
                fusion = BiAttentionBlock(
                    channels,
                    text_dim,
                    embed_dim=fusion_embed_dim,
                    num_heads=fusion_num_heads,
                    dropout=fusion_dropout,
                    drop_path=fusion_drop_path,
                    init_values=1.0 / num_blocks,  # official VLFuse: 1 / DYHEAD.NUM_CONVS
                    clamp_min_for_underflow=clamp_min_for_underflow,
                    clamp_max_for_overflow=clamp_max_for_overflow,
                )
                if i < num_blocks - 1 or fused_dot_product:
                    text_layer = TextLayer(
                        text_dim,
                        text_num_heads,
                        text_intermediate_size,
                        activation=text_activation,
                        layer_norm_eps=text_layer_norm_eps,
                        hidden_dropout=text_hidden_dropout,
                        attention_dropout=text_attention_dropout,
                        clamp_min_for_underflow=clamp_bertattn_min_for_underflow,
                        clamp_max_for_overflow=clamp_bertattn_max_for_overflow,
                    )
            reduced = i == 0 and in_channels != channels
            dyconv = DyConv(
                in_channels if i == 0 else channels,
                channels,
                gn_groups=gn_groups if use_gn else None,
                use_dyrelu=use_dyrelu and not reduced,
                use_dyfuse=use_dyfuse and not reduced,
                use_dfconv=use_dfconv and not reduced,
            )
            blocks.append(HeadBlock(dyconv, fusion, text_layer, use_checkpoint=use_checkpoint))
        self.blocks = nn.ModuleList(blocks)

    def forward(self, features: list[Tensor], text: TextFeatures) -> TrunkOutput:
        visual, hidden = list(features), text.hidden
        for block in self.blocks:
            out = block(visual, hidden, text.mask, text.causal) if text.causal else block(visual, hidden, text.mask)
            visual, hidden = out.visual, out.text
        return TrunkOutput(
            visual=visual,
            text=hidden,
            features=list(features),
            text_input=text,
            early_fusion=self.early_fusion,
            fused_dot_product=self.fused_dot_product,
        )
