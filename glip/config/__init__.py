"""Configuration: the dataclass schema, our yaml files and the official yaml import."""

from glip.config.io import ConfigError, config_from_dict, config_to_dict, load_config, save_config
from glip.config.official import OfficialConfigError, from_official
from glip.config.schema import (
    AnchorConfig,
    BackboneConfig,
    ClipGradientsConfig,
    DataConfig,
    GLIPConfig,
    HeadConfig,
    InferenceConfig,
    InputConfig,
    LossConfig,
    ModelConfig,
    SolverConfig,
    SwinConfig,
    TextConfig,
    TrainConfig,
)

__all__ = [
    "AnchorConfig",
    "BackboneConfig",
    "ClipGradientsConfig",
    "ConfigError",
    "DataConfig",
    "GLIPConfig",
    "HeadConfig",
    "InferenceConfig",
    "InputConfig",
    "LossConfig",
    "ModelConfig",
    "OfficialConfigError",
    "SolverConfig",
    "SwinConfig",
    "TextConfig",
    "TrainConfig",
    "config_from_dict",
    "config_to_dict",
    "from_official",
    "load_config",
    "save_config",
]
