"""The training criterion: every head's losses, weighted, in one dict of named scalars.

Official counterpart: the loss dict of ``VLDyHeadModule._forward_train``
(``maskrcnn_benchmark/modeling/rpn/vldyhead.py``), which the official ``do_train`` sums.
The ATSS assignment (``ATSSLossComputation.prepare_targets``) is made here once per
batch and shared by every head's loss (grounding, the MDETR branches, and GLIPv2's
inter-image loss, which reads the ATSS positives).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from glip.modeling.fusion.trunk import TrunkOutput
from glip.modeling.heads.base import LossInputs
from glip.modeling.heads.grounding.assigner import AssignedTargets, ATSSAssigner
from glip.modeling.losses.gather import all_reduce, world_size
from glip.structures.targets import GroundingTargets, PretrainingTargets

__all__ = ["Criterion"]


class Criterion(nn.Module):
    """``{head: weight}`` -> one dict of named, weighted 0-d losses; the loop sums it.

    Args:
        assigner: the ATSS assigner shared by the heads' losses.
        weights: each head's weight (default 1.0 for a head not listed); a weight of 0
            skips the head's loss. A weight of 1.0 leaves the values bit-for-bit as the
            head returns them.

    ``forward(heads, output, text_mask, targets, pretraining=None)``: the model's ``heads``
    (name -> :class:`~glip.modeling.heads.Head`), its :class:`~glip.modeling.glip.GLIPOutput`,
    the prompt mask ``Tensor[B, T]``, B :class:`GroundingTargets` and, for GLIPv2's
    pre-training heads, the batch's :class:`PretrainingTargets` -> ``{loss name: tensor}``.
    Two heads returning the same loss name is an error.
    """

    def __init__(self, assigner: ATSSAssigner, weights: Mapping[str, float] | None = None) -> None:
        super().__init__()
        self.assigner = assigner
        self.weights = dict(weights or {})

    @torch.no_grad()
    def assign(self, anchors: Sequence[Tensor], targets: Sequence[GroundingTargets]) -> AssignedTargets:
        """ATSS targets for every image.

        Args:
            anchors: L tensors ``Tensor[N_l, 4]``, the padded-grid anchors shared by the batch.
            targets: B :class:`GroundingTargets`, all with the same token width T.
        """
        per_image = [self.assigner(anchors, t) for t in targets]
        return AssignedTargets(
            positive=torch.stack([a.positive for a in per_image]),  # [B, N]
            regression=torch.stack([a.regression_targets for a in per_image]),  # [B, N, 4]
            centerness=torch.stack([a.centerness_targets for a in per_image]),  # [B, N]
            tokens=torch.stack([a.token_targets for a in per_image]),  # [B, N, T]
            per_image=per_image,
        )

    def prepare(
        self,
        anchors: Sequence[Tensor],
        text_mask: Tensor,
        targets: Sequence[GroundingTargets],
        assigned: AssignedTargets | None = None,
        trunk: TrunkOutput | None = None,
        outputs: Mapping[str, Any] | None = None,
        pretraining: PretrainingTargets | None = None,
    ) -> LossInputs:
        """The :class:`LossInputs` of a batch (assigning with ATSS unless ``assigned`` is given).
        Every process must call it (the positive count is summed over processes)."""
        with torch.autocast(device_type=text_mask.device.type, enabled=False):
            if assigned is None:
                assigned = self.assign(anchors, targets)
        positive = assigned.positive.reshape(-1)  # [B * N]
        num_pos_local = positive.new_tensor([int(positive.sum())], dtype=torch.int64)
        total_pos = int(all_reduce(num_pos_local).item())
        # A Python float, as the official normaliser (a constant for autograd).
        num_pos_avg = max(total_pos / float(world_size()), 1.0)
        return LossInputs(
            targets=targets,
            anchors=anchors,
            text_mask=text_mask,
            assigned=assigned,
            num_pos_avg=num_pos_avg,
            trunk=trunk,
            outputs=outputs or {},
            pretraining=pretraining,
        )

    def forward(
        self,
        heads: Mapping[str, nn.Module],
        output: Any,
        text_mask: Tensor,
        targets: Sequence[GroundingTargets],
        pretraining: PretrainingTargets | None = None,
    ) -> dict[str, Tensor]:
        if len(targets) != text_mask.shape[0]:
            raise ValueError(f"got {len(targets)} targets for a batch of {text_mask.shape[0]} images")
        inputs = self.prepare(
            output.anchors, text_mask, targets, trunk=output.trunk, outputs=output.heads, pretraining=pretraining
        )
        return self.combine(heads, output.heads, inputs)

    def combine(
        self, heads: Mapping[str, nn.Module], outputs: Mapping[str, Any], inputs: LossInputs
    ) -> dict[str, Tensor]:
        """Each head's ``loss(outputs[name], inputs)`` times its weight, merged."""
        losses: dict[str, Tensor] = {}
        for name, head in heads.items():
            weight = self.weights.get(name, 1.0)
            if weight == 0 or name not in outputs:
                continue
            for key, value in head.loss(outputs[name], inputs).items():
                if key in losses:
                    raise ValueError(f"two heads return the loss {key!r} (the second is {name!r})")
                losses[key] = value if weight == 1.0 else value * weight
        return losses
