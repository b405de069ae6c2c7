"""Zero-shot detection for users: :func:`predict` and the reusable :class:`Predictor`.

A re-export module kept for its import path: the code lives in :mod:`glip.inference`
(:mod:`~glip.inference.predictor`, :mod:`~glip.inference.prompts`, :mod:`~glip.inference.shortcuts`).
"""

from glip.inference.predictor import ModelLike, Predictor, resolve_model
from glip.inference.prompts import EncodedPrompt, PromptLike
from glip.inference.shortcuts import predict
from glip.text.chunks import chunk_prompt

__all__ = ["EncodedPrompt", "ModelLike", "PromptLike", "Predictor", "chunk_prompt", "predict", "resolve_model"]
