"""Prompt tuning: a learned offset on the language features the head consumes.

Official counterpart: ``tunable_linear`` of ``VLDyHead`` (``MODEL.DYHEAD.FUSE_CONFIG.
ADD_LINEAR_LAYER``, selected by ``SOLVER.TUNING_HIGHLEVEL_OVERRIDE language_prompt_v2``): a
zero-initialised ``[1000, D]`` matrix whose first ``T`` rows are added, position by
position, to both the ``embedded`` and the ``hidden`` text features before the head.
Dimension letters: B prompts, T tokens, D text width, R offset rows.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from glip.structures.text import TextFeatures

__all__ = ["PromptOffset"]


class PromptOffset(nn.Module):
    """A per-position offset ``weight[:T]`` added to ``TextFeatures.hidden`` and ``.embedded``.

    Args:
        num_rows: R, the positions it can cover (official 1000; ours default to the
            model's ``max_query_len``, since rows past T are never read).
        dim: D, the text width.
        token_ids: the unpadded token ids of the prompt it was tuned for ([CLS] ... [SEP]);
            :meth:`matches` compares prompts with them. None: unknown (matches any prompt).

    ``forward(text)``: :class:`TextFeatures` with ``[B, T, D]`` fields -> the same with the
    offset added (``aggregate`` and ``mask`` unchanged, as the official head).
    """

    def __init__(self, num_rows: int, dim: int, token_ids: Sequence[int] | None = None) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(num_rows, dim))  # official fill_(0.0)
        self.token_ids = None if token_ids is None else tuple(int(t) for t in token_ids)

    @property
    def num_rows(self) -> int:
        return int(self.weight.shape[0])

    def forward(self, text: TextFeatures) -> TextFeatures:
        t = text.hidden.shape[1]
        if t > self.num_rows:
            raise ValueError(f"the prompt offset covers {self.num_rows} tokens, the text has {t}")
        offset = self.weight[:t].unsqueeze(0)  # [1, T, D]
        return TextFeatures(
            hidden=text.hidden + offset,
            embedded=text.embedded + offset,
            mask=text.mask,
            aggregate=text.aggregate,
            causal=text.causal,
        )

    def matches(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> bool:
        """Whether every prompt of ``input_ids`` (``Tensor[B, T]``) is the tuned one."""
        if self.token_ids is None:
            return True
        n = len(self.token_ids)
        if input_ids.shape[1] < n:
            return False
        expected = torch.tensor(self.token_ids, dtype=input_ids.dtype, device=input_ids.device)
        same = bool((input_ids[:, :n] == expected).all())
        if attention_mask is not None:
            same = same and bool((attention_mask[:, n:] == 0).all()) and bool((attention_mask[:, :n] == 1).all())
        return same

    def extra_repr(self) -> str:
        return f"num_rows={self.num_rows}, dim={self.weight.shape[1]}, tuned_tokens={len(self.token_ids or ())}"
