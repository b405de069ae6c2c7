"""Shared test fixtures: the official golden files and small helpers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(os.environ.get("GLIP_FIXTURES", REPO.parent / "shared" / "fixtures"))
OFFICIAL = FIXTURES / "official"
OFFICIAL_TRAIN = FIXTURES / "official_train"
TINY_CONFIGS = ("tiny_glip_t", "tiny_glip_a")
CASES = ("chelsea", "astronaut")

torch.set_num_threads(min(2, os.cpu_count() or 1))


def load_case(config: str, case: str) -> dict:
    return torch.load(OFFICIAL / config / f"case_{case}.pth", weights_only=True)


def official_state_dict(config: str) -> dict[str, torch.Tensor]:
    return torch.load(OFFICIAL / config / "model_official.pth", weights_only=True)["model"]


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    if not OFFICIAL.is_dir():
        pytest.fail(f"official fixtures not found at {OFFICIAL} (set GLIP_FIXTURES)")
    return FIXTURES
