"""The GLIP training objective: ATSS box regression, centerness and region-word alignment.

Official counterpart: ``ATSSLossComputation.__call__`` (``maskrcnn_benchmark/modeling/rpn/loss.py``)
with the loss weights of ``VLDyHeadModule._forward_train`` (``rpn/vldyhead.py``) and the
focal loss of ``layers/sigmoid_focal_loss.py::token_sigmoid_binary_focal_loss``, for the
switches every released GLIP config uses (``USE_DOT_PRODUCT_TOKEN_LOSS`` on, the
classification, token and contrastive losses off). The MDETR-style ``loss_token``
(official ``USE_TOKEN_LOSS``) and ``loss_contrastive_align`` (``USE_CONTRASTIVE_ALIGN_LOSS``)
are optional extra terms, off by default.

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

The official loss dict also holds ``loss_cls = 0.0 * focal(cls_logits)``; it adds
nothing to the total nor to any gradient (``cls_logits`` is frozen), and our head has
no ``cls_logits`` output, so it is left out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from glip.modeling.assigner import AnchorAssignment, ATSSAssigner
from glip.modeling.box_coder import BoxCoder
from glip.structures.outputs import HeadOutputs
from glip.structures.targets import GroundingTargets

__all__ = ["AssignedTargets", "GLIPLoss", "contrastive_align_loss", "giou_loss", "sigmoid_focal_loss"]

# Official GIoULoss: added to the enclosing and union areas against division by zero.
_GIOU_EPS = 1e-7


@dataclass
class AssignedTargets:
    """Per-anchor targets of a batch (the per-image assignments stacked).

    Attributes:
        positive: ``Tensor[B, N]`` bool.
        regression: ``Tensor[B, N, 4]`` encoded boxes (0 for background).
        centerness: ``Tensor[B, N]`` (0 for background).
        tokens: ``Tensor[B, N, T]`` float 0/1 token targets (``[NoObj]`` row for background).
        per_image: the B :class:`AnchorAssignment` with the ATSS internals.
    """

    positive: Tensor
    regression: Tensor
    centerness: Tensor
    tokens: Tensor
    per_image: list[AnchorAssignment]

    @property
    def num_positives(self) -> int:
        return int(self.positive.sum())


def sigmoid_focal_loss(logits: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """Element-wise sigmoid focal loss (Lin et al. 2017), no reduction.

    ``alpha_t * BCE(x, t) * (1 - p_t) ** gamma`` with ``p = sigmoid(x)``,
    ``p_t = p t + (1 - p)(1 - t)`` and ``alpha_t = alpha t + (1 - alpha)(1 - t)``;
    a negative ``alpha`` disables the alpha weighting. The operations follow the
    official ``token_sigmoid_binary_focal_loss`` so float32 results are bitwise equal.

    Args:
        logits (Tensor[...]): raw scores.
        targets (Tensor[...]): same shape, values in [0, 1].

    Returns:
        Tensor[...]: the loss of each element.
    """
    prob = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = ce * ((1 - p_t) ** gamma)
    if alpha >= 0:
        alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
        loss = alpha_t * loss
    return loss


def contrastive_align_loss(logits: Tensor, positive_map: Tensor) -> Tensor:
    """MDETR contrastive alignment loss, summed (official ``ContrastiveAlignLoss``).

    For every anchor with at least one positive token,
    ``-mean_{t positive} logits[a, t] + logsumexp_t logits[a, t]`` (the softmax over
    all T tokens, padding included, as officially); for every token with at least one
    positive anchor, the same over anchors (the softmax over all N anchors of the
    image). The result is half the sum of both. The positive count has ``1e-6`` added,
    as officially.

    Args:
        logits (Tensor[B, N, T]): anchor-token similarities (already divided by the temperature).
        positive_map (Tensor[B, N, T]): bool.

    Returns:
        Tensor[]: the (unnormalised) loss.
    """
    positive_logits = -logits.masked_fill(~positive_map, 0)
    terms = []
    for dim in (2, 1):  # anchor -> tokens, then token -> anchors
        has_pos = positive_map.any(dim)
        count = positive_map.sum(dim) + 1e-6
        per_item = positive_logits.sum(dim) / count + logits.logsumexp(dim)
        terms.append(per_item.masked_fill(~has_pos, 0).sum())
    return (terms[0] + terms[1]) / 2


def giou_loss(pred_boxes: Tensor, target_boxes: Tensor) -> Tensor:
    """``1 - GIoU`` of paired boxes, the variant of the official ``ATSSLossComputation.GIoULoss``.

    Its conventions: a predicted box with ``x2 < x1`` (or ``y2 < y1``) is flattened to
    zero width (height); areas are continuous, **without** the ``+1`` the IoU of the
    assignment uses; the intersection counts only where both overlaps are positive;
    ``1e-7`` is added to the enclosing and union areas.

    Args:
        pred_boxes (Tensor[P, 4]): ``(x1, y1, x2, y2)``.
        target_boxes (Tensor[P, 4]): ``(x1, y1, x2, y2)``.

    Returns:
        Tensor[P]: the loss of each pair, in [0, 2).
    """
    px1, py1, px2, py2 = pred_boxes.unbind(dim=1)
    px2 = torch.max(px1, px2)
    py2 = torch.max(py1, py2)
    pred_area = (px2 - px1) * (py2 - py1)
    tx1, ty1, tx2, ty2 = target_boxes.unbind(dim=1)
    target_area = (tx2 - tx1) * (ty2 - ty1)

    ix1, iy1 = torch.max(px1, tx1), torch.max(py1, ty1)
    ix2, iy2 = torch.min(px2, tx2), torch.min(py2, ty2)
    overlaps = (iy2 > iy1) & (ix2 > ix1)
    inter = torch.where(overlaps, (ix2 - ix1) * (iy2 - iy1), torch.zeros_like(pred_area))

    ex1, ey1 = torch.min(px1, tx1), torch.min(py1, ty1)
    ex2, ey2 = torch.max(px2, tx2), torch.max(py2, ty2)
    enclosing = (ex2 - ex1) * (ey2 - ey1) + _GIOU_EPS
    union = pred_area + target_area - inter + _GIOU_EPS
    giou = inter / union - (enclosing - union) / enclosing
    return 1 - giou


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _all_reduce_sum(value: Tensor) -> Tensor:
    """Sum over processes (identity with one process); every process must call it."""
    if _world_size() > 1:
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value


class GLIPLoss(nn.Module):
    """Assigns targets with ATSS and computes the official GLIP losses.

    Args:
        assigner: the ATSS assigner; its box coder also decodes boxes for the GIoU loss.
        reg_weight: multiplies the GIoU loss (official ``MODEL.ATSS.REG_LOSS_WEIGHT``, 2.0).
        centerness_weight: multiplies the centerness loss (official: fixed 1.0).
        token_weight: multiplies the dot-product token loss (official
            ``MODEL.DYHEAD.FUSE_CONFIG.DOT_PRODUCT_TOKEN_LOSS_WEIGHT``, 1.0).
        token_alpha, token_gamma: focal-loss parameters (official
            ``FUSE_CONFIG.TOKEN_ALPHA`` 0.25 and ``TOKEN_GAMMA`` 2.0).
        use_token_loss: official ``FUSE_CONFIG.USE_TOKEN_LOSS``: adds ``loss_token``, the
            same focal loss (same alpha, gamma, targets, text mask and normaliser) on
            the head's ``token_logits`` (its first T columns), times ``token_loss_weight``.
        token_loss_weight: official ``FUSE_CONFIG.TOKEN_LOSS_WEIGHT`` (1.0).
        use_contrastive_align_loss: official ``FUSE_CONFIG.USE_CONTRASTIVE_ALIGN_LOSS``:
            adds ``loss_contrastive_align`` (see :func:`contrastive_align_loss`) on the
            head's ``contrastive_logits`` against the positive anchors' token maps,
            divided by ``max(num_positives / world_size, 1)``, times
            ``contrastive_align_loss_weight``.
        contrastive_align_loss_weight: official ``FUSE_CONFIG.CONTRASTIVE_ALIGN_LOSS_WEIGHT`` (1.0).

    ``forward(head, anchors, text_mask, targets)`` -> ``{"loss_reg", "loss_centerness",
    "loss_dot_product_token"}`` (plus ``"loss_token"`` / ``"loss_contrastive_align"``
    when switched on), each a 0-d float32 tensor; the training loop sums them.
    """

    def __init__(
        self,
        assigner: ATSSAssigner,
        reg_weight: float = 2.0,
        centerness_weight: float = 1.0,
        token_weight: float = 1.0,
        token_alpha: float = 0.25,
        token_gamma: float = 2.0,
        use_token_loss: bool = False,
        use_contrastive_align_loss: bool = False,
        token_loss_weight: float = 1.0,
        contrastive_align_loss_weight: float = 1.0,
    ) -> None:
        super().__init__()
        self.use_token_loss = use_token_loss
        self.use_contrastive_align_loss = use_contrastive_align_loss
        self.token_loss_weight = token_loss_weight
        self.contrastive_align_loss_weight = contrastive_align_loss_weight
        self.assigner = assigner
        self.reg_weight = reg_weight
        self.centerness_weight = centerness_weight
        self.token_weight = token_weight
        self.token_alpha = token_alpha
        self.token_gamma = token_gamma

    @property
    def box_coder(self) -> BoxCoder:
        return self.assigner.box_coder

    @torch.no_grad()
    def assign(self, anchors: Sequence[Tensor], targets: Sequence[GroundingTargets]) -> AssignedTargets:
        """ATSS targets for every image.

        Args:
            anchors: L tensors ``Tensor[N_l, 4]``, the padded-grid anchors shared by the batch.
            targets: B :class:`GroundingTargets`, all with the same token width T.
        """
        per_image = [self.assigner(anchors, t) for t in targets]
        return AssignedTargets(
            positive=torch.stack([a.positive for a in per_image]),  # [B, N]
            regression=torch.stack([a.regression_targets for a in per_image]),  # [B, N, 4]
            centerness=torch.stack([a.centerness_targets for a in per_image]),  # [B, N]
            tokens=torch.stack([a.token_targets for a in per_image]),  # [B, N, T]
            per_image=per_image,
        )

    def forward(
        self,
        head: HeadOutputs,
        anchors: Sequence[Tensor],
        text_mask: Tensor,
        targets: Sequence[GroundingTargets],
    ) -> dict[str, Tensor]:
        """The weighted losses of a batch.

        Args:
            head: the head's outputs (``box_regression`` L x ``[B, 4, H_l, W_l]``,
                ``centerness`` L x ``[B, 1, H_l, W_l]``, ``dot_product_logits``
                L x ``[B, H_l * W_l, T]``).
            anchors: L tensors ``Tensor[H_l * W_l, 4]`` (``GLIPOutput.anchors``).
            text_mask: ``Tensor[B, T]``, the prompt's attention mask (non-zero = attended).
            targets: B :class:`GroundingTargets`, boxes in the network-input frame.
        """
        if len(targets) != head.box_regression[0].shape[0]:
            raise ValueError(f"got {len(targets)} targets for a batch of {head.box_regression[0].shape[0]} images")
        # The official loss runs in fp32 even under mixed precision (custom_fwd(cast_inputs=float32)):
        # the focal terms, the IoU statistics and the GIoU areas lose too much in half precision.
        with torch.autocast(device_type=text_mask.device.type, enabled=False):
            return self.compute(head, anchors, text_mask, self.assign(anchors, targets))

    def compute(
        self, head: HeadOutputs, anchors: Sequence[Tensor], text_mask: Tensor, assigned: AssignedTargets
    ) -> dict[str, Tensor]:
        """The weighted losses given already assigned targets (arguments as :meth:`forward`)."""
        with torch.autocast(device_type=text_mask.device.type, enabled=False):  # fp32, see forward
            return self._compute(head, anchors, text_mask, assigned)

    def _compute(
        self, head: HeadOutputs, anchors: Sequence[Tensor], text_mask: Tensor, assigned: AssignedTargets
    ) -> dict[str, Tensor]:
        batch = head.box_regression[0].shape[0]
        box_regression = torch.cat(
            [r.float().permute(0, 2, 3, 1).reshape(batch, -1, 4) for r in head.box_regression], dim=1
        )  # [B, N, 4]
        centerness = torch.cat(
            [c.float().permute(0, 2, 3, 1).reshape(batch, -1) for c in head.centerness], dim=1
        )  # [B, N]
        logits = torch.cat([x.float() for x in head.dot_product_logits], dim=1)  # [B, N, T]
        if logits.shape != assigned.tokens.shape or text_mask.shape != (batch, logits.shape[-1]):
            raise ValueError(
                f"dot-product logits {tuple(logits.shape)}, token targets {tuple(assigned.tokens.shape)} and "
                f"text mask {tuple(text_mask.shape)} disagree (expected [B, N, T], [B, N, T] and [B, T])"
            )

        world = float(_world_size())
        positive = assigned.positive.reshape(-1)  # [B * N]
        num_pos_local = positive.new_tensor([int(positive.sum())], dtype=torch.int64)
        total_pos = int(_all_reduce_sum(num_pos_local).item())
        # Python floats, as the official normalisers (constants for autograd).
        num_pos_avg = max(total_pos / world, 1.0)

        # Token loss: every attended token of every anchor; padding is dropped.
        attended = (text_mask > 0)[:, None, :].expand_as(logits)  # [B, N, T]
        token_loss = (
            sigmoid_focal_loss(
                torch.masked_select(logits, attended),
                torch.masked_select(assigned.tokens, attended),
                self.token_alpha,
                self.token_gamma,
            ).sum()
            / num_pos_avg
        )

        reg_pred = box_regression.reshape(-1, 4)[positive]  # [P, 4]
        reg_target = assigned.regression.reshape(-1, 4)[positive]  # [P, 4]
        ctr_logit = centerness.reshape(-1)[positive]  # [P]
        ctr_target = assigned.centerness.reshape(-1)[positive]  # [P]
        flat_anchors = torch.cat(list(anchors), dim=0).to(reg_pred)  # [N, 4]
        pos_anchors = flat_anchors.repeat(batch, 1)[positive]  # [P, 4]

        # Every process joins this reduction, with or without positives.
        ctr_sum_avg = _all_reduce_sum(ctr_target.sum()).item() / world
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
        if self.use_token_loss:
            if head.token_logits is None:
                raise ValueError("use_token_loss needs a head built with use_token_loss=True (no token_logits)")
            soft = torch.cat([x.float() for x in head.token_logits], dim=1)  # [B, N, T_max]
            if soft.shape[-1] < logits.shape[-1] or soft.shape[:2] != logits.shape[:2]:
                raise ValueError(
                    f"token logits {tuple(soft.shape)} cannot cover the token targets {tuple(logits.shape)}"
                )
            soft = soft[..., : logits.shape[-1]]  # official: T_max == T (prompts padded to MAX_QUERY_LEN)
            soft_loss = (
                sigmoid_focal_loss(
                    torch.masked_select(soft, attended),
                    torch.masked_select(assigned.tokens, attended),
                    self.token_alpha,
                    self.token_gamma,
                ).sum()
                / num_pos_avg
            )
            losses["loss_token"] = soft_loss * self.token_loss_weight
        if self.use_contrastive_align_loss:
            if head.contrastive_logits is None:
                raise ValueError(
                    "use_contrastive_align_loss needs a head built with use_contrastive_align=True "
                    "(no contrastive_logits)"
                )
            align = torch.cat([x.float() for x in head.contrastive_logits], dim=1)  # [B, N, T]
            if align.shape != logits.shape:
                raise ValueError(f"contrastive logits {tuple(align.shape)} != token targets {tuple(logits.shape)}")
            # Official map: the matched box's tokens for positive anchors, nothing for background.
            positive_map = (assigned.tokens > 0) & assigned.positive[:, :, None]  # [B, N, T]
            losses["loss_contrastive_align"] = (
                contrastive_align_loss(align, positive_map) / num_pos_avg * self.contrastive_align_loss_weight
            )
        return losses
