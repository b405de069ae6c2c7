"""Multi-task training: several training sources, one per step, drawn by weight.

GLIPv2 trains detection, grounding, masks, VQA and captioning on one trunk. A batch holds
one source only: captioning runs the trunk causally (:mod:`glip.engine.head_needs`), so it
cannot share a forward with the other kinds. At each draw ``d`` (a batch read, whether it
trains or is skipped; without skipped batches the optimiser step) one source is picked
with probability ``weight / sum(weights)`` and the next batch of that source's own
resumable loader (:class:`glip.engine.data.ShardedBatchSampler`) is trained on; the loss
is that batch's losses (each head's weighted losses, times the source's ``loss_weight``).

The pick of draw ``d`` depends only on ``(seed, d)`` (:class:`SourceSchedule`), so

- every process of an ``accelerate`` run picks the same source at the same step (their
  gradients are synchronised over the same heads);
- a run resumed after ``d`` draws continues the same sequence: each source's loader
  restarts at the number of its batches the first ``d`` draws read (epoch and batch within
  it), recomputed from the schedule, so nothing beyond the usual :class:`Progress` is saved;
  a shard source resumed on another split re-splits the unread rest of its epoch
  (:class:`SourceAnchor`, :mod:`glip.engine.shard_data`).

The official recipe mixes datasets by "copies" (a dataset of ``n`` images repeated ``c``
times in one concatenated set); the same mixture in draws is ``weight = c * n``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch.utils.data import DataLoader, Dataset

from glip.config import GLIPConfig
from glip.engine.data import ShardedBatchSampler, build_dataset, check_teacher_scores
from glip.engine.source_anchor import SourceAnchor
from glip.utils.seeding import sample_seed

__all__ = [
    "MultiSourceData",
    "SourceAnchor",
    "SourceSchedule",
    "TrainingSource",
    "build_training_data",
    "source_names",
]

# Draws are made in blocks of this many (one generator per block): finding a draw's
# source or counting a source's draws since the start costs one block per 1024 draws.
BLOCK = 1024
# Keeps the schedule's stream apart from the other users of the run seed.
_SCHEDULE_STREAM = 0x5EED


class SourceSchedule:
    """Which source each draw trains on: draw ``d`` is source ``i`` with probability
    ``weights[i] / sum(weights)``, as a function of ``(seed, d)`` alone.

    Args:
        weights: one positive, finite sampling weight per source (S sources).
        seed: the run seed (``solver.seed``).
    """

    def __init__(self, weights: Sequence[float], seed: int) -> None:
        w = np.asarray(weights, dtype=np.float64)
        if w.ndim != 1 or len(w) == 0 or not np.all(np.isfinite(w)) or not np.all(w > 0):
            raise ValueError(f"source weights must be positive numbers, got {list(weights)}")
        self.weights = w / w.sum()
        self.seed = int(seed)
        self._bounds = np.cumsum(self.weights)  # [S], the last is 1 up to rounding
        self._cached: tuple[int, np.ndarray] | None = None

    def _block(self, block: int) -> np.ndarray:
        """``int64[BLOCK]``: the sources of draws ``block * BLOCK`` to ``(block + 1) * BLOCK - 1``."""
        if self._cached is not None and self._cached[0] == block:
            return self._cached[1]
        seq = np.random.SeedSequence([self.seed & (2**63 - 1), _SCHEDULE_STREAM, block])
        u = np.random.Generator(np.random.PCG64(seq)).random(BLOCK)  # [BLOCK] in [0, 1)
        picks = np.minimum(np.searchsorted(self._bounds, u, side="right"), len(self.weights) - 1)
        self._cached = (block, picks)
        return picks

    def source_at(self, draw: int) -> int:
        """The source of draw ``draw`` (0-based)."""
        if draw < 0:
            raise ValueError(f"draw must be >= 0, got {draw}")
        return int(self._block(draw // BLOCK)[draw % BLOCK])

    def sources(self, start: int, stop: int) -> np.ndarray:
        """``int64[stop - start]``: the sources of draws ``start`` to ``stop - 1``."""
        if not 0 <= start <= stop:
            raise ValueError(f"bad draw range [{start}, {stop})")
        parts = []
        for block in range(start // BLOCK, (stop + BLOCK - 1) // BLOCK):
            lo, hi = max(start, block * BLOCK), min(stop, (block + 1) * BLOCK)
            parts.append(self._block(block)[lo - block * BLOCK : hi - block * BLOCK])
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def counts(self, draws: int) -> list[int]:
        """How many of the first ``draws`` draws each source got."""
        counts = np.zeros(len(self.weights), dtype=np.int64)
        for block in range(0, draws, BLOCK):
            counts += np.bincount(self.sources(block, min(draws, block + BLOCK)), minlength=len(self.weights))
        return [int(c) for c in counts]


@dataclass
class TrainingSource:
    """One source of a multi-task run: a name for the logs, its dataset, its sampling weight,
    the factor on its losses and the seed of its batch order."""

    name: str
    dataset: Dataset
    weight: float = 1.0
    loss_weight: float = 1.0
    seed: int = 0


# make_loader(dataset, sampler) -> a loader over the sampler's batches.
LoaderFactory = Callable[[Dataset, ShardedBatchSampler], DataLoader]


class MultiSourceData:
    """The sources of a multi-task run and their :class:`SourceSchedule`.

    ``len()`` is the images of all sources together: an "epoch" (``solver.max_epoch``) is as
    many images as they hold, whatever the weights.
    """

    def __init__(self, sources: Sequence[TrainingSource], seed: int) -> None:
        if not sources:
            raise ValueError("a multi-task run needs at least one source")
        self.sources = list(sources)
        self.schedule = SourceSchedule([s.weight for s in self.sources], seed)
        self.anchors: dict[int, SourceAnchor] = {}  # by source index, set by a re-split resume

    def __len__(self) -> int:
        return sum(len(s.dataset) for s in self.sources)  # type: ignore[arg-type]

    def batches(
        self, start_draw: int, local_batch: int, rank: int, world_size: int, make_loader: LoaderFactory
    ) -> Iterator[tuple[TrainingSource, Any]]:
        """``(source, batch)`` of draws ``start_draw``, ``start_draw + 1``, ... (endless).

        Source ``i``'s loader starts where its first ``counts[i]`` batches left it and moves
        to its next epoch (a new permutation, :meth:`set_epoch`) when it runs out."""
        global_batch = local_batch * world_size
        for s in self.sources:
            if len(s.dataset) < global_batch:  # type: ignore[arg-type]
                raise ValueError(
                    f"source {s.name!r} has {len(s.dataset)} images, fewer than one batch of {global_batch}"  # type: ignore[arg-type]
                )
        done = self.schedule.counts(start_draw)
        streams = [
            _SourceStream(s, n, local_batch, rank, world_size, make_loader, self.anchors.get(i))
            for i, (s, n) in enumerate(zip(self.sources, done))
        ]
        draw = start_draw
        while True:
            i = self.schedule.source_at(draw)
            yield self.sources[i], streams[i].next()
            draw += 1


class _SourceStream:
    """One source's batches, from its ``consumed``-th on, epoch after epoch."""

    def __init__(
        self,
        source: TrainingSource,
        consumed: int,
        local_batch: int,
        rank: int,
        world_size: int,
        make_loader: LoaderFactory,
        anchor: SourceAnchor | None = None,
    ) -> None:
        self.source = source
        self.size = len(source.dataset)  # type: ignore[arg-type]
        self.per_epoch = self.size // (local_batch * world_size)
        self.anchor = anchor if anchor is not None else SourceAnchor(0, 0, self.per_epoch)
        self.epoch, self.batch = self.anchor.position(consumed, self.per_epoch)
        self.local_batch, self.rank, self.world_size = local_batch, rank, world_size
        self.make_loader = make_loader
        self._it: Iterator[Any] | None = None

    def next(self) -> Any:
        if self.batch >= (self.anchor.batches if self.epoch == self.anchor.epoch else self.per_epoch):
            self.epoch, self.batch, self._it = self.epoch + 1, 0, None
        if self._it is None:
            sampler = ShardedBatchSampler(
                self.size, self.local_batch, self.rank, self.world_size, self.source.seed, self.epoch, self.batch
            )
            self._it = iter(self.make_loader(self.source.dataset, sampler))
        self.batch += 1
        return next(self._it)


