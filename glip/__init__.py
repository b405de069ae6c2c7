"""glip: GLIP and GLIPv2, grounded language-image pre-training, in modern PyTorch.

``import glip`` loads neither torchvision nor transformers; they are imported when a
model is built or an op first runs. Once transformers is imported, glip's Hugging Face
classes are registered with it (:mod:`glip.hf`).
"""

from glip.config import GLIPConfig, load_config
from glip.hf import install_import_hook as _install_hf_hook
from glip.hub.checkpoint import CheckpointError, save_model
from glip.hub.loading import load_model
from glip.inference import Answer, Caption, Predictor, answer, caption, predict
from glip.modeling.glip import GLIP
from glip.structures import Detections
from glip.text import Prompt, PromptError, parse_prompt
from glip.utils.image import ImageLoadError
from glip.version import __version__

# Registers glip's model type, Auto classes and pipeline with transformers once transformers
# is imported (glip.hf; nothing is imported now).
_install_hf_hook()

__all__ = [
    "GLIP",
    "Answer",
    "Caption",
    "CheckpointError",
    "Detections",
    "GLIPConfig",
    "ImageLoadError",
    "Prompt",
    "PromptError",
    "Predictor",
    "__version__",
    "answer",
    "caption",
    "load_config",
    "load_model",
    "parse_prompt",
    "predict",
    "save_model",
]
