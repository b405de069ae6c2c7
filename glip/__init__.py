"""glip: GLIP and GLIPv2, grounded language-image pre-training, in modern PyTorch."""

from glip.structures import Detections
from glip.version import __version__

__all__ = ["Detections", "__version__"]
