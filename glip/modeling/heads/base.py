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
- ``postprocess(output, ...) -> a result dataclass``: inference decoding (the grounding
  head's :class:`~glip.structures.Detections`, the answer head's :class:`VQAPrediction`,
  the mask head's :class:`MaskPrediction`, the caption head's next-token scores). A head
  that only serves a training loss has none.

It is built by one builder function (``(cfg, text_config, ids) -> the head or None``, in
the ordered head table of :mod:`glip.modeling.build`), the only code that reads its config
section; ``ids`` (:class:`TokenIds`) are the tokenizer's special ids.

What a head needs from the training loop, it declares (class attributes; the loop reads
them and never asks which task a head serves):

- ``training_only``: it exists for its loss (GLIPv2's MLM and inter-image heads): the
  model runs it only in training mode, never at inference (``predict``, ``detect``, an
  ``eval()`` forward); its loss needs ``LossInputs.pretraining``, which the loop makes
  (the corrupted prompt, per-sample seeds) whenever such a head is present.
- ``needs_backbone``: it reads the visual body's maps (``TrunkOutput.backbone``).
- ``needs_causal_text``: it trains on causal (uni-directional) text, hence alone, on the
  batches whose samples are of its ``batch_kind`` (captioning): the loop masks some of
  their tokens (:meth:`corrupt`), runs the model causally with this head only and gives
  the labels in ``LossInputs.token_labels``.
- ``extra_inputs``: the per-image target fields (:class:`GroundingTargets` attributes)
  beyond the boxes that its loss learns from, so that an image with one of them is not
  an empty image even without a box (the answer head's ``answer_scores``).

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

import torch
from torch import Tensor, nn

from glip.modeling.fusion.trunk import TrunkOutput
from glip.modeling.heads.grounding.assigner import AssignedTargets
from glip.structures.targets import GroundingTargets, PretrainingTargets

__all__ = ["NO_TOKEN_IDS", "TEXT_SOURCES", "Head", "LossInputs", "MaskedTokens", "TokenIds"]

# The text a language head may read: "fused" (the trunk's post-fusion text, GLIPv2) or
# "encoder" (the text encoder's output before the fusion; ``model.heads.*.text_source``).
TEXT_SOURCES = ("fused", "encoder")


@dataclass(frozen=True)
class TokenIds:
    """The tokenizer's special ids that head builders need (None: the tokenizer has none).

    Attributes:
        mask: ``[MASK]`` (the MLM and caption heads mask tokens with it).
        cls, sep, pad: ``[CLS]``, ``[SEP]`` (the end of a caption) and ``[PAD]``.
    """

    mask: int | None = None
    cls: int | None = None
    sep: int | None = None
    pad: int | None = None

    @classmethod
    def from_tokenizer(cls, tokenizer: Any) -> TokenIds:
        """The ids of a Hugging Face tokenizer (all None when ``tokenizer`` is None)."""

        def get(name: str) -> int | None:
            value = getattr(tokenizer, name, None)
            return None if value is None else int(value)

        return cls(get("mask_token_id"), get("cls_token_id"), get("sep_token_id"), get("pad_token_id"))


# No tokenizer: the builders' default (a head then keeps its own default ids).
NO_TOKEN_IDS = TokenIds()


@dataclass
class MaskedTokens:
    """Prompts with some tokens masked for a masked-token loss.

    Attributes:
        input_ids: ``Tensor[B, T]`` int64, the ids the model runs on (``[MASK]`` at the slots).
        labels: ``Tensor[B, T]`` int64, the original id at the masked slots, -100 elsewhere.
    """

    input_ids: Tensor
    labels: Tensor


@dataclass
class LossInputs:
    """One batch's targets, prepared once by :class:`glip.modeling.criterion.Criterion`
    for every head's ``loss``.

    Attributes:
        targets: B :class:`GroundingTargets`, boxes in the network-input frame.
        anchors: L tensors ``Tensor[H_l * W_l, 4]`` over the padded grid.
        text_mask: ``Tensor[B, T]``, the prompt's attention mask (non-zero = attended).
        assigned: the ATSS assignment of every anchor (computed without gradient); None
            on a causal head's own batch (no boxes, no assignment).
        num_pos_avg: ``max(global positive anchors / world size, 1)``, the official
            normaliser (a Python float, a constant for autograd).
        trunk: the trunk's output of the batch (None when a test feeds head outputs alone).
        outputs: every head's output of the batch, by head name.
        pretraining: what GLIPv2's pre-training heads need beyond the boxes (global
            class ids, per-sample seeds, MLM labels); None when the batch has none
            (a model without those heads).
        token_labels: ``Tensor[B, T]`` int64, on a causal head's own batch the original
            ids of the tokens masked by its :meth:`Head.corrupt` (-100 elsewhere); else None.
    """

    targets: Sequence[GroundingTargets]
    anchors: Sequence[Tensor]
    text_mask: Tensor
    assigned: AssignedTargets | None
    num_pos_avg: float
    trunk: TrunkOutput | None = None
    outputs: Mapping[str, Any] = field(default_factory=dict)
    pretraining: PretrainingTargets | None = None
    token_labels: Tensor | None = None


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
        fresh_parts: optional sub-modules (attribute names) that may start fresh when a
            checkpoint holds the head without them (a trained captioner given a
            ``context``, :class:`~glip.modeling.heads.caption.CausalTextContext`).
        needs_backbone: the head reads the visual body's maps (``TrunkOutput.backbone``);
            the model keeps them in training when a head sets this.
        needs_causal_text: the head trains alone, on causal text, on the batches of
            ``batch_kind`` samples (see the module docstring).
        batch_kind: the sample kind (``GroundingBatch.kinds``) of a causal head's batches.
        extra_inputs: the :class:`GroundingTargets` fields beyond the boxes its loss learns from.
    """

    linear_probe: tuple[str, ...] = ()
    untrained: tuple[str, ...] = ()
    training_only: bool = False
    fresh_start: bool = False
    fresh_parts: tuple[str, ...] = ()
    needs_backbone: bool = False
    needs_causal_text: bool = False
    batch_kind: str | None = None
    extra_inputs: tuple[str, ...] = ()

    def forward(self, trunk: TrunkOutput, outputs: Mapping[str, Any]) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def loss(self, output: Any, inputs: LossInputs) -> dict[str, Tensor]:
        """The head's named losses (default: none)."""
        return {}

    def postprocess(self, output: Any, *args: Any, **kwargs: Any) -> Any:
        """Inference decoding of the head's output into a result dataclass (a head that
        only serves a training loss has none)."""
        raise NotImplementedError(f"{type(self).__name__} has no inference decoding")

    def corrupt(self, input_ids: Tensor, attention_mask: Tensor, generators: Sequence[torch.Generator]) -> MaskedTokens:
        """A causal head's token masking of its own batches (``Tensor[B, T]`` ids and mask,
        one generator per sample); only heads with ``needs_causal_text`` implement it."""
        raise NotImplementedError(f"{type(self).__name__} does not train on causal text")

    def _matches(self, names: tuple[str, ...]) -> list[str]:
        return [n for n, _ in self.named_parameters() if any(n == p or n.startswith(p) for p in names)]

    def linear_probe_names(self) -> list[str]:
        """Relative names of the parameters linear probing trains (``untrained`` excluded)."""
        untrained = set(self.untrained_names())
        return [n for n in self._matches(self.linear_probe) if n not in untrained]

    def untrained_names(self) -> list[str]:
        """Relative names of the parameters no loss reaches."""
        return self._matches(self.untrained)
