"""Captioning batches in the training loop: the causal forward and the captioning loss.

A batch whose samples are all of kind ``"captioning"`` (:class:`glip.data.captions.CaptionDataset`)
trains the captioning head only: some caption tokens are masked
(:meth:`glip.modeling.heads.caption.CaptionHead.corrupt`, from each sample's stream seeded
by ``(run seed, step, dataset index)`` as the MLM corruption), the model runs causally
with only that head, and the loss is ``loss_caption`` times the head's weight. Captioning
batches carry no boxes, so the grounding loss is not computed on them (on a detection
batch the captioning head gives no loss). A batch mixing captioning with other kinds is
an error: per-task batches are the multi-task sampler's job.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor

from glip.data import GroundingBatch
from glip.data.captions import CAPTIONING
from glip.modeling.glip import GLIP
from glip.modeling.heads.caption import CAPTION, CaptionHead
from glip.utils.seeding import sample_seed, stream_generators

__all__ = ["STREAM_CAPTION", "caption_losses", "is_captioning_batch"]

# The per-sample sub-stream of the caption masking (glip.utils.seeding's STREAM_* are 1 and 2).
STREAM_CAPTION = 3


def is_captioning_batch(batch: GroundingBatch) -> bool:
    """Whether every sample is a captioning sample (``ValueError`` when only some are)."""
    flags = [k == CAPTIONING for k in batch.kinds]
    if any(flags) and not all(flags):
        raise ValueError("a batch mixes captioning samples with other kinds; train each task in its own batches")
    return bool(flags) and all(flags)


def caption_losses(
    model: GLIP, weights: Mapping[str, float], batch: GroundingBatch, seed: int, step: int
) -> dict[str, Tensor]:
    """``{"loss_caption": Tensor[]}`` of a captioning batch (see the module docstring).

    Args:
        model: a GLIP with a captioning head (``heads["caption"]``).
        weights: the criterion's head weights (``Criterion.weights``); default 1.
        batch: a captioning batch (its ``indices`` the dataset indices).
        seed: the run seed; step: the optimiser steps done before this one.
    """
    head = model.heads[CAPTION] if CAPTION in model.heads else None
    if not isinstance(head, CaptionHead):
        raise ValueError(
            "captioning data (data.format: captions) needs a caption head: set model.heads.caption.enabled"
        )
    if any(i < 0 for i in batch.indices):
        raise ValueError("captioning batches need each sample's dataset index (GroundingBatch.indices)")
    seeds = [sample_seed(seed, step, index) for index in batch.indices]
    masked = head.corrupt(batch.input_ids, batch.attention_mask, stream_generators(seeds, STREAM_CAPTION))
    features = model.backbone(batch.images.tensor)
    out = model.forward_features(features, masked.input_ids, batch.attention_mask, heads=(CAPTION,), causal=True)
    loss = head.caption_loss(out.heads[CAPTION], masked.labels)
    weight = float(weights.get(CAPTION, 1.0))
    return {"loss_caption": loss if weight == 1.0 else loss * weight}
