"""Anchor generator: hand-computed cell anchors and the official fixtures."""

from __future__ import annotations

import pytest
import torch

from glip.modeling.heads.grounding.anchors import AnchorGenerator, anchor_visibility, cell_anchors
from tests.conftest import CASES, TINY_CONFIGS, load_case, official_state_dict


def test_cell_anchors_hand_computed():
    # Stride 16, size 32, ratios (0.5, 1, 2); reference window (0, 0, 15, 15), centre 7.5.
    # Ratio 0.5: w = round(sqrt(256 / 0.5)) = 23, h = round(11.5) = 12 (half to even);
    # scaled by 32 / 16 = 2 -> 46 x 24 -> 7.5 -/+ (22.5, 11.5).
    # Ratio 2: w = round(sqrt(128)) = 11, h = 22 -> 22 x 44 -> 7.5 -/+ (10.5, 21.5).
    expected = torch.tensor([[-15.0, -4.0, 30.0, 19.0], [-8.0, -8.0, 23.0, 23.0], [-3.0, -14.0, 18.0, 29.0]])
    assert torch.equal(cell_anchors(16, (32,), (0.5, 1.0, 2.0)), expected)


def test_cell_anchor_order_is_ratio_major():
    anchors = cell_anchors(8, (32, 64), (0.5, 2.0))
    assert anchors.shape == (4, 4) and anchors.dtype == torch.float32
    widths = anchors[:, 2] - anchors[:, 0] + 1
    heights = anchors[:, 3] - anchors[:, 1] + 1
    assert (widths > heights).tolist() == [True, True, False, False]
    assert widths[1] == 2 * widths[0]


def test_default_generator_buffers_match_checkpoint():
    gen = AnchorGenerator()
    state = gen.state_dict()
    assert list(state) == [f"cell_anchors.{level}" for level in range(5)]
    assert state["cell_anchors.0"].tolist() == [[-28.0, -28.0, 35.0, 35.0]]
    official = official_state_dict("tiny_glip_t")
    for level in range(5):
        assert torch.equal(
            state[f"cell_anchors.{level}"], official[f"module.rpn.anchor_generator.cell_anchors.{level}"]
        )


def test_scales_per_octave():
    gen = AnchorGenerator(sizes=(32,), strides=(8,), aspect_ratios=(1.0,), scales_per_octave=3)
    widths = gen.cell_anchors.get_buffer("0")[:, 2] - gen.cell_anchors.get_buffer("0")[:, 0] + 1
    assert widths.tolist() == pytest.approx([32, 32 * 2 ** (1 / 3), 32 * 2 ** (2 / 3)], rel=1e-6)
    assert gen.num_anchors_per_location == [3]


@pytest.mark.parametrize("config", TINY_CONFIGS)
@pytest.mark.parametrize("case", CASES)
def test_grid_anchors_match_official(config, case):
    c = load_case(config, case)
    sizes = [tuple(r.shape[-2:]) for r in c["head_bbox_reg"]]
    anchors = AnchorGenerator()(sizes, device="cpu")
    assert len(anchors) == len(c["anchors"])
    for ours, ref in zip(anchors, c["anchors"]):
        assert torch.equal(ours, ref)
    width, height = c["anchors_image_size_wh"]
    gen = AnchorGenerator()
    for ours, ref in zip(anchors, c["anchors_visibility"]):
        assert torch.equal(gen.visibility(ours, (height, width)), ref.bool())


def test_grid_order_row_major_anchors_inner():
    gen = AnchorGenerator(sizes=(16, 32), strides=(8, 16), aspect_ratios=(0.5, 1.0, 2.0))
    level0 = gen([(2, 3), (1, 1)])[0]
    assert level0.shape == (2 * 3 * 3, 4)
    base = gen.cell_anchors.get_buffer("0")
    # Location (y=1, x=2) is row 1 * 3 + 2; its 3 anchors are consecutive.
    loc = 1 * 3 + 2
    assert torch.equal(level0[loc * 3 : loc * 3 + 3], base + torch.tensor([16.0, 8.0, 16.0, 8.0]))


def test_visibility_negative_threshold_marks_all():
    anchors = torch.tensor([[-10.0, -10.0, 5.0, 5.0], [0.0, 0.0, 5.0, 5.0]])
    assert anchor_visibility(anchors, (10, 10)).tolist() == [False, True]
    assert anchor_visibility(anchors, (10, 10), straddle_thresh=-1).tolist() == [True, True]
