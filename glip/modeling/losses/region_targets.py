"""Rows and targets of the inter-image region-word contrastive loss (GLIPv2's L_inter).

Official counterpart: the no-grad part of ``ATSSLossComputation.__call__`` under
``USE_SHALLOW_CONTRASTIVE_LOSS`` (``maskrcnn_benchmark/modeling/rpn/loss.py``) and the
``positive_map_for_od_labels`` / ``original_od_label`` dataset fields. Everything here
runs without gradients and without a Python loop over anchors or tokens.

Dimension letters: B images of this process, W processes, N anchors per image (levels
concatenated), A rows (regions) per image, G boxes per image (padded), T tokens,
I prompts of the global batch (W x B), R rows of the global batch (W x B x A).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:  # annotations only: the assignment's producers are not imported at run time
    from glip.modeling.heads.grounding.assigner import AssignedTargets
    from glip.structures.targets import GroundingTargets

__all__ = ["RegionSelection", "RegionWordTargets", "region_candidates", "region_word_targets", "select_regions"]

# Key given to anchors outside a candidate set: above every U[0, 1) draw.
_NOT_A_CANDIDATE = 2.0


@dataclass
class RegionWordTargets:
    """What L_inter needs from a batch's annotations and its ATSS assignment.

    Attributes:
        positive: ``Tensor[B, N]`` bool, the ATSS positives (``AssignedTargets.positive``).
        matched_gt: ``Tensor[B, N]`` int64, the box each anchor is assigned to, -1 for
            background (``AnchorAssignment.matched_gt`` of each image, stacked).
        box_tokens: ``Tensor[B, G, T]`` bool, the tokens each box grounds
            (``GroundingTargets.positive_map``), padded with False rows to G boxes.
        box_class: ``Tensor[B, G]`` int64, each box's category id in ONE GLOBAL vocabulary
            (:func:`glip.text.spans.build_category_vocabulary`), -1 for boxes of data
            without categories (grounding, captions) and for padding.
        token_class: ``Tensor[B, T]`` int64, the category id of the class name each token
            belongs to (:func:`glip.text.spans.token_class_ids`), -1 elsewhere.
        text_mask: ``Tensor[B, T]``, the prompt's attention mask (non-zero = attended).
    """

    positive: Tensor
    matched_gt: Tensor
    box_tokens: Tensor
    box_class: Tensor
    token_class: Tensor
    text_mask: Tensor

    @classmethod
    def build(
        cls,
        assigned: AssignedTargets,
        targets: Sequence[GroundingTargets],
        text_mask: Tensor,
        box_class: Sequence[Tensor | None] | None = None,
        token_class: Tensor | None = None,
    ) -> RegionWordTargets:
        """From the ATSS assignment and the B images' targets.

        Args:
            assigned: reads ``positive`` and each ``per_image[b].matched_gt``.
            targets: B :class:`GroundingTargets` (their ``positive_map``).
            text_mask: ``Tensor[B, T]``.
            box_class: per image ``Tensor[G_b]`` of global category ids, or None for
                an image without categories; None = no image has categories.
            token_class: ``Tensor[B, T]``; None = no token is a class name.
        """
        batch, width = text_mask.shape
        device = assigned.positive.device
        num_boxes = max([len(t) for t in targets] + [1])
        box_tokens = torch.zeros((batch, num_boxes, width), dtype=torch.bool, device=device)
        classes = torch.full((batch, num_boxes), -1, dtype=torch.int64, device=device)
        for b, target in enumerate(targets):  # per image (boxes are ragged), not per anchor
            box_tokens[b, : len(target)] = target.positive_map.to(device)
            if box_class is not None and box_class[b] is not None:
                classes[b, : len(target)] = box_class[b].to(device)
        if token_class is None:
            token_class = torch.full((batch, width), -1, dtype=torch.int64, device=device)
        return cls(
            positive=assigned.positive,
            matched_gt=torch.stack([a.matched_gt for a in assigned.per_image]),  # [B, N]
            box_tokens=box_tokens,
            box_class=classes,
            token_class=token_class.to(device),
            text_mask=text_mask,
        )


@dataclass
class RegionSelection:
    """The A rows each image contributes: kept positives first (ascending anchor index),
    then negative pads (ascending), then zero pads.

    Attributes:
        anchor_index: ``Tensor[B, A]`` int64, the anchor of each row (0 for zero pads).
        is_positive: ``Tensor[B, A]`` bool, the row is an ATSS positive (it has targets).
        valid: ``Tensor[B, A]`` bool, False for zero pads (masked out of every softmax).
    """

    anchor_index: Tensor
    is_positive: Tensor
    valid: Tensor

    @property
    def num_rows(self) -> int:
        return int(self.anchor_index.shape[1])


def region_candidates(positive: Tensor, matched_gt: Tensor, drop_first_gt_match: bool = False) -> tuple[Tensor, Tensor]:
    """Which anchors may be rows as positives, and which as negative pads.

    The official code lists positives with ``nonzero(anchors_to_gt_indexs)``: it tests
    the matched box INDEX, so anchors matched to box 0 are dropped (an image with one
    box contributes no positive row) although they still count in the normaliser and
    stay in the negative-pad pool. ``drop_first_gt_match=True`` reproduces that (for
    parity with the official numbers); the default keeps every ATSS positive.

    Args:
        positive (Tensor[B, N]): bool ATSS positives.
        matched_gt (Tensor[B, N]): assigned box index, -1 for background.

    Returns:
        ``(rows, pool)``, both ``Tensor[B, N]`` bool: positive-row candidates, and the
        anchors negative pads are drawn from (every anchor not in ``rows``; with the
        official behaviour that includes the box-0 positives).
    """
    rows = positive & (matched_gt != 0) if drop_first_gt_match else positive.clone()
    return rows, ~rows


@torch.no_grad()
def select_regions(
    rows: Tensor, pool: Tensor, keys: Tensor, num_rows: int, max_positive: int, zero_pad: bool = False
) -> RegionSelection:
    """Picks each image's rows: at most ``max_positive`` random positives, padded to ``num_rows``.

    Positives: the ``max_positive`` candidates with the smallest ``keys`` (a uniform random
    subset, as the official ``random.sample``), sorted by anchor index. Pads: with
    ``zero_pad`` (official ``USE_SHALLOW_ZERO_PADS``) zero rows masked out of the loss;
    otherwise the pool anchors with the smallest keys (random negatives, official
    default; their target rows are all zero). Rows the pool cannot fill become zero pads.

    Args:
        rows, pool (Tensor[B, N]): from :func:`region_candidates`.
        keys (Tensor[B, N]): U[0, 1) draws, e.g. one generator per image.
        num_rows: A, at least every image's kept positive count (the global maximum
            over processes, so every process has the same row count).
        max_positive: official ``SHALLOW_MAX_POSITIVE_ANCHORS`` (100).
    """
    batch, num_anchors = rows.shape
    device = rows.device
    sentinel = num_anchors  # index past every anchor; marks an empty slot

    def smallest(candidates: Tensor, count: int) -> tuple[Tensor, Tensor]:
        """The ``count`` candidates of smallest key per image, ``[B, count]`` (+ ok mask)."""
        ranked = keys.masked_fill(~candidates, _NOT_A_CANDIDATE).argsort(dim=1, stable=True)  # [B, N]
        ranked = ranked[:, : min(count, num_anchors)]
        pad = count - ranked.shape[1]
        ranked = torch.cat([ranked, ranked.new_full((batch, pad), 0)], dim=1) if pad > 0 else ranked
        ok = candidates.gather(1, ranked)
        if pad > 0:
            ok[:, -pad:] = False
        return ranked, ok

    kept, kept_ok = smallest(rows, max_positive)  # [B, M]
    num_pos = kept_ok.sum(dim=1)  # [B]
    if batch and int(num_pos.max()) > num_rows:
        raise ValueError(f"num_rows {num_rows} is below an image's kept positive count {int(num_pos.max())}")
    kept = torch.where(kept_ok, kept, torch.full_like(kept, sentinel)).sort(dim=1).values  # [B, M] ascending
    slot = torch.arange(num_rows, device=device)  # [A]
    if zero_pad:
        neg = torch.full((batch, num_rows), sentinel, dtype=torch.int64, device=device)
    else:
        neg, neg_ok = smallest(pool, num_rows)  # [B, A]
        take = neg_ok & (slot[None, :] < (num_rows - num_pos)[:, None])
        neg = torch.where(take, neg, torch.full_like(neg, sentinel)).sort(dim=1).values  # [B, A]
    is_pos_slot = slot[None, :] < num_pos[:, None]  # [B, A]
    pos_col = slot.clamp(max=max(kept.shape[1] - 1, 0)).expand(batch, -1)  # [B, A]
    neg_col = (slot[None, :] - num_pos[:, None]).clamp(min=0)  # [B, A]
    from_pos = kept.gather(1, pos_col) if kept.shape[1] else torch.full_like(neg, sentinel)
    index = torch.where(is_pos_slot, from_pos, neg.gather(1, neg_col))  # [B, A]
    valid = index < sentinel
    return RegionSelection(
        anchor_index=torch.where(valid, index, torch.zeros_like(index)), is_positive=is_pos_slot, valid=valid
    )


def region_word_targets(
    region_class: Tensor, region_image: Tensor, region_tokens: Tensor, token_class: Tensor, token_image: Tensor
) -> Tensor:
    """The target matrix of rows against the tokens of a set of prompts, ``Tensor[R, I * T]`` bool.

    Own image (``region_image[r] == token_image[i]``): the exact region-to-token map
    ``region_tokens[r]``. Any other image: label propagation, a region of category c is
    positive for every token of category c in that image's prompt (class ids -1 never
    match, so data without categories gets only its own block). The official code
    compares dataset-LOCAL label ids here (``original_od_label`` against
    ``positive_map_for_od_labels``), which pairs unrelated classes when detection datasets
    are mixed (id 3 of one dataset is not id 3 of another); the ids given here must come
    from one global class-name vocabulary.

    Args:
        region_class (Tensor[R]): category id of each row's box, -1 for none / pads.
        region_image (Tensor[R]): global image index of each row.
        region_tokens (Tensor[R, T]): bool, the row's box's tokens in its own prompt.
        token_class (Tensor[I, T]): category id of each token of each prompt, -1 for none.
        token_image (Tensor[I]): global image index of each prompt.
    """
    num_rows, width = region_tokens.shape
    same = region_image[:, None] == token_image[None, :]  # [R, I]
    labelled = (region_class >= 0)[:, None, None]  # [R, 1, 1]
    propagated = labelled & (region_class[:, None, None] == token_class[None, :, :])  # [R, I, T]
    own = region_tokens[:, None, :].expand(-1, token_image.shape[0], -1)  # [R, I, T]
    return torch.where(same[:, :, None], own, propagated).reshape(num_rows, token_image.shape[0] * width)  # [R, I*T]
