"""Caption decoding with the captioning head: append a ``[MASK]``, predict it, repeat.

The model runs causally (:mod:`glip.modeling.language.causal`), so the prediction at the ``[MASK]``
slot depends on the image and the tokens before it only: exactly the training situation
of a masked caption token whose prefix was left intact. Each step runs the text encoder,
the trunk and the head on ``[CLS] w_1 .. w_t [MASK]`` (no key/value cache: captions are
short); the backbone runs once per image.

Scores are sums of log-probabilities (no length normalisation), so beam search with one
beam is greedy decoding. ``[CLS]``, ``[PAD]`` and ``[MASK]`` are never generated. A caption
ends with the end token (``[SEP]``) or after ``max_length`` tokens (the end token counted).

Dimension letters: K beams, t prefix length, V vocabulary.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from glip.modeling.glip import GLIP
from glip.modeling.heads.base import TokenIds
from glip.modeling.heads.caption import CAPTION, CaptionHead
from glip.modeling.heads.require import CaptionUnavailableError, require_head

__all__ = [
    "CaptionUnavailableError",
    "GeneratedCaption",
    "beam_candidates",
    "beam_search",
    "greedy_decode",
    "require_caption_head",
]


def require_caption_head(model: GLIP) -> CaptionHead:
    """The model's captioning head, or :class:`CaptionUnavailableError` (one line naming
    the model): :func:`glip.modeling.heads.require.require_head` for ``"caption"``."""
    return require_head(model, CAPTION, CaptionHead)


@dataclass
class GeneratedCaption:
    """One decoded caption.

    Attributes:
        token_ids: the generated ids, without ``[CLS]`` and without the end token.
        score: the sum of the log-probabilities of the generated tokens (the end token
            included when it was generated).
        finished: whether the end token was generated (else ``max_length`` cut it).
    """

    token_ids: list[int]
    score: float
    finished: bool


class _Stepper:
    """Log-probabilities of the next token after K prefixes, for one image."""

    def __init__(self, model: GLIP, features: Sequence[Tensor], special: dict[str, int]) -> None:
        self.model = model
        self.head = require_head(model, CAPTION, CaptionHead)
        self.features = list(features)
        self.mask_id = special["mask"]
        self.banned = sorted({special["cls"], special["pad"], special["mask"]})

    def __call__(self, prefixes: Tensor) -> Tensor:
        """``prefixes``: ``Tensor[K, t]`` ids starting with ``[CLS]`` -> ``Tensor[K, V]`` float32 log-probs."""
        k, t = prefixes.shape
        slot = torch.full((k, 1), self.mask_id, dtype=prefixes.dtype, device=prefixes.device)
        ids = torch.cat([prefixes, slot], dim=1)  # [K, t + 1]
        mask = torch.ones_like(ids)
        features = [f.expand(k, -1, -1, -1) for f in self.features]  # K x [K, C, H_l, W_l]
        out = self.model.forward_features(features, ids, mask, heads=(CAPTION,), causal=True)
        positions = torch.full((k,), t, dtype=torch.int64, device=ids.device)
        return self.head.postprocess(out.heads[CAPTION], positions, self.banned).log_probs  # [K, V]


def _special_ids(tokenizer: object) -> dict[str, int]:
    ids = TokenIds.from_tokenizer(tokenizer)
    found = {"cls": ids.cls, "end": ids.sep, "mask": ids.mask, "pad": ids.pad}
    missing = [k for k, v in found.items() if v is None]
    if missing:
        raise ValueError(f"the tokenizer has no {missing} token ids; captioning needs a BERT-style tokenizer")
    return {k: int(v) for k, v in found.items()}  # type: ignore[arg-type]


@torch.no_grad()
def greedy_decode(model: GLIP, features: Sequence[Tensor], max_length: int = 20) -> GeneratedCaption:
    """The most likely next token, step by step.

    Args:
        model: a GLIP with a captioning head and a tokenizer.
        features: L FPN maps ``Tensor[1, C, H_l, W_l]`` of one image.
        max_length: the most generated tokens (the end token counted).
    """
    special = _special_ids(model.tokenizer)
    step = _Stepper(model, features, special)
    device = features[0].device
    seq = [special["cls"]]
    score = 0.0
    for _ in range(max_length):
        log_probs = step(torch.tensor([seq], device=device))[0]  # [V]
        token = int(log_probs.argmax())
        score += float(log_probs[token])
        if token == special["end"]:
            return GeneratedCaption(seq[1:], score, True)
        seq.append(token)
    return GeneratedCaption(seq[1:], score, False)


@torch.no_grad()
def beam_search(model: GLIP, features: Sequence[Tensor], beam_size: int = 3, max_length: int = 20) -> GeneratedCaption:
    """Beam search over captions; the best by summed log-probability (the first of
    :func:`beam_candidates`).

    Each step extends the live beams and keeps the ``beam_size`` best continuations that do
    not end; an ending among the ``beam_size`` best continuations goes to the finished list. It stops when ``beam_size`` captions
    have finished and no live beam can beat the worst of them (scores only decrease), or
    after ``max_length`` steps; the best finished caption wins, or, when none finished,
    the best live one. ``beam_size`` 1 is :func:`greedy_decode`.

    Args:
        model, features, max_length: as :func:`greedy_decode`.
        beam_size: K.
    """
    return beam_candidates(model, features, beam_size, max_length)[0]


@torch.no_grad()
def beam_candidates(
    model: GLIP, features: Sequence[Tensor], beam_size: int = 3, max_length: int = 20
) -> list[GeneratedCaption]:
    """The captions :func:`beam_search` chooses among, best first: up to ``beam_size``
    finished ones by summed log-probability, or, when none finished, the best live one
    alone (the input of a re-ranker; the first is :func:`beam_search`'s caption)."""
    if beam_size < 1:
        raise ValueError(f"beam_size must be at least 1, got {beam_size}")
    special = _special_ids(model.tokenizer)
    step = _Stepper(model, features, special)
    device = features[0].device
    live: list[tuple[list[int], float]] = [([special["cls"]], 0.0)]
    finished: list[tuple[list[int], float]] = []
    for _ in range(max_length):
        log_probs = step(torch.tensor([s for s, _ in live], device=device))  # [K, V]
        totals = torch.tensor([sc for _, sc in live], dtype=torch.float64, device=device)[:, None] + log_probs
        flat = totals.flatten()  # [K * V]
        top = flat.topk(min(2 * beam_size, flat.numel()))
        vocab = log_probs.shape[1]
        next_live: list[tuple[list[int], float]] = []
        for rank, (value, index) in enumerate(zip(top.values.tolist(), top.indices.tolist())):
            beam, token = divmod(index, vocab)
            if value == float("-inf"):
                break
            if token == special["end"]:
                # Only an ending among the K best continuations counts (as Hugging Face's
                # beam search), so that one beam takes exactly the greedy path.
                if rank < beam_size:
                    finished.append((live[beam][0][1:], value))
            elif len(next_live) < beam_size:
                next_live.append((live[beam][0] + [token], value))
            if len(next_live) == beam_size and len(finished) >= beam_size:
                break
        finished = sorted(finished, key=lambda f: -f[1])[:beam_size]
        live = next_live
        if not live or (len(finished) >= beam_size and max(sc for _, sc in live) <= finished[-1][1]):
            break
    if finished:
        return [GeneratedCaption(tokens, score, True) for tokens, score in finished]
    tokens, score = max(live, key=lambda b: b[1])
    return [GeneratedCaption(tokens[1:], score, False)]
