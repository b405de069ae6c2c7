"""Typed containers passed between the pieces of the model.

Dimension letters used across the package:
B images, L feature levels, N anchors (or boxes), T text tokens, C channels,
D text width, P phrases (labels), H/W feature-map height/width.
"""

from glip.structures.detections import Detections
from glip.structures.image_list import ImageBatch
from glip.structures.outputs import HeadOutputs
from glip.structures.targets import GroundingTargets, PretrainingTargets
from glip.structures.text import TextFeatures

__all__ = ["Detections", "GroundingTargets", "HeadOutputs", "ImageBatch", "PretrainingTargets", "TextFeatures"]
