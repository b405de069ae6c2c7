"""Text-side containers: the language features the head consumes."""

from __future__ import annotations

from dataclasses import dataclass, replace

from torch import Tensor


@dataclass
class TextFeatures:
    """Language features of a batch of prompts.

    Attributes:
        hidden: ``Tensor[B, T, D]``, the last encoder layer; the fusion layers update it.
        embedded: ``Tensor[B, T, D]``, the encoder features multiplied by ``mask``.
        mask: ``Tensor[B, T]`` int64, 1 for real tokens and 0 for padding (the BERT
            attention mask).
        aggregate: ``Tensor[B, D]``, the masked mean of ``embedded`` over tokens.
        causal: the features were encoded uni-directionally (captioning): token ``i`` saw
            tokens ``<= i`` only, and the trunk keeps it so (:mod:`glip.modeling.language.causal`).
            ``aggregate`` still averages every token; no causal head reads it.
    """

    hidden: Tensor
    embedded: Tensor
    mask: Tensor
    aggregate: Tensor
    causal: bool = False

    def with_hidden(self, hidden: Tensor) -> TextFeatures:
        """A copy with ``hidden`` replaced (the other fields are shared)."""
        return replace(self, hidden=hidden)

    def expand(self, batch: int) -> TextFeatures:
        """One prompt's features (``B = 1``) shared by ``batch`` images, as views (no copy)."""
        return replace(
            self,
            hidden=self.hidden.expand(batch, -1, -1),  # [batch, T, D]
            embedded=self.embedded.expand(batch, -1, -1),
            mask=self.mask.expand(batch, -1),  # [batch, T]
            aggregate=self.aggregate.expand(batch, -1),  # [batch, D]
        )
