"""Golden-output regression test that runs everywhere (no ../shared fixtures, no download,
no torchvision needed): our tiny GLIP (tests/golden/case.py) against the outputs recorded
once from our own code by ``scripts/make_golden.py``.

A change to any step of the computation (backbone, text encoder, fusion, head, anchors,
post-processing, NMS, loss, backward) shows up here. When such a change is intended,
regenerate the file with ``python scripts/make_golden.py`` and say why in the commit.
"""

from __future__ import annotations

import pytest
import torch

from glip.ops.backend import torchvision_available, use_backend
from tests.golden.case import GOLDEN_FILE, build_tiny_glip, run_case

# Network tensors: the torchvision and pure backends differ by <= 1.3e-6 here, thread counts
# by about as much; 1e-5 still catches any real change (they are O(0.1-1)).
_TENSORS = ("text_hidden", "fpn_p3", "fused_text", "dot_product_logits", "box_regression", "centerness")
_SCALARS = ("loss_reg", "loss_centerness", "loss_dot_product_token", "loss_total")
_GRAD_NORMS = ("grad_norm_backbone", "grad_norm_text_encoder", "grad_norm_head")
_BACKENDS = [
    "torch",
    pytest.param("torchvision", marks=pytest.mark.skipif(not torchvision_available(), reason="torchvision unusable")),
]


@pytest.fixture(scope="module")
def golden() -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(GOLDEN_FILE)


@pytest.fixture(scope="module")
def model():
    return build_tiny_glip()


def _match_detections(got: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> None:
    """Same set of detections: one-to-one by label, boxes within 1e-3 px, scores within 1e-5
    (ties in score may order them differently)."""
    assert got["det_boxes"].shape == ref["det_boxes"].shape, (got["det_boxes"].shape, ref["det_boxes"].shape)
    box_dist = (ref["det_boxes"][:, None] - got["det_boxes"][None]).abs().amax(-1)  # [D, D]
    score_dist = (ref["det_scores"][:, None] - got["det_scores"][None]).abs()  # [D, D]
    ok = (ref["det_labels"][:, None] == got["det_labels"][None]) & (box_dist <= 1e-3) & (score_dist <= 1e-5)
    used = torch.zeros(ok.shape[1], dtype=torch.bool)
    for row in range(ok.shape[0]):
        free = (ok[row] & ~used).nonzero()
        assert len(free), f"golden detection {row} not found: {ref['det_labels'][row]} {ref['det_boxes'][row]}"
        used[free[0, 0]] = True


@pytest.mark.parametrize("backend", _BACKENDS)
def test_tiny_glip_reproduces_its_golden_outputs(model, golden, backend):
    with use_backend(backend):
        got = run_case(model)
    assert set(got) == set(golden)
    for key in _TENSORS:
        torch.testing.assert_close(got[key], golden[key], rtol=1e-5, atol=1e-5, msg=lambda m, k=key: f"{k}: {m}")
    _match_detections(got, golden)
    for key in _SCALARS:
        torch.testing.assert_close(got[key], golden[key], rtol=1e-5, atol=0, msg=lambda m, k=key: f"{k}: {m}")
    for key in _GRAD_NORMS:  # sums over ~2M squared gradients: backward's summation order moves them most
        torch.testing.assert_close(got[key], golden[key], rtol=1e-5, atol=0, msg=lambda m, k=key: f"{k}: {m}")


def test_golden_case_is_not_degenerate(golden):
    """The recorded case exercises what it claims: many detections of every phrase, a finite
    positive loss, gradients reaching every part, text features that fusion changed."""
    assert len(golden["det_scores"]) >= 30 and set(golden["det_labels"].tolist()) == {1, 2, 3}
    assert golden["det_scores"].std() > 1e-3 and golden["dot_product_logits"].std() > 1e-2
    assert torch.isfinite(golden["loss_total"]) and golden["loss_total"] > 0
    assert all(golden[k] > 0 for k in _GRAD_NORMS)
    assert (golden["fused_text"] - golden["text_hidden"]).abs().max() > 1e-2
