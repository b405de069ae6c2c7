"""The language backbones: BERT (the official default) and a CLIP text tower.

Both return :class:`TextFeatures` from ``input_ids`` / ``attention_mask`` ``[B, T]`` and expose
``dim`` and ``config`` (the Hugging Face config saved beside a checkpoint).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from glip.modeling.language.bert import BertEncoder
from glip.modeling.language.causal import additive_attention_mask
from glip.structures import TextFeatures
from glip.utils.imports import import_transformers

__all__ = [
    "TEXT_ENCODER_TYPES",
    "BertTextEncoder",
    "ClipTextEncoder",
    "build_text_encoder",
    "in_head_layer_sizes",
    "load_bert_config",
    "load_text_config",
]

# model.text.type -> the transformers config class that describes the encoder.
TEXT_ENCODER_TYPES = ("bert", "clip")


def load_bert_config(name_or_dir: str | Path) -> Any:
    """The ``transformers.BertConfig`` of a local directory, a ``config.json`` / BERT json
    file, or a Hugging Face name (from the local cache when offline)."""
    BertConfig = import_transformers().BertConfig

    path = Path(name_or_dir)
    if path.is_file():
        return BertConfig(**json.loads(path.read_text()))
    return BertConfig.from_pretrained(str(name_or_dir))


def load_text_config(kind: str, name_or_dir: str | Path) -> Any:
    """The transformers config of a text encoder of type ``kind`` (``model.text.type``):
    a ``BertConfig`` (:func:`load_bert_config`), or a ``CLIPTextConfig`` read from a
    ``CLIPTextModel`` or whole ``CLIPModel`` folder (its ``text_config``)."""
    if kind == "bert":
        return load_bert_config(name_or_dir)
    if kind == "clip":
        return import_transformers().CLIPTextConfig.from_pretrained(str(name_or_dir))
    raise ValueError(f"unknown model.text.type {kind!r} (expected one of {', '.join(TEXT_ENCODER_TYPES)})")


class BertTextEncoder(nn.Module):
    """BERT features for the head, as the official ``language_backbone``.

    Args:
        bert: the network (:class:`glip.modeling.language.bert.BertEncoder`, which is
            ``transformers.BertModel`` without pooler, bit for bit).
        num_layers: how many last hidden layers are averaged (official ``N_LAYERS``).
    """

    def __init__(self, bert: BertEncoder, num_layers: int = 1) -> None:
        super().__init__()
        self.bert = bert
        self.num_layers = num_layers

    @classmethod
    def from_config(cls, bert_config: Any, num_layers: int = 1) -> BertTextEncoder:
        """A randomly initialised encoder (the weights come from a checkpoint)."""
        return cls(BertEncoder(bert_config), num_layers)

    @classmethod
    def from_pretrained(cls, name_or_dir: str | Path, num_layers: int = 1) -> BertTextEncoder:
        """An encoder with the pretrained weights of a local Hugging Face BERT folder: the
        official language backbone's ``BertModel.from_pretrained`` (the pooler dropped)."""
        return cls(BertEncoder.from_pretrained(name_or_dir, load_bert_config(name_or_dir)), num_layers)

    @property
    def dim(self) -> int:
        return int(self.bert.config.hidden_size)

    @property
    def config(self) -> Any:
        """The ``transformers.BertConfig``."""
        return self.bert.config

    def forward(self, input_ids: Tensor, attention_mask: Tensor, causal: bool = False) -> TextFeatures:
        """``input_ids``, ``attention_mask``: ``Tensor[B, T]`` int64 -> :class:`TextFeatures`.

        ``causal``: every BERT layer attends uni-directionally (token ``i`` reads the real
        tokens ``<= i``, :func:`glip.modeling.language.causal.causal_keep_mask`); ``mask`` stays the
        ``[B, T]`` padding mask."""
        layers = self.bert(input_ids, attention_mask, causal=causal, keep=self.num_layers)
        # [B, T, D]: mean of the last num_layers, then divided by num_layers once more, as the
        # official backbone does (a no-op for the released N_LAYERS=1).
        features = torch.stack(layers, dim=1).mean(dim=1) / self.num_layers
        mask = attention_mask.to(features.dtype)
        embedded = features * mask.unsqueeze(-1)
        aggregate = embedded.sum(1) / mask.sum(-1, keepdim=True)
        return TextFeatures(
            hidden=layers[-1], embedded=embedded, mask=attention_mask, aggregate=aggregate, causal=causal
        )


