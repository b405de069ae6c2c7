"""Metrics over :class:`glip.structures.Detections` and COCO-results entries: COCO AP,
LVIS (Fixed) AP, ODinW suites, Flickr30k recall, referring-expression precision and
PhraseCut (referring segmentation) IoU.

This package never runs a model; ``glip.tools.evaluate`` connects one to a dataset.
"""

from glip.evaluation.coco import COCO_METRICS, evaluate_coco
from glip.evaluation.grounding import GroundingRecall, box_iou
from glip.evaluation.lvis import FIXED_AP_TOPK, LVIS_METRICS, TopKPerCategory, evaluate_lvis
from glip.evaluation.odinw import SUITES, OdinwDataset, odinw_suite
from glip.evaluation.phrasecut import (
    PHRASECUT_BOX_METRICS,
    PHRASECUT_METRICS,
    PhraseCutMeter,
    box_union_iou,
    phrase_mask,
    phrasecut_metrics,
)
from glip.evaluation.report import format_metrics, format_suite, suite_summary, write_json

__all__ = [
    "COCO_METRICS",
    "FIXED_AP_TOPK",
    "LVIS_METRICS",
    "PHRASECUT_BOX_METRICS",
    "PHRASECUT_METRICS",
    "SUITES",
    "GroundingRecall",
    "OdinwDataset",
    "PhraseCutMeter",
    "TopKPerCategory",
    "box_iou",
    "box_union_iou",
    "evaluate_coco",
    "evaluate_lvis",
    "format_metrics",
    "format_suite",
    "odinw_suite",
    "phrase_mask",
    "phrasecut_metrics",
    "suite_summary",
    "write_json",
]
