"""Where a source's batches stand after a resume on another split (shared by
:mod:`glip.engine.multitask` and :mod:`glip.engine.shard_data`)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SourceAnchor"]


@dataclass(frozen=True)
class SourceAnchor:
    """Where a source's batches stand when a run resumed on another split (processes,
    workers or images per process): after ``count`` of its batches, epoch ``epoch`` reads
    ``batches`` batches (the unread rest of that epoch, re-split: a shard stream's spans);
    every later epoch has the usual ``len // (B R)``. Without an anchor a source's
    ``consumed`` batches sit at ``divmod(consumed, per_epoch)``."""

    count: int
    epoch: int
    batches: int

    def position(self, consumed: int, per_epoch: int) -> tuple[int, int]:
        """``(epoch, batch within it)`` after ``consumed >= count`` batches of the source."""
        k = consumed - self.count
        if k < self.batches:
            return self.epoch, k
        epochs, batch = divmod(k - self.batches, per_epoch)
        return self.epoch + 1 + epochs, batch
