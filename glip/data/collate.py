"""Batching grounding samples: padded images, padded token ids, per-image targets."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from glip.data.datasets import GroundingSample
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
    """

    images: ImageBatch
    input_ids: Tensor
    attention_mask: Tensor
    targets: list[GroundingTargets]
    captions: list[str]
    image_ids: list[Any]

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
    for b, s in enumerate(samples):
        n = int(s.input_ids.shape[0])
        if n > max_query_len:
            raise ValueError(f"sample {s.image_id}: {n} token ids exceed max_query_len {max_query_len}")
        if s.targets.num_tokens != max_query_len:
            raise ValueError(f"sample {s.image_id}: positive map width {s.targets.num_tokens} != {max_query_len}")
        ids[b, :n] = s.input_ids
        mask[b, :n] = 1
    return GroundingBatch(
        images=ImageBatch.from_tensors([s.image for s in samples], size_divisibility),
        input_ids=ids,
        attention_mask=mask,
        targets=[s.targets for s in samples],
        captions=[s.caption for s in samples],
        image_ids=[s.image_id for s in samples],
    )


@dataclass
class GroundingCollator:
    """:func:`collate_grounding` with fixed settings, picklable for ``DataLoader`` workers."""

    size_divisibility: int = 32
    max_query_len: int = 256
    pad_token_id: int = 0

    def __call__(self, samples: Sequence[GroundingSample]) -> GroundingBatch:
        return collate_grounding(samples, self.size_divisibility, self.max_query_len, self.pad_token_id)
