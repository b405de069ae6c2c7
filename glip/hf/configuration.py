"""The transformers config of a glip model (``model_type`` ``"glip"``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from transformers import PreTrainedConfig

from glip.config import GLIPConfig
from glip.hub.transformers_folder import GLIP_CONFIG_KEY, MODEL_TYPE, TEXT_CONFIG_KEY, config_fields

__all__ = ["GLIPTransformersConfig"]

_WHEN_MADE: list[Callable[[], None]] = []


class GLIPTransformersConfig(PreTrainedConfig):
    """``config.json`` of a glip model: the whole :class:`GLIPConfig` (backbone, trunk and
    every head, GLIPv2's mask, VQA and caption heads included) and the text encoder's
    transformers config, both as dicts (:mod:`glip.hub.transformers_folder` is the schema).

    Attributes:
        glip_config: ``glip.config.config_to_dict`` of the model's config.
        glip_text_config: the text encoder's ``BertConfig`` / ``CLIPTextConfig`` as a dict.
    """

    model_type = MODEL_TYPE

    glip_config: dict | None = None
    glip_text_config: dict | None = None

    def __post_init__(self, **kwargs: Any) -> None:
        # A glip config is about to meet an Auto model or processor class: the callbacks
        # register those (glip.hf's import hook registers the model type alone).
        while _WHEN_MADE:
            _WHEN_MADE.pop(0)()
        super().__post_init__(**kwargs)

    @staticmethod
    def call_when_made(callback: Callable[[], None]) -> None:
        """Calls ``callback`` once, when the next glip config is made."""
        _WHEN_MADE.append(callback)

    @classmethod
    def from_glip(cls, cfg: GLIPConfig, text_config: Any, **kwargs: Any) -> GLIPTransformersConfig:
        """The config of a model built from ``cfg`` with the text encoder config ``text_config``."""
        fields = config_fields(cfg, text_config)
        return cls(glip_config=fields[GLIP_CONFIG_KEY], glip_text_config=fields[TEXT_CONFIG_KEY], **kwargs)
