"""The caption head's visual decoder: causal over the tokens, reading the image, built from
the config, and starting fresh on a captioner trained without it."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from glip.config import GLIPConfig
from glip.hub.checkpoint import with_fresh_heads
from glip.modeling.build import HEAD_BUILDERS
from glip.modeling.heads.readout import VisualDecoder


def test_a_token_reads_the_image_and_the_tokens_before_it_only() -> None:
    torch.manual_seed(0)
    decoder = VisualDecoder(16, 8, 2, num_layers=2, num_heads=4, max_positions=10).eval()
    visual = [torch.randn(2, 8, 4, 4), torch.randn(2, 8, 2, 2)]
    text = torch.randn(2, 6, 16)
    out = decoder(text, visual)
    later = text.clone()
    later[:, 4:] = torch.randn(2, 2, 16)
    changed = decoder(later, visual)
    assert out.shape == (2, 6, 16)
    assert torch.allclose(out[:, :4], changed[:, :4], atol=1e-6)  # tokens 0..3 never read 4, 5
    assert not torch.allclose(out[:, 4:], changed[:, 4:])
    other = [v.flip(-1) for v in visual]  # the same maps, left and right swapped
    assert not torch.allclose(decoder(text, other)[:, 0], out[:, 0])  # the first token sees the image
    with pytest.raises(ValueError, match="10 positions, got 11"):
        decoder(torch.randn(1, 11, 16), visual)
    with pytest.raises(ValueError, match="2 levels, got 1"):
        decoder(text, visual[:1])
    with pytest.raises(ValueError, match="divisible"):
        VisualDecoder(15, 8, 2, num_heads=4)


def test_builder_and_a_captioner_trained_without_it() -> None:
    bert = SimpleNamespace(layer_norm_eps=1e-12, vocab_size=50)
    cfg = GLIPConfig()
    cfg.model.heads.caption.enabled = True
    assert HEAD_BUILDERS["caption"](cfg, bert).decoder is None  # off by default
    cfg.model.heads.caption.decoder_layers = 1
    head = HEAD_BUILDERS["caption"](cfg, bert)
    assert len(head.decoder.layers.layers) == 1 and head.decoder.num_levels == len(cfg.model.anchors.strides)
    ours = {f"heads.caption.{k}": v for k, v in head.state_dict().items()}
    model = SimpleNamespace(heads={"caption": head}, state_dict=lambda: ours)
    old = {k: v for k, v in ours.items() if not k.startswith("heads.caption.decoder.")}
    assert set(with_fresh_heads(model, old)) == set(ours)
