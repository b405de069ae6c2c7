"""Uni-directional (causal) attention masks for captioning (GLIPv2's language-modelling mode).

In causal mode token ``i`` may attend to the non-padding tokens ``j <= i`` only. The text
encoder, every in-head BERT layer and every fusion block honour it, so the fused text at
position ``i`` depends on the image and on tokens ``0..i`` only (see
:class:`glip.modeling.fusion.bi_attention.BiAttentionBlock` for the image side).

Dimension letters: B prompts, T tokens.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["additive_attention_mask", "causal_keep_mask"]


def causal_keep_mask(mask: Tensor) -> Tensor:
    """``Tensor[B, T, T]`` bool: ``[b, i, j]`` is True when query ``i`` may read key ``j``
    (``j <= i`` and ``j`` is a real token of prompt ``b``).

    Args:
        mask: ``Tensor[B, T]``, non-zero on real tokens.
    """
    width = mask.shape[-1]
    lower = torch.ones(width, width, dtype=torch.bool, device=mask.device).tril()  # [T, T]
    return lower[None] & (mask != 0)[:, None, :]  # [B, T, T]


def additive_attention_mask(mask: Tensor, dtype: torch.dtype, causal: bool = False) -> Tensor:
    """The additive logit mask of a self-attention: 0 where attended, the dtype's most
    negative value elsewhere (as Hugging Face's extended attention mask, so a masked key gets
    an exactly-zero probability).

    Args:
        mask: ``Tensor[B, T]``, non-zero on real tokens.
        dtype: the logits' dtype.
        causal: also hide later tokens.

    Returns:
        ``Tensor[B, 1, 1, T]`` (bi-directional) or ``Tensor[B, 1, T, T]`` (causal).
    """
    keep = causal_keep_mask(mask)[:, None] if causal else (mask != 0)[:, None, None, :]
    return (1.0 - keep.to(dtype)) * torch.finfo(dtype).min
