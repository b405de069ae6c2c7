"""Which categories of a COCO-format json are classes: the one rule for category id 0.

Roboflow COCO exports (and the ODinW sets, which are Roboflow exports) put the dataset's
name first, as category id 0: ``{"id": 0, "name": "fruit-sky", "supercategory": "none"}``;
the real classes have ids 1.. and ``"supercategory": "fruit-sky"``, and no box uses id 0.
The official code leaves id 0 (and ``"__background__"``) out of both its training captions
and its evaluation prompt (``categories(no_background=True)``). The rule here:

- a category named ``"__background__"`` is never a class;
- category id 0 is a class only when some box of the file uses it (0-based ids, as some
  annotation tools write); without boxes it is the export's dataset-name entry and left out.

Training captions, k-shot sampling, evaluation prompts and the class names a fine-tuned
model records all take their classes from :func:`class_categories`, so that they list the
same names in the same order (a tuned prompt offset is per token position).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from glip.data.od_to_grounding import BACKGROUND_NAME

__all__ = ["class_categories", "used_category_ids"]


def used_category_ids(annotations: Iterable[Mapping[str, Any]]) -> set[int]:
    """The ``category_id`` of every annotation."""
    return {int(a["category_id"]) for a in annotations}


def class_categories(
    categories: Sequence[Mapping[str, Any]], annotations: Iterable[Mapping[str, Any]] | None = None
) -> list[Mapping[str, Any]]:
    """The category records of a COCO json that are classes, in file order (see the module
    docstring for the rule).

    Args:
        categories: the json's ``categories``.
        annotations: the json's ``annotations`` (the boxes that may use id 0); None: no box
            is known to, so id 0 is left out as the official code always does.
    """
    used = used_category_ids(annotations) if annotations is not None else set()
    return [c for c in categories if str(c.get("name")) != BACKGROUND_NAME and (int(c["id"]) != 0 or 0 in used)]
