"""Prompts: a caption string plus the character spans of its phrases."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from glip.text.noun_phrases import find_noun_phrases

__all__ = ["CLASS_SEPARATOR", "Prompt", "PromptError", "from_class_names", "parse_prompt"]

# Class names are joined with the official DATASETS.SEPARATION_TOKENS (". "), as the official
# evaluation (create_queries_and_maps) and training captions do; no trailing separator.
CLASS_SEPARATOR = ". "


class PromptError(ValueError):
    """A prompt that names no phrase, or spans that do not fit the caption."""


@dataclass(frozen=True)
class Prompt:
    """A caption and its phrases.

    Attributes:
        caption: the text given to the tokenizer.
        phrases: P phrase strings; label ``j`` (1-based) is ``phrases[j - 1]``.
        spans: P lists of ``(start, end)`` character spans (end exclusive) into
            ``caption``; a phrase may cover several spans.
    """

    caption: str
    phrases: tuple[str, ...]
    spans: tuple[tuple[tuple[int, int], ...], ...]

    def __post_init__(self) -> None:
        if len(self.phrases) != len(self.spans):
            raise PromptError(f"{len(self.phrases)} phrases but {len(self.spans)} span lists")
        if not self.phrases:
            raise PromptError(f"the prompt {self.caption!r} names no phrase")
        for phrase, spans in zip(self.phrases, self.spans):
            if not spans:
                raise PromptError(f"phrase {phrase!r} has no character span")
            for start, end in spans:
                if not 0 <= start < end <= len(self.caption):
                    raise PromptError(
                        f"span ({start}, {end}) of phrase {phrase!r} is outside the caption "
                        f"of {len(self.caption)} characters"
                    )

    @staticmethod
    def from_spans(caption: str, spans: Sequence[Sequence[tuple[int, int]] | tuple[int, int]]) -> Prompt:
        """A prompt whose phrases are given as explicit character spans of ``caption``."""
        norm: list[tuple[tuple[int, int], ...]] = []
        for s in spans:
            if len(s) == 2 and all(isinstance(v, int) for v in s):
                norm.append(((int(s[0]), int(s[1])),))  # type: ignore[index,arg-type]
            else:
                norm.append(tuple((int(a), int(b)) for a, b in s))  # type: ignore[misc]
        for group in norm:
            for start, end in group:
                if not 0 <= start < end <= len(caption):
                    raise PromptError(f"span ({start}, {end}) is outside the caption of {len(caption)} characters")
        phrases = tuple(" ".join(caption[a:b] for a, b in group) for group in norm)
        return Prompt(caption, phrases, tuple(norm))

    def to_dict(self) -> dict[str, Any]:
        """``{"caption", "phrases", "spans"}``, JSON-ready (:meth:`from_dict` reads it back)."""
        return {
            "caption": self.caption,
            "phrases": list(self.phrases),
            "spans": [[list(span) for span in group] for group in self.spans],
        }

    @staticmethod
    def from_dict(data: Mapping[str, Any]) -> Prompt:
        """The prompt :meth:`to_dict` wrote."""
        spans = tuple(tuple((int(a), int(b)) for a, b in group) for group in data["spans"])
        return Prompt(str(data["caption"]), tuple(str(p) for p in data["phrases"]), spans)

    def same_phrases(self, other: Prompt) -> bool:
        """Whether both prompts name the same phrases in the same order, compared without
        case and extra spaces: ``"tomato. sky. lemon."``, ``"Tomato.sky. lemon"`` and
        ``["tomato", "sky", "lemon"]`` all name those of ``"tomato. sky. lemon"``."""
        return len(self.phrases) == len(other.phrases) and all(
            _phrase_key(a) == _phrase_key(b) for a, b in zip(self.phrases, other.phrases)
        )


def _phrase_key(phrase: str) -> str:
    return " ".join(phrase.split()).casefold()


def from_class_names(names: Sequence[str]) -> Prompt:
    """Class names joined as the official evaluation does: ``"cat. remote control"``."""
    return _from_class_names(names)


def _from_class_names(names: Sequence[str]) -> Prompt:
    caption = ""
    phrases: list[str] = []
    spans: list[tuple[tuple[int, int], ...]] = []
    for name in names:
        name = str(name).strip()
        if not name:
            raise PromptError("empty class name in the prompt list")
        phrases.append(name)
        spans.append(((len(caption), len(caption) + len(name)),))
        caption += name + CLASS_SEPARATOR
    return Prompt(caption[: -len(CLASS_SEPARATOR)], tuple(phrases), tuple(spans))


def _from_dotted(text: str) -> Prompt:
    """ "a cat. a dog." -> phrases "a cat", "a dog", spans in the original string."""
    phrases: list[str] = []
    spans: list[tuple[tuple[int, int], ...]] = []
    start = 0
    for piece in text.split("."):
        end = start + len(piece)
        stripped = piece.strip()
        if stripped and any(ch.isalnum() for ch in stripped):
            lead = len(piece) - len(piece.lstrip())
            a = start + lead
            phrases.append(stripped)
            spans.append(((a, a + len(stripped)),))
        start = end + 1  # skip the "."
    return Prompt(text, tuple(phrases), tuple(spans))


def parse_prompt(prompt: str | Sequence[str] | Prompt) -> Prompt:
    """Turns user input into a :class:`Prompt`.

    - ``"a cat. a dog."``: phrases are the "."-separated parts (the caption is kept as
      typed, so character spans are those of the string);
    - a caption without "." (``"a man riding a horse"``): its noun phrases, found offline
      (:func:`glip.text.noun_phrases.find_noun_phrases`);
    - ``["cat", "dog"]``: class names joined as the official evaluation does
      (``"cat. dog"``);
    - a :class:`Prompt`: returned unchanged.
    """
    if isinstance(prompt, Prompt):
        return prompt
    if isinstance(prompt, str):
        if not prompt.strip():
            raise PromptError("the prompt is empty")
        if "." in prompt:
            return _from_dotted(prompt)
        found = find_noun_phrases(prompt)
        if not found:
            raise PromptError(f"found no noun phrase in {prompt!r}; separate phrases with '.' (\"a cat. a dog.\")")
        return Prompt(prompt, tuple(p for p, _ in found), tuple((span,) for _, span in found))
    if isinstance(prompt, Sequence):
        if not prompt:
            raise PromptError("the prompt list is empty")
        return _from_class_names(list(prompt))
    raise TypeError(f"a prompt is a string, a list of class names or a Prompt, not {type(prompt).__name__}")
