"""Reading a large COCO-format json one record at a time, with the standard library.

The top-level object is walked key by key; the elements of ``images`` and
``annotations`` are decoded one at a time by :func:`json.JSONDecoder.raw_decode` (the
C scanner behind :func:`json.load`, so every value is exactly what :func:`json.load`
gives) from a buffer refilled as needed, so memory stays at one chunk plus one record
whatever the file size. Each record comes with its own source text, which decodes back
to the same value.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

__all__ = ["ARRAY_KEYS", "stream_coco"]

# Top-level keys whose elements are handed out one by one; other keys are read whole.
ARRAY_KEYS = ("images", "annotations")
_CHUNK = 1 << 20  # characters read per refill
_WHITESPACE = " \t\n\r"


class _Reader:
    """A text buffer over ``f`` with a cursor; refilled (and its consumed head dropped) on demand."""

    def __init__(self, f: TextIO, name: str) -> None:
        self.f = f
        self.name = name
        self.buf = ""
        self.pos = 0
        self.eof = False
        self._decode = json.JSONDecoder().raw_decode

    def _fill(self, at_least: int = _CHUNK) -> bool:
        """Reads more text; False at the end of the file."""
        if self.eof:
            return False
        more = self.f.read(max(at_least, _CHUNK))
        if not more:
            self.eof = True
            return False
        self.buf = self.buf[self.pos :] + more
        self.pos = 0
        return True

    def peek(self) -> str:
        """The next non-blank character (the cursor moves onto it); ``""`` at the end."""
        while True:
            n = len(self.buf)
            while self.pos < n and self.buf[self.pos] in _WHITESPACE:
                self.pos += 1
            if self.pos < n:
                return self.buf[self.pos]
            if not self._fill():
                return ""

    def expect(self, char: str) -> None:
        got = self.peek()
        if got != char:
            raise ValueError(f"{self.name}: not a COCO-format json (expected {char!r}, found {got or 'the end'!r})")
        self.pos += 1

    def value(self) -> tuple[Any, str]:
        """The next json value and its source text."""
        self.peek()
        while True:
            try:
                value, end = self._decode(self.buf, self.pos)
            except json.JSONDecodeError as e:
                if self._fill(len(self.buf)):  # the value runs past the buffer: read as much again
                    continue
                raise ValueError(f"{self.name}: invalid json ({e.msg} at character {e.pos})") from None
            # A number that ends the buffer may continue in the next chunk.
            if end == len(self.buf) and self._fill():
                continue
            text = self.buf[self.pos : end]
            self.pos = end
            return value, text

    def elements(self) -> Iterator[tuple[Any, str]]:
        """The elements of the array at the cursor, one at a time."""
        self.expect("[")
        if self.peek() == "]":
            self.pos += 1
            return
        while True:
            yield self.value()
            sep = self.peek()
            if sep not in (",", "]"):
                raise ValueError(f"{self.name}: invalid json (expected ',' or ']' in an array, found {sep!r})")
            self.pos += 1
            if sep == "]":
                return


def stream_coco(
    path: str | Path, on_record: Callable[[str, Any, str], None], on_value: Callable[[str, Any], None]
) -> list[str]:
    """Walks the COCO-format json at ``path`` once.

    Every element of an :data:`ARRAY_KEYS` array is passed to ``on_record(key, value,
    text)`` (``text``: its source text) as it is read; every other top-level value to
    ``on_value(key, value)`` whole. Returns the top-level keys in file order. A
    ``ValueError`` naming the file when it is not a json object or not valid json.
    """
    keys: list[str] = []
    with open(path, encoding="utf-8") as f:
        reader = _Reader(f, str(path))
        reader.expect("{")
        if reader.peek() == "}":
            return keys
        while True:
            key, _ = reader.value()
            if not isinstance(key, str):
                raise ValueError(f"{path}: invalid json (an object key must be a string)")
            if key in ARRAY_KEYS and key in keys:
                raise ValueError(f"{path}: the top-level key {key!r} appears twice")
            keys.append(key)
            reader.expect(":")
            if key in ARRAY_KEYS and reader.peek() == "[":
                for value, text in reader.elements():
                    on_record(key, value, text)
            else:
                on_value(key, reader.value()[0])
            sep = reader.peek()
            if sep not in (",", "}"):
                raise ValueError(f"{path}: invalid json (expected ',' or '}}' after key {key!r}, found {sep!r})")
            reader.pos += 1
            if sep == "}":
                break
        if reader.peek():
            raise ValueError(f"{path}: invalid json (text after the top-level object)")
    return keys
