"""The training sample every grounding reader returns (detection, grounding, caption,
VQA and captioning data alike): :class:`GroundingSample`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor

from glip.structures.targets import GroundingTargets
from glip.text.masking import DataKind

__all__ = ["GroundingSample"]


@dataclass
class GroundingSample:
    """One training image with its caption and targets.

    Attributes:
        image: ``Tensor[3, h, w]`` float32, normalised network input (BGR 0-255 scale).
        targets: boxes ``[G, 4]`` xyxy in the ``h x w`` frame, bool ``positive_map
            [G, max_query_len]``, labels ``[G]`` (contiguous category id, or the json
            ``category_id`` for grounding data; None when any is < 1).
        caption: the text.
        input_ids: ``Tensor[T_i]`` int64 token ids with ``[CLS]``/``[SEP]``, truncated to
            ``max_query_len``, not padded.
        tokens_positive: per box, its ``(start, end)`` character spans in ``caption``.
        image_id: the json image id.
        original_size: ``(H, W)`` of the stored image.
        flipped: whether the horizontal flip was applied.
        num_dropped_boxes: crowd, empty or non-finite boxes left out of ``targets``.
        kind: the data kind: ``"detection"`` (a prompt of class names), ``"grounding"``
            (gold grounding captions) or ``"caption"`` (image-text pairs with pseudo boxes).
        box_class: ``Tensor[G]`` int64, each box's id in the global class-name vocabulary
            (:func:`glip.text.spans.build_category_vocabulary`); None for data without
            categories (grounding, captions).
        token_class: ``Tensor[max_query_len]`` int64, the class id of the class name each
            token belongs to, -1 elsewhere (None: unknown, treated as -1).
        greenlight: ``Tensor[max_query_len]`` int64, the prompt's MLM greenlight map with
            the default settings (:func:`glip.text.masking.greenlight_map`; None: zeros).
        index: the dataset index the sample was loaded as (seeds its per-step draws).
    """

    image: Tensor
    targets: GroundingTargets
    caption: str
    input_ids: Tensor
    tokens_positive: list[list[tuple[int, int]]]
    image_id: Any
    original_size: tuple[int, int]
    flipped: bool = False
    num_dropped_boxes: int = 0
    kind: DataKind = "detection"
    box_class: Tensor | None = None
    token_class: Tensor | None = None
    greenlight: Tensor | None = None
    index: int = -1

    @property
    def image_size(self) -> tuple[int, int]:
        """``(h, w)`` of the resized image."""
        return int(self.image.shape[-2]), int(self.image.shape[-1])
