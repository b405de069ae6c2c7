"""Detection labels -> a grounding caption, the way the official training data path builds it.

Two official recipes turn the category labels of one image into a caption with one
character span per category:

- :func:`caption_all_categories` (COCO fine-tuning and ODinW, official
  ``convert_od_to_grounding_simple``): every category of the dataset, in contiguous-id
  order or shuffled, optionally wrapped in per-category prompts. No negative sampling and
  no length control: a caption longer than the text encoder is simply truncated by the
  tokenizer, and boxes of the categories cut off get all-zero token rows.
- :func:`caption_with_negatives` (Objects365-style pre-training, official
  ``convert_object_detection_to_grounding_optimized_for_od``): every positive category
  plus randomly sampled negative categories, within a token budget, in random order;
  :func:`drop_overflowing_positives` first removes positive categories (and their boxes)
  that do not fit.

Randomness comes from a :class:`SampleRNG` holding the two streams the official code draws
from (Python ``random`` and numpy's legacy global generator). Seeding it as the official
scripts seed the globals (``random.seed(s); np.random.seed(s)``) replays their draws call
for call, so the captions equal the official ones for the same seed.
"""

from __future__ import annotations

import ast
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "BACKGROUND_NAME",
    "DEFAULT_CONTROL_PROBABILITIES",
    "DETECTION_PROMPT",
    "CaptionPromptEntry",
    "CaptionRecipe",
    "GroundingCaption",
    "SampleRNG",
    "build_caption",
    "caption_all_categories",
    "caption_with_negatives",
    "clean_name",
    "drop_overflowing_positives",
    "labels_to_caption",
    "parse_caption_prompt",
]

# The name ODTSVDataset gives label 0; sampled as a negative it reads " background ".
BACKGROUND_NAME = "__background__"
# Official DATASETS.CONTROL_PROB of the pre-training yamls (configs/pretrain/*.yaml):
# (one negative, one positive, full, drop positive) probabilities.
DEFAULT_CONTROL_PROBABILITIES = (0.0, 0.0, 0.5, 0.0)
# Official DATASETS.ADD_DET_PROMPT prefix.
DETECTION_PROMPT = "object detection : "


def clean_name(name: str) -> str:
    """A category name as it appears in captions: ``"(...)"`` removed, ``_`` -> space,
    one pass of double space -> single space (official ``clean_name``; ``"__background__"``
    becomes ``" background "``)."""
    name = re.sub(r"\(.*\)", "", name)
    name = re.sub(r"_", " ", name)
    return re.sub(r"  ", " ", name)


@dataclass
class SampleRNG:
    """The random streams of one sample.

    Attributes:
        py: Python generator (shuffles, the control option, the resize choice, the flip).
        np: numpy legacy generator (negative sampling, the random negative count).
    """

    py: random.Random
    np: np.random.RandomState

    @staticmethod
    def from_seed(seed: int) -> SampleRNG:
        """Both streams seeded with ``seed``, as ``random.seed(seed); np.random.seed(seed)``."""
        return SampleRNG(random.Random(seed), np.random.RandomState(seed % 2**32))


@dataclass(frozen=True)
class CaptionPromptEntry:
    """Text around one category in an ODinW caption (official ``DATASETS.CAPTION_PROMPT``).

    The caption holds ``prefix + clean_name(name) + suffix``; the span covers the name only.
    """

    prefix: str
    name: str
    suffix: str


def parse_caption_prompt(value: str | Sequence[Mapping[str, str]] | None) -> list[CaptionPromptEntry] | None:
    """``DATASETS.CAPTION_PROMPT`` -> entries, one per category in contiguous-id order.

    Accepts the yaml string of the ODinW configs (a Python literal such as
    ``'[{"prefix": "there are some ", "name": "holes", "suffix": " on the road"}]'``,
    which the official yacs loader evaluates) or an already parsed list of dicts.
    """
    if value is None:
        return None
    if isinstance(value, str):
        value = ast.literal_eval(value)
    entries = []
    for item in value:  # type: ignore[union-attr]
        entries.append(CaptionPromptEntry(str(item["prefix"]), str(item["name"]), str(item["suffix"])))
    return entries


