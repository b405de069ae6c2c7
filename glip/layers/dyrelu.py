"""Dynamic ReLU (Chen et al., 2020, "Dynamic ReLU"), variant DY-ReLU-B as used by DyHead.

A small MLP on the globally pooled input predicts, per image and channel, two linear
pieces ``(a1, b1)`` and ``(a2, b2)``; the output is ``max(x * a1 + b1, x * a2 + b2)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from glip.utils.graph import needs_graph

__all__ = ["DyReLU", "h_sigmoid"]


def h_sigmoid(x: Tensor) -> Tensor:
    """Hard sigmoid ``relu6(x + 3) / 6``: 0 below -3, 1 above 3, linear in between."""
    return F.relu6(x + 3.0) / 6.0


class DyReLU(nn.Module):
    """Channel-wise dynamic ReLU with two learned linear pieces and biases.

    Args:
        channels: C, the number of input (and output) channels.
        reduction: the MLP's hidden width is ``C // reduction`` (official default 4).
        lambda_a: range of the slopes around their initial value; the official
            ``DYReLU`` stores ``lambda_a * 2`` with ``lambda_a = 1``, i.e. 2.
        init_a: slopes when the MLP outputs 0.5 (official ``[1.0, 0.0]``: a plain ReLU).
        init_b: biases when the MLP outputs 0.5 (official ``[0.0, 0.0]``).

    Shapes:
        x: ``Tensor[B, C, H, W]`` -> ``Tensor[B, C, H, W]``.
    """

    def __init__(
        self,
        channels: int,
        reduction: int = 4,
        lambda_a: float = 2.0,
        init_a: tuple[float, float] = (1.0, 0.0),
        init_b: tuple[float, float] = (0.0, 0.0),
    ) -> None:
        super().__init__()
        if reduction != 4:
            # The official layer rounds other reductions to a multiple of 4
            # (`_make_divisible`); GLIP only ever uses 4, so that path is not kept.
            raise ValueError(f"only reduction=4 is supported (got {reduction})")
        self.channels = channels
        self.lambda_a = lambda_a
        self.init_a = tuple(init_a)
        self.init_b = tuple(init_b)
        self.fc1 = nn.Linear(channels, channels // reduction)
        # Four coefficients per channel, laid out [a1 | b1 | a2 | b2] along dim 1.
        self.fc2 = nn.Linear(channels // reduction, 4 * channels)

    def forward(self, x: Tensor, inplace: bool = False) -> Tensor:
        """``inplace``: the caller gives up ``x``; without gradients (and not while tracing)
        the first piece is then formed in ``x`` itself, so one new map is allocated, not two.
        The same float ops either way."""
        b, c = x.shape[:2]
        pooled = F.adaptive_avg_pool2d(x, 1).view(b, c)  # [B, C]
        hidden = F.relu(self.fc1(pooled))  # [B, C/4]
        coeffs = h_sigmoid(self.fc2(hidden))  # [B, 4C], each in [0, 1]
        coeffs = coeffs.view(b, 4 * c, 1, 1)  # [B, 4C, 1, 1]
        a1, b1, a2, b2 = torch.split(coeffs, c, dim=1)  # 4 x [B, C, 1, 1]
        a1 = (a1 - 0.5) * self.lambda_a + self.init_a[0]
        a2 = (a2 - 0.5) * self.lambda_a + self.init_a[1]
        b1 = b1 - 0.5 + self.init_b[0]
        b2 = b2 - 0.5 + self.init_b[1]
        # Each piece in one [B, C, H, W] buffer: ``x * a + b`` with the add in place (the same
        # float adds; autograd keeps what it needs, x and a). Without gradients the maximum
        # overwrites the first piece, so three maps of x's size are alive at most, not five
        # (not while tracing: ONNX's maximum has no ``out``).
        graph = needs_graph(x, coeffs)
        second = x * a2
        first = x.mul_(a1) if inplace and not graph else x * a1
        first += b1
        second += b2
        if graph:
            return torch.maximum(first, second)
        return torch.maximum(first, second, out=first)
