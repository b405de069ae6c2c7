"""Optional dependencies that may be installed but broken."""

from __future__ import annotations

import functools
import importlib
import sys
from types import ModuleType

__all__ = ["import_transformers", "torchvision_importable"]


@functools.cache
def torchvision_importable() -> bool:
    """Whether ``import torchvision`` succeeds. A torchvision built for another torch
    raises RuntimeError at import (``operator torchvision::nms does not exist``)."""
    if "torchvision" in sys.modules:
        return sys.modules["torchvision"] is not None
    try:
        importlib.import_module("torchvision")
    except Exception:
        return False
    return True


def import_transformers() -> ModuleType:
    """``transformers``, importable even beside a broken torchvision.

    transformers imports torchvision whenever its package metadata is present, and a
    torchvision built for another torch then breaks ``from transformers import BertModel``.
    When torchvision cannot be imported, transformers is told it is absent.
    """
    transformers = importlib.import_module("transformers")
    if not torchvision_importable():
        import_utils = importlib.import_module("transformers.utils.import_utils")
        utils = importlib.import_module("transformers.utils")

        def _absent() -> bool:
            return False

        for module in (import_utils, utils):
            for name in ("is_torchvision_available", "is_torchvision_v2_available"):
                if hasattr(module, name):
                    setattr(module, name, _absent)
    return transformers
