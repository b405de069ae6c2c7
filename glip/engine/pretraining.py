"""What GLIPv2's pre-training heads need from a training batch, made at each step.

Where the MLM corruption happens, and why: in :class:`glip.engine.LossModel`'s forward,
just before the model runs, as the official ``GeneralizedVLRCNN.forward`` does (not in
the collate function): the corruption depends on the head's settings (which the data
pipeline does not know) and on the optimiser step, which the trainer owns and restores
on ``--resume``. Each sample draws from its own stream, seeded by
``sample_seed(run seed, step, dataset index)`` (:mod:`glip.utils.seeding`), so a run
reproduces, resumes exactly and does not depend on the number of processes or on the
batch composition. The inter-image loss samples its anchors from another sub-stream of
the same per-sample seed.

When MLM is on, the WHOLE model (grounding loss and L_inter included) runs on the
corrupted ids, as the official model; the positive maps are unchanged (a masked token
inside a phrase stays positive).
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor, nn

from glip.data import GroundingBatch
from glip.modeling.heads import MaskedLMHead
from glip.structures import PretrainingTargets
from glip.utils.seeding import STREAM_MLM, sample_seed, stream_generators

__all__ = ["needs_pretraining_targets", "pretraining_inputs"]


def needs_pretraining_targets(heads: Mapping[str, nn.Module]) -> bool:
    """Whether any head is a training-only (pre-training) head."""
    return any(getattr(h, "training_only", False) for h in heads.values())


def pretraining_inputs(
    heads: Mapping[str, nn.Module], batch: GroundingBatch, seed: int, step: int
) -> tuple[Tensor, PretrainingTargets | None]:
    """``(input ids the model runs on, the batch's PretrainingTargets)``.

    Without pre-training heads: ``(batch.input_ids, None)`` (nothing changes). With an
    MLM head (``heads["mlm"]``): the ids corrupted from each sample's stream, and their
    labels in ``mlm_labels``.

    Args:
        heads: the model's heads by name.
        batch: a collated batch (its ``indices`` must be the dataset indices).
        seed: the run seed (``solver.seed``).
        step: the optimiser steps done before this one (``Progress.step``).
    """
    if not needs_pretraining_targets(heads):
        return batch.input_ids, None
    if any(i < 0 for i in batch.indices):
        raise ValueError(
            "GLIPv2's pre-training heads need each sample's dataset index (GroundingBatch.indices) to seed "
            "its random draws; load samples through the dataset's __getitem__"
        )
    seeds = [sample_seed(seed, step, index) for index in batch.indices]
    ids, labels = batch.input_ids, None
    mlm = heads["mlm"] if "mlm" in heads else None
    if isinstance(mlm, MaskedLMHead):
        masked = mlm.corrupt(
            batch.input_ids, batch.attention_mask, batch.greenlight, batch.kinds, stream_generators(seeds, STREAM_MLM)
        )
        ids, labels = masked.input_ids, masked.labels
    targets = PretrainingTargets(
        box_class=list(batch.box_class), token_class=batch.token_class, seeds=seeds, mlm_labels=labels
    )
    return ids, targets