def source_names(cfg: GLIPConfig) -> list[str]:
    """Each ``data.sources`` entry's log name: its ``name``, else its format (numbered
    ``vqa_2``... when the format repeats)."""
    names, seen = [], set()
    for i, s in enumerate(cfg.data.sources):
        name = s.name or s.format
        if name in seen or (not s.name and [t.format for t in cfg.data.sources].count(s.format) > 1):
            name = f"{name}_{i + 1}"
        if name in seen:
            raise ValueError(f"data.sources: two sources are named {name!r}")
        seen.add(name)
        names.append(name)
    return names


def build_training_data(cfg: GLIPConfig, tokenizer: Any) -> Dataset | MultiSourceData:
    """The training data of ``cfg``: its one dataset (:func:`build_dataset`) when
    ``data.sources`` is empty, else a :class:`MultiSourceData` of one dataset per source,
    each read as ``data.format`` / ``data.train_json`` / ``data.train_images`` set to the
    source's (every other ``data`` setting shared) with its own seed."""
    if not cfg.data.sources:
        dataset = build_dataset(cfg, tokenizer, train=True)
        check_teacher_scores(cfg, [dataset])
        return dataset
    if cfg.data.train_json or cfg.data.train_images or cfg.data.train_shards:
        raise ValueError(
            "data.train_json / data.train_images / data.train_shards are not read when data.sources is set: "
            "name the files in each source"
        )
    sources = []
    for i, (name, s) in enumerate(zip(source_names(cfg), cfg.data.sources)):
        if not (s.weight > 0 and math.isfinite(s.weight)):
            raise ValueError(f"data.sources[{i}] ({name}): weight must be a positive number, got {s.weight}")
        one = copy.deepcopy(cfg)
        one.data.sources = []
        one.data.format, one.data.train_json, one.data.train_images = s.format, s.train_json, s.train_images
        one.data.train_shards = s.train_shards
        one.data.pseudo_labelled = s.pseudo_labelled
        # Source 0 keeps the run seed; the others get unrelated ones (their augmentations and
        # batch orders must not move in lockstep with source 0's).
        one.solver.seed = cfg.solver.seed if i == 0 else sample_seed(cfg.solver.seed, i) % 2**31
        try:
            dataset = build_dataset(one, tokenizer, train=True)
        except ValueError as e:
            raise ValueError(f"data.sources[{i}] ({name}): {e}") from None
        sources.append(TrainingSource(name, dataset, float(s.weight), float(s.loss_weight), one.solver.seed))
    check_teacher_scores(cfg, [s.dataset for s in sources])
    return MultiSourceData(sources, cfg.solver.seed)
