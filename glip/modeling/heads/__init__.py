"""Heads on the fused trunk: each owns its forward, loss and post-processing.

Adding a head (e.g. GLIPv2's MLM or inter-image contrastive head):

1. write a :class:`Head` subclass: ``forward(trunk, outputs) -> its output dataclass``,
   ``loss(output, inputs) -> {name: 0-d tensor}``, optionally ``postprocess``; declare
   its ``linear_probe`` / ``untrained`` parameter names if any;
2. register a builder for its kind with :func:`glip.modeling.build.register_head`
   (the builder reads the head's config section and returns the module);
3. give it a section under ``model.heads`` in the config (its ``weight`` is the
   criterion's weight of its losses).

The model then holds it in ``model.heads[name]``; its weights load (checkpoint keys
``heads.<name>.*``), freeze and get their learning rate with no other edit.
"""

from glip.modeling.heads.base import Head, LossInputs
from glip.modeling.heads.caption import CaptionHead, CaptionOutput
from glip.modeling.heads.grounding.head import GroundingHead
from glip.modeling.heads.grounding.loss import GroundingLoss
from glip.modeling.heads.inter_image import InterImageHead, InterImageInputs
from glip.modeling.heads.mdetr import AlignOutput, MDETRAlignHead, MDETRTokenHead, TokenOutput
from glip.modeling.heads.mlm import MaskedLMHead, MLMOutput
from glip.modeling.heads.vqa import VQAHead, VQAOutput

__all__ = [
    "AlignOutput",
    "CaptionHead",
    "CaptionOutput",
    "GroundingHead",
    "GroundingLoss",
    "Head",
    "InterImageHead",
    "InterImageInputs",
    "LossInputs",
    "MDETRAlignHead",
    "MDETRTokenHead",
    "MLMOutput",
    "MaskedLMHead",
    "TokenOutput",
    "VQAHead",
    "VQAOutput",
]
