"""The model and its criterion as one module: what the training loop (and DDP) runs."""

from __future__ import annotations

from torch import Tensor, nn

from glip.data import GroundingBatch
from glip.engine.head_needs import causal_head, causal_losses
from glip.engine.pretraining import pretraining_inputs
from glip.modeling.criterion import Criterion
from glip.modeling.glip import GLIP

__all__ = ["LossModel"]


class LossModel(nn.Module):
    """The model and its criterion as one module, so DistributedDataParallel wraps one
    forward that returns tensors: ``forward(batch, step) -> {loss name: 0-d tensor}``
    (every head's named, weighted losses; the loop sums them).

    It reads the heads' declarations, never the task: a batch of a causal head's
    ``batch_kind`` (captioning) trains that head alone on causal text
    (:func:`glip.engine.head_needs.causal_losses`). Otherwise, in training mode, with
    GLIPv2's pre-training (``training_only``) heads, the batch's prompts are first
    corrupted for MLM and the per-sample seeds of ``(seed, step, dataset index)`` made
    (:mod:`glip.engine.pretraining`); the whole model runs on the corrupted ids. In eval
    mode those heads do not run and the prompts stay clean. ``step``: the optimiser steps
    done before this batch.
    """

    def __init__(self, model: GLIP, loss: Criterion, seed: int = 0) -> None:
        super().__init__()
        self.model = model
        self.loss = loss
        self.seed = seed

    def forward(self, batch: GroundingBatch, step: int = 0) -> dict[str, Tensor]:
        causal = causal_head(self.model.heads, batch.kinds)
        if causal is not None:
            return causal_losses(self.model, self.loss, causal, batch, self.seed, step)
        ids, pretraining = batch.input_ids, None
        if self.training:
            ids, pretraining = pretraining_inputs(self.model.heads, batch, self.seed, step)
        out = self.model(batch.images, ids, batch.attention_mask)
        return self.loss(self.model.heads, out, batch.attention_mask, batch.targets, pretraining)
