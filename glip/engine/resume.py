"""What a resumed run keeps from its checkpoint and what it takes from the command line.

A checkpoint restores the optimiser's parameter groups (learning rates, weight decays,
momentum) and the schedule's base rates: the settings that made them
(:data:`RESTORED_KEYS`) cannot change on resume. An override of one of them is ignored
with a one-line warning, and the run's ``config.yaml`` records the checkpoint's value.
Every other setting takes effect from the resumed step (the schedule's length, its
milestones and warmup, validation and checkpoint periods, early stopping...), and the
changes are listed in one line.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from glip.config import GLIPConfig, load_config
from glip.config.io import config_to_dict
from glip.engine.checkpoint import CONFIG_NAME

__all__ = ["RESTORED_KEYS", "checkpoint_config", "resumed_config"]

logger = logging.getLogger(__name__)

# The settings of the optimiser's parameter groups (glip.engine.optim.param_group_settings)
# and of its kind: torch's Optimizer.load_state_dict restores the groups' lr, initial_lr,
# weight_decay and momentum, and the schedule its base_lrs.
RESTORED_KEYS = tuple(
    f"solver.{k}"
    for k in (
        "optimizer", "base_lr", "lang_lr", "backbone_body_lr_factor", "fusion_lr_factor", "tower_lr_factor",
        "bias_lr_factor", "weight_decay", "weight_decay_bias", "weight_decay_norm_factor", "momentum",
    )
)  # fmt: skip


def checkpoint_config(checkpoint: str | Path) -> GLIPConfig | None:
    """The config of the run that wrote ``checkpoint``: its own ``config.yaml``, else (a
    checkpoint of an earlier version) the run folder's, two levels up; None when neither
    exists."""
    path = Path(checkpoint)
    for file in (path / CONFIG_NAME, path.parent.parent / CONFIG_NAME):
        if file.is_file():
            return load_config(file)
    return None


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def resumed_config(cfg: GLIPConfig, checkpoint: str | Path) -> GLIPConfig:
    """``cfg`` with the checkpoint's values of :data:`RESTORED_KEYS` (one warning line
    names those ``cfg`` tried to change); one info line lists the other settings that
    differ from the checkpoint's run and take effect. ``cfg`` as it is when the checkpoint
    carries no config."""
    saved = checkpoint_config(checkpoint)
    if saved is None:
        return cfg
    old, new = _flat(config_to_dict(saved)), _flat(config_to_dict(cfg))
    ignored = [k for k in RESTORED_KEYS if old.get(k) != new.get(k)]
    if ignored:
        logger.warning(
            "resume: %s ignored: the checkpoint's optimiser state keeps %s (config.yaml records it; a new run can "
            "change it)",
            ", ".join(f"{k}={new[k]}" for k in ignored),
            ", ".join(f"{k}={old[k]}" for k in ignored),
        )
    changed = [k for k in new if k not in ignored and not k.startswith("model.") and old.get(k) != new[k]]
    if changed:
        logger.info(
            "resume: in effect from the checkpoint on: %s", ", ".join(f"{k} {old.get(k)} -> {new[k]}" for k in changed)
        )
    if not ignored:
        return cfg
    kept = {k.removeprefix("solver."): old[k] for k in ignored}
    return dataclasses.replace(cfg, solver=dataclasses.replace(cfg.solver, **kept))
