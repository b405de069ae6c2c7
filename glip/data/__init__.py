"""Training data: detection and grounding datasets, OD->grounding captions, transforms,
batching, and a synthetic shapes dataset."""

from glip.data.annotations import BoxCleanup, CocoIndex, clean_boxes, read_image, token_positive_map
from glip.data.collate import GroundingBatch, GroundingCollator, collate_grounding
from glip.data.datasets import CocoGroundingDataset, GroundingSample, MdetrGroundingDataset, sample_seed
from glip.data.layout import DatasetLayout, read_dataset_dir
from glip.data.od_to_grounding import (
    CaptionPromptEntry,
    CaptionRecipe,
    GroundingCaption,
    SampleRNG,
    build_caption,
    caption_all_categories,
    caption_with_negatives,
    clean_name,
    drop_overflowing_positives,
    labels_to_caption,
    parse_caption_prompt,
)
from glip.data.synthetic import SyntheticDataset, generate_synthetic, synthetic_categories
from glip.data.transforms import TrainTransform, build_train_transform, flip_boxes, resize_boxes

__all__ = [
    "BoxCleanup",
    "CaptionPromptEntry",
    "CaptionRecipe",
    "CocoGroundingDataset",
    "CocoIndex",
    "DatasetLayout",
    "GroundingBatch",
    "GroundingCaption",
    "GroundingCollator",
    "GroundingSample",
    "MdetrGroundingDataset",
    "SampleRNG",
    "SyntheticDataset",
    "TrainTransform",
    "build_caption",
    "build_train_transform",
    "caption_all_categories",
    "caption_with_negatives",
    "clean_boxes",
    "clean_name",
    "collate_grounding",
    "drop_overflowing_positives",
    "flip_boxes",
    "generate_synthetic",
    "labels_to_caption",
    "parse_caption_prompt",
    "read_dataset_dir",
    "read_image",
    "resize_boxes",
    "sample_seed",
    "synthetic_categories",
    "token_positive_map",
]