@dataclass
class GroundingCaption:
    """A caption made from category names.

    Attributes:
        caption: the text given to the tokenizer.
        label_to_span: ``{label: (start, end)}`` character span (end exclusive) of each
            category in the caption, in caption order; a box of label ``l`` grounds
            ``label_to_span[l]``. Labels are the dataset's contiguous ids (0 is the
            background of pre-training label maps).
    """

    caption: str
    label_to_span: dict[int, tuple[int, int]]


def build_caption(
    labels: Sequence[int],
    ind_to_class: Mapping[int, str],
    separator: str = ". ",
    caption_prompt: Sequence[CaptionPromptEntry] | None = None,
    prefix: str = "",
) -> GroundingCaption:
    """Joins the cleaned names of ``labels`` (in the given order) with ``separator``.

    No separator follows the last name. With ``caption_prompt``, the ``i``-th label is
    written as ``prompt[i].prefix + clean_name(prompt[i].name) + prompt[i].suffix``
    (the entry's name replaces the category name, as in the official code).
    """
    if caption_prompt is not None and len(caption_prompt) < len(labels):
        raise ValueError(f"caption_prompt has {len(caption_prompt)} entries for {len(labels)} categories")
    caption = prefix
    spans: dict[int, tuple[int, int]] = {}
    for i, label in enumerate(labels):
        entry = caption_prompt[i] if caption_prompt is not None else None
        if entry is not None:
            caption += entry.prefix
        start = len(caption)
        caption += clean_name(entry.name if entry is not None else ind_to_class[label])
        spans[int(label)] = (start, len(caption))
        if entry is not None:
            caption += entry.suffix
        if i != len(labels) - 1:
            caption += separator
    return GroundingCaption(caption, spans)


def caption_all_categories(
    ind_to_class: Mapping[int, str],
    rng: SampleRNG | None = None,
    shuffle: bool = False,
    separator: str = ". ",
    caption_prompt: Sequence[CaptionPromptEntry] | None = None,
    add_detection_prompt: bool = False,
) -> GroundingCaption:
    """Every category in one caption (official COCO / ODinW recipe).

    Categories follow ascending contiguous id, or a ``rng.py.shuffle`` of that order when
    ``shuffle`` (official ``DATASETS.DISABLE_SHUFFLE False``; the COCO fine-tuning and
    ODinW yamls set it True). Per-category prompts only make sense in a fixed order.
    """
    labels = sorted(ind_to_class.keys())
    if shuffle:
        if caption_prompt is not None:
            raise ValueError("caption_prompt entries follow the category order; they cannot be shuffled")
        if rng is None:
            raise ValueError("shuffling categories needs a SampleRNG")
        rng.py.shuffle(labels)
    prefix = DETECTION_PROMPT if add_detection_prompt else ""
    return build_caption(labels, ind_to_class, separator, caption_prompt, prefix)


def _num_tokens(tokenizer: Any, text: str) -> int:
    return len(tokenizer.tokenize(text))


def drop_overflowing_positives(
    labels: Sequence[int],
    ind_to_class: Mapping[int, str],
    tokenizer: Any,
    rng: SampleRNG,
    max_seq_length: int = 254,
) -> tuple[set[int], int]:
    """Positive categories that fit in ``max_seq_length`` tokens (official
    ``check_for_positive_overflow``).

    The distinct labels (``labels`` has one entry per box) are shuffled; their
    ``clean_name(name) + ". "`` token counts are summed until the total first exceeds
    ``max_seq_length``, and that label and all later ones are dropped.

    Returns:
        ``(kept labels, length)`` where ``length`` is the summed token count including the
        label that overflowed (the official value, used as the positives' budget).
    """
    distinct = list({int(v) for v in labels})  # set order, as the official list(set)
    rng.py.shuffle(distinct)
    kept: set[int] = set()
    length = 0
    for label in distinct:
        length += _num_tokens(tokenizer, clean_name(ind_to_class[label]) + ". ")
        if length > max_seq_length:
            break
        kept.add(label)
    return kept, length


def _control_negative_count(
    rng: SampleRNG, control_probabilities: Sequence[float], full_positive: int, full_negative: int
) -> int:
    """How many negatives to draw (official ``generate_control_options_given_probabilities``;
    the positive count it also returns is ignored by the official caller)."""
    p_one_negative, p_one_positive, p_full, p_drop_positive = control_probabilities
    if p_drop_positive != 0:
        raise ValueError("the official code asserts a zero drop-positive probability")
    outer = rng.py.random()
    if outer < p_one_negative:
        return 1
    if outer < p_one_positive + p_one_negative:
        return 0
    if outer < p_full + p_one_positive + p_one_negative:
        return full_negative
    # The remaining mass: a uniform count in 1..full_negative (the official test against
    # 1.0 always passes), then a draw for the zero drop-positive probability.
    rng.py.random()
    count = int(rng.np.choice(max(1, full_negative))) + 1
    rng.py.random()
    return count


