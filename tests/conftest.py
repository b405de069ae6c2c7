"""Shared test fixtures: the official golden files and small helpers."""

from __future__ import annotations

import os

# Tests never touch the network: Hugging Face names resolve from the local cache only.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
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


def tiny_text_encoder_dir(config: str, root: Path) -> Path:
    """A text-encoder folder for a fixture model: its BERT config + the bert-base-uncased vocab."""
    import shutil

    from glip.text import BUNDLED_TEXT_ENCODERS

    out = root / f"text_encoder_{config}"
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(OFFICIAL / config / "bert_config.json", out / "config.json")
    for name in ("vocab.txt", "tokenizer_config.json"):
        shutil.copy(BUNDLED_TEXT_ENCODERS["bert-base-uncased"] / name, out / name)
    return out


_MODELS: dict = {}


def load_tiny_model(config: str, tmp_root: Path):
    """The fixture checkpoint loaded through glip.load_model (cached per session)."""
    if config not in _MODELS:
        from glip.hub.checkpoint import load_model

        _MODELS[config] = load_model(
            OFFICIAL / config / "model_official.pth",
            OFFICIAL / config / "config.yaml",
            text_encoder=tiny_text_encoder_dir(config, tmp_root),
        )
    return _MODELS[config]


@pytest.fixture(scope="session")
def tiny_model_factory(tmp_path_factory):
    root = tmp_path_factory.mktemp("text_encoders")
    return lambda config: load_tiny_model(config, root)
