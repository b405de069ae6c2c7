"""Our own state-dict names of earlier versions, mapped onto today's modules.

Folders saved before the trunk/heads split (e.g. the bundled demo-shapes model, tuned
deltas) name the single ``GLIPHead``: ``head.tower.<i>.*`` (now the trunk's blocks),
``head.token_logits`` / ``head.resizer`` / ``head.contrastive_align_projection_*`` (now
the MDETR heads), and every other ``head.*`` (now the grounding head). They are renamed
here, once, at load time.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TypeVar

__all__ = ["legacy_key_to_current", "remap_legacy_state_dict"]

V = TypeVar("V")

# Applied in order to keys starting with "head." (the only legacy top-level module).
_LEGACY_RULES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"^head\.tower\."), "trunk.blocks."),
    (re.compile(r"^head\.token_logits\."), "heads.mdetr_token.logits."),
    (re.compile(r"^head\.resizer\."), "heads.mdetr_align.resizer."),
    (re.compile(r"^head\.contrastive_align_projection_image\."), "heads.mdetr_align.image_proj."),
    (re.compile(r"^head\.contrastive_align_projection_text\."), "heads.mdetr_align.text_proj."),
    (re.compile(r"^head\."), "heads.grounding."),
]


def legacy_key_to_current(key: str) -> str:
    """Today's name of one of our state-dict keys (unchanged when it is not a legacy name)."""
    for pattern, replacement in _LEGACY_RULES:
        if pattern.match(key):
            return pattern.sub(replacement, key, count=1)
    return key


def remap_legacy_state_dict(state: Mapping[str, V]) -> dict[str, V]:
    """``state`` with legacy names renamed (a no-op for current names). Raises ``KeyError``
    when a legacy and a current key would land on the same name."""
    out: dict[str, V] = {}
    for key, value in state.items():
        new = legacy_key_to_current(key)
        if new in out:
            raise KeyError(f"{key} and another key both map to {new}")
        out[new] = value
    return out
