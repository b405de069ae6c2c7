"""BERT as GLIP's language backbone, built from the trunk's own BERT layer.

The official language backbone is ``transformers.BertModel`` (without pooler), and every
GLIP checkpoint stores its weights under Hugging Face's names. This module runs the same
network with the same operations in the same order, so its outputs are bit-identical to
``BertModel``'s eager attention (``tests/modeling/test_bert_encoder.py`` compares the two on
BERT-base and MiniLM shapes, with padding, causal masks and dropout): the embeddings
(word + token type, then + position, LayerNorm, dropout) and the post-norm encoder layers
of :class:`glip.modeling.language.text_layer.TextLayer` without GLIP's float16 clamps and with
``BertModel``'s score scaling (``* d ** -0.5``).

Why not ``BertModel`` itself: importing transformers' modelling code (``modeling_utils``
and ``masking_utils``) imports ``torch._dynamo``, triton, sympy, torchvision, scipy and
``torch.distributed.tensor``, about 240 MiB of resident memory in every process that
detects with GLIP (``docs/performance.md``). transformers stays the source of the
configuration (``BertConfig``), the tokenizer and the checkpoint format.

Dimension letters: B prompts, T tokens, D hidden width.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from glip.modeling.language.text_layer import TextLayer

__all__ = ["BertEmbeddings", "BertEncoder", "bert_state_dict", "read_bert_weights"]

# Weight files of a Hugging Face BERT folder, in the order transformers prefers them.
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


class BertEmbeddings(nn.Module):
    """Word, token-type (always type 0, as GLIP never passes types) and absolute position
    embeddings, summed, layer-normalised and dropped out: ``Tensor[B, T]`` ids ->
    ``Tensor[B, T, D]``. Names as ``transformers``' ``BertEmbeddings``."""

    def __init__(self, config: Any) -> None:
        super().__init__()
        kind = getattr(config, "position_embedding_type", "absolute")
        if kind != "absolute":
            raise ValueError(f"BERT position_embedding_type {kind!r} is not supported (only 'absolute')")
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids: Tensor) -> Tensor:
        width = input_ids.shape[1]
        if width > self.position_embeddings.num_embeddings:
            raise ValueError(f"{width} tokens exceed BERT's {self.position_embeddings.num_embeddings} positions")
        positions = torch.arange(width, device=input_ids.device)[None]  # [1, T]
        x = self.word_embeddings(input_ids) + self.token_type_embeddings(torch.zeros_like(input_ids))  # [B, T, D]
        x = x + self.position_embeddings(positions)
        return self.dropout(self.LayerNorm(x))


class _Layers(nn.Module):
    """The layer stack (its own module for the checkpoint names ``encoder.layer.N.*``)."""

    def __init__(self, config: Any) -> None:
        super().__init__()
        self.layer = nn.ModuleList(
            TextLayer.from_bert_config(
                config,
                clamp_min_for_underflow=False,
                clamp_max_for_overflow=False,
                clamp_feed_forward=False,
                score_scaling="multiply",
            )
            for _ in range(config.num_hidden_layers)
        )


class BertEncoder(nn.Module):
    """BERT without pooler: ``transformers.BertModel(config, add_pooling_layer=False)``'s
    network and state-dict names.

    Args:
        config: a ``transformers.BertConfig`` (or any object with its attributes).
        initialize: BERT's random initialisation (as ``BertModel``, draw for draw); off when
            every weight is loaded next.
    """

    def __init__(self, config: Any, initialize: bool = True) -> None:
        super().__init__()
        self.config = config
        self.embeddings = BertEmbeddings(config)
        self.encoder = _Layers(config)
        if initialize:
            self._init_weights(float(getattr(config, "initializer_range", 0.02)))

    @torch.no_grad()
    def _init_weights(self, std: float) -> None:
        """BERT's initialisation (normal weights, zero biases, unit LayerNorms, a zero
        padding row); a checkpoint overwrites it."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                module.weight.normal_(0.0, std)
                if isinstance(module, nn.Linear) and module.bias is not None:
                    module.bias.zero_()
                if isinstance(module, nn.Embedding) and module.padding_idx is not None:
                    module.weight[module.padding_idx].zero_()
            elif isinstance(module, nn.LayerNorm):
                module.weight.fill_(1.0)
                module.bias.zero_()

    @classmethod
    def from_pretrained(cls, folder: str | Path, config: Any) -> BertEncoder:
        """The encoder with the weights of a Hugging Face BERT folder (``model.safetensors``
        or ``pytorch_model.bin``, of a ``BertModel`` or a ``BertFor*`` model)."""
        # transformers' loading draws nothing from the RNG; building on the meta device would
        # import torch._dynamo (its reference ops), so the RNG is put back after building instead.
        with torch.random.fork_rng(devices=[]):
            encoder = cls(config, initialize=False)
        dtype = torch.get_default_dtype()
        state = {
            k: v.to(dtype) if v.is_floating_point() else v
            for k, v in bert_state_dict(read_bert_weights(folder)).items()
        }
        expected = set(encoder.state_dict())
        if set(state) != expected:
            missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
            raise ValueError(
                f"{folder}: not a BERT of this config (missing {missing[:3]}, unexpected {unexpected[:3]})"
            )
        encoder.load_state_dict(state, assign=True)
        return encoder

    @property
    def dtype(self) -> torch.dtype:
        return self.embeddings.word_embeddings.weight.dtype

    def forward(self, input_ids: Tensor, attention_mask: Tensor, causal: bool = False, keep: int = 1) -> list[Tensor]:
        """``input_ids``, ``attention_mask``: ``Tensor[B, T]`` -> the outputs of the last
        ``keep`` layers, each ``Tensor[B, T, D]``.

        ``causal``: token ``i`` attends to the real tokens ``<= i`` only."""
        hidden = self.embeddings(input_ids)
        outputs = []
        layers = self.encoder.layer
        for i, layer in enumerate(layers):
            hidden = layer(hidden, attention_mask, causal=causal)
            if i >= len(layers) - keep:
                outputs.append(hidden)
        return outputs


def read_bert_weights(folder: str | Path) -> dict[str, Tensor]:
    """The tensors of a Hugging Face BERT folder's weight file, as stored."""
    folder = Path(folder)
    for name in _WEIGHT_FILES:
        path = folder / name
        if not path.is_file():
            continue
        if name.endswith(".safetensors"):
            from safetensors.torch import load_file

            return load_file(str(path))
        return torch.load(path, map_location="cpu", weights_only=True)
    raise FileNotFoundError(f"{folder}: no BERT weights ({' or '.join(_WEIGHT_FILES)})")


def bert_state_dict(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A Hugging Face BERT checkpoint's tensors under :class:`BertEncoder`'s names: a
    ``BertFor*`` model's ``bert.`` prefix removed, its heads (``cls.``), the pooler and the
    position-id buffer of old checkpoints dropped, and TensorFlow-era LayerNorm names
    (``gamma`` / ``beta``) renamed."""
    out = {}
    for key, value in state.items():
        key = key.removeprefix("bert.")
        if key.startswith(("cls.", "pooler.")) or key == "embeddings.position_ids":
            continue
        if key.endswith(".gamma"):
            key = key[: -len("gamma")] + "weight"
        elif key.endswith(".beta"):
            key = key[: -len("beta")] + "bias"
        out[key] = value
    return out
