"""GLIP's in-head language layer: one BERT encoder layer with float16-safety clamps.

After each fusion block the GLIP head runs one more BERT layer over the text tokens
(official ``BertEncoderLayer`` in ``modeling/rpn/vldyhead.py`` built from the classes
of ``modeling/rpn/modeling_bert.py``). It is a standard post-norm BERT layer except
for clamps to +-50000:

* the attention scores, after the ``1/sqrt(d)`` scaling and *before* the additive
  mask (official CLAMP_BERTATTN_{MIN,MAX}_FOR_{UNDER,OVER}FLOW, on in every GLIP config);
* in the feed-forward block: after the first dense layer, after the activation, after
  the second dense layer and after its LayerNorm (unconditional in the official layer).

Without the clamps, and with ``score_scaling="multiply"``, it is ``transformers``'
``BertLayer`` op for op: :class:`glip.modeling.language.bert.BertEncoder` stacks it as the
language backbone.

Submodule names follow Hugging Face BERT (``attention.self.query`` ...), which is
what the official checkpoints store.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from glip.modeling.language.causal import additive_attention_mask

__all__ = ["TextLayer"]

# fp16-safe clamp bound used throughout the official modeling_bert.py (`clamp_values`).
_CLAMP = 50000.0

# Hugging Face `hidden_act` names this layer accepts (BERT-base uses "gelu", the exact erf form).
_ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "gelu": F.gelu,
    "gelu_pytorch_tanh": partial(F.gelu, approximate="tanh"),
    "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x),  # CLIP's activation (OpenAI CLIP)
    "relu": F.relu,
    "silu": F.silu,
    "swish": F.silu,
}


def _clamp(x: Tensor) -> Tensor:
    return x.clamp(min=-_CLAMP, max=_CLAMP)


class _SelfAttention(nn.Module):
    """Scaled dot-product self-attention with optional logit clamps."""

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        dropout: float,
        clamp_min: bool,
        clamp_max: bool,
        score_scaling: str = "divide",
    ) -> None:
        super().__init__()
        if score_scaling not in ("divide", "multiply"):
            raise ValueError(f"score_scaling must be 'divide' or 'multiply', got {score_scaling!r}")
        if hidden_size % num_heads != 0:
            raise ValueError(f"hidden size {hidden_size} is not a multiple of num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.query = nn.Linear(hidden_size, hidden_size)
        self.key = nn.Linear(hidden_size, hidden_size)
        self.value = nn.Linear(hidden_size, hidden_size)
        self.dropout = nn.Dropout(dropout)
        self.clamp_min = -_CLAMP if clamp_min else None
        self.clamp_max = _CLAMP if clamp_max else None
        self.multiply_scores = score_scaling == "multiply"

    def _heads(self, x: Tensor) -> Tensor:
        b, t, _ = x.shape
        return x.view(b, t, self.num_heads, self.head_dim).transpose(1, 2)  # [B, h, T, D/h]

    def forward(self, x: Tensor, additive_mask: Tensor) -> Tensor:
        q, k, v = (
            self._heads(self.query(x)),
            self._heads(self.key(x)),
            self._heads(self.value(x)),
        )
        scores = q @ k.transpose(-1, -2)  # [B, h, T, T]
        # The official layer divides by sqrt(d), transformers' BertModel multiplies by
        # d ** -0.5: the same numbers when sqrt(d) is a power of two (BERT-base), not always.
        scores = scores * self.head_dim**-0.5 if self.multiply_scores else scores / math.sqrt(self.head_dim)
        if self.clamp_min is not None or self.clamp_max is not None:
            scores = scores.clamp(min=self.clamp_min, max=self.clamp_max)
        probs = self.dropout((scores + additive_mask).softmax(dim=-1))
        context = probs @ v  # [B, h, T, D/h]
        return context.transpose(1, 2).reshape(x.shape)  # [B, T, D]


class _SelfOutput(nn.Module):
    """Dense + dropout + residual LayerNorm after the attention (no clamps)."""

    def __init__(self, hidden_size: int, eps: float, dropout: float) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.LayerNorm = nn.LayerNorm(hidden_size, eps=eps)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, residual: Tensor) -> Tensor:
        return self.LayerNorm(self.dropout(self.dense(x)) + residual)


class _Attention(nn.Module):
    def __init__(self, self_attention: _SelfAttention, output: _SelfOutput) -> None:
        super().__init__()
        # The attribute is called `self` because the checkpoints say `attention.self.*`.
        self.self = self_attention
        self.output = output

    def forward(self, x: Tensor, additive_mask: Tensor) -> Tensor:
        return self.output(self.self(x, additive_mask), x)


class _Intermediate(nn.Module):
    """Dense + activation, each followed by the +-50000 clamp."""

    def __init__(
        self,
        hidden_size: int,
        intermediate_size: int,
        activation: Callable[[Tensor], Tensor],
        clamp: bool = True,
    ) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden_size, intermediate_size)
        self.activation = activation
        self.clamp = clamp

    def forward(self, x: Tensor) -> Tensor:
        if not self.clamp:
            return self.activation(self.dense(x))
        return _clamp(self.activation(_clamp(self.dense(x))))


class _Output(nn.Module):
    """Dense + dropout + clamp, residual LayerNorm, clamp."""

    def __init__(
        self, intermediate_size: int, hidden_size: int, eps: float, dropout: float, clamp: bool = True
    ) -> None:
        super().__init__()
        self.dense = nn.Linear(intermediate_size, hidden_size)
        self.LayerNorm = nn.LayerNorm(hidden_size, eps=eps)
        self.dropout = nn.Dropout(dropout)
        self.clamp = clamp

    def forward(self, x: Tensor, residual: Tensor) -> Tensor:
        if not self.clamp:
            return self.LayerNorm(self.dropout(self.dense(x)) + residual)
        x = _clamp(self.dropout(self.dense(x)))
        return _clamp(self.LayerNorm(x + residual))


class TextLayer(nn.Module):
    """One post-norm BERT encoder layer with GLIP's clamps.

    Args:
        hidden_size: D, the text width (BERT ``hidden_size``, = official LANG_DIM).
        num_heads: BERT ``num_attention_heads``.
        intermediate_size: BERT ``intermediate_size`` (feed-forward width).
        activation: BERT ``hidden_act`` name ("gelu" for BERT-base).
        layer_norm_eps: BERT ``layer_norm_eps`` (1e-12 for BERT-base).
        hidden_dropout: BERT ``hidden_dropout_prob`` (training only).
        attention_dropout: BERT ``attention_probs_dropout_prob`` (training only).
        clamp_min_for_underflow, clamp_max_for_overflow: clamp the attention scores
            (official CLAMP_BERTATTN_*).
        clamp_feed_forward: clamp in the feed-forward block (always, officially).
        score_scaling: ``"divide"`` the scores by ``sqrt(d)`` (the official layer) or
            ``"multiply"`` them by ``d ** -0.5`` (transformers' ``BertModel``).

    Weights keep PyTorch's default initialisation: the official layer never calls
    BERT's ``init_weights``.

    Shapes:
        hidden: ``Tensor[B, T, D]``, mask: ``Tensor[B, T]`` (1 = real token)
        -> ``Tensor[B, T, D]``.
    """

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        intermediate_size: int,
        activation: str = "gelu",
        layer_norm_eps: float = 1e-12,
        hidden_dropout: float = 0.1,
        attention_dropout: float = 0.1,
        clamp_min_for_underflow: bool = True,
        clamp_max_for_overflow: bool = True,
        clamp_feed_forward: bool = True,
        score_scaling: str = "divide",
    ) -> None:
        super().__init__()
        if activation not in _ACTIVATIONS:
            raise ValueError(f"unsupported activation {activation!r}; expected one of {sorted(_ACTIVATIONS)}")
        self.attention = _Attention(
            _SelfAttention(
                hidden_size,
                num_heads,
                attention_dropout,
                clamp_min_for_underflow,
                clamp_max_for_overflow,
                score_scaling,
            ),
            _SelfOutput(hidden_size, layer_norm_eps, hidden_dropout),
        )
        self.intermediate = _Intermediate(hidden_size, intermediate_size, _ACTIVATIONS[activation], clamp_feed_forward)
        self.output = _Output(intermediate_size, hidden_size, layer_norm_eps, hidden_dropout, clamp_feed_forward)

    @classmethod
    def from_bert_config(
        cls,
        config: Any,
        clamp_min_for_underflow: bool = True,
        clamp_max_for_overflow: bool = True,
        clamp_feed_forward: bool = True,
        score_scaling: str = "divide",
    ) -> TextLayer:
        """Builds the layer from a Hugging Face ``BertConfig`` (or any object with its attributes)."""
        return cls(
            hidden_size=config.hidden_size,
            num_heads=config.num_attention_heads,
            intermediate_size=config.intermediate_size,
            activation=config.hidden_act,
            layer_norm_eps=config.layer_norm_eps,
            hidden_dropout=config.hidden_dropout_prob,
            attention_dropout=config.attention_probs_dropout_prob,
            clamp_min_for_underflow=clamp_min_for_underflow,
            clamp_max_for_overflow=clamp_max_for_overflow,
            clamp_feed_forward=clamp_feed_forward,
            score_scaling=score_scaling,
        )

    def forward(self, hidden: Tensor, mask: Tensor, causal: bool = False) -> Tensor:
        """``causal``: token ``i`` attends to the real tokens ``<= i`` only (captioning)."""
        if causal:
            additive_mask = additive_attention_mask(mask, hidden.dtype, causal=True)  # [B, 1, T, T]
            attended = self.attention(hidden, additive_mask)
            return self.output(self.intermediate(attended), attended)
        # Hugging Face's extended attention mask: 0 for real tokens, the dtype's most
        # negative value for padding (transformers >= 4.31; older versions used -10000,
        # which gives the same probabilities in float32).
        keep = mask[:, None, None, :].to(hidden.dtype)  # [B, 1, 1, T]
        additive_mask = (1.0 - keep) * torch.finfo(hidden.dtype).min
        attended = self.attention(hidden, additive_mask)
        return self.output(self.intermediate(attended), attended)
