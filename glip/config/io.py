"""Loading, merging and saving :class:`GLIPConfig` (ours or an official yaml)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from glip.config.legacy import is_retired_override, upgrade_override, upgrade_tree
from glip.config.official import from_official, is_official_yaml
from glip.config.schema import GLIPConfig

__all__ = [
    "ConfigError",
    "config_from_dict",
    "config_to_dict",
    "explicit_length",
    "load_config",
    "save_config",
]


class ConfigError(ValueError):
    """A configuration file or override that does not fit the schema."""


def config_from_dict(tree: Mapping[str, Any], overrides: Sequence[str] = (), name: str | None = None) -> GLIPConfig:
    """Builds a config from a parsed yaml of ours or of the official code, then applies
    ``key=value`` overrides (our dotted names, e.g. ``inference.pre_nms_thresh=0.1``).
    Our files and overrides of earlier versions (``model.head``, ``loss``) are upgraded
    first (:mod:`glip.config.legacy`)."""
    overrides = [upgrade_override(o) for o in overrides if not is_retired_override(o)]
    if is_official_yaml(tree):
        base = OmegaConf.structured(from_official(tree, name=name or "official"))
    else:
        base = OmegaConf.structured(GLIPConfig)
        try:
            base = OmegaConf.merge(base, OmegaConf.create(upgrade_tree(tree)))
        except OmegaConfBaseException as e:
            raise ConfigError(f"config does not fit the glip schema: {_first_line(e)}") from None
    if overrides:
        try:
            base = OmegaConf.merge(base, OmegaConf.from_dotlist(list(overrides)))
        except OmegaConfBaseException as e:
            raise ConfigError(f"bad override in {list(overrides)}: {_first_line(e)}") from None
    cfg = OmegaConf.to_object(base)
    assert isinstance(cfg, GLIPConfig)
    if name is not None:
        cfg.name = name
    return cfg


def explicit_length(overrides: Sequence[str]) -> list[str]:
    """A user's ``overrides`` with ``solver.max_epoch=0`` added when they set
    ``solver.max_iter`` and not ``solver.max_epoch``: an explicit step count wins over the
    epoch count of the config or of a preset (``max_epoch > 0`` decides the length
    otherwise). Both set, with ``max_epoch > 0``: a ``ConfigError`` naming the conflict."""
    values = {o.split("=", 1)[0].strip(): o.split("=", 1)[1].strip() for o in overrides if "=" in o}
    if "solver.max_iter" not in values:
        return list(overrides)
    if "solver.max_epoch" not in values:
        return [*overrides, "solver.max_epoch=0"]
    try:
        epochs = int(values["solver.max_epoch"])
    except ValueError:  # not a number: config_from_dict names it
        return list(overrides)
    if epochs > 0:
        raise ConfigError(
            f"solver.max_iter={values['solver.max_iter']} and solver.max_epoch={epochs} conflict (epochs decide "
            "the length when max_epoch > 0): give one of them"
        )
    return list(overrides)


def _first_line(error: Exception) -> str:
    """OmegaConf's message without the ``full_key`` / ``object_type`` lines it appends."""
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> GLIPConfig:
    """Reads a yaml (ours or official) or returns the GLIP-T defaults when ``path`` is None."""
    if path is None:
        return config_from_dict({}, overrides)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    with open(path, encoding="utf-8") as f:
        try:
            tree = yaml.safe_load(f) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid yaml: {e}") from None
    if not isinstance(tree, Mapping):
        raise ConfigError(f"{path}: expected a yaml mapping")
    name = tree.get("name") if not is_official_yaml(tree) else path.stem
    return config_from_dict(tree, overrides, name=name)


def config_to_dict(cfg: GLIPConfig) -> dict[str, Any]:
    out = OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)
    assert isinstance(out, dict)
    return out


def save_config(cfg: GLIPConfig, path: str | Path) -> None:
    Path(path).write_text(OmegaConf.to_yaml(OmegaConf.structured(cfg)), encoding="utf-8")
