"""DropPath, DropBlock2d and FrozenBatchNorm2d."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from glip.layers.drop_path import DropPath
from glip.layers.dropblock import DropBlock2d
from glip.layers.frozen_bn import FrozenBatchNorm2d


def test_drop_path_identity_in_eval_and_per_sample_in_training() -> None:
    x = torch.randn(64, 5, 3)
    layer = DropPath(0.25)
    assert torch.equal(layer.eval()(x), x)
    torch.manual_seed(0)
    y = layer.train()(x)
    kept = (y != 0).flatten(1).any(1)  # [B]
    # A sample is either dropped entirely or kept and scaled by 1 / keep_prob.
    assert torch.all(y[~kept] == 0)
    torch.testing.assert_close(y[kept], x[kept] / 0.75)
    assert 0 < int(kept.sum()) < 64
    assert torch.equal(DropPath(0.0).train()(x), x)


def test_drop_block_identity_in_eval_and_drops_squares_in_training() -> None:
    x = torch.ones(2, 4, 16, 16)
    block = DropBlock2d(0.3, 3)
    assert torch.equal(block.eval()(x), x)
    torch.manual_seed(0)
    y = block.train()(x)
    assert y.shape == x.shape
    # The dropped pattern is shared by all channels and kept values are rescaled by numel / kept.
    zero = y == 0
    assert torch.equal(zero, zero[:, :1].expand_as(zero)) and zero.any()
    kept = (~zero[:, 0]).sum()
    torch.testing.assert_close(y[~zero], torch.full_like(y[~zero], 2 * 16 * 16 / kept.item()))
    # Even block sizes keep the input size.
    assert DropBlock2d(0.3, 4).train()(x).shape == x.shape


def test_frozen_batch_norm_matches_batch_norm_and_keeps_official_buffers() -> None:
    torch.manual_seed(0)
    bn = FrozenBatchNorm2d(6)
    for name in ("weight", "bias", "running_mean"):
        getattr(bn, name).normal_()
    bn.running_var.uniform_(0.5, 2.0)
    assert sorted(bn.state_dict()) == ["bias", "running_mean", "running_var", "weight"]
    assert list(bn.parameters()) == []
    x = torch.randn(2, 6, 5, 7)
    expected = F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, training=False, eps=0.0)
    torch.testing.assert_close(bn(x), expected)
