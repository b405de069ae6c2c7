"""Our config files of earlier versions (one ``model.head`` section and a ``loss``
section) upgraded, at load time, to today's layout (``model.trunk`` and one section per
head under ``model.heads``).

Folders saved by earlier versions (``config.yaml`` next to the weights) and old
``key=value`` overrides (``model.head.num_blocks=3``) keep working. Keys that nothing
reads any more (:data:`RETIRED_PATHS`) are dropped from both.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

__all__ = ["LEGACY_PATHS", "RETIRED_PATHS", "is_legacy_tree", "is_retired_override", "upgrade_override", "upgrade_tree"]

_TRUNK = (
    "channels num_blocks use_gn gn_groups use_dyrelu use_dfconv use_dyfuse early_fusion fused_dot_product "
    "use_layer_scale clamp_min_for_underflow clamp_max_for_overflow clamp_bertattn_min_for_underflow "
    "clamp_bertattn_max_for_overflow use_checkpoint fusion_dropout"
).split()
_GROUNDING_MODEL = ("num_classes", "log_scale", "prior_prob", "clamp_dot_product")
_GROUNDING_LOSS = ("reg_weight", "atss_topk", "token_weight", "token_alpha", "token_gamma")

# Old dotted path -> today's (the switches of the MDETR branches map to their head's
# ``enabled``; see upgrade_tree for how a whole old file combines them with the weights).
LEGACY_PATHS: dict[str, str] = {
    **{f"model.head.{k}": f"model.trunk.{k}" for k in _TRUNK},
    **{f"model.head.{k}": f"model.heads.grounding.{k}" for k in _GROUNDING_MODEL},
    **{f"loss.{k}": f"model.heads.grounding.{k}" for k in _GROUNDING_LOSS},
    "model.head.use_token_loss": "model.heads.mdetr_token.enabled",
    "loss.use_token_loss": "model.heads.mdetr_token.enabled",
    "loss.token_loss_weight": "model.heads.mdetr_token.weight",
    "model.head.use_contrastive_align": "model.heads.mdetr_align.enabled",
    "loss.use_contrastive_align_loss": "model.heads.mdetr_align.enabled",
    "loss.contrastive_align_loss_weight": "model.heads.mdetr_align.weight",
    "model.head.contrastive_hidden_dim": "model.heads.mdetr_align.hidden_dim",
    "model.head.contrastive_dropout": "model.heads.mdetr_align.dropout",
}

# Keys that nothing reads any more, dropped from files and overrides that still set them.
# model.text.mask_special: the official LANGUAGE_BACKBONE.MASK_SPECIAL, of which only False
# (the text mask is the attention mask) was ever implemented; an official yaml must keep it
# False (glip.config.official).
RETIRED_PATHS = frozenset({"model.text.mask_special"})


def is_legacy_tree(tree: Mapping[str, Any]) -> bool:
    """Whether a parsed yaml of ours has the old ``model.head`` or ``loss`` section."""
    model = tree.get("model")
    return "loss" in tree or (isinstance(model, Mapping) and "head" in model)


def upgrade_override(item: str) -> str:
    """An old ``key=value`` override with today's key (others unchanged)."""
    key, sep, value = item.partition("=")
    return f"{LEGACY_PATHS.get(key.strip(), key)}{sep}{value}" if sep else item


def is_retired_override(item: str) -> bool:
    """Whether a ``key=value`` override sets a retired key (:data:`RETIRED_PATHS`)."""
    key, sep, _ = item.partition("=")
    return bool(sep) and key.strip() in RETIRED_PATHS


def _drop_retired(tree: dict[str, Any]) -> None:
    for dotted in RETIRED_PATHS:
        *parents, leaf = dotted.split(".")
        node: Any = tree
        for p in parents:
            node = node.get(p) if isinstance(node, Mapping) else None
        if isinstance(node, dict):
            node.pop(leaf, None)


def _put(tree: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = tree
    for p in parents:
        node = node.setdefault(p, {})
    node[leaf] = value


def upgrade_tree(tree: Mapping[str, Any]) -> dict[str, Any]:
    """Today's layout of a parsed yaml of ours (a copy; unchanged when already current),
    without retired keys.

    Unknown keys of the old sections are kept under their new section so that the schema
    names them in its error. An old MDETR branch switched on in ``model.head`` with its
    loss off in ``loss`` becomes an enabled head of weight 0 (built, no loss), as before.
    """
    out = copy.deepcopy(dict(tree))
    _drop_retired(out)
    if not is_legacy_tree(out):
        return out
    model = out.setdefault("model", {})
    head = dict(model.pop("head", None) or {})
    loss = dict(out.pop("loss", None) or {})
    for section, values in (("model.head", head), ("loss", loss)):
        for key, value in values.items():
            path = f"{section}.{key}"
            if path in ("model.head.use_token_loss", "loss.use_token_loss", "loss.token_loss_weight"):
                continue
            if path in ("model.head.use_contrastive_align", "loss.use_contrastive_align_loss"):
                continue
            if path == "loss.contrastive_align_loss_weight":
                continue
            _put(out, LEGACY_PATHS.get(path, f"model.trunk.{key}" if section == "model.head" else path), value)
    for name, branch, switch, weight in (
        ("mdetr_token", "use_token_loss", "use_token_loss", "token_loss_weight"),
        ("mdetr_align", "use_contrastive_align", "use_contrastive_align_loss", "contrastive_align_loss_weight"),
    ):
        loss_on = bool(loss.get(switch, False))
        if bool(head.get(branch, False)) or loss_on:
            _put(out, f"model.heads.{name}.enabled", True)
            _put(out, f"model.heads.{name}.weight", float(loss.get(weight, 1.0)) if loss_on else 0.0)
        elif weight in loss:
            _put(out, f"model.heads.{name}.weight", loss[weight])
    return out
