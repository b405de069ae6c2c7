"""Heads on the fused trunk: each owns its forward, loss and post-processing.

Adding a head (e.g. GLIPv2's MLM or inter-image contrastive head):

1. write a :class:`Head` subclass: ``forward(trunk, outputs) -> its output dataclass``,
   ``loss(output, inputs) -> {name: 0-d tensor}``, ``postprocess(output, ...) -> a result
   dataclass`` (unless it only serves a training loss); declare what it needs from the
   training loop (``training_only``, ``needs_backbone``, ``needs_causal_text`` with
   ``batch_kind``, ``extra_inputs``; see :mod:`glip.modeling.heads.base`) and its
   ``linear_probe`` / ``untrained`` parameter names if any;
2. write its builder ``(cfg, text_config, ids) -> the head or None`` (the only code that
   reads its config section; ``ids`` the tokenizer's :class:`TokenIds`) and add one row to
   the ordered head table :data:`glip.modeling.build.HEADS`;
3. give it a section under ``model.heads`` in the config (its ``weight`` is the
   criterion's weight of its losses).

The model then holds it in ``model.heads[name]``; its weights load (checkpoint keys
``heads.<name>.*``), freeze and get their learning rate with no other edit.
"""

from glip.modeling.heads.base import NO_TOKEN_IDS, Head, LossInputs, MaskedTokens, TokenIds
from glip.modeling.heads.caption import CaptionHead, CaptionOutput
from glip.modeling.heads.grounding.head import GroundingHead
from glip.modeling.heads.grounding.loss import GroundingLoss
from glip.modeling.heads.inter_image import InterImageHead, InterImageInputs
from glip.modeling.heads.mdetr import AlignOutput, MDETRAlignHead, MDETRTokenHead, TokenOutput
from glip.modeling.heads.mlm import MaskedLMHead, MLMOutput
from glip.modeling.heads.require import HeadUnavailableError, require_head
from glip.modeling.heads.vqa import VQAHead, VQAOutput

__all__ = [
    "AlignOutput",
    "CaptionHead",
    "CaptionOutput",
    "GroundingHead",
    "GroundingLoss",
    "Head",
    "HeadUnavailableError",
    "InterImageHead",
    "InterImageInputs",
    "LossInputs",
    "MaskedTokens",
    "NO_TOKEN_IDS",
    "TokenIds",
    "MDETRAlignHead",
    "MDETRTokenHead",
    "MLMOutput",
    "MaskedLMHead",
    "TokenOutput",
    "VQAHead",
    "VQAOutput",
    "require_head",
]
