"""Packing random other captions into a pseudo-labelled caption, as negatives.

The official caption dataset (``CaptionTSV.pack_caption`` in
``maskrcnn_benchmark/data/datasets/caption.py``, ``DATASETS.PACK_RANDOM_CAPTION_NUMBER``)
turns one image-caption pair into a longer prompt: the image's own caption plus captions
of random other images of the set, in random order. The boxes keep grounding the tokens of
their own caption (their spans are shifted to where it landed); the other captions' tokens
ground nothing, so the region-word loss learns to score them low, as detection prompts'
negative class names.

How many: with ``pack_prob`` set (official ``RANDOM_PACK_PROB``, -1: unset), none with
probability ``no_pack_prob`` (``NO_RANDOM_PACK_PROBABILITY``), else all ``number`` with
probability ``pack_prob``, else a uniform count in ``[0, number)``; unset: always ``number``
(the official reads ``NO_RANDOM_PACK_PROBABILITY`` only when ``RANDOM_PACK_PROB`` is set).

Length safeguard (official ``SAFEGUARD_POSITIVE_CAPTION``, on by default): the negatives are
visited in random order and one is kept when its token count (special tokens included) is
below what the query length leaves after the kept ones and the positive caption, so the
positive caption is never truncated away.

Joined text: each caption, then ``"."`` unless it ends with one, then ``" "``.

Phrase-disjoint packing (``disjoint``, not official): a negative caption is drawn only among
captions that ground none of the phrases the image's own caption grounds (compared
lower-cased, a leading article dropped). The official draw may pack "a red circle" as a
negative beside an own caption grounding "a red circle": the same words are then a
positive and a negative for the same box. Each negative slot retries up to
``DISJOINT_TRIES`` draws and stays empty when none fits.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from glip.data.od_to_grounding import SampleRNG

__all__ = [
    "DISJOINT_TRIES",
    "CaptionPacking",
    "CaptionPool",
    "PackedCaption",
    "draw_negatives",
    "grounded_phrases",
    "pack_captions",
    "pack_from_pool",
]

# Draws per negative slot before phrase-disjoint packing leaves it empty.
DISJOINT_TRIES = 20
_ARTICLES = ("a ", "an ", "the ")


@dataclass(frozen=True)
class CaptionPacking:
    """The packing options (official ``DATASETS`` keys in brackets).

    Attributes:
        number: up to this many negative captions (``PACK_RANDOM_CAPTION_NUMBER``); 0: none.
        pack_prob: probability of packing all ``number`` (``RANDOM_PACK_PROB``); -1: always.
        no_pack_prob: probability of packing none (``NO_RANDOM_PACK_PROBABILITY``), read
            only when ``pack_prob`` is set.
        disjoint: negatives only among captions grounding none of the own caption's
            phrases (not official; ``data.pack_disjoint``).
    """

    number: int = 0
    pack_prob: float = -1.0
    no_pack_prob: float = 0.0
    disjoint: bool = False

    def __post_init__(self) -> None:
        if self.number < 0:
            raise ValueError(f"the number of packed captions must be >= 0, got {self.number}")

    def draw_count(self, rng: SampleRNG) -> int:
        """How many negatives this sample packs (Python stream for the coin flips, numpy's
        for the uniform count, as the official)."""
        if self.number == 0:
            return 0
        if self.pack_prob == -1.0:
            return self.number
        if rng.py.random() < self.no_pack_prob:
            return 0
        if rng.py.random() < self.pack_prob:
            return self.number
        return int(rng.np.randint(self.number))


@dataclass(frozen=True)
class PackedCaption:
    """A packed prompt.

    Attributes:
        caption: the joined text.
        spans: per box, its ``(start, end)`` character spans moved into ``caption``.
        positive: the ``(start, end)`` span of the image's own caption in ``caption``.
        num_negatives: how many negative captions were kept.
    """

    caption: str
    spans: list[list[tuple[int, int]]]
    positive: tuple[int, int]
    num_negatives: int


def pack_captions(
    caption: str,
    spans: Sequence[Sequence[tuple[int, int]]],
    negatives: Sequence[str],
    lengths: Sequence[int],
    max_query_len: int,
    rng: SampleRNG,
) -> PackedCaption:
    """Packs ``caption`` (whose boxes ground ``spans``) with ``negatives``.

    Args:
        caption: the image's own caption.
        spans: per box, ``(start, end)`` character spans in ``caption``.
        negatives: other images' captions.
        lengths: token counts (special tokens included) of ``negatives`` then ``caption``
            (``len(negatives) + 1`` numbers).
        max_query_len: the text encoder's query length.
        rng: the sample's streams (two Python shuffles).
    """
    if len(lengths) != len(negatives) + 1:
        raise ValueError(f"{len(negatives) + 1} token counts expected, got {len(lengths)}")
    if not negatives:
        return PackedCaption(caption, [list(map(tuple, g)) for g in spans], (0, len(caption)), 0)
    budget = max_query_len - lengths[-1]
    order = list(range(len(negatives)))
    rng.py.shuffle(order)
    kept = []
    for i in order:
        if lengths[i] < budget:
            kept.append(i)
            budget -= lengths[i]
    pieces = [-1, *kept]  # -1: the positive caption
    rng.py.shuffle(pieces)
    text, start = "", 0
    for piece in pieces:
        if piece == -1:
            start = len(text)
        part = caption if piece == -1 else negatives[piece]
        text += part if part.endswith(".") else part + "."
        text += " "
    moved = [[(a + start, b + start) for a, b in group] for group in spans]
    return PackedCaption(text, moved, (start, start + len(caption)), len(kept))


def grounded_phrases(caption: str, spans: Sequence[Sequence[tuple[int, int]]]) -> frozenset[str]:
    """The phrases ``caption``'s boxes ground: per box, the text of its ``spans`` joined,
    lower-cased, a leading article (a, an, the) dropped."""
    phrases = set()
    for group in spans:
        text = " ".join(caption[a:b] for a, b in group).lower().strip()
        for article in _ARTICLES:
            if text.startswith(article):
                text = text[len(article) :]
                break
        phrases.add(text)
    return frozenset(phrases)


def draw_negatives(
    item: int, count: int, size: int, rng: SampleRNG, phrases: Callable[[int], frozenset[str]] | None = None
) -> list[int]:
    """Indices of up to ``count`` other items of a set of ``size`` (never ``item``), drawn
    uniformly with ``rng``'s numpy stream. With ``phrases`` (index -> its grounded phrases)
    only items sharing no phrase with ``item``: each slot retries up to
    :data:`DISJOINT_TRIES` draws and is left empty when none fits."""
    if count <= 0 or size < 2:
        return []
    if phrases is None:
        return [int(j) + (int(j) >= item) for j in rng.np.randint(size - 1, size=count)]
    own, picked = phrases(item), []
    for _ in range(count):
        for j in rng.np.randint(size - 1, size=DISJOINT_TRIES):
            other = int(j) + (int(j) >= item)
            if not own & phrases(other):
                picked.append(other)
                break
    return picked


@dataclass(frozen=True)
class CaptionPool:
    """The captions negatives are drawn from: ``size`` items, ``caption(j)`` the text of
    item ``j`` and ``phrases(j)`` the phrases its boxes ground (:func:`grounded_phrases`).
    A json dataset's pool is the whole set; a shard stream's, the shard being read."""

    size: int
    caption: Callable[[int], str]
    phrases: Callable[[int], frozenset[str]]


def pack_from_pool(
    packing: CaptionPacking,
    item: int,
    caption: str,
    spans: Sequence[Sequence[tuple[int, int]]],
    pool: CaptionPool,
    count_tokens: Callable[[str], int],
    max_query_len: int,
    rng: SampleRNG,
) -> PackedCaption:
    """Item ``item`` of ``pool`` (its ``caption``, whose boxes ground ``spans``) packed with
    the captions of random other items of ``pool``: the count drawn by ``packing``, the items
    by :func:`draw_negatives` (phrase-disjoint with ``packing.disjoint``), then
    :func:`pack_captions`. ``count_tokens``: a text's token count, special tokens included."""
    count = packing.draw_count(rng) if pool.size > 1 else 0
    others = draw_negatives(item, count, pool.size, rng, pool.phrases if packing.disjoint else None)
    negatives = [pool.caption(j) for j in others]
    lengths = [count_tokens(text) for text in [*negatives, caption]]
    return pack_captions(caption, spans, negatives, lengths, max_query_len, rng)
