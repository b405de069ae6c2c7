"""Character spans of a caption -> per-token maps (greenlight, category ids), and the global
category vocabulary the inter-image contrastive loss compares.

Spans are ``(start, end)`` character offsets into the caption, end exclusive. A span
covers the tokens from the one holding its first character to the one holding its last,
inclusive, with the official fallback of :func:`glip.text.tokenize.span_token_range` for
characters that map to no token (spaces). ``encoding`` is a fast-tokenizer encoding of
the single caption (``tokenizer([caption], ...)``); T is the token width (the padded
prompt length, official ``MAX_QUERY_LEN`` 256).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor

from glip.text.tokenize import span_token_range

__all__ = ["build_category_vocabulary", "normalize_class_name", "span_token_mask", "token_class_ids"]

# Official ``create_positive_map_for_od_labels``: tokens outside every class name get -1.
NO_CLASS = -1


def span_token_mask(encoding: Any, spans: Sequence[tuple[int, int]], width: int) -> Tensor:
    """``Tensor[T]`` bool: the tokens covered by any of ``spans``.

    A span that maps to no token (past the truncation limit) is skipped, as the official
    ``create_greenlight_map`` does.
    """
    mask = torch.zeros(width, dtype=torch.bool)
    for start, end in spans:
        tokens = span_token_range(encoding, start, end)
        if tokens is not None:
            mask[tokens[0] : min(tokens[1] + 1, width)] = True
    return mask


def token_class_ids(encoding: Any, class_spans: Sequence[tuple[int, int, int]], width: int) -> Tensor:
    """``Tensor[T]`` int64: the category id of the class name each token belongs to, -1 elsewhere.

    The official ``positive_map_for_od_labels``, with ids from the caller's vocabulary.

    Args:
        encoding: the caption's fast-tokenizer encoding.
        class_spans: ``(start, end, class_id)`` for every class name written in the
            prompt (positive and negative classes alike: a region of class c is a
            positive for c's tokens in any other image's prompt). Give ids from one
            global vocabulary (:func:`build_category_vocabulary`), not dataset-local
            ones. Later spans overwrite earlier ones where they overlap. A name that
            is no category (the official " background " filler) is simply left out.
        width: T.
    """
    ids = torch.full((width,), NO_CLASS, dtype=torch.int64)
    for start, end, class_id in class_spans:
        if class_id < 0:
            raise ValueError(f"class ids must be >= 0 (-1 means 'no class'), got {class_id}")
        tokens = span_token_range(encoding, start, end)
        if tokens is not None:
            ids[tokens[0] : min(tokens[1] + 1, width)] = class_id
    return ids


def normalize_class_name(name: str) -> str:
    """The form under which class names of different datasets are compared: lower case,
    parenthesised qualifiers dropped, underscores as spaces, single spaces
    (the official prompt builder's cleaning, plus lower-casing)."""
    name = re.sub(r"\(.*?\)", " ", name).replace("_", " ")
    return " ".join(name.lower().split())


def build_category_vocabulary(class_names: Iterable[str]) -> dict[str, int]:
    """One id per distinct normalised class name, over every dataset of a training mix.

    Ids are assigned in sorted name order so every process, and every resumed run,
    builds the same mapping from the same datasets. Two datasets naming the same thing
    the same way ("person" in COCO and in Objects365) share an id; dataset-local ids
    would not (the official loss compares those, see
    :mod:`glip.modeling.losses.inter_image`).
    """
    names = sorted({normalize_class_name(n) for n in class_names} - {""})
    return {name: i for i, name in enumerate(names)}
