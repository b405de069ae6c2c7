"""The GLIP head: a DyHead tower with early fusion, then box, centerness and
region-word alignment (dot-product) predictions on every level.

Official counterpart: ``VLDyHead`` in ``maskrcnn_benchmark/modeling/rpn/vldyhead.py``
with the switches every released GLIP config uses (MHA-B fusion, dot-product token
loss, one anchor per location). Dimension letters: B images, L levels, C channels,
T tokens, D text width.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from glip.layers.scale import Scale
from glip.modeling.dyhead import DyConv, HeadBlock
from glip.modeling.fusion import FUSION_EMBED_DIM, FUSION_NUM_HEADS, BiAttentionBlock
from glip.modeling.text_layer import TextLayer
from glip.structures.outputs import HeadOutputs
from glip.structures.text import TextFeatures

__all__ = ["GLIPHead"]

# Official CLAMP_DOT_PRODUCT bound on the alignment logits (fp16 range safety).
_LOGIT_CLAMP = 50000.0
# The text embedding is L2-normalised and halved before its projection (official
# `dot_product_projection_text(embedding / 2.0)`).
_TEXT_SCALE = 2.0


class GLIPHead(nn.Module):
    """DyHead tower with early vision-language fusion, and the prediction layers.

    Args:
        in_channels: width of the FPN features (official BACKBONE.OUT_CHANNELS).
        channels: C, the tower width (official DYHEAD.CHANNELS). When it differs from
            ``in_channels`` the first DyConv drops DyReLU, DyFuse and deformable convs,
            as the official head does; combined with early fusion or deformable convs
            the official head cannot run, so that raises ``ValueError``.
        text_dim: D, the text width (official LANG_DIM = the BERT hidden size).
        num_blocks: tower depth (official DYHEAD.NUM_CONVS: 6 for T/A, 8 for L).
        num_classes: width of the score tensor the post-processor builds (official
            ``DYHEAD.NUM_CLASSES - 1`` = 80); it sizes the ``cls_logits`` conv, which
            exists only so that official checkpoints load.
        early_fusion: a fusion block (and an in-head BERT layer) before every DyConv
            (official FUSE_CONFIG.EARLY_FUSE_ON: T/L True, A False).
        fused_dot_product: the dot product uses the fused ``hidden`` text, else the
            unfused ``embedded`` (official USE_FUSED_FEATURES_DOT_PRODUCT). When early
            fusion is on but this is off, the last block has no text layer (official
            DummyLayer).
        use_gn, gn_groups: GroupNorm after each DyHead conv (official USE_GN and
            MODEL.GROUP_NORM.NUM_GROUPS, default 16).
        use_dyrelu, use_dyfuse, use_dfconv: DyConv switches (all True in GLIP).
        num_levels: number of FPN levels, i.e. of per-level box scales (5: P3-P7).
        log_scale: initial value of the learned logit temperature (official LOG_SCALE).
        prior_prob: focal-loss prior that initialises ``bias0`` and ``cls_logits.bias``.
        text_num_heads, text_intermediate_size, text_activation, text_layer_norm_eps,
        text_hidden_dropout, text_attention_dropout: the in-head BERT layers, from the
            language model's config (BERT-base: 12, 3072, "gelu", 1e-12, 0.1, 0.1).
        fusion_dropout: attention dropout in the fusion (official 0.1, training only).
        fusion_drop_path: stochastic depth in the fusion (official 0.0).
        clamp_min_for_underflow, clamp_max_for_overflow: fusion logit clamps.
        clamp_bertattn_min_for_underflow, clamp_bertattn_max_for_overflow: in-head
            BERT attention clamps.
        clamp_dot_product: clamp the alignment logits to +-50000.
        use_checkpoint: activation checkpointing of the fusion blocks while training.
        use_token_loss: adds the MDETR soft-token branch ``token_logits``, a 1x1 conv
            from the tower's visual output to ``max_query_len`` token logits per
            location (official FUSE_CONFIG.USE_TOKEN_LOSS; weight ~ N(0, 0.01), bias at
            the focal prior).
        max_query_len: width of the soft-token branch (official MAX_QUERY_LEN, 256).
        use_contrastive_align: adds the MDETR contrastive-alignment branches
            (official FUSE_CONFIG.USE_CONTRASTIVE_ALIGN_LOSS): ``resizer`` (linear text_dim
            -> channels, LayerNorm eps 1e-12, dropout; official ``rpn.resizer``) on the
            unfused ``embedded`` text, or the fused ``hidden`` text when
            ``fused_dot_product`` is on; ``contrastive_align_projection_text`` (linear to
            ``contrastive_hidden_dim``) and ``contrastive_align_projection_image`` (1x1
            conv to ``contrastive_hidden_dim``). Both projections are L2-normalised and
            their dot product divided by ``exp(log_scale)`` (the shared temperature).
            The official head forbids it together with the dot-product branch; here the
            dot-product branch always stays (detection needs it), so both coexist.
        contrastive_hidden_dim: official FUSE_CONFIG.CONTRASTIVE_HIDDEN_DIM (64).
        contrastive_dropout: dropout of ``resizer`` (official FUSE_CONFIG.JOINT_EMB_DROPOUT, 0.1).

        With both switches off (every released config) the head has no extra parameter
        and its outputs are unchanged.

    ``forward(features, text)``: L tensors ``Tensor[B, C_in, H_l, W_l]`` and
    :class:`TextFeatures` -> :class:`HeadOutputs`.
    """

    def __init__(
        self,
        in_channels: int,
        channels: int,
        text_dim: int,
        num_blocks: int,
        num_classes: int = 80,
        early_fusion: bool = True,
        fused_dot_product: bool = True,
        use_gn: bool = True,
        gn_groups: int = 16,
        use_dyrelu: bool = True,
        use_dyfuse: bool = True,
        use_dfconv: bool = True,
        num_levels: int = 5,
        log_scale: float = 0.0,
        prior_prob: float = 0.01,
        text_num_heads: int = 12,
        text_intermediate_size: int = 3072,
        text_activation: str = "gelu",
        text_layer_norm_eps: float = 1e-12,
        text_hidden_dropout: float = 0.1,
        text_attention_dropout: float = 0.1,
        fusion_dropout: float = 0.1,
        fusion_drop_path: float = 0.0,
        clamp_min_for_underflow: bool = True,
        clamp_max_for_overflow: bool = True,
        clamp_bertattn_min_for_underflow: bool = True,
        clamp_bertattn_max_for_overflow: bool = True,
        clamp_dot_product: bool = True,
        use_checkpoint: bool = False,
        use_token_loss: bool = False,
        max_query_len: int = 256,
        use_contrastive_align: bool = False,
        contrastive_hidden_dim: int = 64,
        contrastive_dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if in_channels != channels and (early_fusion or use_dfconv):
            raise ValueError(
                f"in_channels ({in_channels}) != channels ({channels}) is only possible without early "
                "fusion and deformable convs: the official head would feed the first fusion and all "
                "later ones different widths, and call its first deformable convs without offsets"
            )
        self.early_fusion = early_fusion
        self.fused_dot_product = fused_dot_product
        self.clamp_dot_product = clamp_dot_product

        blocks = []
        for i in range(num_blocks):
            fusion, text_layer = None, None
            if early_fusion:
                fusion = BiAttentionBlock(
                    channels,
                    text_dim,
                    embed_dim=FUSION_EMBED_DIM,
                    num_heads=FUSION_NUM_HEADS,
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
        self.tower = nn.ModuleList(blocks)

        # One anchor per location in every GLIP config (ASPECT_RATIOS (1.0,), SCALES_PER_OCTAVE 1).
        bias_value = -math.log((1 - prior_prob) / prior_prob)
        self.cls_logits = nn.Conv2d(channels, num_classes, kernel_size=1)
        self.bbox_pred = nn.Conv2d(channels, 4, kernel_size=1)
        self.centerness = nn.Conv2d(channels, 1, kernel_size=1)
        for conv in (self.cls_logits, self.bbox_pred, self.centerness):
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)
        nn.init.constant_(self.cls_logits.bias, bias_value)
        self.scales = nn.ModuleList(Scale(1.0) for _ in range(num_levels))

        self.text_proj = nn.Linear(text_dim, channels)
        self.log_scale = nn.Parameter(torch.tensor([log_scale], dtype=torch.float32))
        self.bias_lang = nn.Parameter(torch.zeros(text_dim))
        self.bias0 = nn.Parameter(torch.tensor([bias_value], dtype=torch.float32))

        # Optional MDETR-style branches (official USE_TOKEN_LOSS / USE_CONTRASTIVE_ALIGN_LOSS).
        self.use_token_loss = use_token_loss
        self.use_contrastive_align = use_contrastive_align
        if use_token_loss:
            self.token_logits = nn.Conv2d(channels, max_query_len, kernel_size=1)
            nn.init.normal_(self.token_logits.weight, std=0.01)
            nn.init.constant_(self.token_logits.bias, bias_value)
        if use_contrastive_align:
            # Official: text input = resizer(embedded), or the fused hidden text with
            # USE_FUSED_FEATURES_DOT_PRODUCT (the official layer then assumes text_dim ==
            # channels; here it is sized to its actual input).
            self.resizer = _FeatureResizer(text_dim, channels, contrastive_dropout)
            self.contrastive_align_projection_image = nn.Conv2d(channels, contrastive_hidden_dim, kernel_size=1)
            nn.init.normal_(self.contrastive_align_projection_image.weight, std=0.01)
            nn.init.zeros_(self.contrastive_align_projection_image.bias)
            self.contrastive_align_projection_text = nn.Linear(
                text_dim if fused_dot_product else channels, contrastive_hidden_dim
            )

    @property
    def num_classes(self) -> int:
        """Score-tensor width (the ``cls_logits`` output channels)."""
        return self.cls_logits.out_channels

    def forward(self, features: list[Tensor], text: TextFeatures) -> HeadOutputs:
        visual, hidden = list(features), text.hidden
        for block in self.tower:
            out = block(visual, hidden, text.mask)
            visual, hidden = out.visual, out.text

        embedding = F.normalize(hidden if self.fused_dot_product else text.embedded, p=2, dim=-1)  # [B, T, D]
        proj_tokens = self.text_proj(embedding / _TEXT_SCALE)  # [B, T, C]
        token_bias = embedding @ self.bias_lang + self.bias0  # [B, T]
        temperature = self.log_scale.exp()
        token_logits: list[Tensor] | None = [] if self.use_token_loss else None
        contrastive_logits: list[Tensor] | None = None
        if self.use_contrastive_align:
            contrastive_logits = []
            align_text = hidden if self.fused_dot_product else self.resizer(text.embedded)
            align_tokens = F.normalize(self.contrastive_align_projection_text(align_text), p=2, dim=-1)  # [B, T, K]

        box_regression, centerness, dot_product_logits = [], [], []
        for level, x in enumerate(visual):
            box_regression.append(self.scales[level](self.bbox_pred(x)))  # [B, 4, H, W]
            centerness.append(self.centerness(x))  # [B, 1, H, W]
            queries = x.flatten(2).transpose(1, 2)  # [B, H*W, C]
            logits = queries @ proj_tokens.transpose(-1, -2) / temperature + token_bias[:, None, :]  # [B, H*W, T]
            if self.clamp_dot_product:
                logits = logits.clamp(min=-_LOGIT_CLAMP, max=_LOGIT_CLAMP)
            dot_product_logits.append(logits)
            if token_logits is not None:
                token_logits.append(self.token_logits(x).flatten(2).transpose(1, 2))  # [B, H*W, T_max]
            if contrastive_logits is not None:
                align_queries = self.contrastive_align_projection_image(x).flatten(2).transpose(1, 2)  # [B, H*W, K]
                align_queries = F.normalize(align_queries, p=2, dim=-1)
                contrastive_logits.append(align_queries @ align_tokens.transpose(-1, -2) / temperature)  # [B, H*W, T]

        return HeadOutputs(
            box_regression=box_regression,
            centerness=centerness,
            dot_product_logits=dot_product_logits,
            num_classes=self.num_classes,
            fused_text=hidden if self.early_fusion else None,
            features=visual,
            token_logits=token_logits,
            contrastive_logits=contrastive_logits,
        )


class _FeatureResizer(nn.Module):
    """Linear, LayerNorm (eps 1e-12), dropout: the official ``FeatureResizer`` (names
    ``fc`` and ``layer_norm`` kept for checkpoint compatibility)."""

    def __init__(self, in_dim: int, out_dim: int, dropout: float) -> None:
        super().__init__()
        self.fc = nn.Linear(in_dim, out_dim)
        self.layer_norm = nn.LayerNorm(out_dim, eps=1e-12)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.layer_norm(self.fc(x)))
