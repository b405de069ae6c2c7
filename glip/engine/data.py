"""Training data for the loop: the datasets named by the config and a resumable,
process-sharded batch sampler."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from glip.config import GLIPConfig
from glip.data import CocoGroundingDataset, GroundingCollator, MdetrGroundingDataset
from glip.data.caption_packing import CaptionPacking
from glip.data.caption_screen import CaptionScreen
from glip.data.captions import CaptionDataset
from glip.data.seeded import SeededDataset
from glip.data.transforms import build_train_transform
from glip.data.tsv import TsvIndex
from glip.engine.caption_recipe import caption_recipe
from glip.engine.vqa import VQA_FORMATS, build_vqa_dataset

__all__ = [
    "RepeatDataset",
    "ShardedBatchSampler",
    "build_dataset",
    "check_teacher_scores",
    "make_loader",
]


class RepeatDataset(Dataset):
    """``dataset`` repeated ``copies`` times (official ``DATASETS.GENERAL_COPY``: few-shot
    sets are repeated so that an epoch holds enough batches)."""

    def __init__(self, dataset: Dataset, copies: int) -> None:
        if copies < 1:
            raise ValueError(f"copies must be at least 1, got {copies}")
        self.dataset = dataset
        self.copies = copies

    def __len__(self) -> int:
        return len(self.dataset) * self.copies  # type: ignore[arg-type]

    def __getitem__(self, item: int) -> Any:
        base = self.dataset
        index = item % len(base)  # type: ignore[arg-type]
        if isinstance(base, SeededDataset):
            # Each copy draws its own augmentation (seeded by its position in the repeat).
            sample = base.load(index, base.sample_rng(item))
        else:
            sample = base[index]
        if hasattr(sample, "index"):
            sample.index = item  # this copy's own per-step random streams
        return sample

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def __getattr__(self, name: str) -> Any:
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)


class ShardedBatchSampler(Sampler[list[int]]):
    """Global batches of a seeded per-epoch permutation; yields this process's share.

    Global batch ``b`` of epoch ``e`` is ``perm_e[b * G : (b + 1) * G]`` with ``G = local
    batch x world size``; process ``r`` gets its ``r``-th slice of ``local_batch`` indices.
    The incomplete last batch is dropped. The order depends only on ``(seed, epoch)``,
    so a run resumed at ``(epoch, start_batch)`` reads exactly what the original would,
    whatever the number of processes (for the same global batch).

    Args:
        size: dataset length.
        local_batch: images per process and step.
        rank, world_size: this process and the number of processes.
        seed, epoch: the permutation's seed.
        start_batch: global batches of this epoch already consumed.
        shuffle: False reads in dataset order.
    """

    def __init__(
        self,
        size: int,
        local_batch: int,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        epoch: int = 0,
        start_batch: int = 0,
        shuffle: bool = True,
    ) -> None:
        if local_batch < 1 or not 0 <= rank < world_size:
            raise ValueError(f"bad sampler settings: local_batch={local_batch}, rank={rank}, world={world_size}")
        self.size = size
        self.local_batch = local_batch
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.epoch = epoch
        self.start_batch = start_batch
        self.shuffle = shuffle

    @property
    def batches_per_epoch(self) -> int:
        return self.size // (self.local_batch * self.world_size)

    def __len__(self) -> int:
        return max(self.batches_per_epoch - self.start_batch, 0)

    def __iter__(self) -> Iterator[list[int]]:
        if self.shuffle:
            seed = int(np.random.SeedSequence([self.seed, self.epoch]).generate_state(1)[0])
            order = torch.randperm(self.size, generator=torch.Generator().manual_seed(seed)).tolist()
        else:
            order = list(range(self.size))
        g = self.local_batch * self.world_size
        for b in range(self.start_batch, self.batches_per_epoch):
            chunk = order[b * g : (b + 1) * g]
            yield chunk[self.rank * self.local_batch : (self.rank + 1) * self.local_batch]


def build_dataset(cfg: GLIPConfig, tokenizer: Any, train: bool = True) -> Dataset:
    """The training (or validation) set of ``cfg.data``: a COCO json and its image folder.

    Validation uses the test resize and no flip. Detection data get the caption recipe
    of ``cfg.data``; validation captions list every category in json order.
    """
    d = cfg.data
    if train and d.train_shards:  # a streamed shard set (glip.data.shards)
        from glip.engine.shard_data import build_shard_stream

        return build_shard_stream(cfg, tokenizer)
    if d.format in VQA_FORMATS:  # VQA questions (glip.engine.vqa)
        return build_vqa_dataset(cfg, tokenizer, train)
    ann, images = (d.train_json, d.train_images) if train else (d.val_json, d.val_images)
    if not ann or not images:
        which = "train" if train else "val"
        raise ValueError(f"data.{which}_json and data.{which}_images must name a COCO json and its image folder")
    transform = build_train_transform(cfg.input, flip_prob=d.flip_prob, train=train)
    max_len = cfg.model.text.max_query_len
    masks = cfg.model.heads.mask.enabled  # the mask head's targets
    if d.pseudo_labelled and d.format != "mdetr":
        raise ValueError(f"data.pseudo_labelled applies to data.format 'mdetr' (grounding json), not {d.format!r}")
    ann, index = _annotations(cfg, ann, images), {"index_mode": d.json_index, "index_cache": d.index_cache or None}
    if d.format == "mdetr":  # the caption options screen (and pack) training data only, as official
        screen = CaptionScreen(d.caption_conf, d.caption_nms, d.caption_min_box) if train else None
        pseudo = d.pseudo_labelled and train
        packing = CaptionPacking(d.pack_captions, d.pack_prob, d.no_pack_prob, d.pack_disjoint) if pseudo else None
        distill = train and cfg.model.heads.grounding.distill_weight > 0  # the teacher's concept scores
        return MdetrGroundingDataset(
            ann, images, tokenizer, transform, max_query_len=max_len, seed=cfg.solver.seed, masks=masks,
            kind="caption" if pseudo else "grounding", screen=screen, packing=packing, concept_scores=distill, **index,
        )  # fmt: skip
    if d.format == "captions":  # captioning (GLIPv2): COCO-captions json, never flipped
        transform = build_train_transform(cfg.input, flip_prob=0.0, train=train)
        return CaptionDataset(ann, images, tokenizer, transform, max_query_len=max_len, seed=cfg.solver.seed)
    if d.format != "coco":
        raise ValueError(f"unknown data.format {d.format!r} (expected 'coco', 'mdetr', 'vqa', 'gqa' or 'captions')")
    recipe = caption_recipe(cfg, train)
    dataset = CocoGroundingDataset(
        ann, images, tokenizer, transform, recipe, max_query_len=max_len, seed=cfg.solver.seed, masks=masks, **index
    )
    return RepeatDataset(dataset, d.general_copy) if train and d.general_copy > 1 else dataset


def _annotations(cfg: GLIPConfig, ann: str, images: str) -> Any:
    """``ann`` (a json path), or a :class:`~glip.data.tsv.TsvIndex` when it names a label TSV
    (``images``: its image TSV)."""
    d = cfg.data
    if not ann.endswith(".tsv"):
        return ann
    if d.format not in ("coco", "mdetr"):
        raise ValueError(f"TSV data is read as data.format 'coco' (detection) or 'mdetr' (grounding), not {d.format!r}")
    if d.format == "coco" and not d.tsv_labelmap:
        raise ValueError("detection TSV data needs data.tsv_labelmap: the labelmap json of its class names")
    return TsvIndex(ann, images, d.tsv_labelmap if d.format == "coco" else None)


def check_teacher_scores(cfg: GLIPConfig, datasets: list[Dataset]) -> None:
    """With the distillation loss on (``model.heads.grounding.distill_weight > 0``), some
    training set must carry a teacher's ``concept_scores``; a one-line ``ValueError`` if none does."""
    if cfg.model.heads.grounding.distill_weight <= 0:
        return
    if not any(getattr(ds, "has_concept_scores", False) for ds in datasets):
        raise ValueError(
            "model.heads.grounding.distill_weight > 0 needs training data with the teacher's concept_scores "
            "(data.format mdetr, written by glip pseudo-label --teacher clip); none of the training data has them"
        )


def make_loader(dataset: Dataset, sampler: ShardedBatchSampler, cfg: GLIPConfig, pad_token_id: int = 0) -> DataLoader:
    """A loader over ``sampler``'s batches. Its own generator keeps the global torch RNG
    (dropout, drop-path) untouched, so resuming replays it exactly."""
    collate = GroundingCollator(cfg.input.size_divisibility, cfg.model.text.max_query_len, pad_token_id)
    if hasattr(dataset, "loader"):  # a shard stream (glip.data.shards.ShardStream) reads its own batches
        return dataset.loader(sampler, collate, cfg.data.num_workers)
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(sampler.epoch)
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=collate,
        num_workers=cfg.data.num_workers,
        generator=torch.Generator().manual_seed(0),
    )
