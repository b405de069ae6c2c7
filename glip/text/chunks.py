"""Prompts too long for one pass of the text encoder, split into several.

Every entry point (``model.predict``, :class:`glip.Predictor`, ``glip detect``...) splits a
long prompt here, so they all accept the same prompts and find the same boxes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from glip.text.prompt import Prompt, PromptError, from_class_names, parse_prompt
from glip.text.tokenize import TokenizedPrompt, tokenize_prompt

__all__ = ["chunk_prompt", "prepare_prompt"]


def chunk_prompt(
    prompt: Prompt, tokenizer: Any, max_len: int, max_phrases: int, chunk_size: int | None = None
) -> list[Prompt]:
    """Splits a prompt whose phrases do not fit one pass into several prompts.

    A prompt that fits (its caption within ``max_len`` tokens, at most ``max_phrases``
    phrases, no ``chunk_size``) is returned unchanged. Otherwise phrases are packed, in
    order, into captions ``"p1. p2. ..."`` of at most ``max_len`` tokens and at most
    ``min(chunk_size, max_phrases)`` phrases, as the official chunked LVIS evaluation builds
    its queries.
    """
    limit = max_phrases if chunk_size is None else min(chunk_size, max_phrases)
    n_tokens = len(tokenizer(prompt.caption, add_special_tokens=True, verbose=False)["input_ids"])
    if chunk_size is None and n_tokens <= max_len and len(prompt.phrases) <= max_phrases:
        return [prompt]
    budget = max_len - 2  # [CLS] and [SEP]
    chunks: list[list[str]] = [[]]
    used = 0
    for phrase in prompt.phrases:
        cost = len(tokenizer(phrase, add_special_tokens=False, verbose=False)["input_ids"]) + 1  # + the "." separator
        if cost > budget:
            raise PromptError(f"the phrase {phrase[:60]!r} alone is longer than {max_len} tokens")
        if chunks[-1] and (used + cost > budget or len(chunks[-1]) >= limit):
            chunks.append([])
            used = 0
        chunks[-1].append(phrase)
        used += cost
    return [from_class_names(names) for names in chunks]


def prepare_prompt(
    prompt: str | Sequence[str] | Prompt, tokenizer: Any, max_len: int, max_phrases: int, chunk_size: int | None = None
) -> list[TokenizedPrompt]:
    """A user prompt (see :func:`parse_prompt`) -> the tokenized prompts of its passes:
    one when it fits ``max_len`` tokens and ``max_phrases`` phrases, else the chunks of
    :func:`chunk_prompt`, in phrase order."""
    chunks = chunk_prompt(parse_prompt(prompt), tokenizer, max_len, max_phrases, chunk_size)
    return [tokenize_prompt(tokenizer, p, max_len) for p in chunks]
