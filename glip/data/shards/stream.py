"""Training on a shard set: :class:`ShardStream`, batches streamed by each loader worker.

Each loader worker reads its slot of the epoch (:mod:`glip.data.shards.layout`) shard by
shard and builds every sample with the json datasets' own code (``build`` of
:class:`~glip.data.datasets.CocoGroundingDataset` for detection data,
:class:`~glip.data.datasets.MdetrGroundingDataset` for grounding and pseudo-labelled
caption data), seeded by ``(seed, epoch, sample id)`` as the json datasets are. Memory per
process is one shard member at a time plus the loader's prefetched batches, whatever the
size of the set.

Caption packing (the builder's ``packing``, ``data.pack_captions``) draws each sample's
negatives from the captions of its own shard, as the json dataset draws them from the whole
set (:func:`glip.data.caption_packing.pack_from_pool`): a worker reads a shard's json members
once more before its samples (no image decoded) and keeps that shard's captions only. A set
of one shard therefore packs exactly as its json does.

A worker yields whole batches of ``B`` consecutive positions of its slot, so the batch a
step reads depends only on the step, never on which samples were unreadable: a corrupt
image or json member is skipped (the batch is one image smaller), counted and logged
with its shard and key. A shard that ends early, is truncated or holds more samples than
its manifest lists stops the run with a :class:`~glip.data.shards.tario.ShardError`
naming it.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import Any

import numpy as np
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from glip.data.annotations import has_valid_annotation
from glip.data.caption_packing import CaptionPool, grounded_phrases
from glip.data.od_to_grounding import SampleRNG
from glip.data.seeded import sample_seed
from glip.data.shards.layout import epoch_shard_order, plan_slots, slot_pieces, unread_spans, worker_cursor
from glip.data.shards.manifest import Manifest
from glip.data.shards.schema import RecordError, record_from_members
from glip.data.shards.tario import ShardError, iter_shard

__all__ = ["ShardStream", "decode_image"]

logger = logging.getLogger(__name__)


def decode_image(data: bytes) -> np.ndarray:
    """``uint8 [H, W, 3]`` RGB pixels of an encoded image, in their stored orientation
    (EXIF ignored, as :func:`glip.data.annotations.read_image`)."""
    from PIL import Image

    from glip.utils.image import load_image

    with Image.open(io.BytesIO(data)) as img:
        img.load()
        rgb = img.convert("RGB")
    return load_image(np.asarray(rgb))


class ShardStream:
    """A shard set as training data: ``len()`` samples, read by :meth:`loader`.

    Args:
        manifest: the shard set (:func:`glip.data.shards.manifest.open_shard_set`).
        builder: the json dataset whose ``build(image, record, annotations, rng)`` makes a
            sample (built over an empty :class:`~glip.data.annotations.CocoIndex` holding
            the manifest's categories).
        seed: the run seed (shard order and per-sample draws).
        screen: optional per-image annotation filter (the caption options'
            ``CaptionScreen``: ``screen(anns)`` and ``min_boxes``).
    """

    def __init__(self, manifest: Manifest, builder: Any, seed: int, screen: Any = None) -> None:
        self.manifest = manifest
        self.builder = builder
        self.seed = seed
        self.screen = screen
        self.counts = [s.samples for s in manifest.shards]
        self.first_id = np.concatenate([[0], np.cumsum(self.counts)])[:-1].tolist()  # each shard's first sample id
        self.spans: dict[int, list[tuple[int, int]]] = {}  # epoch -> its split spans, when not the whole epoch
        self._pool: _ShardPool | None = None  # caption packing: the last shard's pool

    def __len__(self) -> int:
        return self.manifest.num_samples

    @property
    def has_concept_scores(self) -> bool:
        """Whether the manifest says its boxes carry a teacher's concept scores."""
        return bool(self.manifest.concept_scores)

    def epoch_spans(self, epoch: int) -> list[tuple[int, int]]:
        return self.spans.get(epoch, [(0, len(self))])

    def loader(self, sampler: Any, collate: Callable[[list[Any]], Any], num_workers: int) -> DataLoader:
        """The batches of ``sampler``'s process, epoch and start (a
        :class:`glip.engine.data.ShardedBatchSampler`, whose batch size, rank, world size,
        seed, epoch and ``start_batch`` it follows), read by ``num_workers`` workers."""
        workers = max(num_workers, 1)
        epoch = _EpochStream(self, sampler, collate, workers)
        return DataLoader(epoch, batch_size=None, num_workers=num_workers)

    # ---------------------------------------------------------------- resume
    def state(self, epoch: int, consumed: int, local_batch: int, world_size: int, workers: int) -> dict[str, Any]:
        """What a checkpoint saves: the epoch's spans, the split and each worker's cursor
        (batches delivered) after ``consumed`` batches of ``epoch`` per process."""
        workers = max(workers, 1)
        cursors = [worker_cursor(consumed, w, workers) for w in range(workers)]
        return {"epoch": epoch, "consumed": consumed, "local_batch": local_batch, "world_size": world_size,
                "workers": workers, "spans": [list(s) for s in self.epoch_spans(epoch)], "cursors": cursors}  # fmt: skip

    def resume(self, state: dict[str, Any], local_batch: int, world_size: int, workers: int) -> int:
        """Restores a saved :meth:`state`; returns the batches of its epoch already consumed
        under the current split. The same split continues where it stopped; another one
        (processes, workers or batch) re-splits the unread rest of the epoch (0 consumed)."""
        workers = max(workers, 1)
        epoch, spans = int(state["epoch"]), [(int(a), int(b)) for a, b in state["spans"]]
        same = (int(state["local_batch"]), int(state["world_size"]), int(state["workers"])) == (
            local_batch, world_size, workers
        )  # fmt: skip
        if same:
            self.spans[epoch] = spans
            return int(state["consumed"])
        rest = unread_spans(spans, int(state["local_batch"]), int(state["world_size"]), int(state["workers"]),
                            int(state["consumed"]))  # fmt: skip
        logger.warning(
            "resuming epoch %d on another split (%d processes x %d workers x %d images, was %d x %d x %d): "
            "its %d unread samples are re-split",
            epoch, world_size, workers, local_batch, state["world_size"], state["workers"], state["local_batch"],
            sum(b - a for a, b in rest),
        )  # fmt: skip
        self.spans[epoch] = rest
        return 0

    # --------------------------------------------------------------- samples
    def samples(self, pieces: Sequence[Any], epoch: int) -> Iterator[Any]:
        """One entry per position of ``pieces``: the built sample, or None when unreadable."""
        packing = getattr(self.builder, "packing", None)
        for piece in pieces:
            entry = self.manifest.shards[piece.shard]
            name = str(self.manifest.path(entry))
            pool = self._shard_pool(piece.shard, name) if packing is not None and packing.number > 0 else None
            it = iter_shard(name)
            for _ in islice(it, piece.start):  # skip to the piece (reads the tar sequentially)
                pass
            n = piece.start
            for members in islice(it, piece.stop - piece.start):
                yield self._build(members, name, self.first_id[piece.shard] + n, epoch, pool, n)
                n += 1
            if n < piece.stop:
                raise ShardError(f"shard {name} holds {n} samples; its manifest lists {entry.samples}")
            if piece.stop == entry.samples and next(it, None) is not None:
                raise ShardError(f"shard {name} holds more samples than its manifest lists ({entry.samples})")

    def _usable(self, record: dict[str, Any]) -> list[dict[str, Any]] | None:
        """A record's screened annotations, or None when it has no usable box (as the json
        datasets leave such images out)."""
        anns = record.get("annotations", [])
        if self.screen is not None:
            anns = self.screen.screen(anns)
        if not has_valid_annotation(anns) or (self.screen is not None and len(anns) < self.screen.min_boxes):
            return None
        return anns

    def _shard_pool(self, shard: int, name: str) -> _ShardPool:
        """The caption pool of shard ``shard`` (cached: a worker reads a shard's pieces in a
        row): one pass over its json members, keeping the samples with a usable box, as the
        json dataset's pool is its usable images. Memory: one shard's captions."""
        if self._pool is not None and self._pool.shard == shard:
            return self._pool
        captions: list[str] = []
        phrases: list[frozenset[str]] = []
        positions: dict[int, int] = {}
        for n, members in enumerate(iter_shard(name)):
            try:
                _, record = record_from_members(members)
                anns = self._usable(record)
            except (RecordError, KeyError, TypeError, ValueError):
                continue  # unreadable: skipped again when read, never a negative
            if anns is None:
                continue
            positions[n] = len(captions)
            captions.append(str(record["image"].get("caption", "")))
            spans = [a.get("tokens", a.get("tokens_positive")) or [] for a in anns]
            phrases.append(grounded_phrases(captions[-1], spans))
        self._pool = _ShardPool(shard, CaptionPool(len(captions), captions.__getitem__, phrases.__getitem__), positions)
        return self._pool

    def _build(
        self, members: dict[str, Any], shard: str, sample_id: int, epoch: int, pool: _ShardPool | None, n: int
    ) -> Any:
        key = members.get("__key__", "?")
        try:
            image_bytes, record = record_from_members(members)
            anns = self._usable(record)
            if anns is None:
                logger.debug("shard %s sample %s: no usable box, skipped", shard, key)
                return None
            image = decode_image(image_bytes)
            rng = SampleRNG.from_seed(sample_seed(self.seed, epoch, sample_id))
            if pool is not None:  # caption packing: negatives drawn from this shard's captions
                sample = self.builder.build(image, record["image"], anns, rng, pool.positions[n], pool.pool)
            else:
                sample = self.builder.build(image, record["image"], anns, rng)
        except (RecordError, OSError, ValueError, KeyError, TypeError, SyntaxError) as e:
            logger.warning("shard %s sample %s skipped: %s", shard, key, str(e).splitlines()[0] if str(e) else e)
            return None
        sample.index = sample_id
        return sample


@dataclass(frozen=True)
class _ShardPool:
    """Shard ``shard``'s caption pool and each usable sample's place in it (by stored position)."""

    shard: int
    pool: CaptionPool
    positions: dict[int, int]


class _EpochStream(IterableDataset):
    """The batches of one process's epoch (from ``sampler.start_batch``), split over the
    loader's workers. Loader worker ``i`` reads slot ``(i + start) mod W``, so the loader's
    round-robin continues with the slot whose batch comes next."""

    def __init__(self, stream: ShardStream, sampler: Any, collate: Callable[[list[Any]], Any], workers: int) -> None:
        self.stream, self.collate, self.workers = stream, collate, workers
        self.epoch, self.start = int(sampler.epoch), int(sampler.start_batch)
        self.batch, self.rank, self.world = int(sampler.local_batch), int(sampler.rank), int(sampler.world_size)
        self.seed = int(sampler.seed)

    def __iter__(self) -> Iterator[Any]:
        info = get_worker_info()
        slot = ((info.id if info is not None else 0) + self.start) % self.workers
        s = self.stream
        spans = s.epoch_spans(self.epoch)
        total = sum(b - a for a, b in spans)
        plan = plan_slots(total, self.batch, self.world, self.workers)[self.rank][slot]
        done = worker_cursor(self.start, slot, self.workers)
        order = epoch_shard_order(len(s.counts), self.seed, self.epoch)
        first, stop = plan.start + done * self.batch, plan.start + plan.batches * self.batch
        samples = s.samples(slot_pieces((first, stop), spans, order, s.counts), self.epoch)
        skipped = 0
        for b in range(done, plan.batches):
            batch = [x for x in islice(samples, self.batch)]
            kept = [x for x in batch if x is not None]
            skipped += len(batch) - len(kept)
            if not kept:
                raise ShardError(f"epoch {self.epoch}: all {self.batch} samples of batch {b} of slot {slot} unreadable")
            yield self.collate(kept)
        if skipped:
            logger.warning("epoch %d slot %d of process %d: %d unreadable samples skipped", self.epoch, slot,
                           self.rank, skipped)  # fmt: skip