def caption_with_negatives(
    labels: Sequence[int],
    ind_to_class: Mapping[int, str],
    tokenizer: Any,
    rng: SampleRNG,
    random_sample_negative: int = 85,
    control_probabilities: Sequence[float] = DEFAULT_CONTROL_PROBABILITIES,
    separator: str = ". ",
    max_seq_length: int = 254,
    positive_caption_length: int = 0,
    max_num_labels: int = -1,
    disable_shuffle: bool = False,
    add_detection_prompt: bool = False,
    negative_candidates: Sequence[int] | None = None,
) -> GroundingCaption:
    """Positive categories plus sampled negatives (official pre-training recipe).

    Steps, each drawing from ``rng`` exactly as the official code does:

    1. ``full_negative = min(random_sample_negative, #candidates)`` (or
       ``max_num_labels - #positives`` when ``max_num_labels > 0``); the control option
       picks all of them or a uniform count in ``1..full_negative``.
    2. That many candidates are drawn without replacement from ``negative_candidates``
       (default: every key of ``ind_to_class``, background and positives included);
       positives are then removed, so fewer negatives than drawn may remain.
    3. Positives and negatives are shuffled; negatives are kept in order while
       ``max_seq_length - positive_caption_length`` minus their ``name + ". "`` token
       counts stays positive, stopping at the first that does not fit.
    4. ``negatives + positives`` is shuffled again and joined with ``separator``.

    Args:
        labels: ``[N]`` contiguous label of each box (all positives are kept; call
            :func:`drop_overflowing_positives` first to respect the budget).
        positive_caption_length: the length returned by :func:`drop_overflowing_positives`.
        disable_shuffle: every category except the background in id order, nothing
            sampled. (The official code drops the first sorted key assuming it is the
            background, which drops category 1 on COCO-style label maps; here only a
            background label 0 is left out.)
    """
    prefix = DETECTION_PROMPT if add_detection_prompt else ""
    if disable_shuffle:
        ordered = [k for k in sorted(ind_to_class.keys()) if k != 0]
        return build_caption(ordered, ind_to_class, separator, None, prefix)

    candidates = list(ind_to_class.keys()) if negative_candidates is None else list(negative_candidates)
    positive_set = {int(v) for v in labels}
    full_positive = len(positive_set)
    if max_num_labels <= 0:
        full_negative = random_sample_negative
    else:
        full_negative = max(min(max_num_labels - full_positive, random_sample_negative), 0)
    full_negative = min(full_negative, len(candidates))

    num_negatives = _control_negative_count(rng, control_probabilities, full_positive, full_negative)
    negative_set: set[int] = set()
    if num_negatives != -1:
        num_negatives = min(num_negatives, len(candidates))
        for drawn in rng.np.choice(candidates, size=num_negatives, replace=False):
            if int(drawn) not in positive_set:
                negative_set.add(int(drawn))

    positives = list(positive_set)
    rng.py.shuffle(positives)
    negatives = list(negative_set)
    rng.py.shuffle(negatives)

    budget = max_seq_length - positive_caption_length
    screened: list[int] = []
    for label in negatives:
        budget -= _num_tokens(tokenizer, clean_name(ind_to_class[label]) + ". ")
        if budget <= 0:
            break
        screened.append(label)

    ordered = screened + positives
    rng.py.shuffle(ordered)
    return build_caption(ordered, ind_to_class, separator, None, prefix)


