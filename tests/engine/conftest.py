"""Shared pieces of the training tests: tiny synthetic data, a dropout-free MiniLM copy and
a tiny GLIP config (configs/synthetic/tiny.yaml made smaller and deterministic)."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TINY_YAML = REPO / "configs" / "synthetic" / "tiny.yaml"
IMAGE_SIZE = 96  # every image the same size: batches need no padding, whatever the split


@pytest.fixture(scope="session")
def shapes(tmp_path_factory):
    from glip.data import generate_synthetic

    return generate_synthetic(
        tmp_path_factory.mktemp("shapes"), num_train=16, num_val=4, image_size=IMAGE_SIZE, seed=3,
        colors=("red", "blue"), shapes=("circle", "square"), max_objects=3,
    )  # fmt: skip


@pytest.fixture(scope="session")
def text_dir(tmp_path_factory) -> Path:
    """all-MiniLM-L6-v2 with its dropout probabilities set to 0 (weights linked, not copied)."""
    from glip.text import text_encoder_without_dropout

    return text_encoder_without_dropout("all-MiniLM-L6-v2", tmp_path_factory.mktemp("minilm_nodrop"))


def tiny_overrides(shapes, text_dir, **extra) -> list[str]:
    """Overrides of tiny.yaml: no randomness in the network, 96-px images, 4-image batches."""
    values = {
        "model.text.encoder": str(text_dir),
        "model.text.max_query_len": 32,
        "model.backbone.swin.drop_path_rate": 0.0,
        "model.trunk.fusion_dropout": 0.0,
        "input.min_size_train": f"[{IMAGE_SIZE}]",
        "input.max_size_train": IMAGE_SIZE,
        "input.min_size_test": IMAGE_SIZE,
        "input.max_size_test": IMAGE_SIZE,
        "solver.ims_per_batch": 4,
        "solver.max_iter": 6,
        "solver.warmup_iters": 2,
        "solver.steps": "[0.5]",
        "solver.model_ema": 0.9,
        "solver.checkpoint_period": 0,
        "train.log_period": 1,
        "data.train_json": str(shapes.train_json),
        "data.train_images": str(shapes.image_dir),
        "data.flip_prob": 0.5,
    }
    values.update(extra)
    return [f"{k}={v}" for k, v in values.items()]


def tiny_config(shapes, text_dir, **extra):
    from glip.config import load_config

    return load_config(TINY_YAML, tiny_overrides(shapes, text_dir, **extra))
