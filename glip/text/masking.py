"""Masked-language-model corruption of prompts (GLIPv2's L_mlm) and the per-token
"greenlight" map that says which tokens may be masked and scored.

Official counterpart: ``random_word`` in ``modeling/detector/generalized_vl_rcnn.py``
(the corruption, one Python ``random.random()`` per position) and ``create_greenlight_map``
in ``data/datasets/modulated_coco.py`` (the map). Here the corruption is vectorised and
each sample draws from its own generator (:func:`glip.utils.seeding.sample_seed`), so a
run reproduces, resumes exactly and does not depend on the process count.

Dimension letters: B prompts, T tokens (the padded prompt length).

Greenlight values (official semantics):

- ``1``: the token may be masked and its original id is a label of the loss;
- ``0``: the token may be masked (the model sees the corruption) but is not scored;
- ``-1``: the token is never masked and never scored (the whole row for data under the
  official ``NO_MASK_FOR_OD`` / ``NO_MASK_FOR_GOLD``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from glip.text.spans import span_token_mask

__all__ = [
    "IGNORE_INDEX",
    "DataKind",
    "MaskedTokens",
    "apply_token_masking",
    "batch_greenlight",
    "greenlight_map",
    "mask_tokens",
]

DataKind = Literal["detection", "grounding", "caption"]

# torch.nn.CrossEntropyLoss's default ignore_index, the label of unscored positions.
IGNORE_INDEX = -100
# BERT's recipe (Devlin et al. 2019), the official values: 15% of the tokens selected;
# of those 80% -> [MASK], 10% -> a uniformly random id, 10% unchanged.
SELECT_PROB = 0.15
MASK_FRACTION = 0.8
RANDOM_FRACTION = 0.1

# Codes of MaskedTokens.decision (the fixture's convention).
NEVER, UNTOUCHED, MASKED, RANDOM, KEPT = -1, 0, 1, 2, 3


def greenlight_map(
    encoding: Any,
    caption: str,
    kind: DataKind,
    width: int,
    positive_spans: Sequence[tuple[int, int]] = (),
    only_positives: bool = True,
    no_mask_for_od: bool = False,
    no_mask_for_gold: bool = False,
) -> Tensor:
    """The greenlight row of one prompt, ``Tensor[T]`` int64 in {-1, 0, 1}.

    Args:
        encoding: the caption's fast-tokenizer encoding (``tokenizer([caption], ...)``).
        caption: the prompt text.
        kind: ``"detection"`` (a prompt of class names built from detection labels),
            ``"grounding"`` (gold grounding data: Flickr30k, GoldG) or ``"caption"``
            (image-text pairs with pseudo boxes).
        width: T.
        positive_spans: detection only: the ``(start, end)`` character spans of the class
            names that have a box in the image (official ``greenlight_span_for_masked_lm_objective``).
        only_positives: official ``MLM_LOSS_FOR_ONLY_POSITIVES`` (True). When True,
            detection prompts score only the positive class names and grounding /
            caption prompts the whole caption (not ``[CLS]``, ``[SEP]`` nor padding).
            When False every token is scored. (The official model then drops the map
            altogether, which also ignores ``NO_MASK_FOR_*``; here those stay honoured.)
        no_mask_for_od: official ``NO_MASK_FOR_OD``: detection prompts are never masked.
        no_mask_for_gold: official ``NO_MASK_FOR_GOLD``: gold grounding prompts are never masked.
    """
    if kind not in ("detection", "grounding", "caption"):
        raise ValueError(f"unknown data kind {kind!r}; expected 'detection', 'grounding' or 'caption'")
    if (kind == "detection" and no_mask_for_od) or (kind == "grounding" and no_mask_for_gold):
        return torch.full((width,), NEVER, dtype=torch.int64)
    if not only_positives:
        return torch.ones(width, dtype=torch.int64)
    spans = list(positive_spans) if kind == "detection" else [(0, len(caption))]
    return span_token_mask(encoding, spans, width).to(torch.int64)


def batch_greenlight(
    base: Tensor,
    kinds: Sequence[DataKind],
    only_positives: bool = True,
    no_mask_for_od: bool = False,
    no_mask_for_gold: bool = False,
) -> Tensor:
    """The greenlight map of a batch, ``Tensor[B, T]``, from each prompt's default map.

    The same rules as :func:`greenlight_map`, applied to rows a dataset already built
    with its defaults (``only_positives`` True, no ``NO_MASK_*``): the datasets do not
    know the MLM head's settings, the batch does not need the tokenizer again.

    Args:
        base (Tensor[B, T]): each prompt's :func:`greenlight_map` with default settings.
        kinds: the B prompts' data kinds.
        only_positives, no_mask_for_od, no_mask_for_gold: as :func:`greenlight_map`.
    """
    if len(kinds) != base.shape[0]:
        raise ValueError(f"need one data kind per prompt: got {len(kinds)} for {base.shape[0]} prompts")
    unknown = sorted(set(kinds) - {"detection", "grounding", "caption"})
    if unknown:
        raise ValueError(f"unknown data kinds {unknown}; expected 'detection', 'grounding' or 'caption'")
    out = base.to(torch.int64) if only_positives else torch.ones_like(base, dtype=torch.int64)
    never = torch.tensor(
        [(k == "detection" and no_mask_for_od) or (k == "grounding" and no_mask_for_gold) for k in kinds],
        dtype=torch.bool,
        device=base.device,
    )  # [B]
    return out.masked_fill(never[:, None], NEVER)


@dataclass
class MaskedTokens:
    """A corrupted batch of prompts and its MLM labels.

    Attributes:
        input_ids: ``Tensor[B, T]`` int64, the ids the text encoder gets.
        labels: ``Tensor[B, T]`` int64, the original id at scored positions, -100 elsewhere.
        decision: ``Tensor[B, T]`` int64: -1 never maskable (greenlight -1), 0 not
            selected, 1 replaced by ``[MASK]``, 2 replaced by a random id, 3 selected and kept.
    """

    input_ids: Tensor
    labels: Tensor
    decision: Tensor

    @property
    def num_scored(self) -> int:
        return int((self.labels != IGNORE_INDEX).sum())


def apply_token_masking(
    input_ids: Tensor,
    attention_mask: Tensor,
    greenlight: Tensor | None,
    uniforms: Tensor,
    random_ids: Tensor,
    mask_token_id: int,
    select_prob: float = SELECT_PROB,
    mask_fraction: float = MASK_FRACTION,
    random_fraction: float = RANDOM_FRACTION,
) -> MaskedTokens:
    """The corruption given the random draws (pure function; :func:`mask_tokens` draws them).

    The official rule, position by position, without a loop: a position is selected when
    it is not padding, its greenlight is not -1 and ``u < select_prob``; then with
    ``v = u / select_prob``, ``v < mask_fraction`` -> ``[MASK]``, ``v < mask_fraction +
    random_fraction`` -> ``random_ids``, otherwise unchanged. Selected positions with
    greenlight 1 are scored. ``[CLS]`` and ``[SEP]`` are not special: they can be
    corrupted, and are scored only if their greenlight is 1.

    Args:
        input_ids (Tensor[B, T]): token ids.
        attention_mask (Tensor[B, T]): non-zero on real tokens, 0 on padding.
        greenlight (Tensor[B, T] | None): values in {-1, 0, 1}; None = 1 everywhere.
        uniforms (Tensor[B, T]): one U[0, 1) draw per position (float64 recommended).
        random_ids (Tensor[B, T]): the id each position takes if it draws "random".
        mask_token_id: the ``[MASK]`` id (103 in the BERT vocabulary).
    """
    if input_ids.shape != attention_mask.shape or input_ids.shape != uniforms.shape:
        raise ValueError(
            f"input_ids {tuple(input_ids.shape)}, attention_mask {tuple(attention_mask.shape)} and uniforms "
            f"{tuple(uniforms.shape)} must all be [B, T]"
        )
    if greenlight is None:
        greenlight = torch.ones_like(input_ids)
    elif greenlight.shape != input_ids.shape:
        raise ValueError(f"greenlight {tuple(greenlight.shape)} must be [B, T] like input_ids {tuple(input_ids.shape)}")
    uniforms = uniforms.to(input_ids.device)
    never = greenlight.to(input_ids.device) == NEVER
    selected = (attention_mask != 0) & ~never & (uniforms < select_prob)  # [B, T]
    scaled = uniforms / select_prob  # the official divides before comparing
    to_mask = selected & (scaled < mask_fraction)
    to_random = selected & ~to_mask & (scaled < mask_fraction + random_fraction)
    kept = selected & ~to_mask & ~to_random

    corrupted = torch.where(to_mask, torch.full_like(input_ids, mask_token_id), input_ids)
    corrupted = torch.where(to_random, random_ids.to(input_ids), corrupted)
    scored = selected & (greenlight.to(input_ids.device) == 1)
    labels = torch.where(scored, input_ids, torch.full_like(input_ids, IGNORE_INDEX))
    decision = torch.full_like(input_ids, UNTOUCHED)
    decision[never] = NEVER
    decision[to_mask] = MASKED
    decision[to_random] = RANDOM
    decision[kept] = KEPT
    return MaskedTokens(input_ids=corrupted, labels=labels, decision=decision)


def mask_tokens(
    input_ids: Tensor,
    attention_mask: Tensor,
    greenlight: Tensor | None,
    generators: Sequence[torch.Generator],
    mask_token_id: int,
    vocab_size: int,
    select_prob: float = SELECT_PROB,
    mask_fraction: float = MASK_FRACTION,
    random_fraction: float = RANDOM_FRACTION,
) -> MaskedTokens:
    """Corrupts a batch for the MLM loss, each prompt from its own generator.

    Prompt ``b`` draws T float64 uniforms then T ids uniform in ``[0, vocab_size)``
    (special ids included, as officially) from ``generators[b]``, so its corruption
    depends only on that generator's seed (e.g. ``sample_seed(seed, epoch, index)``)
    and on its own tokens. See :func:`apply_token_masking` for the rule.

    Args:
        input_ids (Tensor[B, T]), attention_mask (Tensor[B, T]), greenlight (Tensor[B, T] | None):
            as :func:`apply_token_masking`; ``input_ids`` is not modified.
        generators: B CPU generators.
        mask_token_id: the ``[MASK]`` id.
        vocab_size: V, the size of the vocabulary random ids are drawn from.
    """
    batch, width = input_ids.shape
    if len(generators) != batch:
        raise ValueError(f"need one generator per prompt: got {len(generators)} for {batch} prompts")
    uniforms = torch.stack([torch.rand(width, generator=g, dtype=torch.float64) for g in generators])  # [B, T]
    random_ids = torch.stack([torch.randint(vocab_size, (width,), generator=g) for g in generators])  # [B, T]
    return apply_token_masking(
        input_ids,
        attention_mask,
        greenlight,
        uniforms,
        random_ids,
        mask_token_id,
        select_prob=select_prob,
        mask_fraction=mask_fraction,
        random_fraction=random_fraction,
    )
