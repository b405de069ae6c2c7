"""What the training loop does with the heads' declared needs (:class:`glip.modeling.heads.Head`).

The loop never asks which task a head serves; it reads the heads' declarations:

- ``needs_causal_text`` with ``batch_kind`` (GLIPv2 captioning): a batch whose samples are
  all of that kind trains that head alone. Some of its tokens are masked
  (:meth:`Head.corrupt`, each sample drawing from its own stream seeded by
  ``(run seed, step, dataset index)``, as the MLM corruption), the model runs causally
  with that head only, and the criterion weighs its loss (no box assignment: such
  batches carry no boxes). A batch mixing that kind with others is an error: per-task
  batches are the multi-task sampler's job. Such batches are never skipped as empty.
- ``extra_inputs``: an image with one of those target fields set (a VQA question's
  ``answer_scores``) is not empty even without a box.
- ``training_only`` (:mod:`glip.engine.pretraining`) and ``needs_backbone``
  (:meth:`glip.modeling.glip.GLIP.forward`) are read where the model runs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import Tensor

from glip.data import GroundingBatch
from glip.modeling.criterion import Criterion
from glip.modeling.glip import GLIP
from glip.modeling.heads import Head
from glip.structures.targets import GroundingTargets
from glip.utils.seeding import sample_seed, stream_generators

__all__ = ["STREAM_CAUSAL", "causal_head", "causal_losses", "is_empty_image"]

# The per-sample sub-stream of a causal head's token masking (glip.utils.seeding's STREAM_* are 1 and 2).
STREAM_CAUSAL = 3


def causal_head(heads: Mapping[str, Head], kinds: Sequence[str]) -> str | None:
    """The name of the causal head whose ``batch_kind`` every sample of the batch is, or
    None; ``ValueError`` when only some samples are of such a kind."""
    for name, head in heads.items():
        if not head.needs_causal_text:
            continue
        flags = [k == head.batch_kind for k in kinds]
        if any(flags) and not all(flags):
            raise ValueError(
                f"a batch mixes {head.batch_kind} samples with other kinds; train each task in its own batches"
            )
        if flags and all(flags):
            return name
    return None


def is_empty_image(target: GroundingTargets, heads: Mapping[str, Head]) -> bool:
    """Whether an image gives no head anything to learn: no box, and none of the heads'
    ``extra_inputs`` fields set."""
    if target.boxes.shape[0] > 0:
        return False
    return all(getattr(target, field) is None for head in heads.values() for field in head.extra_inputs)


def causal_losses(
    model: GLIP, criterion: Criterion, name: str, batch: GroundingBatch, seed: int, step: int
) -> dict[str, Tensor]:
    """The named, weighted losses of a causal head's own batch (see the module docstring).

    Args:
        model: the GLIP; name: the causal head's name (:func:`causal_head`).
        criterion: gives the head's weight.
        batch: the head's batch (its ``indices`` the dataset indices).
        seed: the run seed; step: the optimiser steps done before this one.
    """
    head = model.heads[name]
    if any(i < 0 for i in batch.indices):
        raise ValueError(f"{head.batch_kind} batches need each sample's dataset index (GroundingBatch.indices)")
    seeds = [sample_seed(seed, step, index) for index in batch.indices]
    masked = head.corrupt(batch.input_ids, batch.attention_mask, stream_generators(seeds, STREAM_CAUSAL))
    out = model(batch.images, masked.input_ids, batch.attention_mask, heads=(name,), causal=True)
    return criterion.causal(model.heads, out, batch.attention_mask, batch.targets, masked.labels)
