"""Transfer modes: which parts of a GLIP each official fine-tuning mode trains.

Official counterpart: ``tuning_highlevel_override`` (``tools/finetune.py``) sets the
freeze flags that ``GeneralizedVLRCNN.train()`` applies. Per mode, the trainable set is:

=============  ==============================================================================
``full``       everything (text encoder included; backbone stages below
               ``model.backbone.freeze_at`` stay frozen by the builder)
``linear``     official ``linear_prob``: the parameters each head declares in its
               ``linear_probe`` (grounding: box, centerness and alignment terms); backbone,
               FPN, text encoder, trunk frozen
``prompt``     official ``language_prompt_v2``: only the zero-initialised prompt offset
``prompt_v1``  official ``language_prompt_v1``: only the text encoder
``prompt_v3``  official ``language_prompt_v3``: the text encoder and the linear-probe set
``prompt_v4``  official ``language_prompt_v4``: the prompt offset and the linear-probe set
``mask``       (no official counterpart) the mask head alone, everything else frozen: a
               detection model learns to segment without changing its boxes; the head
               may start fresh from a checkpoint that has none (:attr:`TuningMode.heads`)
``vqa``        (no official counterpart) the VQA answer head alone, as ``mask``
``caption``    (no official counterpart) the caption head alone, as ``mask``
=============  ==============================================================================

The parts are found through the model (:meth:`GLIP.part_of`, :meth:`GLIP.linear_probe_names`),
so a new head follows the modes without edits here. This module is used both by the
training engine (:mod:`glip.engine.tuning`) and by tuned-delta loading (:mod:`glip.hub.tuned`),
which must not import the engine.
"""

from __future__ import annotations

from dataclasses import dataclass

from glip.modeling.glip import GLIP

__all__ = [
    "OFFICIAL_MODE_NAMES",
    "TUNING_MODES",
    "TuningMode",
    "mode_requires_grad",
    "resolve_tuning_mode",
    "tuned_state_names",
]


@dataclass(frozen=True)
class TuningMode:
    """The official freeze flags of one ``TUNING_HIGHLEVEL_OVERRIDE`` value."""

    name: str
    official: str
    freeze_backbone: bool
    freeze_head: bool  # official RPN.FREEZE (our trunk and heads)
    linear_probe: bool
    prompt_offset: bool  # official ADD_LINEAR_LAYER
    freeze_text: bool
    heads: tuple[str, ...] = ()  # heads trained whole (every other head frozen, whatever freeze_head says)

    @property
    def saves_delta(self) -> bool:
        """Whether a run from a base is stored as a delta over it (:mod:`glip.hub.tuned`):
        every partial mode except those training whole heads, which the base may lack."""
        return self.name != "full" and not self.heads


TUNING_MODES: dict[str, TuningMode] = {
    m.name: m
    for m in (
        TuningMode("full", "full", False, False, False, False, False),
        TuningMode("linear", "linear_prob", True, False, True, False, True),
        TuningMode("prompt", "language_prompt_v2", True, True, False, True, True),
        TuningMode("prompt_v1", "language_prompt_v1", True, True, False, False, False),
        TuningMode("prompt_v3", "language_prompt_v3", True, True, True, False, False),
        TuningMode("prompt_v4", "language_prompt_v4", True, True, True, True, True),
        TuningMode("mask", "", True, True, False, False, True, heads=("mask",)),
        TuningMode("vqa", "", True, True, False, False, True, heads=("vqa",)),
        TuningMode("caption", "", True, True, False, False, True, heads=("caption",)),
    )
}
OFFICIAL_MODE_NAMES = {m.official: m.name for m in TUNING_MODES.values() if m.official}


def resolve_tuning_mode(name: str) -> TuningMode | None:
    """Our mode for ``name`` (ours or the official override string); None for ``""``."""
    if not name:
        return None
    key = OFFICIAL_MODE_NAMES.get(name, name)
    if key not in TUNING_MODES:
        raise ValueError(
            f"unknown tuning mode {name!r}: one of {', '.join(TUNING_MODES)} "
            f"(or official {', '.join(OFFICIAL_MODE_NAMES)})"
        )
    return TUNING_MODES[key]


def mode_requires_grad(model: GLIP, mode: TuningMode) -> dict[str, bool]:
    """``requires_grad`` of the parameters ``mode`` decides (name -> flag); parameters it
    leaves as they are (e.g. the builder's ``freeze_at`` in unfrozen backbones) are absent.
    The heads' ``untrained`` parameters are always False; those of the heads ``mode``
    trains whole (``mode.heads``) True."""
    probe = set(model.linear_probe_names())
    untrained = set(model.untrained_names())
    whole = tuple(f"heads.{h}." for h in mode.heads)
    flags: dict[str, bool] = {}
    for name, _ in model.named_parameters():
        part = model.part_of(name)
        if name in untrained:
            flags[name] = False
        elif whole and name.startswith(whole):
            flags[name] = True
        elif part == "prompt":
            if mode.name != "full":
                flags[name] = mode.prompt_offset
        elif part == "language":
            flags[name] = not mode.freeze_text
        elif part == "backbone":
            if mode.freeze_backbone:
                flags[name] = False
        elif part == "head":
            if mode.name == "full":
                flags[name] = True
            elif mode.linear_probe:
                flags[name] = name in probe
            elif mode.freeze_head:
                flags[name] = False
    return flags


def tuned_state_names(model: GLIP, mode: TuningMode) -> list[str]:
    """The state-dict names a run of ``mode`` changes (for a delta; not ``full``)."""
    probe = set(model.linear_probe_names())
    whole = tuple(f"heads.{h}." for h in mode.heads)
    names = []
    for name in model.state_dict():
        part = model.part_of(name)
        if (part == "prompt" and mode.prompt_offset) or (part == "language" and not mode.freeze_text):
            names.append(name)
        elif whole and name.startswith(whole):
            names.append(name)
        elif mode.linear_probe and name in probe:
            names.append(name)
    return names