@dataclass
class CaptionRecipe:
    """How detection labels become a caption (the official ``DATASETS.*`` switches).

    Attributes:
        sample_negatives: False: every category (COCO fine-tuning / ODinW,
            :func:`caption_all_categories`); True: positives plus sampled negatives within
            the token budget (pre-training, :func:`caption_with_negatives`).
        shuffle: random category order (official ``not DATASETS.DISABLE_SHUFFLE``).
        separator: official ``DATASETS.SEPARATION_TOKENS`` (". " in the GLIP yamls).
        caption_prompt: ODinW per-category prefix/name/suffix, in contiguous-id order.
        add_detection_prompt: prefix ``"object detection : "`` (``DATASETS.ADD_DET_PROMPT``).
        random_sample_negative: ``DATASETS.RANDOM_SAMPLE_NEG`` (85 in the pre-training yamls).
        control_probabilities: ``DATASETS.CONTROL_PROB``.
        max_num_labels: official ``TEST.MDETR_STYLE_AGGREGATE_CLASS_NUM`` (-1: no cap).
        background_negative: add label 0 named ``"__background__"`` as a negative
            candidate, as the official TSV label maps do (``ODTSVDataset``); it then reads
            ``" background "`` in captions.
        disjoint_negatives: sample negatives only among categories that share no word
            with the image's positives (not an official option). With compositional
            names ("red circle", "red square") a caption holding both gives the word
            "red" a positive and a negative target on the same red circle, which only a
            text encoder that tells the two "red" apart can fit; with disjoint
            negatives every word of a caption has one meaning, the model learns one
            detector per word, and phrase scores (the mean over a phrase's tokens)
            compose to unseen combinations.
    """

    sample_negatives: bool = False
    shuffle: bool = False
    separator: str = ". "
    caption_prompt: list[CaptionPromptEntry] | None = None
    add_detection_prompt: bool = False
    random_sample_negative: int = 85
    control_probabilities: tuple[float, float, float, float] = field(default=DEFAULT_CONTROL_PROBABILITIES)
    max_num_labels: int = -1
    background_negative: bool = False
    disjoint_negatives: bool = False

    @staticmethod
    def coco_finetune() -> CaptionRecipe:
        """README COCO fine-tuning and ODinW: all categories, fixed order."""
        return CaptionRecipe()

    @staticmethod
    def pretrain() -> CaptionRecipe:
        """Objects365-style pre-training (``configs/pretrain/*.yaml`` on ``*_dt`` data)."""
        return CaptionRecipe(sample_negatives=True, shuffle=True, background_negative=True)


def labels_to_caption(
    labels: Sequence[int],
    ind_to_class: Mapping[int, str],
    recipe: CaptionRecipe,
    tokenizer: Any,
    rng: SampleRNG,
    max_query_len: int = 256,
) -> tuple[GroundingCaption, set[int]]:
    """The caption of one image and the positive labels it grounds.

    Args:
        labels: ``[G]`` contiguous label of each box.
        ind_to_class: ``{label: category name}`` in the dataset's order.
        max_query_len: text-encoder length; the pre-training budget is
            ``max_query_len - 2`` tokens (room for ``[CLS]``/``[SEP]``).

    Returns:
        ``(caption, kept labels)``. Boxes whose label is not kept must be dropped (only
        the pre-training recipe drops any: positives beyond the token budget).
    """
    if not recipe.sample_negatives:
        caption = caption_all_categories(
            ind_to_class, rng, recipe.shuffle, recipe.separator, recipe.caption_prompt, recipe.add_detection_prompt
        )
        return caption, {int(v) for v in labels}
    if recipe.caption_prompt is not None:
        raise ValueError("caption_prompt applies to the all-categories recipe only")
    if recipe.background_negative and 0 not in ind_to_class:
        ind_to_class = {**ind_to_class, 0: BACKGROUND_NAME}
    max_seq_length = max_query_len - 2
    kept, length = drop_overflowing_positives(labels, ind_to_class, tokenizer, rng, max_seq_length)
    candidates = None
    if recipe.disjoint_negatives:
        used = {w for v in kept for w in _words(ind_to_class[v])}
        candidates = [c for c, name in ind_to_class.items() if not used & _words(name)]
    caption = caption_with_negatives(
        [v for v in labels if int(v) in kept],
        ind_to_class,
        tokenizer,
        rng,
        random_sample_negative=recipe.random_sample_negative,
        control_probabilities=recipe.control_probabilities,
        separator=recipe.separator,
        max_seq_length=max_seq_length,
        positive_caption_length=length,
        max_num_labels=recipe.max_num_labels,
        disable_shuffle=not recipe.shuffle,
        add_detection_prompt=recipe.add_detection_prompt,
        negative_candidates=candidates,
    )
    return caption, kept


def _words(name: str) -> set[str]:
    """The lower-cased words of a category name."""
    return set(name.lower().split())
