"""glip models in Hugging Face form: ``save_pretrained`` / ``from_pretrained`` /
``push_to_hub``, transformers' Auto classes and the ``zero-shot-object-detection`` pipeline.

``import glip`` installs a hook (stdlib only, transformers is not imported) that registers
glip with transformers when transformers' Auto config table is imported (the ``glip``
model type), and everything else (Auto model and processor classes, the pipeline class)
as soon as a glip config is made or transformers' pipelines are imported. So after
``import glip``, ``transformers.pipeline("zero-shot-object-detection", model=FOLDER)``,
``AutoModelForZeroShotObjectDetection``, ``AutoConfig`` and ``AutoProcessor`` read folders
written by :meth:`GLIPForZeroShotObjectDetection.save_pretrained`, while a process that
only tokenizes with transformers (glip's own inference) never imports transformers'
modelling code, which costs about 240 MiB of resident memory (``docs/performance.md``).
:func:`register` does it all by hand. The classes below are imported on first use (they
import transformers).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import logging
import sys
from typing import Any

__all__ = [
    "GLIPForZeroShotObjectDetection",
    "GLIPImageProcessor",
    "GLIPObjectDetectionOutput",
    "GLIPProcessor",
    "GLIPTransformersConfig",
    "GLIPZeroShotObjectDetectionPipeline",
    "install_import_hook",
    "register",
    "register_config",
    "save_pretrained",
]

logger = logging.getLogger(__name__)

_LAZY = {
    "GLIPForZeroShotObjectDetection": "glip.hf.modeling",
    "GLIPObjectDetectionOutput": "glip.hf.modeling",
    "GLIPImageProcessor": "glip.hf.processing",
    "GLIPProcessor": "glip.hf.processing",
    "GLIPTransformersConfig": "glip.hf.configuration",
    "GLIPZeroShotObjectDetectionPipeline": "glip.hf.pipeline",
}
_state = {"registered": False, "config": False, "busy": False}

# Modules whose import registers glip: the Auto config table (the model type alone, light)
# and the pipelines (everything: a pipeline is about to be built).
_CONFIG_TABLE = "transformers.models.auto.configuration_auto"
_PIPELINES = "transformers.pipelines"


def register() -> None:
    """Registers glip with transformers (imports its modelling code); idempotent
    (:func:`glip.hf.registration.register_with_transformers`)."""
    if _state["registered"] or _state["busy"]:
        return
    _state["busy"] = True  # the registration's own imports may reach the hook again
    try:
        from glip.utils.imports import import_transformers

        import_transformers()  # transformers told of a broken torchvision before the pipelines import
        from glip.hf.registration import register_with_transformers

        register_with_transformers()
        _state["registered"] = _state["config"] = True
    finally:
        _state["busy"] = False


def register_config() -> None:
    """Registers the ``glip`` model type with ``AutoConfig`` only (imports no modelling code);
    making a glip config then registers the rest (:class:`GLIPTransformersConfig`)."""
    if _state["config"] or _state["busy"]:
        return
    from glip.hf.registration import register_config_with_transformers

    register_config_with_transformers(when_made=register)
    _state["config"] = True


def _quietly(action: Any) -> None:
    try:
        action()
    except Exception as e:  # never let the hook break an import of transformers
        logger.warning(
            "glip could not register with transformers (%s: %s); call glip.hf.register()", type(e).__name__, e
        )


class _TransformersImportHook(importlib.abc.MetaPathFinder):
    """Finds nothing itself; when transformers' Auto config table or its pipelines are first
    imported, it makes the module's loader register glip right after the module ran."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        action = {_CONFIG_TABLE: register_config, _PIPELINES: register}.get(fullname)
        if action is None:
            return None
        if fullname == _PIPELINES and self in sys.meta_path:
            sys.meta_path.remove(self)  # the last hook point
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        run = spec.loader.exec_module

        def exec_module(module: Any) -> None:
            run(module)
            _quietly(action)

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]  (this spec's own loader)
        return spec


def install_import_hook() -> None:
    """Registers glip with transformers now as far as transformers is imported, and the rest
    when it is (a meta-path hook that imports nothing until then). Called by ``import glip``."""
    if _PIPELINES in sys.modules:
        _quietly(register)
        return
    if _CONFIG_TABLE in sys.modules:
        _quietly(register_config)
    if not any(isinstance(f, _TransformersImportHook) for f in sys.meta_path):
        sys.meta_path.insert(0, _TransformersImportHook())


def save_pretrained(model: Any, save_directory: Any, **kwargs: Any) -> None:
    """``GLIPForZeroShotObjectDetection.from_glip(model).save_pretrained(save_directory, **kwargs)``
    for a :class:`glip.GLIP` (``glip.load_model``)."""
    from glip.hf.modeling import GLIPForZeroShotObjectDetection

    register()
    GLIPForZeroShotObjectDetection.from_glip(model).save_pretrained(save_directory, **kwargs)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        register()
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'glip.hf' has no attribute {name!r}")
