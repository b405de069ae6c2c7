"""Training data read from a shard set (``data.train_shards``, :mod:`glip.data.shards`):
the json datasets' sample builders over a streamed :class:`~glip.data.shards.ShardStream`."""

from __future__ import annotations

from typing import Any

from glip.config import GLIPConfig
from glip.data import CocoGroundingDataset, CocoIndex, MdetrGroundingDataset
from glip.data.caption_screen import CaptionScreen
from glip.data.shards import ShardStream, open_shard_set
from glip.data.transforms import build_train_transform
from glip.engine.caption_recipe import caption_recipe
from glip.engine.checkpoint import Progress

__all__ = ["build_shard_stream", "resume_stream", "stream_state"]


def build_shard_stream(cfg: GLIPConfig, tokenizer: Any) -> ShardStream:
    """The training stream of ``cfg.data.train_shards``. The manifest's ``kind`` picks the
    sample builder: ``detection`` -> :class:`CocoGroundingDataset` (``cfg.data``'s caption
    recipe over the manifest's categories), ``grounding`` / ``caption`` ->
    :class:`MdetrGroundingDataset` (``caption``, or ``data.pseudo_labelled``: pseudo-labelled
    captions, screened by the caption options). One-line errors for what a stream cannot do."""
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
        if d.pack_captions > 0:
            raise ValueError("data.pack_captions draws other captions of the set: it needs data.train_json, not shards")
        pseudo = manifest.kind == "caption" or d.pseudo_labelled
        screen = CaptionScreen(d.caption_conf, d.caption_nms, d.caption_min_box)
        distill = cfg.model.heads.grounding.distill_weight > 0
        builder = MdetrGroundingDataset(
            index, "", tokenizer, transform, kind="caption" if pseudo else "grounding", concept_scores=distill, **common
        )
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
    shard source, its split (each source's cursors follow from the schedule); else None."""
    if isinstance(train_set, ShardStream):
        return train_set.state(progress.epoch, progress.batch, local_batch, world_size, workers)
    split = _split(train_set, local_batch, world_size, workers)
    return {"split": split} if split is not None else None


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
    set accordingly); a multi-source run must resume on its own split (one-line error)."""
    if isinstance(train_set, ShardStream) and "spans" in saved:
        progress.batch = train_set.resume(saved, local_batch, world_size, workers)
        return
    now = _split(train_set, local_batch, world_size, workers)
    if "split" in saved and now is not None and list(saved["split"]) != now:
        raise ValueError(
            f"{path}: a multi-source run over shards resumes on its own split only (processes, workers, "
            f"images per process: {list(saved['split'])}; now {now})"
        )
