"""The mask head trains with the training loop (batches of several images with their masks)
and its weights are saved and loaded with the model."""

from __future__ import annotations

import json
import math

from glip.engine import train
from tests.engine.conftest import tiny_config


def test_mask_head_trains_and_reloads(shapes, text_dir, tmp_path):
    cfg = tiny_config(shapes, text_dir, **{"model.heads.mask.enabled": "true", "solver.max_iter": 3,
                                            "solver.ims_per_batch": 2, "solver.model_ema": 0.0})  # fmt: skip
    result = train(cfg, tmp_path, cpu=True, progress_bar=False)
    assert result.progress.step == 3
    log = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    masks = [r["loss_mask"] for r in log if "loss_mask" in r]
    assert len(masks) == 3 and all(math.isfinite(v) and v > 0 for v in masks)

    import glip

    model = glip.load_model(tmp_path / "model", device="cpu")
    assert model.has_masks
    det = model.predict(shapes.image_dir / "train_00000.png", "red circle. blue square.", threshold=0.0, masks=True)
    assert det.masks is not None and det.masks.shape[0] == len(det)
