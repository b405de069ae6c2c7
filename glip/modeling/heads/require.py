"""One check for "this task needs head X": :func:`require_head` and its one-line errors.

Every user entry point that needs a head other than the grounding head (masks, answers,
captions) asks :func:`require_head`; a model without it raises the task's
:class:`HeadUnavailableError` subclass with one line naming the model and what to load.
"""

from __future__ import annotations

from typing import Any

from torch import nn

__all__ = [
    "CaptionUnavailableError",
    "HeadUnavailableError",
    "MasksUnavailableError",
    "VQAUnavailableError",
    "require_head",
]


class HeadUnavailableError(ValueError):
    """A task was asked of a model without the head it needs."""


class MasksUnavailableError(HeadUnavailableError):
    """Masks were asked of a model without a mask head."""


class CaptionUnavailableError(HeadUnavailableError):
    """Captions were asked of a model without a captioning head."""


class VQAUnavailableError(HeadUnavailableError):
    """Answers were asked of a model without a VQA head."""


# head name -> (its error, what the model cannot do and what to load instead).
_MISSING: dict[str, tuple[type[HeadUnavailableError], str]] = {
    "mask": (
        MasksUnavailableError,
        "has no mask head, so it cannot predict masks "
        "(load a model trained with model.heads.mask.enabled, or ask for boxes only)",
    ),
    "caption": (
        CaptionUnavailableError,
        "has no caption head, so it cannot caption images "
        "(load a model trained with model.heads.caption.enabled, e.g. configs/caption/synthetic.yaml)",
    ),
    "vqa": (
        VQAUnavailableError,
        "has no VQA head (model.heads.vqa), so it cannot answer questions: load a model "
        "trained with model.heads.vqa.enabled (e.g. configs/vqa/synthetic.yaml)",
    ),
}


def require_head(model: Any, name: str, kind: type[nn.Module] | None = None) -> Any:
    """``model.heads[name]`` (an instance of ``kind`` when given), or the head's
    :class:`HeadUnavailableError` subclass, one line naming the model (its config's
    ``name``, else its class).

    Args:
        model: a :class:`~glip.modeling.glip.GLIP` (anything with ``heads`` and ``config``).
        name: the head's name in the head table (``"mask"``, ``"vqa"``, ``"caption"``...).
        kind: the head class the task expects.
    """
    heads = model.heads
    head = heads[name] if name in heads else None
    if head is None or (kind is not None and not isinstance(head, kind)):
        label = getattr(getattr(model, "config", None), "name", None) or type(model).__name__
        error, why = _MISSING.get(
            name, (HeadUnavailableError, f"has no {name} head (load a model trained with model.heads.{name}.enabled)")
        )
        raise error(f"model {label!r} {why}")
    return head
