"""Fixtures of the evaluation tests: the LVIS API as the reference of the LVIS AP."""

from __future__ import annotations

import importlib.util
import sys
import types

import numpy as np
import pytest


@pytest.fixture
def lvis_api(monkeypatch):
    """The LVIS API (pip package ``lvis``) without its package ``__init__``, which imports
    OpenCV and matplotlib for visualisation only; ``np.float`` is restored for its numpy-1 code."""
    spec = importlib.util.find_spec("lvis")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("the lvis package is not installed (pip install --no-deps lvis)")
    package = types.ModuleType("lvis")
    package.__path__ = list(spec.submodule_search_locations)
    monkeypatch.setitem(sys.modules, "lvis", package)
    for name in ("lvis.lvis", "lvis.results", "lvis.eval"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.setattr(np, "float", float, raising=False)
    from lvis.eval import LVISEval
    from lvis.lvis import LVIS
    from lvis.results import LVISResults

    return LVIS, LVISResults, LVISEval
