"""Raw outputs of the detection head."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor


@dataclass
class HeadOutputs:
    """Per-level predictions of the GLIP head, before decoding.

    Attributes:
        box_regression: L tensors ``Tensor[B, 4, H_l, W_l]``, already multiplied by
            the level's learned scale (box-coder deltas ``dx, dy, dw, dh``).
        centerness: L tensors ``Tensor[B, 1, H_l, W_l]`` (logits).
        dot_product_logits: L tensors ``Tensor[B, H_l*W_l, T]``, region-word
            alignment logits (pixel order is row-major, as ``flatten(2)``).
        num_classes: the width of the score tensor the official post-processor
            builds (``NUM_CLASSES - 1``): at most this many phrases can be scored.
        fused_text: ``Tensor[B, T, D]`` or None, the language features after the
            head's fusion layers.
        features: L tensors ``Tensor[B, C, H_l, W_l]``: the tower's visual output.
        token_logits: L tensors ``Tensor[B, H_l*W_l, T_max]`` (``T_max`` = the head's
            ``max_query_len``), the soft-token logits, or None (official
            USE_TOKEN_LOSS off).
        contrastive_logits: L tensors ``Tensor[B, H_l*W_l, T]``, the contrastive
            alignment logits (cosine similarity / temperature), or None (official
            USE_CONTRASTIVE_ALIGN_LOSS off).
    """

    box_regression: list[Tensor]
    centerness: list[Tensor]
    dot_product_logits: list[Tensor]
    num_classes: int
    fused_text: Tensor | None = None
    features: list[Tensor] = field(default_factory=list)
    token_logits: list[Tensor] | None = None
    contrastive_logits: list[Tensor] | None = None