class ClipTextEncoder(nn.Module):
    """A CLIP text tower (``transformers.CLIPTextModel``) as the language backbone, as the
    official ``MODEL.LANGUAGE_BACKBONE.MODEL_TYPE: clip``.

    Attention: the official CLIP backbone builds no causal mask (``attn_mask = None``; only the
    padding is masked), whereas ``CLIPTextModel.forward`` always applies one. So this module
    runs the tower's pieces itself (embeddings -> encoder layers -> final LayerNorm) with a
    bi-directional padding mask, as the official does; ``causal=True`` (captioning) passes
    the causal mask instead, which is also what OpenAI's CLIP was pre-trained with.

    Features: the final-LayerNorm output of the last layer (the official ``ln_final``);
    ``embedded`` is it times the padding mask and ``aggregate`` its masked mean (the
    official returns the unmasked sequence for both; no released head reads them).

    Args:
        clip: a ``transformers.CLIPTextModel`` (eager attention, so that the 4-D mask is
            added to the logits as given).
    """

    def __init__(self, clip: nn.Module) -> None:
        super().__init__()
        self.clip = clip

    @classmethod
    def from_config(cls, clip_config: Any) -> ClipTextEncoder:
        """A randomly initialised encoder (the weights come from a checkpoint)."""
        transformers = import_transformers()
        clip_config = transformers.CLIPTextConfig.from_dict(clip_config.to_dict())
        clip_config._attn_implementation = "eager"
        return cls(transformers.CLIPTextModel(clip_config))

    @classmethod
    def from_pretrained(cls, name_or_dir: str | Path) -> ClipTextEncoder:
        """The pretrained text tower of a local ``CLIPTextModel`` or ``CLIPModel`` folder (or
        a Hugging Face name in the local cache); a ``CLIPModel``'s vision tower is dropped."""
        transformers = import_transformers()
        hf_logging = transformers.utils.logging
        verbosity, bar = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
        hf_logging.set_verbosity_error()  # the unused vision tower of a CLIPModel folder
        hf_logging.disable_progress_bar()
        try:
            clip = transformers.CLIPTextModel.from_pretrained(str(name_or_dir), attn_implementation="eager")
        finally:
            hf_logging.set_verbosity(verbosity)
            if bar:
                hf_logging.enable_progress_bar()
        return cls(clip)

    @property
    def dim(self) -> int:
        return int(self.clip.config.hidden_size)

    @property
    def config(self) -> Any:
        """The ``transformers.CLIPTextConfig``."""
        return self.clip.config

    def forward(self, input_ids: Tensor, attention_mask: Tensor, causal: bool = False) -> TextFeatures:
        """``input_ids``, ``attention_mask``: ``Tensor[B, T]`` int64 -> :class:`TextFeatures`;
        ``T`` must not exceed the tower's ``max_position_embeddings``."""
        tower = getattr(self.clip, "text_model", self.clip)  # transformers 4 nests the tower; 5 does not
        width = input_ids.shape[1]
        if width > tower.config.max_position_embeddings:
            raise ValueError(
                f"{width} tokens exceed the CLIP text tower's {tower.config.max_position_embeddings} positions "
                "(set model.text.max_query_len to at most that)"
            )
        x = tower.embeddings(input_ids=input_ids)  # [B, T, D]
        mask = additive_attention_mask(attention_mask, x.dtype, causal=causal)  # [B, 1, 1|T, T]
        x = tower.encoder(inputs_embeds=x, attention_mask=mask).last_hidden_state  # [B, T, D]
        features = tower.final_layer_norm(x)
        keep = attention_mask.to(features.dtype)
        embedded = features * keep.unsqueeze(-1)
        aggregate = embedded.sum(1) / keep.sum(-1, keepdim=True)
        return TextFeatures(hidden=features, embedded=embedded, mask=attention_mask, aggregate=aggregate, causal=causal)


def build_text_encoder(
    kind: str, text_config: Any, num_layers: int = 1, pretrained: str | Path | None = None, max_len: int = 0
) -> BertTextEncoder | ClipTextEncoder:
    """The encoder of type ``kind`` (``"bert"`` or ``"clip"``): random weights shaped by
    ``text_config``, or the weights of the ``pretrained`` folder. A CLIP tower has no
    layer averaging (the official returns its last layer), so ``num_layers`` must be 1, and
    its prompts (``max_len`` tokens) must fit its ``max_position_embeddings``."""
    if kind == "bert":
        if pretrained is None:
            return BertTextEncoder.from_config(text_config, num_layers=num_layers)
        return BertTextEncoder.from_pretrained(pretrained, num_layers=num_layers)
    if kind == "clip":
        if num_layers != 1:
            raise ValueError(f"model.text.num_layers must be 1 with a CLIP text encoder, got {num_layers}")
        if max_len > text_config.max_position_embeddings:
            raise ValueError(
                f"model.text.max_query_len ({max_len}) exceeds the CLIP text tower's "
                f"{text_config.max_position_embeddings} positions"
            )
        return (
            ClipTextEncoder.from_config(text_config)
            if pretrained is None
            else ClipTextEncoder.from_pretrained(pretrained)
        )
    raise ValueError(f"unknown model.text.type {kind!r} (expected one of {', '.join(TEXT_ENCODER_TYPES)})")


def in_head_layer_sizes(text_config: Any) -> dict[str, Any]:
    """The keyword arguments of the trunk's in-head text layers (:class:`glip.modeling.language.text_layer.TextLayer`)
    taken from the encoder's config: BERT's own, or CLIP's heads, MLP width, ``quick_gelu`` and
    dropouts. (The official CLIP model puts CLIP-style pre-LayerNorm blocks in the head; ours
    keep the BERT-style layer with CLIP's sizes.)"""
    if hasattr(text_config, "hidden_dropout_prob"):  # BertConfig
        hidden_dropout, attention_dropout = text_config.hidden_dropout_prob, text_config.attention_probs_dropout_prob
    else:  # CLIPTextConfig
        # (transformers 5 dropped CLIP's unused hidden ``dropout``)
        hidden_dropout = getattr(text_config, "dropout", 0.0)
        attention_dropout = text_config.attention_dropout
    return dict(
        text_num_heads=int(text_config.num_attention_heads),
        text_intermediate_size=int(text_config.intermediate_size),
        text_activation=str(text_config.hidden_act),
        text_layer_norm_eps=float(text_config.layer_norm_eps),
        text_hidden_dropout=float(hidden_dropout),
        text_attention_dropout=float(attention_dropout),
    )
