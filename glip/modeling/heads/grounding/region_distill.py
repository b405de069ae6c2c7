"""RegionCLIP-style region-concept distillation for the grounding head (optional, off by default).

RegionCLIP (Zhong et al. 2022, "RegionCLIP: Region-based Language-Image Pretraining",
Sec. 3.3) trains its student with, besides the contrastive loss on pseudo-labels, a
knowledge-distillation term: for each teacher region, the KL divergence between the
teacher's distribution over the concept pool (CLIP's region-concept scores) and the
student's. Here the teacher's regions are the pseudo-labelled boxes that ``glip
pseudo-label --teacher clip`` wrote with their ``concept_scores`` (CLIP's scaled cosine
similarities of the box against each noun phrase of its caption), and the student is the
grounding head's region-word alignment.

Dimension letters: B images, N anchors per image (levels concatenated), T tokens,
G boxes of an image, K concepts of an image (its caption's noun phrases), A anchors
distilled for an image.

The computation, per image with teacher scores (:attr:`GroundingTargets.concept_scores`):

1. Regions: the ATSS positives (the anchors that regress a box) matched to a box; each
   is distilled towards the scores of its matched box (anchor-level, as the grounding
   loss itself; no ROI pooling).
2. Student phrase logits: the official phrase score is the mean over the phrase's tokens
   of the token probabilities ``sigmoid(logit)`` (``score_agg: MEAN`` in the
   post-processor); its logit ``log(mean p) - log(mean (1 - p))`` is computed stably
   with ``logsumexp`` of log-sigmoids (:func:`phrase_logits`; for a one-token phrase it
   is the token's logit exactly).
3. Concepts cut off by truncation (no token in the prompt) are left out of both
   distributions; an image without any concept left, or without positives, adds nothing.
4. ``T^2 x KL(softmax(teacher / T) || softmax(student / T))`` summed over concepts and
   averaged over the batch's distilled anchors (Hinton et al.'s ``T^2`` keeps the
   gradient scale independent of the temperature ``T``). With several processes the
   average is per process (DDP averages the gradients).

A batch without teacher scores (detection data in a mixed run) gives a zero loss still
connected to the graph.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from glip.modeling.heads.grounding.assigner import AssignedTargets
from glip.structures.targets import GroundingTargets

__all__ = ["RegionConceptDistillation", "phrase_logits"]


def phrase_logits(token_logits: Tensor, concept_map: Tensor) -> Tensor:
    """The logit of each concept's official phrase score (mean token probability).

    Args:
        token_logits (Tensor[A, T]): region-word alignment logits of A regions.
        concept_map (Tensor[K, T]): bool, the tokens of each concept; every row must hold
            at least one token.

    Returns:
        Tensor[A, K]: ``log(mean_t sigmoid(x_t)) - log(mean_t sigmoid(-x_t))`` over each
        concept's tokens ``t`` (the token count cancels).
    """
    if concept_map.ndim != 2 or token_logits.ndim != 2 or concept_map.shape[1] != token_logits.shape[1]:
        raise ValueError(
            f"token logits {tuple(token_logits.shape)} and concept map {tuple(concept_map.shape)} "
            "must be [A, T] and [K, T]"
        )
    outside = ~concept_map.bool()[None, :, :]  # [1, K, T]
    log_p = F.logsigmoid(token_logits)[:, None, :].masked_fill(outside, float("-inf"))  # [A, K, T]
    log_q = F.logsigmoid(-token_logits)[:, None, :].masked_fill(outside, float("-inf"))  # [A, K, T]
    return log_p.logsumexp(dim=-1) - log_q.logsumexp(dim=-1)  # [A, K]


class RegionConceptDistillation:
    """KL divergence from the teacher's region-concept distribution to the student's (see
    the module docstring).

    Args:
        temperature: ``T``, dividing both the teacher's and the student's logits before
            the softmax (``model.heads.grounding.distill_temperature``).

    ``__call__(logits, targets, assigned)``: the alignment logits ``Tensor[B, N, T]``, the
    B :class:`GroundingTargets` (those with ``concept_scores`` are distilled) and the ATSS
    assignment -> a 0-d float32 loss (unweighted).
    """

    def __init__(self, temperature: float = 1.0) -> None:
        if not temperature > 0:
            raise ValueError(f"the distillation temperature must be positive, got {temperature}")
        self.temperature = float(temperature)

    def __call__(self, logits: Tensor, targets: Sequence[GroundingTargets], assigned: AssignedTargets) -> Tensor:
        if len(targets) != logits.shape[0] or assigned.positive.shape != logits.shape[:2]:
            raise ValueError(
                f"logits {tuple(logits.shape)}, {len(targets)} targets and the assignment "
                f"{tuple(assigned.positive.shape)} disagree (expected [B, N, T], B and [B, N])"
            )
        t = self.temperature
        total = logits.sum() * 0.0  # connected to the graph when nothing is distilled
        count = 0
        for b, target in enumerate(targets):
            if target.concept_scores is None or target.concept_map is None or len(target) == 0:
                continue
            valid = target.concept_map.any(dim=1)  # [K]
            matched = assigned.per_image[b].matched_gt.to(logits.device)  # [N]
            anchors = torch.nonzero(assigned.positive[b] & (matched >= 0), as_tuple=True)[0]  # [A]
            if anchors.numel() == 0 or not bool(valid.any()):
                continue
            student = phrase_logits(logits[b, anchors], target.concept_map[valid].to(logits.device))  # [A, K]
            teacher = target.concept_scores.to(logits)[matched[anchors]][:, valid.to(logits.device)]  # [A, K]
            kl = F.kl_div(
                F.log_softmax(student / t, dim=-1),
                F.log_softmax(teacher / t, dim=-1),
                reduction="none",
                log_target=True,
            ).sum(dim=-1)  # [A]
            total = total + kl.sum()
            count += int(anchors.numel())
        return total / max(count, 1) * (t * t)
