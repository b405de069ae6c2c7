"""``load_model``: a model argument (zoo name, folder, file; :mod:`glip.hub.sources`)
resolved to files and loaded (:func:`glip.hub.checkpoint.load_checkpoint`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from glip.config import GLIPConfig
from glip.hub.checkpoint import load_checkpoint
from glip.hub.sources import resolve_model_source
from glip.modeling.glip import GLIP
from glip.modeling.low_precision import parse_weights_dtype

__all__ = ["load_model"]


def load_model(
    weights: str | Path,
    config: str | Path | GLIPConfig | None = None,
    *,
    text_encoder: str | Path | None = None,
    device: str | torch.device = "cpu",
    trust_pickle: bool = False,
    fresh_heads: Sequence[str] = (),
    weights_dtype: str | torch.dtype | None = None,
) -> GLIP:
    """Loads GLIP weights and returns the model in eval mode.

    Args:
        weights: a model-zoo name (``glip-t``, ``demo-shapes``; downloaded and converted on
            first use), an official checkpoint (``.pth`` with ``{"model": {"module." + key: ...}}``),
            or a folder written by :func:`save_model` / ``glip convert``
            (``model.safetensors`` + ``config.yaml``), a transformers-style folder written by
            ``glip.hf``'s ``save_pretrained`` (``config.json`` of ``model_type`` ``"glip"``,
            :mod:`glip.hub.transformers_folder`), or a ``.safetensors`` file, or a
            tuned-model folder (``tuned.json``, :func:`glip.hub.tuned.save_tuned`): its base
            is loaded, checked against the recorded hash, and the delta applied.
        config: an official yaml, one of ours, a zoo config name (``glip-t``), or a
            :class:`GLIPConfig`; None when the weights carry their config (zoo names, our
            folders). Names are resolved by :func:`glip.hub.sources.resolve_model_source`.
        text_encoder: a Hugging Face name or a local directory with a BERT ``config.json``
            and tokenizer files; default: the folder's own copy, else the config's
            ``model.text.encoder`` (``bert-base-uncased``). Only its config and tokenizer
            are read: the weights come from the checkpoint.
        device: where to put the model.
        trust_pickle: allow pickles that ``torch.load(weights_only=True)`` refuses.
        fresh_heads: heads of the config that may be absent from the weights and then keep
            their initialisation (:func:`with_fresh_heads`; e.g. a mask head about to be
            trained on a detection checkpoint). Not for tuned-delta folders.
        weights_dtype: ``None`` / ``"float32"`` (the default: float32 weights), or
            ``"bfloat16"`` (``"bf16"``): an inference mode that keeps the parameters in
            bfloat16 (half the memory) and computes in float32
            (:func:`glip.modeling.low_precision.store_weights`); the model is built in
            bfloat16 from the start, so float32 weights are never all in memory. Results
            differ from float32 by the weights' rounding only (README, "Speed and memory").
    """
    parse_weights_dtype(weights_dtype)  # a bad dtype is reported before any download
    if isinstance(config, GLIPConfig):
        path = resolve_model_source(weights, text_encoder=text_encoder).weights
    else:  # zoo names and zoo config names -> files (glip.hub.sources.resolve_model_source)
        source = resolve_model_source(weights, config, text_encoder=text_encoder)
        path, config = source.weights, source.config
    return load_checkpoint(
        path,
        config,
        text_encoder=text_encoder,
        device=device,
        trust_pickle=trust_pickle,
        fresh_heads=fresh_heads,
        weights_dtype=weights_dtype,
    )
