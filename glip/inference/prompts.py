"""Prompt resolution: a user's prompt -> the prompt to run (tuned prompts), encoded once.

A fine-tuned model records its classes (``model.tuned_prompt``); a prompt-tuned one also
has an offset that applies to that prompt only (:class:`glip.modeling.language.prompt_offset.PromptOffset`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Union

import torch

from glip.structures import TextFeatures
from glip.text import Prompt, PromptError, TokenizedPrompt, parse_prompt

from .processor import Processor

__all__ = ["EncodedPrompt", "PromptLike", "resolve_prompt"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EncodedPrompt:
    """A prompt chunked, tokenized and text-encoded once (:meth:`Predictor.encode_prompt
    <glip.inference.predictor.Predictor.encode_prompt>`): give it as the prompt of every
    :meth:`~glip.inference.predictor.Predictor.predict` call of a fixed class list.

    Attributes:
        chunks: the prompt's chunks (:func:`glip.text.chunks.chunk_prompt`), tokenized.
        text: each chunk's text features (``B = 1``; :func:`glip.inference.detection.encode_prompts`).
        model: the model that encoded them (another model's predictor refuses them).
        autocast: the autocast dtype they were encoded under.
    """

    chunks: list[TokenizedPrompt]
    text: list[TextFeatures]
    model: Any
    autocast: torch.dtype | None


PromptLike = Union[str, Sequence[str], Prompt, EncodedPrompt]


def resolve_prompt(model: Any, processor: Processor, prompt: str | Sequence[str] | Prompt | None) -> Prompt:
    """The prompt to run for ``prompt`` on ``model`` (a :class:`~glip.modeling.glip.GLIP`).

    - None: the model's own classes (``model.tuned_prompt``, recorded by fine-tuning);
      a :class:`PromptError` for a model that records none.
    - A prompt naming the tuned prompt's phrases in its order, however spelled
      (separators, a trailing period, spaces, case: :meth:`Prompt.same_phrases`):
      the tuned prompt itself, so that a prompt-tuned model applies its offset.
    - Any other prompt on a model whose prompt offset applies to one prompt only: runs
      without the offset (the base model's text features), with a one-line warning.
    """
    tuned = model.tuned_prompt
    if prompt is None:
        if tuned is None:
            raise PromptError("a prompt is needed: the model records no classes (fine-tuned models do)")
        return tuned
    parsed = parse_prompt(prompt)
    offset = model.prompt_offset
    if offset is None or offset.token_ids is None:
        return parsed  # no offset, or one that applies to every prompt
    if tuned is not None and parsed.same_phrases(tuned):
        return tuned
    if processor.token_ids(parsed.caption) != offset.token_ids:  # what the model checks (PromptOffset.matches)
        logger.warning(
            "the prompt %r is not the one this model was prompt-tuned for (%r): its prompt offset "
            "applies only to that prompt (same classes, same order), so this prompt runs without it",
            parsed.caption,
            tuned.caption if tuned is not None else "unrecorded",
        )
    return parsed
