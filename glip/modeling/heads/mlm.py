"""Masked-language-model head on the fused text (GLIPv2's L_mlm).

Official counterpart: ``BertLMPredictionHead`` (``utils/fuse_helper.py``), created as
``VLDyHead.mlm_head`` when ``MODEL.DYHEAD.FUSE_CONFIG.MLM_LOSS`` is on, applied to the
post-fusion text hidden states (after the last in-head BERT layer, before the L2
normalisation of the dot-product path), and the ``mlm_loss`` term of
``VLDyHeadModule._forward_train`` (``rpn/vldyhead.py``).

Dimension letters: B prompts, T tokens, D text width, V vocabulary size, S scored tokens.
The corruption of the prompts and the labels come from :mod:`glip.text.masking`.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["OFFICIAL_MLM_HEAD_KEYS", "MLMHead", "mlm_loss", "remap_official_mlm_head"]

# CrossEntropyLoss's ignore_index, the label of unscored tokens (glip.text.masking.IGNORE_INDEX).
_IGNORE = -100

# Official state-dict names (relative to ``rpn.head.mlm_head.``) -> ours. The official
# ``bias`` is the same tensor as ``decoder.bias`` (both keys are saved).
OFFICIAL_MLM_HEAD_KEYS = {
    "transform.dense.weight": "dense.weight",
    "transform.dense.bias": "dense.bias",
    "transform.LayerNorm.weight": "norm.weight",
    "transform.LayerNorm.bias": "norm.bias",
    "decoder.weight": "decoder.weight",
    "bias": "decoder.bias",
    "decoder.bias": "decoder.bias",
}


def remap_official_mlm_head(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """An official ``mlm_head`` state dict (keys relative to the head) under our names."""
    unknown = sorted(set(state) - set(OFFICIAL_MLM_HEAD_KEYS))
    if unknown:
        raise KeyError(f"not MLM-head keys: {unknown}")
    return {OFFICIAL_MLM_HEAD_KEYS[k]: v for k, v in state.items()}


class MLMHead(nn.Module):
    """``Linear(D, D) -> GELU -> LayerNorm -> Linear(D, V) + bias``: a vocabulary score per token.

    As the official head: exact (erf) GELU, LayerNorm eps 1e-12 (BERT's), PyTorch's
    default initialisation, a zero output bias, and a decoder **not tied** to the word
    embeddings (the released GLIP checkpoints do not contain it: it starts fresh).

    Args:
        hidden_dim: D, the width of the fused text (the text encoder's hidden size).
        vocab_size: V (30522 for bert-base-uncased).
        layer_norm_eps: BERT's ``layer_norm_eps``.

    ``forward(hidden)``: ``Tensor[..., D]`` -> logits ``Tensor[..., V]``.
    """

    def __init__(self, hidden_dim: int, vocab_size: int, layer_norm_eps: float = 1e-12) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden_dim, hidden_dim)
        self.norm = nn.LayerNorm(hidden_dim, eps=layer_norm_eps)
        self.decoder = nn.Linear(hidden_dim, vocab_size)
        nn.init.zeros_(self.decoder.bias)

    def transform(self, hidden: Tensor) -> Tensor:
        """``Tensor[..., D]`` -> ``Tensor[..., D]``, the features the decoder scores."""
        return self.norm(F.gelu(self.dense(hidden)))

    def forward(self, hidden: Tensor) -> Tensor:
        return self.decoder(self.transform(hidden))

    def loss(self, hidden: Tensor, labels: Tensor, coef: float = 1.0) -> Tensor:
        """:func:`mlm_loss` of the head's logits, computed at the scored tokens only.

        The head acts on each token independently, so scoring the S labelled tokens
        instead of all B x T equals ``mlm_loss(self(hidden), labels, coef)`` (up to float
        rounding) while the logits take ``S x V`` instead of ``B x T x V`` memory
        (e.g. 2.5 GB at B = 64, T = 256 and the BERT vocabulary, in fp32).

        Args:
            hidden (Tensor[B, T, D]): the post-fusion text, before L2 normalisation.
            labels (Tensor[B, T]): original ids at scored tokens, -100 elsewhere.
            coef: official ``MLM_LOSS_COEF`` (1.0).
        """
        if hidden.shape[:-1] != labels.shape:
            raise ValueError(
                f"hidden {tuple(hidden.shape)} and labels {tuple(labels.shape)} must be [B, T, D] and [B, T]"
            )
        scored = labels != _IGNORE  # [B, T]
        return mlm_loss(self(hidden[scored]), labels[scored], coef)  # logits [S, V]


def mlm_loss(logits: Tensor, labels: Tensor, coef: float = 1.0) -> Tensor:
    """Cross-entropy over the scored tokens, averaged over them, times ``coef``.

    Positions labelled -100 are ignored. When no position is scored (a short prompt
    where nothing was selected, or only unscored tokens were) the result is a zero still
    connected to the graph. The official ``CrossEntropyLoss(ignore_index=-100)`` returns
    NaN there (a mean over zero elements), which makes the whole training loss NaN
    outside the AMP branch of its trainer.

    Args:
        logits (Tensor[..., V]): vocabulary scores.
        labels (Tensor[...]): int64 target ids, -100 = not scored.
        coef: official ``MLM_LOSS_COEF`` (1.0).

    Returns:
        Tensor[]: the loss (float32 at least: half-precision logits are upcast, the
        log-softmax over a 30k vocabulary loses too much in fp16).
    """
    vocab = logits.shape[-1]
    flat_logits = logits.reshape(-1, vocab)  # [B * T, V]
    flat_labels = labels.reshape(-1)  # [B * T]
    if flat_logits.shape[0] != flat_labels.shape[0]:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} disagree")
    if flat_logits.dtype in (torch.float16, torch.bfloat16):
        flat_logits = flat_logits.float()
    if not bool((flat_labels != _IGNORE).any()):
        return flat_logits.sum() * 0.0
    return F.cross_entropy(flat_logits, flat_labels, ignore_index=_IGNORE) * coef
