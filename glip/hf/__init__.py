"""glip models in Hugging Face form: ``save_pretrained`` / ``from_pretrained`` /
``push_to_hub``, transformers' Auto classes and the ``zero-shot-object-detection`` pipeline.

``import glip`` installs a hook (stdlib only, transformers is not imported) that registers
glip with transformers as soon as transformers is imported, so after ``import glip``,
``transformers.pipeline("zero-shot-object-detection", model=FOLDER)``,
``AutoModelForZeroShotObjectDetection``, ``AutoConfig`` and ``AutoProcessor`` read folders
written by :meth:`GLIPForZeroShotObjectDetection.save_pretrained`. :func:`register` does
it by hand. The classes below are imported on first use (they import transformers).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
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
_state = {"registered": False}


def register() -> None:
    """Registers glip with transformers (imports it); idempotent
    (:func:`glip.hf.registration.register_with_transformers`)."""
    if _state["registered"]:
        return
    from glip.utils.imports import import_transformers

    import_transformers()  # transformers told of a broken torchvision before the pipelines import
    from glip.hf.registration import register_with_transformers

    register_with_transformers()
    _state["registered"] = True


def _register_quietly() -> None:
    try:
        register()
    except Exception as e:  # never let the hook break `import transformers`
        logger.warning(
            "glip could not register with transformers (%s: %s); call glip.hf.register()", type(e).__name__, e
        )


class _TransformersImportHook(importlib.abc.MetaPathFinder):
    """Finds nothing itself; when ``transformers`` is first imported, it makes the
    package's loader call :func:`register` right after transformers' ``__init__`` ran."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname != "transformers":
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)  # once; also keeps the lookup below from finding us
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        run = spec.loader.exec_module

        def exec_module(module: Any) -> None:
            run(module)
            _register_quietly()

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]  (this spec's own loader)
        return spec


def install_import_hook() -> None:
    """Registers glip with transformers now if transformers is imported, else when it is
    (a meta-path hook that imports nothing until then). Called by ``import glip``."""
    if "transformers" in sys.modules:
        _register_quietly()
    elif not any(isinstance(f, _TransformersImportHook) for f in sys.meta_path):
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
