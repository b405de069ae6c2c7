"""Stochastic depth: drop whole residual branches per sample during training."""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["DropPath", "drop_path"]


def drop_path(x: Tensor, drop_prob: float, training: bool) -> Tensor:
    """Zeroes the whole of ``x[b]`` for a random subset of samples ``b``.

    Args:
        x: ``Tensor[B, ...]``, a residual branch.
        drop_prob: probability that one sample's branch is dropped.
        training: when False (or ``drop_prob == 0``) ``x`` is returned unchanged.

    Returns:
        ``Tensor[B, ...]``: kept samples are divided by ``1 - drop_prob`` so that the
        expectation is unchanged (Huang et al., "Deep Networks with Stochastic Depth").
    """
    if drop_prob == 0.0 or not training:
        return x
    keep_prob = 1.0 - drop_prob
    # One Bernoulli draw per sample, broadcast over every other dimension.
    keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep_prob)  # [B, 1, ..., 1]
    if keep_prob > 0.0:
        keep = keep / keep_prob
    return x * keep


class DropPath(nn.Module):
    """Module form of :func:`drop_path`; the identity in eval mode.

    Args:
        drop_prob: probability of dropping one sample's residual branch.
    """

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= drop_prob <= 1.0:
            raise ValueError(f"drop_prob must be in [0, 1], got {drop_prob}")
        self.drop_prob = float(drop_prob)

    def forward(self, x: Tensor) -> Tensor:
        """``Tensor[B, ...] -> Tensor[B, ...]``."""
        return drop_path(x, self.drop_prob, self.training)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob:g}"
