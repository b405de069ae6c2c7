"""Transfer to segmentation: the ``mask`` mode trains the mask head alone (everything else
frozen and unchanged), from a checkpoint with or without a mask head, through
``glip.engine.train`` and ``glip finetune``."""

from __future__ import annotations

import math

import pytest
import torch

from glip.engine import build_training_model, prepare_for_training
from glip.engine.tuning import trainable_names
from glip.hub.checkpoint import save_model
from glip.hub.loading import load_model
from tests.engine.conftest import tiny_config

MASK = {"model.heads.mask.enabled": "true"}


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_only_the_mask_head_trains(shapes, text_dir) -> None:
    from glip.engine.tuning import apply_tuning

    cfg = tiny_config(shapes, text_dir, **MASK, **{"train.tuning": "mask"})
    model = prepare_for_training(build_training_model(cfg), cfg)
    mask_params = {n for n, _ in model.named_parameters() if n.startswith("heads.mask.")}
    assert mask_params and set(trainable_names(model)) == mask_params
    assert model.heads["mask"].training and not model.heads["grounding"].training
    assert not model.trunk.training and not model.backbone.training and not model.text_encoder.training
    # Without a mask head the mode is a one-line error naming the key to set.
    del model.heads["mask"]
    with pytest.raises(ValueError, match=r"model\.heads\.mask\.enabled=true"):
        apply_tuning(model, "mask")


def test_finetune_trains_a_fresh_mask_head_on_a_detection_model(shapes, text_dir, tmp_path) -> None:
    """``glip finetune --mode mask`` on a model without a mask head: the head is added at its
    initialisation, trained, and every other tensor is the detector's, bit for bit."""
    from glip.config import load_config
    from glip.engine.run import _seed_everything
    from glip.tools.finetune import TransferData, finetune

    cfg = tiny_config(shapes, text_dir, **{"solver.model_ema": 0.0})
    save_model(build_training_model(cfg), tmp_path / "detector")  # no mask head
    before = _state(load_model(tmp_path / "detector"))
    metrics = finetune(
        cfg, TransferData.from_dir(shapes.root), tmp_path / "ft", weights=tmp_path / "detector", mode="mask",
        shots=0, seed=3, cpu=True,
        overrides=["solver.max_epoch=0", "solver.max_iter=2", "solver.ims_per_batch=2", "data.general_copy=1",
                   "train.eval_period=1000", "solver.warmup_iters=0", "solver.base_lr=0.01"],
    )  # fmt: skip
    assert metrics["mode"] == "mask" and metrics["steps"] == 2
    assert math.isfinite(metrics["segm_AP"]) and math.isfinite(metrics["AP"])
    tuned = load_model(tmp_path / "ft" / "model")  # a whole model: the base had no mask head
    assert tuned.has_masks
    after = _state(tuned)
    assert {k for k in after if not k.startswith("heads.mask.")} == set(before)
    assert all(torch.equal(after[k], before[k]) for k in before)
    # The head's start, rebuilt as the run built it (same config, same seed): training moved it.
    run_cfg = load_config(tmp_path / "ft" / "config.yaml")
    _seed_everything(run_cfg.solver.seed)
    start = _state(build_training_model(run_cfg, tmp_path / "detector"))
    changed = {k for k in after if not torch.equal(after[k], start[k])}
    assert changed and all(k.startswith("heads.mask.") for k in changed)
    assert any(k.startswith("heads.mask.predictor.") for k in changed)
