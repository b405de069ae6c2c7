"""Training datasets: COCO-format detection data and MDETR/Flickr grounding data.

Both return a :class:`GroundingSample`: the normalised image, its boxes in the resized
frame with the binary token map of each box, and the caption with its token ids.

Per-sample randomness (caption order, negatives, resize size, flip) comes from a
:class:`SampleRNG` derived from ``(seed, epoch, index)``, so a sample does not depend on
the worker that loads it or on what was loaded before; :meth:`load` takes an explicit
generator (seeded as ``random.seed(s); np.random.seed(s)`` it replays the official draws).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from glip.data.annotations import CocoIndex, clean_boxes, has_valid_annotation, read_image, token_positive_map
from glip.data.masks import annotation_mask, has_segmentation, resize_masks
from glip.data.od_to_grounding import CaptionRecipe, SampleRNG, labels_to_caption
from glip.data.transforms import TrainTransform
from glip.structures.targets import GroundingTargets

__all__ = ["CocoGroundingDataset", "GroundingSample", "MdetrGroundingDataset", "sample_seed"]

logger = logging.getLogger(__name__)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 32-bit seed for one sample of one epoch, independent of the loading order."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


@dataclass
class GroundingSample:
    """One training image with its caption and targets.

    Attributes:
        image: ``Tensor[3, h, w]`` float32, normalised network input (BGR 0-255 scale).
        targets: boxes ``[G, 4]`` xyxy in the ``h x w`` frame, bool ``positive_map
            [G, max_query_len]``, labels ``[G]`` (contiguous category id, or the json
            ``category_id`` for grounding data; None when any is < 1).
        caption: the text.
        input_ids: ``Tensor[T_i]`` int64 token ids with ``[CLS]``/``[SEP]``, truncated to
            ``max_query_len``, not padded.
        tokens_positive: per box, its ``(start, end)`` character spans in ``caption``.
        image_id: the json image id.
        original_size: ``(H, W)`` of the stored image.
        flipped: whether the horizontal flip was applied.
        num_dropped_boxes: crowd, empty or non-finite boxes left out of ``targets``.
    """

    image: Tensor
    targets: GroundingTargets
    caption: str
    input_ids: Tensor
    tokens_positive: list[list[tuple[int, int]]]
    image_id: Any
    original_size: tuple[int, int]
    flipped: bool = False
    num_dropped_boxes: int = 0

    @property
    def image_size(self) -> tuple[int, int]:
        """``(h, w)`` of the resized image."""
        return int(self.image.shape[-2]), int(self.image.shape[-1])


class _GroundingDataset(Dataset):
    """What both datasets share: the json index, seeding, tokenization and the transform."""

    def __init__(
        self,
        ann_file: str | Path,
        image_dir: str | Path,
        tokenizer: Any,
        transform: TrainTransform,
        max_query_len: int,
        seed: int,
        masks: bool = False,
    ) -> None:
        self.index = CocoIndex.load(ann_file)
        self.masks = masks
        self.image_dir = Path(image_dir)
        self.tokenizer = tokenizer
        self.transform = transform
        self.max_query_len = max_query_len
        self.seed = seed
        self.epoch = 0
        self.ids = _valid_ids(self.index)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def image_ids(self) -> list[Any]:
        """The json ids of the used images, in sample order."""
        return list(self.ids)

    def set_epoch(self, epoch: int) -> None:
        """Changes the per-sample seeds (call before each epoch's loader is iterated)."""
        self.epoch = epoch

    def __getitem__(self, item: int) -> GroundingSample:
        return self.load(item, SampleRNG.from_seed(sample_seed(self.seed, self.epoch, item)))

    def load(self, item: int, rng: SampleRNG) -> GroundingSample:
        raise NotImplementedError

    def _finish(
        self,
        image: np.ndarray,
        boxes: Tensor,
        caption: str,
        spans: list[list[tuple[int, int]]],
        labels: Tensor,
        image_id: Any,
        rng: SampleRNG,
        num_dropped: int,
        anns: Sequence[Mapping[str, Any]] = (),
    ) -> GroundingSample:
        """Tokenizes, builds the token map, then resizes/flips/normalises (official order:
        ``prepare`` before the transforms, so the caption draws come first). With
        ``self.masks``, ``anns`` are the kept boxes' annotations: their masks are
        rasterised, resized and flipped with the image (boxes without one flagged)."""
        encoding = self.tokenizer(caption, max_length=self.max_query_len, truncation=True)
        pmap = token_positive_map(encoding, spans, self.max_query_len)  # [G, T]
        empty_rows = int((~pmap.any(dim=1)).sum())
        if empty_rows:
            logger.debug("image %s: %d boxes ground no token (caption truncated)", image_id, empty_rows)
        original_size = (int(image.shape[0]), int(image.shape[1]))
        tensor, boxes, flipped = self.transform(image, boxes, rng)
        masks, has_mask = None, None
        if self.masks:
            height, width = original_size
            has_mask = torch.tensor([has_segmentation(a) for a in anns], dtype=torch.bool)
            dense = np.zeros((len(anns), height, width), dtype=bool)
            for g, ann in enumerate(anns):
                if has_mask[g]:
                    dense[g] = annotation_mask(ann, height, width)
            masks = resize_masks(torch.from_numpy(dense), tuple(tensor.shape[-2:]), flip=flipped)
        labels_or_none = labels if (len(labels) == 0 or int(labels.min()) >= 1) else None
        targets = GroundingTargets(boxes, pmap, labels_or_none, masks, has_mask)
        return GroundingSample(
            image=tensor,
            targets=targets,
            caption=caption,
            input_ids=torch.tensor(encoding["input_ids"], dtype=torch.int64),
            tokens_positive=spans,
            image_id=image_id,
            original_size=original_size,
            flipped=flipped,
            num_dropped_boxes=num_dropped,
        )


def _valid_ids(index: CocoIndex) -> list[Any]:
    ids = [i for i in index.image_ids if has_valid_annotation(index.annotations[i])]
    if len(ids) < len(index.image_ids):
        logger.info(
            "%d of %d images have no usable box and are skipped", len(index.image_ids) - len(ids), len(index.image_ids)
        )
    return ids


def _log_drops(image_id: Any, crowd: int, degenerate: int, clipped: int) -> None:
    if degenerate or clipped:
        logger.info(
            "image %s: %d empty or invalid boxes dropped, %d boxes clipped to the image", image_id, degenerate, clipped
        )
    if crowd:
        logger.debug("image %s: %d crowd boxes dropped", image_id, crowd)


class CocoGroundingDataset(_GroundingDataset):
    """A COCO-format detection json and its image folder, as grounding data (official
    ``CocoGrounding``, plus the pre-training caption recipe of ``CocoDetectionTSV``).

    Images without a usable box (official ``has_valid_annotation``) are skipped. Labels are
    contiguous ids in json category order; the caption comes from ``recipe``.

    Args:
        ann_file: COCO json (``images``, ``annotations`` with ``bbox`` xywh, ``categories``).
        image_dir: folder the images' ``file_name`` are relative to.
        tokenizer: a fast BERT tokenizer (:func:`glip.text.load_tokenizer`).
        transform: resize/flip/normalise (:func:`glip.data.transforms.build_train_transform`).
        recipe: how labels become a caption (default: COCO fine-tuning).
        override_category: ODinW ``DATASETS.OVERRIDE_CATEGORY``: category records that
            replace the json's names (ids must be json ids).
        max_query_len: text-encoder length (official ``MODEL.LANGUAGE_BACKBONE.MAX_QUERY_LEN``).
        seed: base of the per-sample seeds.
        masks: also load each box's mask (``segmentation``: COCO polygons or RLE) into
            ``targets.masks``; boxes without one get an empty mask and ``has_mask`` False.
    """

    def __init__(
        self,
        ann_file: str | Path,
        image_dir: str | Path,
        tokenizer: Any,
        transform: TrainTransform,
        recipe: CaptionRecipe | None = None,
        override_category: Sequence[Mapping[str, Any]] | None = None,
        max_query_len: int = 256,
        seed: int = 0,
        masks: bool = False,
    ) -> None:
        super().__init__(ann_file, image_dir, tokenizer, transform, max_query_len, seed, masks)
        index = self.index
        self.recipe = recipe if recipe is not None else CaptionRecipe.coco_finetune()
        # Contiguous ids follow the json's category order (official getCatIds()).
        self.json_to_contiguous = {int(c["id"]): i + 1 for i, c in enumerate(index.categories)}
        categories = index.categories if override_category is None else list(override_category)
        self.ind_to_class: dict[int, str] = {}
        for cat in categories:
            if int(cat["id"]) not in self.json_to_contiguous:
                raise ValueError(f"override category id {cat['id']} is not a category of {ann_file}")
            self.ind_to_class[self.json_to_contiguous[int(cat["id"])]] = str(cat["name"])

    def load(self, item: int, rng: SampleRNG) -> GroundingSample:
        """Sample ``item`` drawn with ``rng``."""
        image_id = self.ids[item]
        record = self.index.images[image_id]
        image = read_image(self.image_dir / record["file_name"])
        height, width = int(image.shape[0]), int(image.shape[1])
        anns = self.index.annotations[image_id]
        cleaned = clean_boxes(anns, height, width)
        _log_drops(image_id, cleaned.num_crowd, cleaned.num_degenerate, cleaned.num_clipped)
        labels = torch.tensor(
            [self.json_to_contiguous[int(anns[i]["category_id"])] for i in cleaned.keep], dtype=torch.int64
        )
        caption, kept = labels_to_caption(
            labels.tolist(), self.ind_to_class, self.recipe, self.tokenizer, rng, self.max_query_len
        )
        in_caption = torch.tensor([int(v) in kept for v in labels.tolist()], dtype=torch.bool)
        if not bool(in_caption.all()):
            logger.warning(
                "image %s: %d boxes removed because their categories overflow the caption",
                image_id,
                int((~in_caption).sum()),
            )
        boxes, labels = cleaned.boxes[in_caption], labels[in_caption]
        spans = [[caption.label_to_span[int(v)]] for v in labels.tolist()]
        dropped = cleaned.num_dropped + int((~in_caption).sum())
        kept = [anns[i] for i, used in zip(cleaned.keep, in_caption.tolist()) if used]
        return self._finish(image, boxes, caption.caption, spans, labels, image_id, rng, dropped, kept)


class MdetrGroundingDataset(_GroundingDataset):
    """MDETR-style grounding data (Flickr30k entities, GoldG mixed): a COCO-format json
    whose image records hold a ``caption`` and whose annotations hold ``tokens_positive``
    character spans (official ``ModulatedDataset`` / ``FlickrDataset``).

    The caption is used as is (no negatives); box ``g`` grounds the tokens of its spans.
    Args as :class:`CocoGroundingDataset`.
    """

    def __init__(
        self,
        ann_file: str | Path,
        image_dir: str | Path,
        tokenizer: Any,
        transform: TrainTransform,
        max_query_len: int = 256,
        seed: int = 0,
        masks: bool = False,
    ) -> None:
        super().__init__(ann_file, image_dir, tokenizer, transform, max_query_len, seed, masks)

    def load(self, item: int, rng: SampleRNG) -> GroundingSample:
        """Sample ``item`` drawn with ``rng`` (only the transform draws)."""
        image_id = self.ids[item]
        record = self.index.images[image_id]
        caption = str(record["caption"])
        image = read_image(self.image_dir / record["file_name"])
        height, width = int(image.shape[0]), int(image.shape[1])
        anns = self.index.annotations[image_id]
        cleaned = clean_boxes(anns, height, width, mdetr_rounding=True)
        _log_drops(image_id, cleaned.num_crowd, cleaned.num_degenerate, cleaned.num_clipped)
        spans: list[list[tuple[int, int]]] = []
        for i in cleaned.keep:
            # Official precedence: "tokens" when present, else "tokens_positive".
            raw = anns[i].get("tokens", anns[i].get("tokens_positive"))
            if raw is None:
                raise ValueError(f"annotation {anns[i].get('id')} of image {image_id} has no tokens_positive")
            spans.append([(int(a), int(b)) for a, b in raw])
        labels = torch.tensor([int(anns[i].get("category_id", 1)) for i in cleaned.keep], dtype=torch.int64)
        kept = [anns[i] for i in cleaned.keep]
        return self._finish(image, cleaned.boxes, caption, spans, labels, image_id, rng, cleaned.num_dropped, kept)
