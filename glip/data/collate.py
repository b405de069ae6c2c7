"""Batching grounding samples: padded images, padded token ids, per-image targets."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from glip.data.grounding_sample import GroundingSample
from glip.structures.image_list import ImageBatch
from glip.structures.targets import GroundingTargets

__all__ = ["GroundingBatch", "GroundingCollator", "collate_grounding"]


@dataclass
class GroundingBatch:
    """A training batch; every image has its own caption.

    Attributes:
        images: ``ImageBatch`` with ``tensor [B, 3, H, W]`` zero-padded at the right and
            bottom to a multiple of the size divisibility, and each image's ``(h, w)``.
        input_ids: ``Tensor[B, T]`` int64, each caption's ids padded to ``T = max_query_len``
            (as the official model tokenizes: ``padding="max_length"``).
        attention_mask: ``Tensor[B, T]`` int64, 1 on real tokens.
        targets: ``B`` per-image targets, boxes in each image's resized (unpadded) frame.
        captions: the ``B`` captions.
        image_ids: the ``B`` json image ids.
        kinds: the ``B`` data kinds ("detection", "grounding", "caption").
        box_class: ``B`` entries, ``Tensor[G_b]`` int64 global class ids of the boxes, or
            None for data without categories.
        token_class: ``Tensor[B, T]`` int64, each token's global class id, -1 elsewhere.
        greenlight: ``Tensor[B, T]`` int64, each prompt's default MLM greenlight map.
        indices: the ``B`` dataset indices (seed each sample's per-step random draws).

    The last five feed GLIPv2's pre-training heads (:class:`glip.structures.PretrainingTargets`);
    a batch built without them has no class ids (-1), zero greenlight and indices -1.
    """

    images: ImageBatch
    input_ids: Tensor
    attention_mask: Tensor
    targets: list[GroundingTargets]
    captions: list[str]
    image_ids: list[Any]
    kinds: list[str] = field(default_factory=list)
    box_class: list[Tensor | None] = field(default_factory=list)
    token_class: Tensor | None = None
    greenlight: Tensor | None = None
    indices: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        batch, width = self.input_ids.shape
        if not self.kinds:
            self.kinds = ["detection"] * batch
        if not self.box_class:
            self.box_class = [None] * batch
        if self.token_class is None:
            self.token_class = torch.full((batch, width), -1, dtype=torch.int64, device=self.input_ids.device)
        if self.greenlight is None:
            self.greenlight = torch.zeros((batch, width), dtype=torch.int64, device=self.input_ids.device)
        if not self.indices:
            self.indices = [-1] * batch

    def __len__(self) -> int:
        return len(self.targets)

    @property
    def positive_map(self) -> Tensor:
        """``Tensor[sum G, T]`` float32: the per-image maps stacked row-wise in batch order,
        binary (what the official ``BatchCollator`` hands to the loss)."""
        rows = [t.positive_map for t in self.targets]
        return torch.cat(rows, dim=0).to(torch.float32)

    def to(self, device: torch.device | str) -> GroundingBatch:
        return GroundingBatch(
            self.images.to(device),
            self.input_ids.to(device),
            self.attention_mask.to(device),
            [t.to(device) for t in self.targets],
            list(self.captions),
            list(self.image_ids),
            list(self.kinds),
            [None if c is None else c.to(device) for c in self.box_class],
            self.token_class.to(device),
            self.greenlight.to(device),
            list(self.indices),
        )


def collate_grounding(
    samples: Sequence[GroundingSample], size_divisibility: int = 32, max_query_len: int = 256, pad_token_id: int = 0
) -> GroundingBatch:
    """Batches samples (official ``BatchCollator`` + the model's tokenizer padding).

    Args:
        samples: the ``B`` samples; each ``input_ids`` has at most ``max_query_len`` ids
            and each positive map is ``max_query_len`` wide.
        size_divisibility: official ``DATALOADER.SIZE_DIVISIBILITY`` (32 for GLIP).
        pad_token_id: the tokenizer's ``[PAD]`` id (0 for BERT).
    """
    if not samples:
        raise ValueError("collate_grounding needs at least one sample")
    ids = torch.full((len(samples), max_query_len), pad_token_id, dtype=torch.int64)  # [B, T]
    mask = torch.zeros((len(samples), max_query_len), dtype=torch.int64)  # [B, T]
    token_class = torch.full((len(samples), max_query_len), -1, dtype=torch.int64)  # [B, T]
    greenlight = torch.zeros((len(samples), max_query_len), dtype=torch.int64)  # [B, T]
    for b, s in enumerate(samples):
        n = int(s.input_ids.shape[0])
        if n > max_query_len:
            raise ValueError(f"sample {s.image_id}: {n} token ids exceed max_query_len {max_query_len}")
        if s.targets.num_tokens != max_query_len:
            raise ValueError(f"sample {s.image_id}: positive map width {s.targets.num_tokens} != {max_query_len}")
        ids[b, :n] = s.input_ids
        mask[b, :n] = 1
        if s.token_class is not None:
            token_class[b] = s.token_class
        if s.greenlight is not None:
            greenlight[b] = s.greenlight
    return GroundingBatch(
        images=ImageBatch.from_tensors([s.image for s in samples], size_divisibility),
        input_ids=ids,
        attention_mask=mask,
        targets=[s.targets for s in samples],
        captions=[s.caption for s in samples],
        image_ids=[s.image_id for s in samples],
        kinds=[s.kind for s in samples],
        box_class=[s.box_class for s in samples],
        token_class=token_class,
        greenlight=greenlight,
        indices=[s.index for s in samples],
    )


@dataclass
class GroundingCollator:
    """:func:`collate_grounding` with fixed settings, picklable for ``DataLoader`` workers."""

    size_divisibility: int = 32
    max_query_len: int = 256
    pad_token_id: int = 0

    def __call__(self, samples: Sequence[GroundingSample]) -> GroundingBatch:
        return collate_grounding(samples, self.size_divisibility, self.max_query_len, self.pad_token_id)
