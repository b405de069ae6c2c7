"""ATSS target assignment for the GLIP head (Zhang et al. 2020, "Bridging the Gap
Between Anchor-based and Anchor-free Detection via Adaptive Training Sample Selection").

Official counterpart: ``ATSSLossComputation.prepare_targets`` and
``compute_centerness_targets`` in ``maskrcnn_benchmark/modeling/rpn/loss.py``.
Dimension letters: N anchors of one image (all levels concatenated), G boxes,
K candidates per box (``sum_l min(topk * A, N_l)``), T tokens.

The official conventions kept here, each one visible in the code below:

- IoU uses inclusive-pixel areas and intersections (``+1``, ``boxlist_iou``).
- Candidates are the ``topk`` anchors per level nearest to the box centre (L2 distance
  between ``(x1 + x2) / 2`` centres), over the whole **padded** grid; anchor visibility
  is ignored, so anchors in the padding take part in the statistics.
- The IoU threshold of a box is ``mean + std`` of its candidates' IoUs, with the
  unbiased (``N - 1``) standard deviation of ``torch.std``.
- A candidate is positive when its IoU reaches the threshold **and** its centre lies
  inside the box by more than 0.01 px on all four sides.
- An anchor positive for several boxes takes the one with the highest IoU; on exact
  ties the lowest box index (``torch.max`` returns the first maximum).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from glip.modeling.heads.grounding.box_coder import BoxCoder
from glip.ops.boxes import box_iou
from glip.structures.targets import GroundingTargets

__all__ = ["ATSSAssigner", "AnchorAssignment", "AssignedTargets", "centerness_targets"]

# Official MODEL.ATSS.TOPK (config default; the yaml's MODEL.DYHEAD.TOPK is not read by the loss).
_DEFAULT_TOPK = 9
# Official `is_in_gts = ... > 0.01`: the anchor centre must be inside the box by this margin (px).
_INSIDE_MARGIN = 0.01


@dataclass
class AnchorAssignment:
    """The ATSS decision for every anchor of one image, and its internals.

    Attributes:
        positive: ``Tensor[N]`` bool, anchors that regress a box.
        matched_gt: ``Tensor[N]`` int64, index of the assigned box, -1 for background.
        matched_iou: ``Tensor[N]`` float, IoU with the assigned box (0 for background).
        regression_targets: ``Tensor[N, 4]``, ``BoxCoder.encode(box, anchor)`` for
            positives, 0 for background (the official code encodes box 0 there, unused).
        centerness_targets: ``Tensor[N]``, FCOS centerness of the anchor centre inside
            the decoded box for positives, 0 for background.
        token_targets: ``Tensor[N, T]`` float 0/1: the assigned box's positive-map row;
            background anchors get the official ``[NoObj]`` row, 1 only at token ``T - 1``.
        candidate_idxs: ``Tensor[K, G]`` int64, anchor indices of each box's candidates,
            level by level, nearest first within a level.
        candidate_ious: ``Tensor[K, G]``, their IoUs.
        iou_mean, iou_std, iou_threshold: ``Tensor[G]`` each; threshold = mean + std.
        candidate_iou_ok: ``Tensor[K, G]`` bool, IoU >= threshold.
        candidate_inside: ``Tensor[K, G]`` bool, centre inside the box by > 0.01 px.
    """

    positive: Tensor
    matched_gt: Tensor
    matched_iou: Tensor
    regression_targets: Tensor
    centerness_targets: Tensor
    token_targets: Tensor
    candidate_idxs: Tensor
    candidate_ious: Tensor
    iou_mean: Tensor
    iou_std: Tensor
    iou_threshold: Tensor
    candidate_iou_ok: Tensor
    candidate_inside: Tensor

    @property
    def candidate_positive(self) -> Tensor:
        """``Tensor[K, G]`` bool: candidates that pass both tests (before the max-IoU rule)."""
        return self.candidate_iou_ok & self.candidate_inside


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


def centerness_targets(regression_targets: Tensor, anchors: Tensor, box_coder: BoxCoder) -> Tensor:
    """FCOS centerness of each anchor centre inside its target box.

    The box is recovered as ``decode(regression_targets)`` (within float rounding of
    the annotated box), as the official ``compute_centerness_targets`` does, and
    ``sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b))`` is measured from the
    anchor centre ``((x1 + x2) / 2, (y1 + y2) / 2)``.

    Args:
        regression_targets (Tensor[P, 4]): encoded boxes of positive anchors.
        anchors (Tensor[P, 4]): the anchors, ``(x1, y1, x2, y2)``.
        box_coder: the coder that produced the targets.

    Returns:
        Tensor[P]: values in (0, 1] for anchor centres strictly inside their boxes.
    """
    boxes = box_coder.decode(regression_targets, anchors)  # [P, 4]
    anchor_cx = (anchors[:, 2] + anchors[:, 0]) / 2
    anchor_cy = (anchors[:, 3] + anchors[:, 1]) / 2
    left_right = torch.stack((anchor_cx - boxes[:, 0], boxes[:, 2] - anchor_cx), dim=1)  # [P, 2]
    top_bottom = torch.stack((anchor_cy - boxes[:, 1], boxes[:, 3] - anchor_cy), dim=1)  # [P, 2]
    horizontal = left_right.min(dim=-1).values / left_right.max(dim=-1).values
    vertical = top_bottom.min(dim=-1).values / top_bottom.max(dim=-1).values
    return torch.sqrt(horizontal * vertical)


class ATSSAssigner:
    """Adaptive training sample selection, exactly as the official GLIP loss.

    Args:
        box_coder: encodes the regression targets (official weights ``(10, 10, 5, 5)``).
        topk: candidates per level and per anchor shape (official ``MODEL.ATSS.TOPK``, 9).
        anchors_per_location: A, anchors per grid cell (1 in every GLIP config); a
            level contributes ``min(topk * A, N_l)`` candidates.
        inside_margin: how far (px) the anchor centre must be inside the box (0.01).
        iou_offset: the ``+1`` of the IoU's inclusive-pixel sides (official 1).

    ``__call__(anchors, targets)``: L tensors ``Tensor[N_l, 4]`` (the padded grid, the
    same for every image of a batch) and one image's :class:`GroundingTargets` ->
    :class:`AnchorAssignment`. Runs without gradients.
    """

    def __init__(
        self,
        box_coder: BoxCoder,
        topk: int = _DEFAULT_TOPK,
        anchors_per_location: int = 1,
        inside_margin: float = _INSIDE_MARGIN,
        iou_offset: float = 1.0,
    ) -> None:
        if topk < 1 or anchors_per_location < 1:
            raise ValueError(f"topk and anchors_per_location must be >= 1, got {topk}, {anchors_per_location}")
        self.box_coder = box_coder
        self.topk = topk
        self.anchors_per_location = anchors_per_location
        self.inside_margin = inside_margin
        self.iou_offset = iou_offset

    @torch.no_grad()
    def __call__(self, anchors: Sequence[Tensor], targets: GroundingTargets) -> AnchorAssignment:
        level_sizes = [int(a.shape[0]) for a in anchors]
        flat_anchors = torch.cat(list(anchors), dim=0).float()  # [N, 4]
        # Boxes are compared in fp32 (the official loss casts its inputs to fp32).
        boxes = targets.boxes.to(flat_anchors)  # [G, 4]
        num_anchors, num_gt = flat_anchors.shape[0], boxes.shape[0]
        num_tokens = targets.num_tokens
        device = flat_anchors.device

        no_object = torch.zeros(num_tokens, device=device)
        no_object[-1] = 1.0  # official [NoObj] target: the last token slot
        if num_gt == 0:
            num_candidates = sum(min(self.topk * self.anchors_per_location, n) for n in level_sizes)
            empty_kg = torch.zeros((num_candidates, 0), device=device)  # [K, 0]
            return AnchorAssignment(
                positive=torch.zeros(num_anchors, dtype=torch.bool, device=device),
                matched_gt=torch.full((num_anchors,), -1, dtype=torch.int64, device=device),
                matched_iou=torch.zeros(num_anchors, device=device),
                regression_targets=torch.zeros((num_anchors, 4), device=device),
                centerness_targets=torch.zeros(num_anchors, device=device),
                token_targets=no_object.expand(num_anchors, -1).clone(),
                candidate_idxs=empty_kg.long(),
                candidate_ious=empty_kg,
                iou_mean=torch.zeros(0, device=device),
                iou_std=torch.zeros(0, device=device),
                iou_threshold=torch.zeros(0, device=device),
                candidate_iou_ok=empty_kg.bool(),
                candidate_inside=empty_kg.bool(),
            )

        ious = box_iou(flat_anchors, boxes, offset=self.iou_offset)  # [N, G]
        anchor_cx = (flat_anchors[:, 2] + flat_anchors[:, 0]) / 2.0  # [N]
        anchor_cy = (flat_anchors[:, 3] + flat_anchors[:, 1]) / 2.0  # [N]
        anchor_points = torch.stack((anchor_cx, anchor_cy), dim=1)  # [N, 2]
        gt_points = torch.stack(((boxes[:, 2] + boxes[:, 0]) / 2.0, (boxes[:, 3] + boxes[:, 1]) / 2.0), dim=1)
        # Explicit sqrt of summed squares, not torch.cdist: the official rounding decides near-ties.
        distances = (anchor_points[:, None, :] - gt_points[None, :, :]).pow(2).sum(-1).sqrt()  # [N, G]

        candidates = []
        start = 0
        for size in level_sizes:
            k = min(self.topk * self.anchors_per_location, size)
            nearest = distances[start : start + size].topk(k, dim=0, largest=False).indices  # [k, G]
            candidates.append(nearest + start)
            start += size
        candidate_idxs = torch.cat(candidates, dim=0)  # [K, G]
        gt_index = torch.arange(num_gt, device=device)
        candidate_ious = ious[candidate_idxs, gt_index]  # [K, G]
        iou_mean = candidate_ious.mean(0)
        iou_std = candidate_ious.std(0)  # unbiased (N - 1), as the official torch.std
        iou_threshold = iou_mean + iou_std
        candidate_iou_ok = candidate_ious >= iou_threshold[None, :]

        cand_cx = anchor_cx[candidate_idxs]  # [K, G]
        cand_cy = anchor_cy[candidate_idxs]  # [K, G]
        sides = torch.stack(
            (cand_cx - boxes[:, 0], cand_cy - boxes[:, 1], boxes[:, 2] - cand_cx, boxes[:, 3] - cand_cy), dim=1
        )  # [K, 4, G]
        candidate_inside = sides.min(dim=1).values > self.inside_margin
        candidate_positive = candidate_iou_ok & candidate_inside  # [K, G]

        # Max-IoU rule over the (anchor, box) pairs that passed; -1 marks "not a positive
        # pair" (IoUs are >= 0), so an anchor with no pair stays background.
        pair_ok = torch.zeros((num_anchors, num_gt), dtype=torch.bool, device=device)
        pair_ok[candidate_idxs[candidate_positive], gt_index.expand_as(candidate_idxs)[candidate_positive]] = True
        best_iou, best_gt = torch.where(pair_ok, ious, torch.full_like(ious, -1.0)).max(dim=1)  # [N] each
        positive = best_iou >= 0
        matched_gt = torch.where(positive, best_gt, torch.full_like(best_gt, -1))
        matched_iou = torch.where(positive, best_iou, torch.zeros_like(best_iou))

        regression_targets = torch.zeros((num_anchors, 4), device=device)
        centerness = torch.zeros(num_anchors, device=device)
        pos_anchors = flat_anchors[positive]  # [P, 4]
        pos_targets = self.box_coder.encode(boxes[best_gt[positive]], pos_anchors)  # [P, 4]
        regression_targets[positive] = pos_targets
        centerness[positive] = centerness_targets(pos_targets, pos_anchors, self.box_coder)

        token_targets = targets.positive_map.to(device=device, dtype=torch.float32)[best_gt]  # [N, T]
        token_targets[~positive] = no_object

        return AnchorAssignment(
            positive=positive,
            matched_gt=matched_gt,
            matched_iou=matched_iou,
            regression_targets=regression_targets,
            centerness_targets=centerness,
            token_targets=token_targets,
            candidate_idxs=candidate_idxs,
            candidate_ious=candidate_ious,
            iou_mean=iou_mean,
            iou_std=iou_std,
            iou_threshold=iou_threshold,
            candidate_iou_ok=candidate_iou_ok,
            candidate_inside=candidate_inside,
        )
