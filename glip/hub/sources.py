"""What a model argument names (a path, a zoo name, a zoo config name), resolved to files:
the one place ``--model`` / ``--weights`` / ``--config`` and ``glip.load_model``'s
arguments are interpreted."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from glip.hub.checkpoint import CONFIG_NAME, TUNED_NAME, WEIGHTS_NAME
from glip.hub.fetch import resolve_weights
from glip.hub.zoo import ZOO, config_names, zoo_config

if TYPE_CHECKING:
    from glip.config import GLIPConfig

__all__ = ["ModelSource", "resolve_config", "resolve_model_source"]


@dataclass(frozen=True)
class ModelSource:
    """What a model argument names, resolved to files.

    Attributes:
        weights: a converted folder (``model.safetensors`` + ``config.yaml``), a tuned-delta
            folder (``tuned.json``), a ``.safetensors`` file or an official ``.pth``.
        config: the config yaml to build it with: the one given, else the one the weights
            carry (their folder's, or a tuned delta's base's); None for a bare ``.pth``.
        zoo_name: the model-zoo name the argument was, if it was one.
    """

    weights: Path
    config: Path | None
    zoo_name: str | None = None

    def load_config(self, overrides: Sequence[str] = ()) -> GLIPConfig:
        """The config (:meth:`require_config`) with ``overrides``; a text encoder named
        relative to the config's folder (``text_encoder`` in a converted folder) is made
        absolute so that training from the folder finds it."""
        from glip.config import load_config

        path = self.require_config()
        cfg = load_config(path, overrides)
        encoder = cfg.model.text.encoder
        if encoder and not Path(encoder).exists() and (path.parent / encoder).is_dir():
            cfg.model.text.encoder = str(path.parent / encoder)
        return cfg

    def require_config(self) -> Path:
        """:attr:`config`, or a ``FileNotFoundError`` saying how to give one."""
        if self.config is None:
            raise FileNotFoundError(
                f"{self.weights} carries no config: pass --config (Python: config=) with a yaml or a zoo config "
                f"name ({', '.join(config_names())}), e.g. --config glip-t for GLIP-T"
            )
        return self.config


def resolve_config(config: str | Path) -> Path:
    """A config argument -> its yaml: an existing file, else a zoo config name (``glip-t``)."""
    path = Path(config)
    if path.is_file():
        return path
    if path.is_dir():
        if (path / CONFIG_NAME).is_file():
            return path / CONFIG_NAME
        raise FileNotFoundError(f"config {path} is a folder without {CONFIG_NAME}")
    if str(config) in config_names():
        return zoo_config(str(config))
    raise FileNotFoundError(
        f"config not found: {config} (neither a yaml file nor a zoo config name: {', '.join(config_names())})"
    )


def _carried_config(weights: Path) -> Path | None:
    """The config a weights path carries: its folder's ``config.yaml``, or for a tuned
    delta the config of its base."""
    if weights.is_file():
        beside = weights.parent / CONFIG_NAME
        return beside if weights.suffix == ".safetensors" and beside.is_file() else None
    if (weights / WEIGHTS_NAME).is_file():
        return weights / CONFIG_NAME if (weights / CONFIG_NAME).is_file() else None
    if (weights / TUNED_NAME).is_file():
        try:
            base = json.loads((weights / TUNED_NAME).read_text(encoding="utf-8"))["base"]
        except (OSError, ValueError, KeyError, TypeError):
            return None  # load_model reports the damaged file
        if base.get("config"):
            return Path(base["config"])
        if base.get("zoo"):
            return resolve_model_source(base["zoo"]).config
        candidates = [weights / base["relative"]] if base.get("relative") else []
        candidates += [Path(base["path"])] if base.get("path") else []
        for candidate in candidates:
            if (candidate / CONFIG_NAME).is_file():
                return candidate / CONFIG_NAME
    return None


def resolve_model_source(
    model: str | Path,
    config: str | Path | None = None,
    *,
    text_encoder: str | Path | None = None,
) -> ModelSource:
    """The one place a model argument is interpreted (``glip.load_model``, ``Predictor``,
    and every CLI command's ``--model`` / ``--weights`` / ``--config``).

    ``model`` is an existing path (converted folder, tuned-delta folder, ``.safetensors``
    or official ``.pth``) or a model-zoo name (downloaded and converted on first use;
    :func:`resolve_weights`). A path wins over a zoo name of the same spelling.
    ``config`` is a yaml or a zoo config name (:func:`resolve_config`); without it, the
    config the weights carry.

    Raises:
        FileNotFoundError: neither an existing path nor a zoo name (the message lists
            the names), or a config that is neither a file nor a config name.
    """
    path = Path(model)
    zoo_name = None
    if not path.exists():
        if str(model) not in ZOO:
            raise FileNotFoundError(
                f"model {str(model)!r} is neither an existing path nor a model-zoo name ({', '.join(ZOO)})"
            )
        zoo_name = str(model)
        path = resolve_weights(zoo_name, text_encoder)
    cfg = resolve_config(config) if config is not None else _carried_config(path)
    return ModelSource(path, cfg, zoo_name)
