"""Optional dependencies that may be installed but broken, loaded as lightly as they allow."""

from __future__ import annotations

import functools
import importlib
import importlib.machinery
import importlib.util
import itertools
import sys
from pathlib import Path
from types import ModuleType

__all__ = ["import_torchvision", "import_transformers", "load_torchvision_ops"]

# The compiled library's name: `_C_stable` in recent torchvision (built against torch's stable ABI), `_C` before.
_TORCHVISION_LIBRARIES = ("_C_stable", "_C")


@functools.cache
def load_torchvision_ops() -> bool:
    """Registers torchvision's compiled ops (``torch.ops.torchvision.nms``, ``roi_align``,
    ``deform_conv2d``) and says whether they loaded.

    The library is loaded the way torchvision's own ``extension`` module loads it, but
    without ``import torchvision``, whose Python side imports ``torch._dynamo`` (with
    triton and sympy when installed): about 165 MiB of resident memory that the ops do not
    need. A torchvision built for another torch fails here (an undefined symbol), as it
    would at ``import torchvision`` (``operator torchvision::nms does not exist``).
    """
    module = sys.modules.get("torchvision", ...)
    if module is None:  # marked absent
        return False
    if module is not ...:  # already imported: its import loaded the ops, or raised
        return True
    try:
        spec = importlib.util.find_spec("torchvision")
    except (ImportError, ValueError):
        return False
    if spec is None or not spec.submodule_search_locations:
        return False
    import torch

    for folder in spec.submodule_search_locations:
        for stem, suffix in itertools.product(_TORCHVISION_LIBRARIES, importlib.machinery.EXTENSION_SUFFIXES):
            library = Path(folder) / f"{stem}{suffix}"
            if library.is_file():
                try:
                    torch.ops.load_library(str(library))
                except Exception:  # noqa: BLE001 - OSError, RuntimeError: a library for another torch
                    return False
                return True
    try:  # laid out unlike the wheels (no library file found): its own import loads the ops
        importlib.import_module("torchvision")
    except Exception:  # noqa: BLE001 - RuntimeError ("operator torchvision::nms does not exist"), ImportError...
        return False
    return True


def import_torchvision() -> ModuleType:
    """``torchvision`` itself, for what its compiled library alone lacks: the autograd
    formulas of its ops (registered in Python since the stable-ABI builds) and its Python
    wrappers. Only called once :func:`load_torchvision_ops` has succeeded."""
    return importlib.import_module("torchvision")


def import_transformers() -> ModuleType:
    """``transformers``, importable even beside a broken torchvision.

    transformers imports torchvision (in its image and modelling code) whenever its
    package metadata is present, and a torchvision built for another torch then breaks
    ``transformers.CLIPTextModel`` or its Auto classes. When torchvision's compiled ops do
    not load (:func:`load_torchvision_ops`), transformers is told torchvision is absent.
    """
    transformers = importlib.import_module("transformers")
    if not load_torchvision_ops():
        import_utils = importlib.import_module("transformers.utils.import_utils")
        utils = importlib.import_module("transformers.utils")

        def _absent() -> bool:
            return False

        for module in (import_utils, utils):
            for name in ("is_torchvision_available", "is_torchvision_v2_available"):
                if hasattr(module, name):
                    setattr(module, name, _absent)
    return transformers
