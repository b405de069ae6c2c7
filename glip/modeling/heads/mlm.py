"""Masked-language-model head on the fused text (GLIPv2's L_mlm).

Official counterpart: ``BertLMPredictionHead`` (``utils/fuse_helper.py``), created as
``VLDyHead.mlm_head`` when ``MODEL.DYHEAD.FUSE_CONFIG.MLM_LOSS`` is on, applied to the
post-fusion text hidden states (after the last in-head BERT layer, before the L2
normalisation of the dot-product path), and the ``mlm_loss`` term of
``VLDyHeadModule._forward_train`` (``rpn/vldyhead.py``).

Dimension letters: B prompts, T tokens, D text width, V vocabulary size, S scored tokens.
The corruption of the prompts and the labels come from :mod:`glip.text.masking`;
:class:`MaskedLMHead` is the head on the trunk (``model.heads["mlm"]``) that applies it
with its settings and owns the loss.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from glip.modeling.fusion.trunk import TrunkOutput
from glip.modeling.heads.base import Head, LossInputs
from glip.text.masking import DataKind, MaskedTokens, batch_greenlight, mask_tokens

__all__ = [
    "BERT_MASK_TOKEN_ID",
    "OFFICIAL_MLM_HEAD_KEYS",
    "MLMHead",
    "MLMOutput",
    "MaskedLMHead",
    "mlm_loss",
    "remap_official_mlm_head",
]

# The [MASK] id of the BERT uncased vocabulary (bert-base-uncased, all-MiniLM-L6-v2).
BERT_MASK_TOKEN_ID = 103

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


@dataclass
class MLMOutput:
    """What the MLM head reads from the trunk (the vocabulary scores are computed in the
    loss, at the scored tokens only).

    Attributes:
        hidden: ``Tensor[B, T, D]``, the post-fusion text hidden states before L2
            normalisation (the trunk's ``text``).
    """

    hidden: Tensor


class MaskedLMHead(Head):
    """GLIPv2's MLM head on the trunk: corrupts the prompts (before the model runs) and
    scores the fused text at the corrupted positions (loss ``loss_mlm``; official key
    ``mlm_loss``).

    Training only (skipped at inference); it may start fresh from a checkpoint without it.

    Args:
        hidden_dim: D, the text width.
        vocab_size: V, the text encoder's vocabulary (random replacement ids are drawn from it).
        layer_norm_eps: BERT's ``layer_norm_eps``.
        only_positives: official ``MLM_LOSS_FOR_ONLY_POSITIVES`` (True).
        no_mask_for_od: official ``NO_MASK_FOR_OD``: detection prompts are never masked.
        no_mask_for_gold: official ``NO_MASK_FOR_GOLD``: gold grounding prompts are never masked.
        mask_token_id: the tokenizer's ``[MASK]`` id (the builder sets the model tokenizer's).

    The criterion's weight of the head is the official ``MLM_LOSS_COEF``. Parameters:
    ``predictor.*`` (:class:`MLMHead`).
    """

    training_only = True
    fresh_start = True

    def __init__(
        self,
        hidden_dim: int,
        vocab_size: int,
        layer_norm_eps: float = 1e-12,
        only_positives: bool = True,
        no_mask_for_od: bool = False,
        no_mask_for_gold: bool = False,
        mask_token_id: int = BERT_MASK_TOKEN_ID,
    ) -> None:
        super().__init__()
        self.predictor = MLMHead(hidden_dim, vocab_size, layer_norm_eps)
        self.vocab_size = vocab_size
        self.only_positives = only_positives
        self.no_mask_for_od = no_mask_for_od
        self.no_mask_for_gold = no_mask_for_gold
        self.mask_token_id = mask_token_id

    @torch.no_grad()
    def corrupt(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        greenlight: Tensor,
        kinds: Sequence[DataKind],
        generators: Sequence[torch.Generator],
    ) -> MaskedTokens:
        """The corrupted prompts and their labels (:func:`glip.text.masking.mask_tokens`).

        Args:
            input_ids, attention_mask (Tensor[B, T]): the batch's prompts.
            greenlight (Tensor[B, T]): each prompt's default greenlight map (the datasets'),
                turned into this head's by :func:`glip.text.masking.batch_greenlight`.
            kinds: the B prompts' data kinds ("detection", "grounding", "caption").
            generators: B CPU generators, one per sample.
        """
        rules = batch_greenlight(greenlight, kinds, self.only_positives, self.no_mask_for_od, self.no_mask_for_gold)
        return mask_tokens(input_ids, attention_mask, rules, generators, self.mask_token_id, self.vocab_size)

    def forward(self, trunk: TrunkOutput, outputs: Mapping[str, Any]) -> MLMOutput:
        return MLMOutput(hidden=trunk.text)

    def loss(self, output: MLMOutput, inputs: LossInputs) -> dict[str, Tensor]:
        """``{"loss_mlm": Tensor[]}``: cross-entropy over the scored tokens (a connected zero
        when none is)."""
        if inputs.pretraining is None or inputs.pretraining.mlm_labels is None:
            raise ValueError(
                "the MLM head needs the batch's MLM labels (LossInputs.pretraining.mlm_labels): corrupt the "
                "prompts with MaskedLMHead.corrupt before the forward (glip.engine.LossModel does)"
            )
        labels = inputs.pretraining.mlm_labels.to(output.hidden.device)
        return {"loss_mlm": self.predictor.loss(output.hidden, labels)}
