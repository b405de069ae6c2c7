"""DyReLU, h_sigmoid and Scale against hand-computed values."""

from __future__ import annotations

import torch

from glip.layers.dyrelu import DyReLU, h_sigmoid
from glip.layers.scale import Scale
from tests.allocations import NewStorages


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


def _out_of_place(layer: DyReLU, x: torch.Tensor) -> torch.Tensor:
    """The layer's formula with every op out of place (as the official DYReLU writes it)."""
    b, c = x.shape[:2]
    coeffs = h_sigmoid(layer.fc2(torch.relu(layer.fc1(x.mean(dim=(2, 3)))))).view(b, 4 * c, 1, 1)
    a1, b1, a2, b2 = torch.split(coeffs, c, dim=1)
    a1 = (a1 - 0.5) * layer.lambda_a + layer.init_a[0]
    a2 = (a2 - 0.5) * layer.lambda_a + layer.init_a[1]
    return torch.maximum(x * a1 + (b1 - 0.5 + layer.init_b[0]), x * a2 + (b2 - 0.5 + layer.init_b[1]))


def test_dyrelu_in_place_pieces_are_bitwise_the_formula_and_keep_gradients() -> None:
    torch.manual_seed(0)
    layer = DyReLU(16)
    x = torch.randn(2, 16, 7, 9)
    with torch.no_grad():
        assert torch.equal(layer(x), _out_of_place(layer, x))
    x.requires_grad_(True)
    y = layer(x)
    assert torch.equal(y.detach(), _out_of_place(layer, x).detach())
    y.square().sum().backward()
    expected = torch.autograd.grad(_out_of_place(layer, x).square().sum(), x)[0]
    assert torch.equal(x.grad, expected)


def test_dyrelu_without_gradients_allocates_two_maps() -> None:
    """Without gradients the maximum is written into the first piece: the layer allocates
    two tensors of x's size (the two pieces), not five (two products, two sums, the maximum)."""
    layer = DyReLU(16)
    x = torch.randn(1, 16, 6, 6)
    with torch.no_grad(), NewStorages(lambda t: t.numel() == x.numel()) as mode:
        layer(x)
    assert mode.count == 2


def test_dyrelu_in_place_overwrites_x_without_gradients_only() -> None:
    """``inplace=True`` (the caller gives up x): without gradients the first piece is formed in
    x itself, so one new map is allocated, with the same bits; with gradients x is untouched
    and the gradients are the formula's."""
    torch.manual_seed(0)
    layer = DyReLU(16)
    x = torch.randn(1, 16, 6, 6)
    expected = _out_of_place(layer, x).detach()
    owned = x.clone()
    with torch.no_grad(), NewStorages(lambda t: t.numel() == x.numel()) as mode:
        out = layer(owned, inplace=True)
    assert mode.count == 1 and torch.equal(out, expected)
    assert out.untyped_storage().data_ptr() == owned.untyped_storage().data_ptr()

    leaf = x.clone().requires_grad_(True)
    y = layer(leaf, inplace=True)
    assert torch.equal(leaf.detach(), x) and torch.equal(y.detach(), expected)
    y.square().sum().backward()
    ref = x.clone().requires_grad_(True)
    assert torch.equal(leaf.grad, torch.autograd.grad(_out_of_place(layer, ref).square().sum(), ref)[0])
