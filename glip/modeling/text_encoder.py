"""The BERT language backbone."""

from __future__ import annotations

import functools
import json
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from glip.modeling.causal import additive_attention_mask, causal_keep_mask
from glip.structures import TextFeatures
from glip.utils.imports import import_transformers

__all__ = ["BertTextEncoder", "load_bert_config"]


def load_bert_config(name_or_dir: str | Path) -> Any:
    """The ``transformers.BertConfig`` of a local directory, a ``config.json`` / BERT json
    file, or a Hugging Face name (from the local cache when offline)."""
    BertConfig = import_transformers().BertConfig

    path = Path(name_or_dir)
    if path.is_file():
        return BertConfig(**json.loads(path.read_text()))
    return BertConfig.from_pretrained(str(name_or_dir))


class BertTextEncoder(nn.Module):
    """BERT features for the head, as the official ``language_backbone``.

    Args:
        bert: a ``transformers.BertModel`` without pooler.
        num_layers: how many last hidden layers are averaged (official ``N_LAYERS``).
    """

    def __init__(self, bert: nn.Module, num_layers: int = 1) -> None:
        super().__init__()
        self.bert = bert
        self.num_layers = num_layers

    @classmethod
    def from_config(cls, bert_config: Any, num_layers: int = 1) -> BertTextEncoder:
        """A randomly initialised encoder (the weights come from a checkpoint)."""
        BertModel = import_transformers().BertModel

        bert_config = bert_config.__class__.from_dict(bert_config.to_dict())
        # Eager attention is the only kind the transformers versions GLIP was written for had.
        bert_config._attn_implementation = "eager"
        return cls(BertModel(bert_config, add_pooling_layer=False), num_layers)

    @classmethod
    def from_pretrained(cls, name_or_dir: str | Path, num_layers: int = 1) -> BertTextEncoder:
        """An encoder with the pretrained weights of a local folder (or a Hugging Face name
        in the local cache): the official language backbone's ``BertModel.from_pretrained``."""
        transformers = import_transformers()
        # The pooler of the saved model is dropped on purpose: silence the load report about it.
        hf_logging = transformers.utils.logging
        verbosity, bar = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        try:
            bert = transformers.BertModel.from_pretrained(
                str(name_or_dir), add_pooling_layer=False, attn_implementation="eager"
            )
        finally:
            hf_logging.set_verbosity(verbosity)
            if bar:
                hf_logging.enable_progress_bar()
        return cls(bert, num_layers)

    @property
    def dim(self) -> int:
        return int(self.bert.config.hidden_size)

    def forward(self, input_ids: Tensor, attention_mask: Tensor, causal: bool = False) -> TextFeatures:
        """``input_ids``, ``attention_mask``: ``Tensor[B, T]`` int64 -> :class:`TextFeatures`.

        ``causal``: every BERT layer attends uni-directionally (token ``i`` reads the real
        tokens ``<= i``, :func:`glip.modeling.causal.causal_keep_mask`); ``mask`` stays the
        ``[B, T]`` padding mask."""
        bert_mask = _bert_causal_mask(attention_mask, self.bert.dtype) if causal else attention_mask
        out = self.bert(input_ids=input_ids, attention_mask=bert_mask, output_hidden_states=True)
        layers = out.hidden_states[1:]  # drop the embedding output
        # [B, T, D]: mean of the last num_layers, then divided by num_layers once more, as the
        # official backbone does (a no-op for the released N_LAYERS=1).
        features = torch.stack(layers[-self.num_layers :], dim=1).mean(dim=1) / self.num_layers
        mask = attention_mask.to(features.dtype)
        embedded = features * mask.unsqueeze(-1)
        aggregate = embedded.sum(1) / mask.sum(-1, keepdim=True)
        return TextFeatures(
            hidden=layers[-1], embedded=embedded, mask=attention_mask, aggregate=aggregate, causal=causal
        )


def _bert_causal_mask(attention_mask: Tensor, dtype: torch.dtype) -> Tensor:
    """The causal mask in the form the installed ``transformers`` takes: a prepared 4-D
    additive ``[B, 1, T, T]`` mask (transformers >= 5 passes 4-D masks through as they are),
    or a 3-D ``[B, T, T]`` 0/1 mask that 4.x extends itself (``get_extended_attention_mask``)."""
    if _transformers_major() >= 5:
        return additive_attention_mask(attention_mask, dtype, causal=True)  # [B, 1, T, T]
    return causal_keep_mask(attention_mask).to(attention_mask.dtype)  # [B, T, T]


@functools.cache
def _transformers_major() -> int:
    try:
        return int(metadata.version("transformers").split(".")[0])
    except (metadata.PackageNotFoundError, ValueError):
        return 5
