"""Training datasets: COCO-format detection data and MDETR/Flickr grounding data.

Both return a :class:`GroundingSample`: the normalised image, its boxes in the resized
frame with the binary token map of each box, and the caption with its token ids.

Each sample also carries what GLIPv2's pre-training heads need: its data kind
(detection / grounding / caption), each box's id in one global class-name vocabulary,
each token's class id and the default MLM greenlight map of its prompt.

Per-sample randomness (caption order, negatives, resize size, flip) comes from a
:class:`SampleRNG` derived from ``(seed, epoch, index)``, so a sample does not depend on
the worker that loads it or on what was loaded before; :meth:`load` takes an explicit
generator (seeded as ``random.seed(s); np.random.seed(s)`` it replays the official draws).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from glip.data.annotations import (
    clean_boxes,
    has_valid_annotation,
    read_image,
    teacher_concepts,
    token_positive_map,
)
from glip.data.caption_packing import CaptionPacking, draw_negatives, grounded_phrases, pack_captions
from glip.data.caption_screen import CaptionScreen
from glip.data.categories import class_categories, used_category_ids
from glip.data.grounding_sample import GroundingSample
from glip.data.json_index import open_index
from glip.data.masks import annotation_mask, has_segmentation, resize_masks
from glip.data.od_to_grounding import CaptionRecipe, SampleRNG, labels_to_caption
from glip.data.seeded import SeededDataset, sample_seed
from glip.data.transforms import TrainTransform
from glip.structures.targets import GroundingTargets
from glip.text.masking import DataKind, greenlight_map
from glip.text.spans import build_category_vocabulary, normalize_class_name, token_class_ids

__all__ = ["CocoGroundingDataset", "GroundingSample", "MdetrGroundingDataset", "sample_seed"]

logger = logging.getLogger(__name__)


class _GroundingDataset(SeededDataset):
    """What both datasets share: the json index, seeding, tokenization and the transform."""

    def __init__(
        self,
        ann_file: str | Path | Any,  # a json path, or an index (CocoIndex, MappedCocoIndex, TsvIndex)
        image_dir: str | Path,
        tokenizer: Any,
        transform: TrainTransform,
        max_query_len: int,
        seed: int,
        masks: bool = False,
        index_mode: str = "auto",
        index_cache: str | Path | None = None,
    ) -> None:
        # A ready index (glip.data.shards streams records with each sample; TSV pairs) or a json path.
        self.index = ann_file if _is_index(ann_file) else open_index(ann_file, index_mode, index_cache)
        super().__init__(_valid_ids(self.index), seed)
        self.masks = masks
        self.image_dir = Path(image_dir)
        self.tokenizer = tokenizer
        self.transform = transform
        self.max_query_len = max_query_len

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
        kind: DataKind = "detection",
        box_class: Tensor | None = None,
        class_spans: list[tuple[int, int, int]] | None = None,
        positive_spans: list[tuple[int, int]] | None = None,
        concepts: tuple[list[list[tuple[int, int]]], Tensor] | None = None,
    ) -> GroundingSample:
        """Tokenizes, builds the token maps, then resizes/flips/normalises (official order:
        ``prepare`` before the transforms, so the caption draws come first).

        With ``self.masks``, ``anns`` are the kept boxes' annotations: their masks are
        rasterised, resized and flipped with the image (boxes without one flagged).
        ``class_spans``: ``(start, end, global class id)`` of every class name in the
        caption; ``positive_spans``: detection only, the spans of the classes with a box
        (the MLM greenlight); ``concepts``: a teacher's concept pool, the character spans of
        each of its K concepts and the ``Tensor[G, K]`` scores of the kept boxes."""
        encoding = self.tokenizer(caption, max_length=self.max_query_len, truncation=True)
        width = self.max_query_len
        pmap = token_positive_map(encoding, spans, width)  # [G, T]
        token_class = token_class_ids(encoding, class_spans or [], width)  # [T]
        greenlight = greenlight_map(encoding, caption, kind, width, positive_spans or [])  # [T]
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
        concept_map, concept_scores = None, None
        if concepts is not None:
            concept_map = token_positive_map(encoding, concepts[0], width=self.max_query_len)  # [K, T]
            concept_scores = concepts[1]
        targets = GroundingTargets(
            boxes, pmap, labels_or_none, masks, has_mask, concept_map=concept_map, concept_scores=concept_scores
        )
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
            kind=kind,
            box_class=box_class,
            token_class=token_class,
            greenlight=greenlight,
        )


def _is_index(value: Any) -> bool:
    """Whether ``value`` is an annotation index already (else a json path)."""
    return hasattr(value, "annotations") and hasattr(value, "image_ids")


def _read_image(index: Any, image_dir: Path, record: Mapping[str, Any]) -> np.ndarray:
    """The pixels of ``record``: from the index when it holds them (TSV), else the file
    ``image_dir / record["file_name"]``."""
    reader = getattr(index, "read_image", None)
    return reader(record) if reader is not None else read_image(image_dir / record["file_name"])


def _valid_ids(index: Any) -> Sequence[Any]:
    """The image ids usable for training (official ``has_valid_annotation``), in id order;
    an index that knows them (:class:`~glip.data.json_index.MappedCocoIndex`) answers
    without decoding its records."""
    known = getattr(index, "valid_ids", None)
    if known is not None:
        ids = known()
    else:
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
    contiguous ids in json category order over the json's classes
    (:func:`glip.data.categories.class_categories`: a Roboflow export's dataset-name entry,
    id 0, is left out); the caption comes from ``recipe``.

    Args:
        ann_file: COCO json (``images``, ``annotations`` with ``bbox`` xywh, ``categories``),
            or an index of one (:func:`glip.data.json_index.open_index`, a TSV index).
        image_dir: folder the images' ``file_name`` are relative to (unused when the index
            holds the pixels, as a TSV index does).
        tokenizer: a fast BERT tokenizer (:func:`glip.text.load_tokenizer`).
        transform: resize/flip/normalise (:func:`glip.data.transforms.build_train_transform`).
        recipe: how labels become a caption (default: COCO fine-tuning).
        override_category: ODinW ``DATASETS.OVERRIDE_CATEGORY``: category records that
            replace the json's names (ids must be json ids).
        max_query_len: text-encoder length (official ``MODEL.LANGUAGE_BACKBONE.MAX_QUERY_LEN``).
        seed: base of the per-sample seeds.
        masks: also load each box's mask (``segmentation``: COCO polygons or RLE) into
            ``targets.masks``; boxes without one get an empty mask and ``has_mask`` False.
        category_vocabulary: normalised class name -> global class id, shared by every
            dataset of a training mix (:func:`glip.text.spans.build_category_vocabulary`
            over all their names); default: built from this dataset's names alone.
        index_mode, index_cache: how a json path is read (:func:`glip.data.json_index.open_index`):
            ``"memory"`` (parsed), ``"mapped"`` (an on-disk index, constant memory) or
            ``"auto"`` (mapped from 64 MiB); where the index is cached.
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
        category_vocabulary: Mapping[str, int] | None = None,
        index_mode: str = "auto",
        index_cache: str | Path | None = None,
    ) -> None:
        super().__init__(ann_file, image_dir, tokenizer, transform, max_query_len, seed, masks, index_mode, index_cache)
        index = self.index
        self.recipe = recipe if recipe is not None else CaptionRecipe.coco_finetune()
        # Contiguous ids follow the json's order of its classes (official getCatIds(), less the
        # dataset-name entry id 0 that the official categories() leaves out: glip.data.categories).
        boxes = [a for anns in index.annotations.values() for a in anns]
        classes = class_categories(index.categories, boxes)
        self.json_to_contiguous = {int(c["id"]): i + 1 for i, c in enumerate(classes)}
        stray = sorted(used_category_ids(boxes) - set(self.json_to_contiguous))
        if stray:
            raise ValueError(f"{ann_file}: boxes use category ids {stray}, which are not among its classes")
        categories = classes if override_category is None else list(override_category)
        self.ind_to_class: dict[int, str] = {}
        for cat in categories:
            if int(cat["id"]) not in self.json_to_contiguous:
                raise ValueError(f"override category id {cat['id']} is not a class of {ann_file}")
            self.ind_to_class[self.json_to_contiguous[int(cat["id"])]] = str(cat["name"])
        vocabulary = category_vocabulary or build_category_vocabulary(self.ind_to_class.values())
        # Contiguous label -> global class id (names missing from the vocabulary are refused).
        self.label_to_global: dict[int, int] = {}
        for label, name in self.ind_to_class.items():
            key = normalize_class_name(name)
            if key not in vocabulary:
                raise ValueError(f"category {name!r} of {ann_file} is not in the category vocabulary")
            self.label_to_global[label] = int(vocabulary[key])

    def load(self, item: int, rng: SampleRNG) -> GroundingSample:
        """Sample ``item`` drawn with ``rng``."""
        image_id = self.ids[item]
        record = self.index.images[image_id]
        image = _read_image(self.index, self.image_dir, record)
        return self.build(image, record, self.index.annotations[image_id], rng)

    def build(
        self, image: np.ndarray, record: Mapping[str, Any], anns: Sequence[Mapping[str, Any]], rng: SampleRNG
    ) -> GroundingSample:
        """The sample of one image (``uint8 [H, W, 3]``), its json image record and its
        annotation records (in file order; a stream of records uses this too)."""
        image_id = record["id"]
        height, width = int(image.shape[0]), int(image.shape[1])
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
        # Every class name written in the prompt (negatives too; not the background filler).
        class_spans = [
            (start, end, self.label_to_global[label])
            for label, (start, end) in caption.label_to_span.items()
            if label in self.label_to_global
        ]
        positive = [caption.label_to_span[v] for v in sorted(set(labels.tolist()))]
        box_class = torch.tensor([self.label_to_global[int(v)] for v in labels.tolist()], dtype=torch.int64)
        return self._finish(
            image, boxes, caption.caption, spans, labels, image_id, rng, dropped, kept,
            kind="detection", box_class=box_class, class_spans=class_spans, positive_spans=positive,
        )  # fmt: skip


class MdetrGroundingDataset(_GroundingDataset):
    """MDETR-style grounding data (Flickr30k entities, GoldG mixed): a COCO-format json
    whose image records hold a ``caption`` and whose annotations hold ``tokens_positive``
    character spans (official ``ModulatedDataset`` / ``FlickrDataset``).

    The caption is used as is (no negatives); box ``g`` grounds the tokens of its spans.
    Boxes have no global class (they get only their own image's block in GLIPv2's
    inter-image loss) and the whole caption is the MLM greenlight. ``kind``:
    ``"grounding"`` (gold data, default) or ``"caption"`` (pseudo-labelled image-text
    pairs); it selects the official ``NO_MASK_FOR_GOLD`` rule. ``screen``: the official
    caption options (:class:`~glip.data.caption_screen.CaptionScreen`: score filter, NMS,
    minimum boxes), applied once when the json is read. ``packing`` (caption data only): each
    caption packed with random other captions of the set as negatives
    (:mod:`glip.data.caption_packing`; never the sample's own caption, which the official may
    draw). ``concept_scores``: also read a teacher's region-concept scores, for the
    distillation loss (:mod:`glip.modeling.heads.grounding.region_distill`): the image record's
    ``concepts`` (``[{"phrase", "tokens_positive"}]``, the caption's concept pool, as
    ``glip pseudo-label --teacher clip`` writes it) and each annotation's ``concept_scores``
    (K numbers aligned with them) become the targets' ``concept_map`` and
    ``concept_scores``; an image whose boxes have none has no teacher scores. Other args as
    :class:`CocoGroundingDataset`.
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
        kind: DataKind = "grounding",
        screen: CaptionScreen | None = None,
        packing: CaptionPacking | None = None,
        concept_scores: bool = False,
        index_mode: str = "auto",
        index_cache: str | Path | None = None,
    ) -> None:
        if kind not in ("grounding", "caption"):
            raise ValueError(f"MdetrGroundingDataset kind must be 'grounding' or 'caption', got {kind!r}")
        if packing is not None and packing.number > 0 and kind != "caption":
            raise ValueError("caption packing applies to pseudo-labelled caption data (kind 'caption') only")
        self.packing = packing
        self._phrase_cache: dict[int, frozenset[str]] = {}
        super().__init__(ann_file, image_dir, tokenizer, transform, max_query_len, seed, masks, index_mode, index_cache)
        self.kind: DataKind = kind
        self.concept_scores = concept_scores
        if screen is not None:
            self.index = screen.apply(self.index)
            self.ids = _valid_ids(self.index)

    @property
    def has_concept_scores(self) -> bool:
        """Whether some box of the (screened) data carries a teacher's ``concept_scores``."""
        known = getattr(self.index, "has_concept_scores", None)
        if known is not None:
            return bool(known(self.ids))
        return any("concept_scores" in a for i in self.ids for a in self.index.annotations[i])

    def load(self, item: int, rng: SampleRNG) -> GroundingSample:
        """Sample ``item`` drawn with ``rng`` (only the transform draws)."""
        image_id = self.ids[item]
        record = self.index.images[image_id]
        image = _read_image(self.index, self.image_dir, record)
        return self.build(image, record, self.index.annotations[image_id], rng, item)

    def build(
        self,
        image: np.ndarray,
        record: Mapping[str, Any],
        anns: Sequence[Mapping[str, Any]],
        rng: SampleRNG,
        item: int | None = None,
    ) -> GroundingSample:
        """The sample of one image (``uint8 [H, W, 3]``), its json image record (with its
        ``caption``) and annotation records; ``item`` (the dataset position) is needed only
        to pack other captions of the set."""
        image_id = record["id"]
        caption = str(record["caption"])
        height, width = int(image.shape[0]), int(image.shape[1])
        cleaned = clean_boxes(anns, height, width, mdetr_rounding=True)
        _log_drops(image_id, cleaned.num_crowd, cleaned.num_degenerate, cleaned.num_clipped)
        spans: list[list[tuple[int, int]]] = []
        for i in cleaned.keep:
            # Official precedence: "tokens" when present, else "tokens_positive".
            raw = anns[i].get("tokens", anns[i].get("tokens_positive"))
            if raw is None:
                raise ValueError(f"annotation {anns[i].get('id')} of image {image_id} has no tokens_positive")
            spans.append([(int(a), int(b)) for a, b in raw])
        kept = [anns[i] for i in cleaned.keep]
        concepts = teacher_concepts(image_id, record, kept) if self.concept_scores else None
        if self.packing is not None and self.packing.number > 0:
            if item is None:
                raise ValueError("caption packing draws other captions of the set: it needs map-style data")
            caption, spans, shift = self._pack(item, caption, spans, rng)
            if concepts is not None:
                concepts = ([[(a + shift, b + shift) for a, b in c] for c in concepts[0]], concepts[1])
        labels = torch.tensor([int(anns[i].get("category_id", 1)) for i in cleaned.keep], dtype=torch.int64)
        return self._finish(
            image, cleaned.boxes, caption, spans, labels, image_id, rng, cleaned.num_dropped, kept, kind=self.kind,
            concepts=concepts,
        )  # fmt: skip

    def _pack(
        self, item: int, caption: str, spans: list[list[tuple[int, int]]], rng: SampleRNG
    ) -> tuple[str, list[list[tuple[int, int]]], int]:
        """``caption`` packed with the captions of random other items (drawn with ``rng``):
        the packed text, the moved spans and where the own caption starts in it."""
        assert self.packing is not None
        count = self.packing.draw_count(rng) if len(self) > 1 else 0
        others = draw_negatives(item, count, len(self), rng, self._phrases if self.packing.disjoint else None)
        negatives = [str(self.index.images[self.ids[j]]["caption"]) for j in others]
        lengths = [len(self.tokenizer(text)["input_ids"]) for text in [*negatives, caption]]
        packed = pack_captions(caption, spans, negatives, lengths, self.max_query_len, rng)
        return packed.caption, packed.spans, packed.positive[0]

    def _phrases(self, item: int) -> frozenset[str]:
        """The phrases item ``item``'s boxes ground (:func:`grounded_phrases`), cached."""
        if item not in self._phrase_cache:
            record, anns = self.index.images[self.ids[item]], self.index.annotations[self.ids[item]]
            spans = [a.get("tokens", a.get("tokens_positive")) or [] for a in anns]
            self._phrase_cache[item] = grounded_phrases(str(record["caption"]), spans)
        return self._phrase_cache[item]
