"""Registers glip with transformers: the ``glip`` model type, its Auto classes and the
``zero-shot-object-detection`` pipeline (imports transformers; see :mod:`glip.hf`)."""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["register_config_with_transformers", "register_with_transformers"]

_TASK = "zero-shot-object-detection"


def register_config_with_transformers(when_made: Callable[[], None] | None = None) -> None:
    """``AutoConfig`` (``model_type`` ``"glip"``) alone: imports transformers' configuration
    code, not its modelling code; ``when_made`` is called when a glip config is first made.
    Idempotent."""
    from transformers import AutoConfig

    from glip.hf.configuration import GLIPTransformersConfig
    from glip.hub.transformers_folder import MODEL_TYPE

    AutoConfig.register(MODEL_TYPE, GLIPTransformersConfig, exist_ok=True)
    if when_made is not None:
        GLIPTransformersConfig.call_when_made(when_made)


def register_with_transformers() -> None:
    """``AutoConfig`` (``model_type`` ``"glip"``), ``AutoModel`` and
    ``AutoModelForZeroShotObjectDetection``, ``AutoImageProcessor``, ``AutoProcessor``, and
    the task's pipeline class (:class:`GLIPZeroShotObjectDetectionPipeline`, which is the
    stock pipeline for every other model). Idempotent."""
    from transformers import (
        AutoImageProcessor,
        AutoModel,
        AutoModelForZeroShotObjectDetection,
        AutoProcessor,
    )
    from transformers.pipelines import PIPELINE_REGISTRY
    from transformers.utils import logging as hf_logging

    from glip.hf.configuration import GLIPTransformersConfig
    from glip.hf.modeling import GLIPForZeroShotObjectDetection
    from glip.hf.pipeline import GLIPZeroShotObjectDetectionPipeline
    from glip.hf.processing import GLIPImageProcessor, GLIPProcessor
    from glip.modeling.glip import register_pretrained_writers

    register_pretrained_writers(
        lambda model, directory, **kw: GLIPForZeroShotObjectDetection.from_glip(model).save_pretrained(directory, **kw),
        lambda model, repo_id, **kw: GLIPForZeroShotObjectDetection.from_glip(model).push_to_hub(repo_id, **kw),
    )
    register_config_with_transformers()
    AutoModel.register(GLIPTransformersConfig, GLIPForZeroShotObjectDetection, exist_ok=True)
    AutoModelForZeroShotObjectDetection.register(GLIPTransformersConfig, GLIPForZeroShotObjectDetection, exist_ok=True)
    # One class for every backend: glip's preprocessing is its own (torch), whichever transformers prefers.
    backends = {"pil": GLIPImageProcessor, "torchvision": GLIPImageProcessor}
    AutoImageProcessor.register(GLIPTransformersConfig, image_processor_classes=backends, exist_ok=True)
    AutoProcessor.register(GLIPTransformersConfig, GLIPProcessor, exist_ok=True)
    task = PIPELINE_REGISTRY.supported_tasks[_TASK]
    if task["impl"] is GLIPZeroShotObjectDetectionPipeline:
        return
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "already registered. Overwriting": on purpose, the subclass keeps the stock path
    try:
        PIPELINE_REGISTRY.register_pipeline(
            _TASK,
            pipeline_class=GLIPZeroShotObjectDetectionPipeline,
            pt_model=task["pt"],
            default=task.get("default"),
            type=task.get("type"),
        )
    finally:
        hf_logging.set_verbosity(verbosity)
