"""Training data read from a shard set (``data.train_shards``, :mod:`glip.data.shards`):
the json datasets' sample builders over a streamed :class:`~glip.data.shards.ShardStream`."""

from __future__ import annotations

import logging
from typing import Any

from glip.config import GLIPConfig
from glip.data import CocoGroundingDataset, CocoIndex, MdetrGroundingDataset
from glip.data.caption_packing import CaptionPacking
from glip.data.caption_screen import CaptionScreen
from glip.data.shards import ShardStream, open_shard_set
from glip.data.shards.layout import unread_spans
from glip.data.transforms import build_train_transform
from glip.engine.caption_recipe import caption_recipe
from glip.engine.checkpoint import Progress
from glip.engine.source_anchor import SourceAnchor

logger = logging.getLogger(__name__)

__all__ = ["build_shard_stream", "resume_stream", "stream_state"]


def build_shard_stream(cfg: GLIPConfig, tokenizer: Any) -> ShardStream:
    """The training stream of ``cfg.data.train_shards``. The manifest's ``kind`` picks the
    sample builder: ``detection`` -> :class:`CocoGroundingDataset` (``cfg.data``'s caption
    recipe over the manifest's categories), ``grounding`` / ``caption`` ->
    :class:`MdetrGroundingDataset` (``caption``, or ``data.pseudo_labelled``: pseudo-labelled
    captions, screened by the caption options and packed with ``data.pack_captions`` other
    captions of their shard). One-line errors for what a stream cannot do."""
    d = cfg.data
    if d.train_json or d.train_images:
        raise ValueError("data.train_shards replaces data.train_json / data.train_images: set one or the other")
    manifest = open_shard_set(d.train_shards)
    transform = build_train_transform(cfg.input, flip_prob=d.flip_prob, train=True)
    index = CocoIndex({}, {}, list(manifest.categories), [])  # records come with the samples
    common = {"max_query_len": cfg.model.text.max_query_len, "seed": cfg.solver.seed,
              "masks": cfg.model.heads.mask.enabled}  # fmt: skip
    screen = None
    if manifest.kind == "detection":
        if not manifest.categories:
            raise ValueError(f"{manifest.root}: detection shards need the manifest's categories")
        builder: Any = CocoGroundingDataset(index, "", tokenizer, transform, caption_recipe(cfg, True), **common)
    elif manifest.kind in ("grounding", "caption"):
        pseudo = manifest.kind == "caption" or d.pseudo_labelled
        screen = CaptionScreen(d.caption_conf, d.caption_nms, d.caption_min_box)
        distill = cfg.model.heads.grounding.distill_weight > 0
        # Packed negatives come from the shard being read (glip.data.shards.stream).
        packing = CaptionPacking(d.pack_captions, d.pack_prob, d.no_pack_prob, d.pack_disjoint) if pseudo else None
        builder = MdetrGroundingDataset(
            index, "", tokenizer, transform, kind="caption" if pseudo else "grounding", packing=packing,
            concept_scores=distill, **common,
        )  # fmt: skip
    else:
        raise ValueError(
            f"{manifest.root}: training streams detection, grounding and caption shards; "
            f"{manifest.kind!r} shards are read by the converters only so far"
        )
    return ShardStream(manifest, builder, cfg.solver.seed, screen)


def _split(train_set: Any, local_batch: int, world_size: int, workers: int) -> list[int] | None:
    """``[processes, workers, images per process]`` of a multi-source run with a shard source."""
    sources = getattr(train_set, "sources", None)
    if sources is not None and any(isinstance(s.dataset, ShardStream) for s in sources):
        return [world_size, max(workers, 1), local_batch]
    return None


def stream_state(
    train_set: Any, progress: Progress, local_batch: int, world_size: int, workers: int
) -> dict[str, Any] | None:
    """What a checkpoint keeps about streamed training data: a :class:`ShardStream`'s epoch
    split and per-worker cursors (:meth:`ShardStream.state`); for a multi-source run with a
    shard source, its split and each shard source's :class:`SourceAnchor` with the spans of
    the anchor's epoch (each source's cursors follow from the schedule); else None."""
    if isinstance(train_set, ShardStream):
        return train_set.state(progress.epoch, progress.batch, local_batch, world_size, workers)
    split = _split(train_set, local_batch, world_size, workers)
    if split is None:
        return None
    anchors = []
    for i, source in enumerate(train_set.sources):
        anchor = train_set.anchors.get(i)
        if isinstance(source.dataset, ShardStream) and anchor is not None:
            spans = [list(x) for x in source.dataset.epoch_spans(anchor.epoch)]
            anchors.append({"source": i, "anchor": [anchor.count, anchor.epoch, anchor.batches], "spans": spans})
    return {"split": split, "anchors": anchors}


def resume_stream(
    train_set: Any,
    saved: dict[str, Any],
    progress: Progress,
    local_batch: int,
    world_size: int,
    workers: int,
    path: Any,
) -> None:
    """Restores :func:`stream_state` ``saved``: a :class:`ShardStream` continues at its
    cursors, or re-splits the unread rest of its epoch on another split (``progress.batch``
    set accordingly). A multi-source run restores its shard sources' anchors; on another
    split each shard source re-splits the unread rest of the epoch it is in (its batches of
    it, counted by the schedule, read under the saved split) and continues from there."""
    if isinstance(train_set, ShardStream) and "spans" in saved:
        progress.batch = train_set.resume(saved, local_batch, world_size, workers)
        return
    now = _split(train_set, local_batch, world_size, workers)
    if "split" not in saved or now is None:
        return
    saved_anchors = {int(a["source"]): a for a in saved.get("anchors", [])}
    for i, a in saved_anchors.items():  # the saved split's own anchors
        train_set.anchors[i] = SourceAnchor(*(int(v) for v in a["anchor"]))
        stream = train_set.sources[i].dataset
        stream.spans[train_set.anchors[i].epoch] = [(int(lo), int(hi)) for lo, hi in a["spans"]]
    old_world, old_workers, old_batch = (int(v) for v in saved["split"])
    if [old_world, old_workers, old_batch] == now:
        return
    consumed = train_set.schedule.counts(progress.batch)  # each source's batches so far
    for i, source in enumerate(train_set.sources):
        stream = source.dataset
        if not isinstance(stream, ShardStream):
            continue
        per_epoch = len(stream) // (old_batch * old_world)
        old = train_set.anchors.get(i, SourceAnchor(0, 0, per_epoch))
        epoch, done = old.position(consumed[i], per_epoch)
        rest = unread_spans(stream.epoch_spans(epoch), old_batch, old_world, old_workers, done)
        stream.spans[epoch] = rest
        unread = sum(hi - lo for lo, hi in rest)
        train_set.anchors[i] = SourceAnchor(consumed[i], epoch, unread // (local_batch * world_size))
        logger.warning(
            "%s: source %s resumes epoch %d on another split (%d processes x %d workers x %d images, was "
            "%d x %d x %d): its %d unread samples are re-split",
            path, source.name, epoch, world_size, max(workers, 1), local_batch, old_world, old_workers, old_batch,
            unread,
        )  # fmt: skip
