"""The MDETR-style heads of the official VLDyHead: soft-token prediction and contrastive
alignment (official FUSE_CONFIG.USE_TOKEN_LOSS and USE_CONTRASTIVE_ALIGN_LOSS; off in
every released GLIP config).

Both read the trunk's visual maps and the ATSS assignment the criterion shares; the
contrastive head divides by the grounding head's learned temperature (``log_scale``),
as the official head does. Dimension letters: B images, L levels, C channels,
T tokens, D text width, K the contrastive width, N anchors per image.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from glip.modeling.fusion.trunk import TrunkOutput
from glip.modeling.heads.base import Head, LossInputs
from glip.modeling.heads.grounding.head import focal_prior_bias
from glip.modeling.heads.grounding.loss import attended_token_focal_loss
from glip.modeling.losses.detection import contrastive_align_loss

__all__ = ["AlignOutput", "MDETRAlignHead", "MDETRTokenHead", "TokenOutput"]


@dataclass
class TokenOutput:
    """Soft-token logits: L tensors ``Tensor[B, H_l*W_l, T_max]`` (``T_max`` = the head's
    ``max_query_len``)."""

    logits: list[Tensor]


@dataclass
class AlignOutput:
    """Contrastive alignment logits (cosine similarity / temperature): L tensors
    ``Tensor[B, H_l*W_l, T]``."""

    logits: list[Tensor]


class MDETRTokenHead(Head):
    """The soft-token branch: a 1x1 conv from the trunk's visual maps to ``max_query_len``
    token logits per location (official ``rpn.head.token_logits``: weight ~ N(0, 0.01),
    bias at the focal prior), and its loss ``loss_token``: the grounding head's focal
    loss (same alpha, gamma, targets, text mask and normaliser) on its first T columns.
    Its weight (official TOKEN_LOSS_WEIGHT) is the criterion's weight of this head.

    Args:
        channels: C, the trunk's width.
        max_query_len: T_max (official MAX_QUERY_LEN, 256).
        prior_prob: the focal prior of the bias (official DYHEAD.PRIOR_PROB).
        alpha, gamma: the focal loss (official TOKEN_ALPHA 0.25, TOKEN_GAMMA 2.0).
    """

    def __init__(
        self,
        channels: int,
        max_query_len: int = 256,
        prior_prob: float = 0.01,
        alpha: float = 0.25,
        gamma: float = 2.0,
    ) -> None:
        super().__init__()
        self.alpha, self.gamma = alpha, gamma
        self.logits = nn.Conv2d(channels, max_query_len, kernel_size=1)
        nn.init.normal_(self.logits.weight, std=0.01)
        nn.init.constant_(self.logits.bias, focal_prior_bias(prior_prob))

    def forward(self, trunk: TrunkOutput, outputs: Mapping[str, Any] | None = None) -> TokenOutput:
        return TokenOutput([self.logits(x).flatten(2).transpose(1, 2) for x in trunk.visual])  # L x [B, H*W, T_max]

    def loss(self, output: TokenOutput, inputs: LossInputs) -> dict[str, Tensor]:
        with torch.autocast(device_type=inputs.text_mask.device.type, enabled=False):  # fp32, as the grounding loss
            soft = torch.cat([x.float() for x in output.logits], dim=1)  # [B, N, T_max]
            tokens = inputs.assigned.tokens  # [B, N, T]
            if soft.shape[-1] < tokens.shape[-1] or soft.shape[:2] != tokens.shape[:2]:
                raise ValueError(
                    f"token logits {tuple(soft.shape)} cannot cover the token targets {tuple(tokens.shape)}"
                )
            soft = soft[..., : tokens.shape[-1]]  # official: T_max == T (prompts padded to MAX_QUERY_LEN)
            loss = attended_token_focal_loss(soft, inputs, self.alpha, self.gamma)
        return {"loss_token": loss}


class MDETRAlignHead(Head):
    """The contrastive-alignment branches and ``loss_contrastive_align``.

    ``resizer`` (linear D -> C, LayerNorm eps 1e-12, dropout; official ``rpn.resizer``)
    maps the unfused ``embedded`` text; with ``fused_dot_product`` the fused text is used
    as it is (the official layer then assumes D == C; here the text projection is sized to
    its actual input). ``text_proj`` (linear to K; official
    ``contrastive_align_projection_text``) and ``image_proj`` (1x1 conv to K; official
    ``contrastive_align_projection_image``) are L2-normalised and their dot product divided
    by the grounding head's ``exp(log_scale)``. The official head forbids this branch
    together with the dot-product one; here both coexist (detection needs the latter).
    Its loss weight (official CONTRASTIVE_ALIGN_LOSS_WEIGHT) is the criterion's weight of
    this head.

    Args:
        channels: C, the trunk's width.
        text_dim: D.
        fused_dot_product: the trunk's official USE_FUSED_FEATURES_DOT_PRODUCT.
        hidden_dim: K (official FUSE_CONFIG.CONTRASTIVE_HIDDEN_DIM, 64).
        dropout: of ``resizer`` (official FUSE_CONFIG.JOINT_EMB_DROPOUT, 0.1).
        temperature_from: the head whose output's ``temperature`` divides the logits.
    """

    def __init__(
        self,
        channels: int,
        text_dim: int,
        fused_dot_product: bool = True,
        hidden_dim: int = 64,
        dropout: float = 0.1,
        temperature_from: str = "grounding",
    ) -> None:
        super().__init__()
        self.fused_dot_product = fused_dot_product
        self.temperature_from = temperature_from
        self.resizer = FeatureResizer(text_dim, channels, dropout)
        self.image_proj = nn.Conv2d(channels, hidden_dim, kernel_size=1)
        nn.init.normal_(self.image_proj.weight, std=0.01)
        nn.init.zeros_(self.image_proj.bias)
        self.text_proj = nn.Linear(text_dim if fused_dot_product else channels, hidden_dim)

    def forward(self, trunk: TrunkOutput, outputs: Mapping[str, Any] | None = None) -> AlignOutput:
        source = (outputs or {}).get(self.temperature_from)
        temperature = getattr(source, "temperature", None)
        if temperature is None:
            raise ValueError(f"the contrastive-alignment head needs the {self.temperature_from!r} head's temperature")
        text = trunk.text if self.fused_dot_product else self.resizer(trunk.text_input.embedded)
        tokens = F.normalize(self.text_proj(text), p=2, dim=-1)  # [B, T, K]
        logits = []
        for x in trunk.visual:
            queries = F.normalize(self.image_proj(x).flatten(2).transpose(1, 2), p=2, dim=-1)  # [B, H*W, K]
            logits.append(queries @ tokens.transpose(-1, -2) / temperature)  # [B, H*W, T]
        return AlignOutput(logits)

    def loss(self, output: AlignOutput, inputs: LossInputs) -> dict[str, Tensor]:
        """See :func:`glip.modeling.losses.detection.contrastive_align_loss`; divided by ``num_pos_avg``."""
        with torch.autocast(device_type=inputs.text_mask.device.type, enabled=False):
            align = torch.cat([x.float() for x in output.logits], dim=1)  # [B, N, T]
            tokens = inputs.assigned.tokens
            if align.shape != tokens.shape:
                raise ValueError(f"contrastive logits {tuple(align.shape)} != token targets {tuple(tokens.shape)}")
            # Official map: the matched box's tokens for positive anchors, nothing for background.
            positive_map = (tokens > 0) & inputs.assigned.positive[:, :, None]  # [B, N, T]
            loss = contrastive_align_loss(align, positive_map) / inputs.num_pos_avg
        return {"loss_contrastive_align": loss}


class FeatureResizer(nn.Module):
    """Linear, LayerNorm (eps 1e-12), dropout: the official ``FeatureResizer`` (names
    ``fc`` and ``layer_norm`` kept for checkpoint compatibility)."""

    def __init__(self, in_dim: int, out_dim: int, dropout: float) -> None:
        super().__init__()
        self.fc = nn.Linear(in_dim, out_dim)
        self.layer_norm = nn.LayerNorm(out_dim, eps=1e-12)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.layer_norm(self.fc(x)))
