"""GLIPv2's inter-image region-word contrastive head (L_inter) on the trunk.

The loss itself, its projections and temperature are
:class:`glip.modeling.losses.inter_image.InterImageContrastiveLoss`; this head gives it
the trunk's pre-fusion FPN maps and text, builds its targets from the batch's shared
ATSS assignment and global class ids (:class:`LossInputs`), and draws each image's
anchor sample from the image's own random stream (so a run reproduces and resumes
exactly). Official counterpart: the ``USE_SHALLOW_CONTRASTIVE_LOSS`` branch of
``ATSSLossComputation`` (``maskrcnn_benchmark/modeling/rpn/loss.py``).

Dimension letters: B images, L levels, C FPN width, T tokens, D text width, N anchors.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from glip.modeling.fusion.trunk import TrunkOutput
from glip.modeling.heads.base import Head, LossInputs
from glip.modeling.losses.inter_image import InterImageContrastiveLoss, flatten_levels
from glip.modeling.losses.region_targets import RegionWordTargets
from glip.utils.seeding import STREAM_INTER_IMAGE, stream_generators

__all__ = ["InterImageHead", "InterImageInputs"]


@dataclass
class InterImageInputs:
    """What the inter-image head reads from the trunk (the loss does the rest).

    Attributes:
        features: L tensors ``Tensor[B, C, H_l, W_l]``, the FPN maps entering the trunk
            (pre-fusion).
        fused_text: ``Tensor[B, T, D]``, the text the dot-product heads read (post-fusion
            with the official ``USE_FUSED_FEATURES_DOT_PRODUCT``): the official L_inter text.
        encoder_text: ``Tensor[B, T, D]``, the text encoder's output before fusion (the
            paper's L_inter text), zero at padding.
        body_map: ``Tensor[B, C4, H/16, W/16]``, the visual body's stride-16 map (the
            backbone variant's region features; None in the FPN variant).
    """

    features: list[Tensor]
    fused_text: Tensor
    encoder_text: Tensor
    body_map: Tensor | None = None


class InterImageHead(Head):
    """L_inter as a head (loss ``loss_inter``; official ``loss_shallow_contrastive``).

    Training only (skipped at inference); it may start fresh from a checkpoint without it.

    Args:
        contrastive: the loss module (its projections and log-temperature are this
            head's parameters, ``contrastive.*``).

    ``loss`` needs ``LossInputs.pretraining`` (the boxes' and tokens' global class ids and
    the per-sample seeds). The criterion's weight of the head is the official
    ``SHALLOW_CONTRASTIVE_LOSS_WEIGHT``.
    """

    training_only = True
    fresh_start = True

    def __init__(self, contrastive: InterImageContrastiveLoss) -> None:
        super().__init__()
        self.contrastive = contrastive
        # The backbone variant pools the body's stride-16 map (official swint_feature_c4 = x[-2]).
        self.needs_backbone = contrastive.variant == "backbone"

    def forward(self, trunk: TrunkOutput, outputs: Mapping[str, Any]) -> InterImageInputs:
        body_map = None
        if self.needs_backbone:
            if trunk.backbone is None:
                raise ValueError(
                    "the backbone variant of the inter-image head needs the visual body's maps "
                    "(GLIP.forward keeps them in training)"
                )
            body_map = trunk.backbone[-2]
        return InterImageInputs(
            features=list(trunk.features),
            fused_text=trunk.head_text,
            encoder_text=trunk.text_input.embedded,
            body_map=body_map,
        )

    def loss(self, output: InterImageInputs, inputs: LossInputs) -> dict[str, Tensor]:
        """``{"loss_inter": Tensor[]}`` of this process (every process must call it: the
        loss gathers over processes)."""
        pre = inputs.pretraining
        if pre is None:
            raise ValueError(
                "the inter-image head needs LossInputs.pretraining (global class ids of boxes and tokens, "
                "per-sample seeds); glip.engine.LossModel provides it from the batch"
            )
        targets = RegionWordTargets.build(
            inputs.assigned, inputs.targets, inputs.text_mask, box_class=pre.box_class, token_class=pre.token_class
        )
        backbone = output.body_map is not None
        return self.contrastive(
            output.body_map if backbone else flatten_levels(output.features),  # [B, C4, h, w] or [B, N, C]
            output.fused_text,
            targets,
            stream_generators(pre.seeds, STREAM_INTER_IMAGE),
            encoder_text=output.encoder_text,
            num_pos_avg=inputs.num_pos_avg,
            anchors=torch.cat(list(inputs.anchors)) if backbone else None,  # [N, 4]
        )
