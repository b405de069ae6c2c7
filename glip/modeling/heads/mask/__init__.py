"""The vision-language mask head (GLIPv2 instance / referring segmentation)."""

from glip.modeling.heads.mask.extractors import Hourglass, HourglassExtractor, MaskConvExtractor, Residual
from glip.modeling.heads.mask.head import MaskHead, MaskOutput, MaskTargets, detector_proposals
from glip.modeling.heads.mask.predictor import VLMaskPredictor

__all__ = [
    "Hourglass",
    "HourglassExtractor",
    "MaskConvExtractor",
    "MaskHead",
    "MaskOutput",
    "MaskTargets",
    "Residual",
    "VLMaskPredictor",
    "detector_proposals",
]
