"""DyReLU, h_sigmoid and Scale against hand-computed values."""

from __future__ import annotations

import torch

from glip.layers.dyrelu import DyReLU, h_sigmoid
from glip.layers.scale import Scale


def test_h_sigmoid_values() -> None:
    x = torch.tensor([-10.0, -3.0, -1.5, 0.0, 1.5, 3.0, 10.0])
    expected = torch.tensor([0.0, 0.0, 0.25, 0.5, 0.75, 1.0, 1.0])
    torch.testing.assert_close(h_sigmoid(x), expected)


def test_dyrelu_is_relu_when_coefficients_are_neutral() -> None:
    # fc2 outputs 0 -> h_sigmoid gives 0.5 -> slopes (1, 0), biases (0, 0): a plain ReLU.
    layer = DyReLU(8)
    torch.nn.init.zeros_(layer.fc2.weight)
    torch.nn.init.zeros_(layer.fc2.bias)
    x = torch.randn(2, 8, 3, 5)
    torch.testing.assert_close(layer(x), torch.relu(x))


def test_dyrelu_formula() -> None:
    torch.manual_seed(0)
    layer = DyReLU(8)
    assert tuple(layer.fc1.weight.shape) == (2, 8) and tuple(layer.fc2.weight.shape) == (32, 2)
    x = torch.randn(2, 8, 3, 5, dtype=torch.float64)
    layer = layer.double()
    pooled = x.mean(dim=(2, 3))
    y = torch.clamp(layer.fc2(torch.relu(layer.fc1(pooled))) + 3, 0, 6) / 6  # [B, 32]
    a1, b1, a2, b2 = (y[:, i * 8 : (i + 1) * 8, None, None] for i in range(4))
    expected = torch.maximum(x * (2 * a1 - 1 + 1) + (b1 - 0.5), x * (2 * a2 - 1) + (b2 - 0.5))
    torch.testing.assert_close(layer(x), expected)


def test_scale() -> None:
    scale = Scale(2.5)
    assert tuple(scale.scale.shape) == (1,)
    torch.testing.assert_close(scale(torch.ones(2, 3)), torch.full((2, 3), 2.5))
