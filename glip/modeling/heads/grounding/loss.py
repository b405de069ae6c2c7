"""The grounding head's loss: ATSS box regression, centerness and region-word alignment.

Official counterpart: ``ATSSLossComputation.__call__`` (``maskrcnn_benchmark/modeling/rpn/loss.py``)
with the loss weights of ``VLDyHeadModule._forward_train`` (``rpn/vldyhead.py``) and the
focal loss of ``layers/sigmoid_focal_loss.py::token_sigmoid_binary_focal_loss``, for the
switches every released GLIP config uses (``USE_DOT_PRODUCT_TOKEN_LOSS`` on, the
classification, token and contrastive losses off; the MDETR-style terms are the heads of
:mod:`glip.modeling.heads.mdetr`).

Dimension letters: B images, L levels, N anchors per image (levels concatenated),
T tokens, P positive anchors of the batch.

The three terms, each divided by batch-level (and, with several processes, global)
quantities that are constants for autograd:

- ``loss_dot_product_token``: sigmoid focal loss (alpha 0.25, gamma 2) of the
  dot-product logits against the per-anchor token targets, summed over every
  (image, anchor, attended token) element -- ``[CLS]``, ``[SEP]``, punctuation and
  unannotated phrases are negatives too, only padding is left out -- and divided by
  ``max(num_positives / world_size, 1)``.
- ``loss_reg``: ``REG_LOSS_WEIGHT`` (2.0) x the GIoU loss of the positives' decoded
  boxes, weighted by their centerness targets and divided by the centerness targets'
  sum (over all processes, / world size).
- ``loss_centerness``: binary cross-entropy with logits against the centerness
  targets, summed and divided by ``max(num_positives / world_size, 1)``.

Under DistributedDataParallel (which averages gradients over processes) this is the
global sum divided by the global positive count, as in the official training.

Optional, not official: ``loss_distill``, RegionCLIP's region-concept distillation
(:mod:`glip.modeling.heads.grounding.region_distill`), present only when a ``distill`` loss is
given (``model.heads.grounding.distill_weight > 0``); the three official terms do not
change with it.

The official loss dict also holds ``loss_cls = 0.0 * focal(cls_logits)``; it adds
nothing to the total nor to any gradient (``cls_logits`` is frozen), and our head has
no ``cls_logits`` output, so it is left out.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from glip.modeling.heads.base import LossInputs
from glip.modeling.heads.grounding.box_coder import BoxCoder
from glip.modeling.heads.grounding.region_distill import RegionConceptDistillation
from glip.modeling.losses.detection import giou_loss, sigmoid_focal_loss
from glip.modeling.losses.gather import all_reduce, world_size
from glip.structures.outputs import HeadOutputs

__all__ = ["GroundingLoss", "attended_token_focal_loss"]


def attended_token_focal_loss(logits: Tensor, inputs: LossInputs, alpha: float, gamma: float) -> Tensor:
    """Focal loss of ``logits`` (``Tensor[B, N, T]``) against the ATSS token targets over
    every attended token of every anchor (padding dropped), divided by ``num_pos_avg``."""
    if logits.shape != inputs.assigned.tokens.shape or inputs.text_mask.shape != (logits.shape[0], logits.shape[-1]):
        raise ValueError(
            f"logits {tuple(logits.shape)}, token targets {tuple(inputs.assigned.tokens.shape)} and "
            f"text mask {tuple(inputs.text_mask.shape)} disagree (expected [B, N, T], [B, N, T] and [B, T])"
        )
    attended = (inputs.text_mask > 0)[:, None, :].expand_as(logits)  # [B, N, T]
    loss = sigmoid_focal_loss(
        torch.masked_select(logits, attended), torch.masked_select(inputs.assigned.tokens, attended), alpha, gamma
    )
    return loss.sum() / inputs.num_pos_avg


class GroundingLoss:
    """The grounding head's weighted losses (no parameters).

    Args:
        reg_weight: multiplies the GIoU loss (official ``MODEL.ATSS.REG_LOSS_WEIGHT``, 2.0).
        centerness_weight: multiplies the centerness loss (official: fixed 1.0).
        token_weight: multiplies the dot-product token loss (official
            ``MODEL.DYHEAD.FUSE_CONFIG.DOT_PRODUCT_TOKEN_LOSS_WEIGHT``, 1.0).
        token_alpha, token_gamma: focal-loss parameters (official
            ``FUSE_CONFIG.TOKEN_ALPHA`` 0.25 and ``TOKEN_GAMMA`` 2.0).
        box_coder: decodes boxes for the GIoU loss (default: the official one).
        distill: the region-concept distillation loss, or None (default: off).
        distill_weight: multiplies it (``model.heads.grounding.distill_weight``).

    ``loss(output, inputs)`` -> ``{"loss_reg", "loss_centerness", "loss_dot_product_token"}``
    (and ``"loss_distill"`` with ``distill``), each a 0-d float32 tensor.
    """

    def __init__(
        self,
        reg_weight: float = 2.0,
        centerness_weight: float = 1.0,
        token_weight: float = 1.0,
        token_alpha: float = 0.25,
        token_gamma: float = 2.0,
        box_coder: BoxCoder | None = None,
        distill: RegionConceptDistillation | None = None,
        distill_weight: float = 1.0,
    ) -> None:
        self.reg_weight = reg_weight
        self.centerness_weight = centerness_weight
        self.token_weight = token_weight
        self.token_alpha = token_alpha
        self.token_gamma = token_gamma
        self.box_coder = box_coder if box_coder is not None else BoxCoder()
        self.distill = distill
        self.distill_weight = distill_weight

    def __call__(self, head: HeadOutputs, inputs: LossInputs) -> dict[str, Tensor]:
        """The weighted losses of a batch.

        Args:
            head: ``box_regression`` L x ``[B, 4, H_l, W_l]``, ``centerness``
                L x ``[B, 1, H_l, W_l]``, ``dot_product_logits`` L x ``[B, H_l * W_l, T]``.
            inputs: the batch's targets and ATSS assignment.
        """
        batch = head.box_regression[0].shape[0]
        if len(inputs.targets) != batch:
            raise ValueError(f"got {len(inputs.targets)} targets for a batch of {batch} images")
        # The official loss runs in fp32 even under mixed precision (custom_fwd(cast_inputs=float32)):
        # the focal terms, the IoU statistics and the GIoU areas lose too much in half precision.
        with torch.autocast(device_type=inputs.text_mask.device.type, enabled=False):
            return self._compute(head, inputs, batch)

    def _compute(self, head: HeadOutputs, inputs: LossInputs, batch: int) -> dict[str, Tensor]:
        assigned = inputs.assigned
        box_regression = torch.cat(
            [r.float().permute(0, 2, 3, 1).reshape(batch, -1, 4) for r in head.box_regression], dim=1
        )  # [B, N, 4]
        centerness = torch.cat(
            [c.float().permute(0, 2, 3, 1).reshape(batch, -1) for c in head.centerness], dim=1
        )  # [B, N]
        logits = torch.cat([x.float() for x in head.dot_product_logits], dim=1)  # [B, N, T]
        token_loss = attended_token_focal_loss(logits, inputs, self.token_alpha, self.token_gamma)

        world = float(world_size())
        num_pos_avg = inputs.num_pos_avg
        positive = assigned.positive.reshape(-1)  # [B * N]
        reg_pred = box_regression.reshape(-1, 4)[positive]  # [P, 4]
        reg_target = assigned.regression.reshape(-1, 4)[positive]  # [P, 4]
        ctr_logit = centerness.reshape(-1)[positive]  # [P]
        ctr_target = assigned.centerness.reshape(-1)[positive]  # [P]
        flat_anchors = torch.cat(list(inputs.anchors), dim=0).to(reg_pred)  # [N, 4]
        pos_anchors = flat_anchors.repeat(batch, 1)[positive]  # [P, 4]

        # Every process joins this reduction, with or without positives.
        ctr_sum_avg = all_reduce(ctr_target.sum()).item() / world
        if reg_pred.shape[0] > 0:
            per_box = giou_loss(
                self.box_coder.decode(reg_pred, pos_anchors), self.box_coder.decode(reg_target, pos_anchors)
            )  # [P]
            # Official: weighted by the centerness targets when their sum is positive.
            reg_sum = (per_box * ctr_target).sum() if bool(ctr_target.sum() > 0) else per_box.sum()
            reg_loss = reg_sum / ctr_sum_avg
            ctr_loss = F.binary_cross_entropy_with_logits(ctr_logit, ctr_target, reduction="sum") / num_pos_avg
        else:
            # No positive here: zero losses still connected to the graph.
            reg_loss = reg_pred.sum()
            ctr_loss = ctr_logit.sum()
        losses = {
            "loss_reg": reg_loss * self.reg_weight,
            "loss_centerness": ctr_loss * self.centerness_weight,
            "loss_dot_product_token": token_loss * self.token_weight,
        }
        if self.distill is not None:
            losses["loss_distill"] = self.distill(logits, inputs.targets, assigned) * self.distill_weight
        return losses
