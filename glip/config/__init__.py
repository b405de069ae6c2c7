"""Configuration: the dataclass schema, our yaml files and the official yaml import."""

from glip.config.io import ConfigError, config_from_dict, config_to_dict, load_config, save_config
from glip.config.official import OfficialConfigError, from_official
from glip.config.schema import (
    AnchorConfig,
    BackboneConfig,
    GLIPConfig,
    HeadConfig,
    InferenceConfig,
    InputConfig,
    ModelConfig,
    SwinConfig,
    TextConfig,
)

__all__ = [
    "AnchorConfig",
    "BackboneConfig",
    "ConfigError",
    "GLIPConfig",
    "HeadConfig",
    "InferenceConfig",
    "InputConfig",
    "ModelConfig",
    "OfficialConfigError",
    "SwinConfig",
    "TextConfig",
    "config_from_dict",
    "config_to_dict",
    "from_official",
    "load_config",
    "save_config",
]
