"""The mask head overfits one synthetic image: every shape's mask IoU passes 0.9
(``scripts/overfit_mask.py``: the head trained alone on a tiny random GLIP's post-fusion maps)."""

from __future__ import annotations

import torch

from tests.conftest import load_script


def test_mask_head_overfits_one_synthetic_image() -> None:
    module = load_script("overfit_mask")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convolutions: one thread is the fastest, and the run is reproducible
    try:
        # Seed 2: a blue circle, a yellow star and a red circle on one 128 x 128 image.
        ious = module.run(steps=400, seed=2, eval_every=25, target=0.9, verbose=False)
    finally:
        torch.set_num_threads(threads)
    assert len(ious) == 3 and min(ious) > 0.9, ious
