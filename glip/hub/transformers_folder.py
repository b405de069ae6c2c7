"""Reading the transformers-style folders that ``glip.hf`` writes (``save_pretrained``).

Such a folder holds ``config.json`` (``model_type`` :data:`MODEL_TYPE`, the whole glip config
under :data:`GLIP_CONFIG_KEY` and the text encoder's transformers config under
:data:`TEXT_CONFIG_KEY`), ``model.safetensors`` with glip's own key names (the file
:func:`glip.save_model` writes), the tokenizer files and a ``README.md`` model card.
This module is the folder's schema and glip's reader of it; it imports transformers only
to build the text encoder's config, so :func:`glip.load_model` reads the folder without
``glip.hf``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from glip.config import GLIPConfig
from glip.config.io import ConfigError, config_from_dict, config_to_dict

__all__ = [
    "GLIP_CONFIG_KEY",
    "MODEL_TYPE",
    "TEXT_CONFIG_KEY",
    "TRANSFORMERS_CONFIG_NAME",
    "TransformersFolderError",
    "config_fields",
    "is_transformers_folder",
    "read_transformers_config",
    "text_config_from_fields",
]

TRANSFORMERS_CONFIG_NAME = "config.json"
MODEL_TYPE = "glip"  # the model_type registered with transformers' AutoConfig by glip.hf
GLIP_CONFIG_KEY = "glip_config"  # the GLIPConfig as a dict (every head, GLIPv2's included)
TEXT_CONFIG_KEY = "glip_text_config"  # the text encoder's transformers config (BertConfig / CLIPTextConfig)
_OUR_CONFIG_NAME = "config.yaml"  # glip.hub.checkpoint.CONFIG_NAME (a glip folder, not a transformers one)


class TransformersFolderError(ValueError):
    """A transformers folder that is not a glip model, or whose ``config.json`` is damaged."""


def is_transformers_folder(path: str | Path) -> bool:
    """Whether ``path`` is a folder with a transformers ``config.json`` and no glip ``config.yaml``."""
    path = Path(path)
    return path.is_dir() and (path / TRANSFORMERS_CONFIG_NAME).is_file() and not (path / _OUR_CONFIG_NAME).is_file()


def config_fields(cfg: GLIPConfig, text_config: Any) -> dict[str, Any]:
    """The glip entries of ``config.json``: the config as a dict and the text encoder's
    transformers config (``text_config.to_dict()``)."""
    return {GLIP_CONFIG_KEY: config_to_dict(cfg), TEXT_CONFIG_KEY: text_config.to_dict()}


def _read_json(folder: Path) -> dict[str, Any]:
    path = folder / TRANSFORMERS_CONFIG_NAME
    try:
        tree = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise TransformersFolderError(f"cannot read {path}: {e}") from None
    if not isinstance(tree, dict):
        raise TransformersFolderError(f"{path} is not a JSON object")
    return tree


def read_transformers_config(folder: str | Path) -> tuple[GLIPConfig, dict[str, Any]]:
    """The glip config and the text encoder's config dict of a folder written by
    ``glip.hf`` (``save_pretrained``).

    Raises:
        TransformersFolderError: the folder is another model type's (the message names
            it), or its ``config.json`` lacks or damages the glip entries.
    """
    folder = Path(folder)
    tree = _read_json(folder)
    model_type = tree.get("model_type")
    if model_type != MODEL_TYPE:
        raise TransformersFolderError(
            f"{folder} is a transformers folder of model type {model_type!r}, not a glip model "
            f"(model_type {MODEL_TYPE!r}); load it with transformers itself"
        )
    glip_tree, text_tree = tree.get(GLIP_CONFIG_KEY), tree.get(TEXT_CONFIG_KEY)
    if not isinstance(glip_tree, dict) or not isinstance(text_tree, dict):
        raise TransformersFolderError(
            f"{folder / TRANSFORMERS_CONFIG_NAME} has model_type {MODEL_TYPE!r} but no {GLIP_CONFIG_KEY!r} "
            f"and {TEXT_CONFIG_KEY!r} objects: it was not written by glip's save_pretrained"
        )
    try:
        cfg = config_from_dict(glip_tree, name=glip_tree.get("name"))
    except ConfigError as e:
        raise TransformersFolderError(f"{folder / TRANSFORMERS_CONFIG_NAME}: {e}") from None
    return cfg, text_tree


def text_config_from_fields(kind: str, text_tree: dict[str, Any]) -> Any:
    """The text encoder's transformers config (``BertConfig`` for ``kind`` ``"bert"``,
    ``CLIPTextConfig`` for ``"clip"``) from its ``config.json`` entry."""
    from glip.utils.imports import import_transformers

    transformers = import_transformers()
    classes = {"bert": "BertConfig", "clip": "CLIPTextConfig"}
    if kind not in classes:
        raise TransformersFolderError(f"unknown model.text.type {kind!r} (expected one of {', '.join(classes)})")
    return getattr(transformers, classes[kind]).from_dict(dict(text_tree))
