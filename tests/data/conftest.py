"""Shared data-test fixtures: the bert-base-uncased tokenizer (bundled) and the fixture paths
(tests reading them are marked ``needs_fixtures``)."""

from __future__ import annotations

import pytest

from glip.text import BUNDLED_TEXT_ENCODERS, load_tokenizer
from tests.conftest import OFFICIAL_TRAIN

OD_DIR = OFFICIAL_TRAIN / "data" / "od"
GROUNDING_DIR = OFFICIAL_TRAIN / "data" / "grounding"
IMAGE_DIR = GROUNDING_DIR / "images"  # the OD jsons name the same two images


@pytest.fixture(scope="session")
def tokenizer():
    return load_tokenizer(BUNDLED_TEXT_ENCODERS["bert-base-uncased"])
