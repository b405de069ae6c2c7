"""Training targets: per image, boxes and the phrase tokens each box grounds; per batch,
what GLIPv2's pre-training losses (inter-image contrastive, MLM) need beyond them."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["GroundingTargets", "PretrainingTargets"]


@dataclass
class GroundingTargets:
    """The annotated boxes of one image and, for each box, the prompt tokens it grounds.

    Attributes:
        boxes: ``Tensor[G, 4]`` float32, ``(x1, y1, x2, y2)`` in the pixels of the
            resized (network-input) image, inclusive-pixel corners as the official
            datasets produce them (``x2 = x + w - 1``). ``G`` may be 0.
        positive_map: ``Tensor[G, T]`` bool, ``positive_map[g, t]`` is True when token
            ``t`` of the padded prompt belongs to box ``g``'s phrase. ``T`` must equal
            the prompt length the model ran with (official ``MAX_QUERY_LEN``, 256).
            A non-bool map is binarised (``!= 0``), as the official ``BatchCollator``
            does to the dataset's row-normalised map before the loss sees it. An
            all-False row is allowed (a phrase cut off by truncation): the box still
            trains regression and centerness.
        labels: ``Tensor[G]`` int64, 1-based phrase index of each box, or None. The
            loss does not need it. The official loss turns any box whose label is 0
            into background; such labels are rejected here instead.
        masks: ``Tensor[G, h, w]`` bool instance masks in the same (resized, unpadded)
            frame as ``boxes``, or None (no masks: the mask head skips the image).
        has_mask: ``Tensor[G]`` bool, False for a box whose annotation has no mask (its
            row of ``masks`` is empty and the mask loss skips it); None: every box of
            ``masks`` has one.
        answer_scores: ``Tensor[A]`` float32, a VQA sample's soft score ``min(1, n / 3)``
            of each answer of the model's vocabulary (:mod:`glip.text.vqa`); None for an
            image without a question (the VQA head's loss skips it).
        concept_map: ``Tensor[K, T]`` bool, the prompt tokens of each of the K concepts a
            teacher scored the boxes against (a pseudo-labelled caption's noun phrases);
            an all-False row is a concept cut off by truncation. None: no teacher scores.
        concept_scores: ``Tensor[G, K]`` float32, the teacher's logits of each box over
            the K concepts (RegionCLIP's region-concept scores; the distillation loss of
            :mod:`glip.modeling.heads.grounding.region_distill` reads them). Set together with
            ``concept_map``.
    """

    boxes: Tensor
    positive_map: Tensor
    labels: Tensor | None = None
    masks: Tensor | None = None
    has_mask: Tensor | None = None
    answer_scores: Tensor | None = None
    concept_map: Tensor | None = None
    concept_scores: Tensor | None = None

    def __post_init__(self) -> None:
        if self.boxes.ndim != 2 or self.boxes.shape[-1] != 4:
            raise ValueError(f"GroundingTargets.boxes must be [G, 4], got {tuple(self.boxes.shape)}")
        num = self.boxes.shape[0]
        if self.positive_map.ndim != 2 or self.positive_map.shape[0] != num:
            raise ValueError(
                f"GroundingTargets.positive_map must be [G, T] with G = {num}, got {tuple(self.positive_map.shape)}"
            )
        if self.positive_map.dtype != torch.bool:
            self.positive_map = self.positive_map != 0
        if self.labels is not None:
            if self.labels.shape != (num,):
                raise ValueError(f"GroundingTargets.labels must be [G] with G = {num}, got {tuple(self.labels.shape)}")
            if num and int(self.labels.min()) <= 0:
                raise ValueError("GroundingTargets.labels are 1-based phrase indices; got a label <= 0")
        if self.masks is not None and (self.masks.ndim != 3 or self.masks.shape[0] != num):
            raise ValueError(f"GroundingTargets.masks must be [G, h, w] with G = {num}, got {tuple(self.masks.shape)}")
        if self.has_mask is not None and self.has_mask.shape != (num,):
            raise ValueError(f"GroundingTargets.has_mask must be [G] with G = {num}, got {tuple(self.has_mask.shape)}")
        if self.answer_scores is not None and self.answer_scores.ndim != 1:
            raise ValueError(f"GroundingTargets.answer_scores must be [A], got {tuple(self.answer_scores.shape)}")
        if (self.concept_map is None) != (self.concept_scores is None):
            raise ValueError("GroundingTargets.concept_map and concept_scores go together")
        if self.concept_map is not None and self.concept_scores is not None:
            if self.concept_map.ndim != 2 or self.concept_map.shape[1] != self.positive_map.shape[1]:
                raise ValueError(
                    f"GroundingTargets.concept_map must be [K, T] with T = {self.positive_map.shape[1]}, "
                    f"got {tuple(self.concept_map.shape)}"
                )
            if self.concept_scores.shape != (num, self.concept_map.shape[0]):
                raise ValueError(
                    f"GroundingTargets.concept_scores must be [G, K] = [{num}, {self.concept_map.shape[0]}], "
                    f"got {tuple(self.concept_scores.shape)}"
                )
            if self.concept_map.dtype != torch.bool:
                self.concept_map = self.concept_map != 0

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    @property
    def num_tokens(self) -> int:
        """T, the width of the positive map."""
        return int(self.positive_map.shape[1])

    def mask_flags(self) -> Tensor:
        """``Tensor[G]`` bool: which boxes have a mask (none without ``masks``)."""
        if self.masks is None:
            return torch.zeros(len(self), dtype=torch.bool, device=self.boxes.device)
        if self.has_mask is None:
            return torch.ones(len(self), dtype=torch.bool, device=self.boxes.device)
        return self.has_mask.to(self.boxes.device)

    def to(self, device: torch.device | str) -> GroundingTargets:
        def move(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.to(device)

        return GroundingTargets(
            self.boxes.to(device),
            self.positive_map.to(device),
            move(self.labels),
            move(self.masks),
            move(self.has_mask),
            move(self.answer_scores),
            move(self.concept_map),
            move(self.concept_scores),
        )

    @staticmethod
    def empty(num_tokens: int, device: torch.device | str | None = None) -> GroundingTargets:
        """An image without boxes: every anchor is background."""
        return GroundingTargets(
            torch.zeros((0, 4), device=device),
            torch.zeros((0, num_tokens), dtype=torch.bool, device=device),
            torch.zeros((0,), dtype=torch.int64, device=device),
        )


@dataclass
class PretrainingTargets:
    """A batch's inputs to GLIPv2's pre-training losses, beyond the boxes (B images, T tokens).

    Attributes:
        box_class: B entries: ``Tensor[G_b]`` int64, the category id of each box in ONE
            global class-name vocabulary (:func:`glip.text.spans.build_category_vocabulary`),
            or None for an image whose data has no categories (grounding, captions).
        token_class: ``Tensor[B, T]`` int64, the category id of the class name each prompt
            token belongs to, -1 elsewhere (:func:`glip.text.spans.token_class_ids`).
        seeds: B per-sample seeds of this step's random draws
            (:func:`glip.utils.seeding.sample_seed` of run seed, step and sample index);
            the inter-image loss samples its anchors from streams derived from them.
        mlm_labels: ``Tensor[B, T]`` int64, the original id at each token the MLM loss
            scores, -100 elsewhere; None when the prompts were not corrupted (no MLM head,
            or evaluation).
    """

    box_class: list[Tensor | None]
    token_class: Tensor
    seeds: list[int]
    mlm_labels: Tensor | None = None

    def __post_init__(self) -> None:
        batch = self.token_class.shape[0]
        if self.token_class.ndim != 2 or len(self.box_class) != batch or len(self.seeds) != batch:
            raise ValueError(
                f"PretrainingTargets: token_class {tuple(self.token_class.shape)} must be [B, T] with B = "
                f"{len(self.box_class)} box_class entries and {len(self.seeds)} seeds"
            )
        if self.mlm_labels is not None and self.mlm_labels.shape != self.token_class.shape:
            raise ValueError(
                f"PretrainingTargets: mlm_labels {tuple(self.mlm_labels.shape)} must be [B, T] like "
                f"token_class {tuple(self.token_class.shape)}"
            )
