"""Shared data-test fixtures: the bert-base-uncased tokenizer and the fixture paths."""

from __future__ import annotations

import pytest

from glip.text import BUNDLED_TEXT_ENCODERS, load_tokenizer
from tests.conftest import OFFICIAL_TRAIN

OD_DIR = OFFICIAL_TRAIN / "data" / "od"
GROUNDING_DIR = OFFICIAL_TRAIN / "data" / "grounding"
IMAGE_DIR = GROUNDING_DIR / "images"  # the OD jsons name the same two images


@pytest.fixture(scope="session")
def tokenizer():
    if not OFFICIAL_TRAIN.is_dir():
        pytest.fail(f"official training fixtures not found at {OFFICIAL_TRAIN} (set GLIP_FIXTURES)")
    return load_tokenizer(BUNDLED_TEXT_ENCODERS["bert-base-uncased"])
