"""The official GLIP/ATSS box coder: conventions and round trip."""

from __future__ import annotations

import math

import pytest
import torch

from glip.modeling.heads.grounding.box_coder import BoxCoder


def test_box_coder_round_trip():
    g = torch.Generator().manual_seed(0)
    anchors = torch.rand(50, 2, generator=g) * 300
    anchors = torch.cat([anchors, anchors + 10 + torch.rand(50, 2, generator=g) * 200], dim=1).double()
    boxes = torch.rand(50, 2, generator=g) * 300
    boxes = torch.cat([boxes, boxes + torch.rand(50, 2, generator=g) * 250], dim=1).double()
    coder = BoxCoder()
    torch.testing.assert_close(coder.decode(coder.encode(boxes, anchors), anchors), boxes, atol=1e-9, rtol=0)


def test_box_coder_official_conventions():
    coder = BoxCoder()
    anchor = torch.tensor([[0.0, 0.0, 9.0, 19.0]])  # 10 x 20 pixels (+1), centre (4.5, 9.5)
    box = torch.tensor([[10.0, 0.0, 29.0, 19.0]])  # 20 x 20, centre (19.5, 9.5)
    deltas = coder.encode(box, anchor)
    expected = [10 * (19.5 - 4.5) / 10, 0.0, 5 * math.log(2.0), 0.0]
    assert deltas[0].tolist() == pytest.approx(expected, abs=1e-6)
    # dw is clamped at log(1000 / 16) after dividing by its weight 5.
    huge = coder.decode(torch.tensor([[0.0, 0.0, 100.0, 0.0]]), anchor)[0]
    assert (huge[2] - huge[0] + 1).item() == pytest.approx(10 * 1000 / 16, rel=1e-5)
