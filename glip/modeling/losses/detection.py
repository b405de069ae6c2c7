"""Loss functions shared by the heads (focal, GIoU, MDETR contrastive alignment).

The official GLIP objective (``ATSSLossComputation.__call__``, ``maskrcnn_benchmark/
modeling/rpn/loss.py``) is computed by the heads that own its terms:
:class:`glip.modeling.heads.grounding.loss.GroundingLoss` (box regression, centerness,
dot-product token alignment) and the MDETR branches of :mod:`glip.modeling.heads.mdetr`.
The ATSS assignment they share is made once per batch by
:class:`glip.modeling.criterion.Criterion`
(:class:`glip.modeling.heads.grounding.assigner.AssignedTargets`).

Dimension letters: B images, N anchors per image (levels concatenated), T tokens,
P positive anchors of the batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "contrastive_align_loss",
    "giou_loss",
    "sigmoid_focal_loss",
]

# Official GIoULoss: added to the enclosing and union areas against division by zero.
_GIOU_EPS = 1e-7


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
