"""What every head on the fused trunk provides, and what its loss receives.

A head is an ``nn.Module`` held by :class:`glip.modeling.glip.GLIP` in ``model.heads``
(an ``nn.ModuleDict``) under its name. It implements:

- ``forward(trunk, outputs) -> its output dataclass``: ``trunk`` is the
  :class:`~glip.modeling.fusion.trunk.TrunkOutput` (post-fusion maps and text, and the
  pre-fusion FPN maps and text features); ``outputs`` maps the names of the heads run
  before it (the ModuleDict's order) to their outputs, for heads that build on another
  (the MDETR contrastive branch shares the grounding head's temperature).
- ``loss(output, inputs) -> {name: 0-d tensor}``: its named losses, already carrying
  its internal (official) weights; :class:`LossInputs` holds the batch's targets and
  the ATSS assignment shared by every head. The criterion multiplies them by the head's
  weight; the training loop sums them. A head without a loss returns ``{}``.
- optionally ``postprocess(output, ...)`` (inference decoding).

A head with ``training_only = True`` (GLIPv2's MLM and inter-image heads) exists for its
loss: the model runs it only in training mode, never at inference (``predict``, ``detect``,
an ``eval()`` forward), and its loss needs ``LossInputs.pretraining``.

Parameter discovery (no name prefixes elsewhere): ``linear_probe`` lists the parameter
names (relative to the head, prefixes allowed) that the ``linear`` transfer mode trains
(official LINEAR_PROB); ``untrained`` those no loss reaches (frozen for training, e.g.
the official ``cls_logits``). A new head's weights load, freeze and get their learning
rate from these and from the official name rules (bias, norm) without other edits.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from glip.modeling.fusion.trunk import TrunkOutput
from glip.modeling.heads.grounding.assigner import AssignedTargets
from glip.structures.targets import GroundingTargets, PretrainingTargets

__all__ = ["Head", "LossInputs"]


@dataclass
class LossInputs:
    """One batch's targets, prepared once by :class:`glip.modeling.criterion.Criterion`
    for every head's ``loss``.

    Attributes:
        targets: B :class:`GroundingTargets`, boxes in the network-input frame.
        anchors: L tensors ``Tensor[H_l * W_l, 4]`` over the padded grid.
        text_mask: ``Tensor[B, T]``, the prompt's attention mask (non-zero = attended).
        assigned: the ATSS assignment of every anchor (computed without gradient).
        num_pos_avg: ``max(global positive anchors / world size, 1)``, the official
            normaliser (a Python float, a constant for autograd).
        trunk: the trunk's output of the batch (None when a test feeds head outputs alone).
        outputs: every head's output of the batch, by head name.
        pretraining: what GLIPv2's pre-training heads need beyond the boxes (global
            class ids, per-sample seeds, MLM labels); None when the batch has none
            (a model without those heads).
    """

    targets: Sequence[GroundingTargets]
    anchors: Sequence[Tensor]
    text_mask: Tensor
    assigned: AssignedTargets
    num_pos_avg: float
    trunk: TrunkOutput | None = None
    outputs: Mapping[str, Any] = field(default_factory=dict)
    pretraining: PretrainingTargets | None = None


class Head(nn.Module):
    """Base class of the heads on the trunk (see the module docstring for the contract).

    Attributes:
        linear_probe: parameter names (relative, prefixes allowed) trained by linear probing.
        untrained: parameter names (relative, prefixes allowed) that no loss reaches.
        training_only: the head only serves a training loss: skipped by an ``eval()``
            forward and by inference.
        fresh_start: a checkpoint without this head's weights may still be loaded (the
            head keeps its initialisation), e.g. GLIPv2's pre-training heads added to a
            GLIP checkpoint (the official MLM head starts fresh too).
        needs_backbone: the head reads the visual body's maps (``TrunkOutput.backbone``);
            the model keeps them in training when a head sets this.
    """

    linear_probe: tuple[str, ...] = ()
    untrained: tuple[str, ...] = ()
    training_only: bool = False
    fresh_start: bool = False
    needs_backbone: bool = False

    def forward(self, trunk: TrunkOutput, outputs: Mapping[str, Any]) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def loss(self, output: Any, inputs: LossInputs) -> dict[str, Tensor]:
        """The head's named losses (default: none)."""
        return {}

    def _matches(self, names: tuple[str, ...]) -> list[str]:
        return [n for n, _ in self.named_parameters() if any(n == p or n.startswith(p) for p in names)]

    def linear_probe_names(self) -> list[str]:
        """Relative names of the parameters linear probing trains (``untrained`` excluded)."""
        untrained = set(self.untrained_names())
        return [n for n in self._matches(self.linear_probe) if n not in untrained]

    def untrained_names(self) -> list[str]:
        """Relative names of the parameters no loss reaches."""
        return self._matches(self.untrained)
