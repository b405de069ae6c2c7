"""Prompts, tokenization and positive maps."""

from glip.text.prompt import CLASS_SEPARATOR, Prompt, PromptError, parse_prompt
from glip.text.tokenize import (
    BUNDLED_TEXT_ENCODERS,
    TokenizedPrompt,
    load_tokenizer,
    positive_map_from_spans,
    resolve_text_encoder,
    span_token_range,
    text_encoder_without_dropout,
    tokenize_prompt,
)

__all__ = [
    "BUNDLED_TEXT_ENCODERS",
    "CLASS_SEPARATOR",
    "Prompt",
    "PromptError",
    "TokenizedPrompt",
    "load_tokenizer",
    "parse_prompt",
    "positive_map_from_spans",
    "span_token_range",
    "resolve_text_encoder",
    "text_encoder_without_dropout",
    "tokenize_prompt",
]
