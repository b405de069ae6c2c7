"""A timm backbone and the CLIP text encoder in a GLIP: each trains a few steps, saves and
loads back to the same predictions."""

from __future__ import annotations

import json
import math

import pytest
import torch

import glip
from glip.engine import train
from tests.engine.conftest import tiny_config

PROMPT = "red circle. blue square."


def _train_and_reload(cfg, shapes, out):
    result = train(cfg, out, cpu=True, progress_bar=False)
    assert result.progress.step == 3
    log = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log if "loss" in r]
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses)
    image = shapes.image_dir / "train_00000.png"
    model = glip.load_model(out / "model")
    a = model.predict(image, PROMPT, threshold=0.0)
    b = glip.load_model(out / "model").predict(image, PROMPT, threshold=0.0)
    assert len(a) > 0 and torch.equal(a.boxes, b.boxes) and torch.equal(a.scores, b.scores)
    return model


def test_timm_convnext_trains_and_reloads(shapes, text_dir, tmp_path) -> None:
    pytest.importorskip("timm", reason="timm is not installed (pip install timm)")
    from glip.modeling.backbone import TimmBody

    cfg = tiny_config(shapes, text_dir, **{
        "model.backbone.type": "timm", "model.backbone.timm.name": "convnext_atto", "solver.max_iter": 3,
        "solver.ims_per_batch": 2, "solver.model_ema": 0.0, "inference.pre_nms_thresh": 0.0,
    })  # fmt: skip
    model = _train_and_reload(cfg, shapes, tmp_path)
    assert isinstance(model.backbone.body, TimmBody)
