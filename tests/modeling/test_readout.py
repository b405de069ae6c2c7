"""The language heads' visual read-out (glip.modeling.heads.readout)."""

from __future__ import annotations

import pytest
import torch

from glip.modeling.heads.readout import VisualReadout, location_encoding
from glip.modeling.heads.vqa import VQAHead


def test_location_encoding_layout() -> None:
    enc = location_encoding([(2, 3), (1, 1)], bands=2, device=torch.device("cpu"))
    assert enc.shape == (2 * 3 + 1, 4 * 2 + 2)
    assert torch.equal(enc[:6, -2:], torch.tensor([[1.0, 0.0]] * 6))  # level one-hot
    assert torch.equal(enc[6, -2:], torch.tensor([0.0, 1.0]))
    # Row-major (as map.flatten(2)): location 1 is (row 0, column 1), x = 0.5 at the lowest band.
    x = torch.tensor([1.5 / 3]) * torch.pi
    assert torch.allclose(enc[1, 0], x.sin()[0])
    assert len({tuple(r.tolist()) for r in enc}) == enc.shape[0]  # every location distinct


def _maps(column: int) -> list[torch.Tensor]:
    """Two levels of 8 channels, zero but for one location of the finest at ``column``."""
    fine = torch.zeros(1, 8, 4, 6)
    fine[0, :, 1, column] = 3.0
    return [fine, torch.zeros(1, 8, 2, 3)]


def test_readout_sees_where_things_are() -> None:
    """Attention alone is blind to order; the location encoding lets the same feature on
    the left and on the right read differently."""
    torch.manual_seed(0)
    readout = VisualReadout(text_dim=16, visual_dim=8, num_levels=2, dim=8, num_heads=2).eval()
    query = torch.randn(1, 3, 16)
    left, right = readout(query, _maps(0)), readout(query, _maps(5))
    assert left.shape == (1, 3, 16)
    assert not torch.allclose(left, right, atol=1e-4)
    with pytest.raises(ValueError, match="2 levels"):
        readout(query, _maps(0)[:1])


def test_readout_queries_are_independent() -> None:
    """Each query reads the maps alone (what keeps captioning causal)."""
    torch.manual_seed(0)
    readout = VisualReadout(text_dim=16, visual_dim=8, num_levels=2, dim=8, num_heads=2).eval()
    query = torch.randn(1, 3, 16)
    changed = query.clone()
    changed[0, 2] += 1.0
    a, b = readout(query, _maps(2)), readout(changed, _maps(2))
    assert torch.equal(a[:, :2], b[:, :2])
    assert not torch.equal(a[:, 2], b[:, 2])


class _Trunk:
    def __init__(self, text: torch.Tensor, visual: list[torch.Tensor]) -> None:
        self.text, self.visual = text, visual
        self.mask = torch.ones(text.shape[:2], dtype=torch.int64)


@pytest.mark.parametrize("with_readout", [False, True])
def test_answer_head_reads_the_image_only_through_its_readout(with_readout: bool) -> None:
    torch.manual_seed(0)
    readout = VisualReadout(16, 8, 2, dim=8, num_heads=2) if with_readout else None
    head = VQAHead(16, ["left", "right"], readout=readout).eval()
    text = torch.randn(1, 5, 16)
    a = head(_Trunk(text, _maps(0)), {}).logits
    b = head(_Trunk(text, _maps(5)), {}).logits
    assert a.shape == (1, 2)
    assert torch.equal(a, b) != with_readout
    names = {n for n, _ in head.named_parameters()}
    assert any(n.startswith("readout.") for n in names) == with_readout


def test_config_builds_the_readouts() -> None:
    from glip.config import load_config
    from glip.engine.run import build_training_model

    cfg = load_config(
        "configs/multitask/synthetic.yaml",
        [
            "model.heads.vqa.answers=[red, blue]",
            "model.heads.vqa.readout_dim=16",
            "model.heads.caption.readout_dim=16",
            "model.heads.mask.enabled=false",
            "model.text.pretrained=false",
        ],
    )
    model = build_training_model(cfg)
    for name in ("vqa", "caption"):
        readout = model.heads[name].readout
        assert isinstance(readout, VisualReadout)
        assert readout.key.in_features == cfg.model.trunk.channels
        assert readout.num_levels == len(cfg.model.anchors.strides)
    cfg.model.heads.vqa.readout_dim = 0
    assert build_training_model(cfg).heads["vqa"].readout is None
