"""The grounding head: box regression, centerness and region-word alignment (dot product)
on every level of the fused trunk, with its ATSS loss and post-processing.

Official counterpart: the prediction layers of ``VLDyHead`` (``maskrcnn_benchmark/
modeling/rpn/vldyhead.py``) after its tower, with the switches every released GLIP
config uses (dot-product token loss, one anchor per location). Dimension letters:
B images, L levels, C channels, T tokens, D text width.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from glip.layers.scale import Scale
from glip.modeling.fusion.trunk import TrunkOutput
from glip.modeling.heads.base import Head, LossInputs
from glip.modeling.heads.grounding.loss import GroundingLoss
from glip.modeling.heads.grounding.postprocess import GroundingPostProcessor
from glip.structures import Detections
from glip.structures.outputs import HeadOutputs

__all__ = ["GroundingHead", "focal_prior_bias"]

# Official CLAMP_DOT_PRODUCT bound on the alignment logits (fp16 range safety).
_LOGIT_CLAMP = 50000.0
# The text embedding is L2-normalised and halved before its projection (official
# `dot_product_projection_text(embedding / 2.0)`).
_TEXT_SCALE = 2.0


def focal_prior_bias(prior_prob: float) -> float:
    """The logit bias whose sigmoid is ``prior_prob`` (focal-loss initialisation)."""
    return -math.log((1 - prior_prob) / prior_prob)


class GroundingHead(Head):
    """Box, centerness and dot-product alignment predictions; ATSS loss; decoding.

    Args:
        channels: C, the trunk's width (official DYHEAD.CHANNELS).
        text_dim: D, the text width (official LANG_DIM).
        num_classes: width of the score tensor the post-processor builds (official
            ``DYHEAD.NUM_CLASSES - 1`` = 80); it sizes the ``cls_logits`` conv, which
            exists only so that official checkpoints load (``untrained``).
        num_levels: number of FPN levels, i.e. of per-level box scales (5: P3-P7).
        log_scale: initial value of the learned logit temperature (official LOG_SCALE).
        prior_prob: focal-loss prior that initialises ``bias0`` and ``cls_logits.bias``.
        clamp_dot_product: clamp the alignment logits to +-50000.
        loss: the weighted ATSS losses (default: the official weights).
        postprocessor: the inference decoding (default: the official settings).

    Parameters (official ``rpn.head.*`` names in brackets): ``bbox_pred``, ``centerness``,
    ``cls_logits``, ``scales``, ``text_proj`` [dot_product_projection_text], ``log_scale``,
    ``bias_lang``, ``bias0``.
    """

    # Official LINEAR_PROB keeps the rpn parameters whose names contain bbox_pred, cls_logits,
    # centerness, cosine_scale, dot_product_projection_text, head.log_scale, head.bias_lang or
    # head.bias0; cls_logits is then frozen again (dot-product token loss) and cosine_scale
    # does not exist in GLIP's head.
    linear_probe = ("bbox_pred.", "centerness.", "text_proj.", "log_scale", "bias_lang", "bias0")
    untrained = ("cls_logits.",)

    def __init__(
        self,
        channels: int,
        text_dim: int,
        num_classes: int = 80,
        num_levels: int = 5,
        log_scale: float = 0.0,
        prior_prob: float = 0.01,
        clamp_dot_product: bool = True,
        loss: GroundingLoss | None = None,
        postprocessor: GroundingPostProcessor | None = None,
    ) -> None:
        super().__init__()
        self.clamp_dot_product = clamp_dot_product
        self.loss_fn = loss if loss is not None else GroundingLoss()
        self.postprocessor = postprocessor if postprocessor is not None else GroundingPostProcessor()
        # One anchor per location in every GLIP config (ASPECT_RATIOS (1.0,), SCALES_PER_OCTAVE 1).
        bias_value = focal_prior_bias(prior_prob)
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

    @property
    def num_classes(self) -> int:
        """Score-tensor width (the ``cls_logits`` output channels): at most this many
        phrases per prompt can be scored."""
        return self.cls_logits.out_channels

    def forward(self, trunk: TrunkOutput, outputs: Mapping[str, Any] | None = None) -> HeadOutputs:
        embedding = F.normalize(trunk.head_text, p=2, dim=-1)  # [B, T, D]
        proj_tokens = self.text_proj(embedding / _TEXT_SCALE)  # [B, T, C]
        token_bias = embedding @ self.bias_lang + self.bias0  # [B, T]
        temperature = self.log_scale.exp()
        box_regression, centerness, dot_product_logits = [], [], []
        for level, x in enumerate(trunk.visual):
            box_regression.append(self.scales[level](self.bbox_pred(x)))  # [B, 4, H, W]
            centerness.append(self.centerness(x))  # [B, 1, H, W]
            queries = x.flatten(2).transpose(1, 2)  # [B, H*W, C]
            logits = queries @ proj_tokens.transpose(-1, -2) / temperature + token_bias[:, None, :]  # [B, H*W, T]
            if self.clamp_dot_product:
                logits = logits.clamp(min=-_LOGIT_CLAMP, max=_LOGIT_CLAMP)
            dot_product_logits.append(logits)
        return HeadOutputs(
            box_regression=box_regression,
            centerness=centerness,
            dot_product_logits=dot_product_logits,
            num_classes=self.num_classes,
            temperature=temperature,
        )

    def loss(self, output: HeadOutputs, inputs: LossInputs) -> dict[str, Tensor]:
        """``loss_reg``, ``loss_centerness``, ``loss_dot_product_token`` (see :class:`GroundingLoss`)."""
        return self.loss_fn(output, inputs)

    def postprocess(
        self,
        output: HeadOutputs,
        anchors: list[Tensor],
        positive_map: Tensor | Mapping[int, Sequence[int]],
        image_sizes: Sequence[tuple[int, int]],
        original_sizes: Sequence[tuple[int, int]] | None = None,
    ) -> list[Detections]:
        """Detections of each image (see :class:`GroundingPostProcessor`)."""
        return self.postprocessor(
            output.box_regression,
            output.centerness,
            output.dot_product_logits,
            anchors,
            positive_map,
            output.num_classes,
            image_sizes,
            original_sizes=original_sizes,
        )
