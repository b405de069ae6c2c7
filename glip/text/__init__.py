"""Prompts, tokenization and positive maps."""

from glip.text.prompt import CLASS_SEPARATOR, Prompt, PromptError, parse_prompt
from glip.text.tokenize import TokenizedPrompt, load_tokenizer, positive_map_from_spans, tokenize_prompt

__all__ = [
    "CLASS_SEPARATOR",
    "Prompt",
    "PromptError",
    "TokenizedPrompt",
    "load_tokenizer",
    "parse_prompt",
    "positive_map_from_spans",
    "tokenize_prompt",
]
