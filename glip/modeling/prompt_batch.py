"""Several prompts against the same images in one pass: text stacked, head outputs split back.

A long class list is cut into prompt chunks (:func:`glip.api.chunk_prompt`); every chunk is
scored against the same backbone maps. Running K chunks as one batch of ``K * B`` rows
(the B images repeated once per chunk, prompt-major: row ``k * B + b`` is prompt ``k`` on
image ``b``) lets the trunk and head share their kernel launches and weight reads.

Each prompt keeps its own width ``T_k``; the stacked text is padded to the widest
``T = max T_k`` with zero features and mask 0. Padded tokens are masked wherever the trunk
reads text (the fusion's image -> text softmax, the in-head BERT layers) and the split
outputs drop their columns, so a prompt's detections equal its single-prompt pass up to
float rounding (the same argument as :func:`glip.text.tokenize.trim_padding`).

Dimension letters: K prompts in a pass, B images, T tokens, D text width, L levels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from glip.structures import HeadOutputs, TextFeatures

__all__ = ["PROMPTS_PER_PASS", "GroundingNetwork", "repeat_features", "split_head", "stack_text"]

# Prompt chunks per trunk pass by default (Predictor and GLIP.predict: one behaviour).
PROMPTS_PER_PASS = 4


class GroundingNetwork(Protocol):
    """Another runtime for the network part of detection (e.g. ONNX Runtime): the model keeps
    its tokenizer, text encoder, anchors and post-processing, and asks this for the rest."""

    def features(self, images: Tensor) -> list[Tensor]:
        """Padded images ``Tensor[B, 3, H, W]`` -> L FPN maps ``Tensor[B, C, H_l, W_l]``."""
        ...

    def grounding(self, features: list[Tensor], text: TextFeatures) -> HeadOutputs:
        """FPN maps and ``[B, T, D]`` text features -> the grounding head's outputs."""
        ...


def _pad_tokens(x: Tensor, width: int) -> Tensor:
    """``Tensor[1, T_k, ...]`` -> ``Tensor[1, width, ...]``, zeros appended on dim 1."""
    missing = width - x.shape[1]
    if missing == 0:
        return x
    pad = [0, 0] * (x.dim() - 2) + [0, missing]  # F.pad lists dims last-first
    return F.pad(x, pad)


def stack_text(texts: Sequence[TextFeatures], batch: int) -> TextFeatures:
    """K prompts' features (each ``B = 1``, width ``T_k``) for ``batch`` images each.

    One prompt is expanded as views (exactly what a single-prompt pass feeds the trunk);
    several become ``[K * batch, T, D]`` (``mask`` ``[K * batch, T]``), prompt-major, each
    padded to ``T = max T_k`` with zero features and mask 0.
    """
    if len(texts) == 1:
        return texts[0].expand(batch) if batch > 1 else texts[0]
    if any(t.hidden.shape[0] != 1 for t in texts):
        raise ValueError("stack_text takes one prompt (B = 1) per TextFeatures")
    width = max(t.mask.shape[1] for t in texts)
    hidden = torch.cat([_pad_tokens(t.hidden, width) for t in texts])  # [K, T, D]
    embedded = torch.cat([_pad_tokens(t.embedded, width) for t in texts])  # [K, T, D]
    mask = torch.cat([_pad_tokens(t.mask, width) for t in texts])  # [K, T]
    aggregate = torch.cat([t.aggregate for t in texts])  # [K, D]
    return TextFeatures(
        hidden=hidden.repeat_interleave(batch, 0),  # [K * B, T, D]
        embedded=embedded.repeat_interleave(batch, 0),
        mask=mask.repeat_interleave(batch, 0),  # [K * B, T]
        aggregate=aggregate.repeat_interleave(batch, 0),  # [K * B, D]
        causal=texts[0].causal,
    )


def repeat_features(features: list[Tensor], prompts: int) -> list[Tensor]:
    """L maps ``Tensor[B, C, H_l, W_l]`` -> ``Tensor[K * B, C, H_l, W_l]`` (prompt-major)."""
    if prompts == 1:
        return features
    return [f.repeat(prompts, 1, 1, 1) for f in features]


def split_head(head: HeadOutputs, index: int, batch: int, width: int) -> HeadOutputs:
    """Prompt ``index``'s rows of a K-prompt pass: ``[B, ...]`` per level, its logits cut
    to its own ``width`` tokens (``[B, H_l * W_l, T_k]``)."""
    rows = slice(index * batch, (index + 1) * batch)
    return replace(
        head,
        box_regression=[r[rows] for r in head.box_regression],  # L x [B, 4, H_l, W_l]
        centerness=[c[rows] for c in head.centerness],  # L x [B, 1, H_l, W_l]
        dot_product_logits=[g[rows, :, :width] for g in head.dot_product_logits],  # L x [B, H_l*W_l, T_k]
    )
