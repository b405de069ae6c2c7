"""Who reads which samples of an epoch: the split of a shard set over nodes x processes x
loader workers, deterministic given the seed and the world size.

Definitions (N samples in K shards, R processes, W loader workers each, B images per
process and step):

- **Epoch order.** Epoch ``e`` reads the shards in a permutation of ``(seed, e)``, each shard's
  samples in stored order (sequential reads; write the shards in random order, as
  ``glip data shards`` does). Position ``p`` in ``[0, N)`` is a place in that order.
- **Slots.** Each of the ``R x W`` (process, worker) slots reads one contiguous run of
  positions: whole shards, with at most a partial shard at each end (split by shard, then
  by sample). Process ``r`` gets ``P = N // (R B)`` batches, positions
  ``[r P B, (r + 1) P B)``; its worker ``w`` gets ``P // W`` batches, one more when
  ``w < P mod W``, as the next contiguous run. The last ``N - R P B < R B`` positions of
  the epoch's order are not read that epoch (as the map-style sampler drops its incomplete
  batch); the order changes every epoch, so different samples are left out.
- **Batches.** Worker ``w`` yields its batches in order and a loader takes them round-robin,
  so step ``k`` of an epoch is batch ``k // W`` of worker ``k mod W``. A run that consumed
  ``k`` batches has worker ``w``'s cursor at ``k // W + (w < k mod W)`` batches: exact resume.
- **Spans.** An epoch is split over ``spans``, intervals of positions (normally
  ``[(0, N)]``). When a run resumes on a different number of processes, workers or batch
  size, the unread part of each old slot becomes a span and the rest of the epoch is split
  over the new slots the same way (:func:`unread_spans`): no sample of the interrupted
  epoch is lost or read twice; only the order of the remaining batches differs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["Piece", "SlotPlan", "epoch_shard_order", "plan_slots", "slot_pieces", "unread_spans", "worker_cursor"]

# Keeps the shard order's random stream apart from the other users of the run seed.
_SHARD_ORDER_STREAM = 0x5A4D


@dataclass(frozen=True)
class Piece:
    """Samples ``[start, stop)`` (stored order) of shard ``shard`` (its manifest index)."""

    shard: int
    start: int
    stop: int


@dataclass(frozen=True)
class SlotPlan:
    """One slot's share of an epoch: ``batches`` batches of ``batch_size`` positions from
    ``start`` in the concatenation of the epoch's spans."""

    start: int
    batches: int
    batch_size: int


def epoch_shard_order(num_shards: int, seed: int, epoch: int) -> np.ndarray:
    """``int64[K]``: the shard indices in the order epoch ``epoch`` reads them."""
    seq = np.random.SeedSequence([seed & (2**63 - 1), _SHARD_ORDER_STREAM, epoch])
    return np.random.Generator(np.random.PCG64(seq)).permutation(num_shards)


def plan_slots(total: int, batch_size: int, world_size: int, workers: int) -> list[list[SlotPlan]]:
    """``plans[r][w]``: the share of worker ``w`` of process ``r`` of ``total`` positions."""
    if batch_size < 1 or world_size < 1 or workers < 1:
        raise ValueError(f"bad split: batch {batch_size}, {world_size} processes, {workers} workers")
    per_process = total // (batch_size * world_size)
    plans = []
    for r in range(world_size):
        start, row = r * per_process * batch_size, []
        for w in range(workers):
            n = per_process // workers + int(w < per_process % workers)
            row.append(SlotPlan(start, n, batch_size))
            start += n * batch_size
        plans.append(row)
    return plans


def worker_cursor(consumed: int, worker: int, workers: int) -> int:
    """Batches worker ``worker`` delivered after a process consumed ``consumed`` (round-robin)."""
    return consumed // workers + int(worker < consumed % workers)


def slot_pieces(
    positions: tuple[int, int], spans: Sequence[tuple[int, int]], shard_order: Sequence[int], counts: Sequence[int]
) -> list[Piece]:
    """The shard pieces holding ``positions = (a, b)`` of the concatenated ``spans``, in order.

    ``spans`` index the epoch order (``shard_order`` over shards of ``counts`` samples)."""
    starts = np.concatenate([[0], np.cumsum([counts[k] for k in shard_order])])  # [K + 1] epoch offsets
    pieces: list[Piece] = []
    for s, e in _concat_to_epoch(spans, *positions):
        i = int(np.searchsorted(starts, s, side="right")) - 1
        while s < e:
            end = min(e, int(starts[i + 1]))
            if end > s:
                pieces.append(Piece(int(shard_order[i]), s - int(starts[i]), end - int(starts[i])))
            s, i = end, i + 1
    return pieces


def unread_spans(
    spans: Sequence[tuple[int, int]], batch_size: int, world_size: int, workers: int, consumed: int
) -> list[tuple[int, int]]:
    """The epoch positions not yet read when every process consumed ``consumed`` batches of
    the split of ``spans`` over ``world_size x workers`` slots, as new spans (slot order)."""
    total = sum(hi - lo for lo, hi in spans)
    out: list[tuple[int, int]] = []
    for row in plan_slots(total, batch_size, world_size, workers):
        for w, plan in enumerate(row):
            done = worker_cursor(consumed, w, workers) * plan.batch_size
            a, b = plan.start + done, plan.start + plan.batches * plan.batch_size
            for lo, hi in _concat_to_epoch(spans, a, b):
                if out and out[-1][1] == lo:
                    out[-1] = (out[-1][0], hi)
                else:
                    out.append((lo, hi))
    return out


def _concat_to_epoch(spans: Sequence[tuple[int, int]], a: int, b: int) -> list[tuple[int, int]]:
    """Positions ``[a, b)`` of the concatenated ``spans`` as epoch-order intervals."""
    out, offset = [], 0
    for lo, hi in spans:
        s, e = max(a, offset), min(b, offset + hi - lo)
        if s < e:
            out.append((s - offset + lo, e - offset + lo))
        offset += hi - lo
    return out
