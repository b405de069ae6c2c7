"""Modulated deformable convolution: each backend against a float64 per-pixel loop transcribed from the official
CUDA kernel's semantics, plain-convolution special cases, gradcheck, and the module wrapper."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import glip.ops.deform_conv as deform_ops
from glip.layers.deform_conv import ModulatedDeformConv2d
from glip.ops.backend import torchvision_available
from glip.ops.deform_conv import modulated_deform_conv2d
from tests.allocations import NewStorages

NO_TORCHVISION = "torchvision is not usable here, so there is no second backend to compare the pure path with"


def _bilinear_loop(plane: torch.Tensor, h: float, w: float) -> torch.Tensor:
    """The kernel's bilinear sample of one point from plane [C, H, W] (float64), with its boundary rules."""
    height, width = plane.shape[-2:]
    if not (h > -1 and w > -1 and h < height and w < width):
        return plane.new_zeros(plane.shape[0])
    h_low, w_low = math.floor(h), math.floor(w)
    h_high, w_high = h_low + 1, w_low + 1
    lh, lw = h - h_low, w - w_low
    hh, hw = 1 - lh, 1 - lw

    def corner(y: int, x: int) -> torch.Tensor:
        inside = 0 <= y <= height - 1 and 0 <= x <= width - 1
        return plane[:, y, x] if inside else plane.new_zeros(plane.shape[0])

    return (
        hh * hw * corner(h_low, w_low)
        + hh * lw * corner(h_low, w_high)
        + lh * hw * corner(h_high, w_low)
        + lh * lw * corner(h_high, w_high)
    )


def _deform_conv_loop(x, offset, mask, weight, bias, stride, padding, dilation, groups, dg) -> torch.Tensor:
    """Float64 reference: one sampling point at a time (official kernel semantics), then a grouped matmul."""
    x, offset, mask, weight = x.double(), offset.double(), mask.double(), weight.double()
    b, c_in, _, _ = x.shape
    c_out, c_in_group, kh, kw = weight.shape
    ho, wo = offset.shape[-2:]
    k = kh * kw
    c_dg = c_in // dg
    columns = x.new_zeros(b, c_in, k, ho, wo)
    for n in range(b):
        for g in range(dg):
            plane = x[n, g * c_dg : (g + 1) * c_dg]
            for i in range(kh):
                for j in range(kw):
                    kk = i * kw + j
                    for oy in range(ho):
                        for ox in range(wo):
                            h = oy * stride - padding + i * dilation + offset[n, g * 2 * k + 2 * kk, oy, ox].item()
                            w = ox * stride - padding + j * dilation + offset[n, g * 2 * k + 2 * kk + 1, oy, ox].item()
                            value = _bilinear_loop(plane, h, w)
                            columns[n, g * c_dg : (g + 1) * c_dg, kk, oy, ox] = value * mask[n, g * k + kk, oy, ox]
    out = x.new_zeros(b, c_out, ho, wo)
    c_out_group = c_out // groups
    for gi in range(groups):
        w_g = weight[gi * c_out_group : (gi + 1) * c_out_group].reshape(c_out_group, c_in_group * k)
        cols = columns[:, gi * c_in_group : (gi + 1) * c_in_group].reshape(b, c_in_group * k, ho * wo)
        out[:, gi * c_out_group : (gi + 1) * c_out_group] = (w_g @ cols).view(b, c_out_group, ho, wo)
    if bias is not None:
        out += bias.double().view(1, -1, 1, 1)
    return out


def _case(
    seed: int,
    *,
    b: int = 2,
    c_in: int = 4,
    c_out: int = 6,
    size: tuple[int, int] = (5, 7),
    k: int = 3,
    stride: int = 1,
    padding: int = 1,
    dilation: int = 1,
    groups: int = 1,
    dg: int = 1,
    dtype: torch.dtype = torch.float32,
):
    gen = torch.Generator().manual_seed(seed)
    height, width = size
    ho = (height + 2 * padding - (dilation * (k - 1) + 1)) // stride + 1
    wo = (width + 2 * padding - (dilation * (k - 1) + 1)) // stride + 1
    x = torch.randn(b, c_in, height, width, generator=gen, dtype=dtype)
    offset = torch.rand(b, 2 * dg * k * k, ho, wo, generator=gen, dtype=dtype) * 6 - 3  # fractional in [-3, 3]
    # Force samples into the partial-weight bands: h in (-1, 0) at output row 0 / kernel row 0 and
    # w in (W-1, W) at the last output column / last kernel column.
    band = torch.rand(b, dg, ho, wo, generator=gen, dtype=dtype) * 0.98 + 0.01  # (0, 1)
    last_k = k * k - 1
    for g in range(dg):
        base_h0 = -padding  # output row 0, kernel row 0
        offset[:, g * 2 * k * k + 0, 0] = -band[:, g, 0] - base_h0  # h = -band in (-1, 0)
        base_w_last = (wo - 1) * stride - padding + (k - 1) * dilation
        offset[:, g * 2 * k * k + 2 * last_k + 1, :, -1] = (width - 1) + band[:, g, :, -1] - base_w_last
    mask = torch.rand(b, dg * k * k, ho, wo, generator=gen, dtype=dtype)
    weight = torch.randn(c_out, c_in // groups, k, k, generator=gen, dtype=dtype)
    bias = torch.randn(c_out, generator=gen, dtype=dtype)
    return x, offset, mask, weight, bias


LOOP_CASES = [
    pytest.param({"stride": 1}, id="stride1"),
    pytest.param({"stride": 2}, id="stride2"),
    pytest.param({"groups": 2}, id="groups2"),
    pytest.param({"dg": 2}, id="dgroups2"),
    pytest.param({"stride": 2, "groups": 2, "dg": 2, "dilation": 2, "padding": 2, "size": (6, 5)}, id="all"),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("params", LOOP_CASES)
def test_pure_path_matches_loop_reference(params: dict, dtype: torch.dtype) -> None:
    x, offset, mask, weight, bias = _case(0, dtype=dtype, **params)
    stride, padding, dilation = params.get("stride", 1), params.get("padding", 1), params.get("dilation", 1)
    groups, dg = params.get("groups", 1), params.get("dg", 1)
    ref = _deform_conv_loop(x, offset, mask, weight, bias, stride, padding, dilation, groups, dg)
    out = modulated_deform_conv2d(x, offset, mask, weight, bias, stride, padding, dilation, groups, dg, backend="torch")
    assert out.dtype == dtype and out.shape == ref.shape
    atol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(out.double(), ref, rtol=0, atol=atol)


def test_band_samples_have_partial_weight() -> None:
    """A sample at h = -0.25 on a constant image reads 0.75 of the value (only the row-0 corners count)."""
    x = torch.ones(1, 1, 3, 3)
    weight = torch.zeros(1, 1, 1, 1)
    weight[0, 0, 0, 0] = 1.0
    offset = torch.zeros(1, 2, 3, 3)
    offset[0, 0, 0, 0] = -0.25  # y offset of output (0, 0): h = -0.25
    offset[0, 1, 0, 1] = 1.5  # x offset of output (0, 1): w = 2.5, in the (W-1, W) band
    offset[0, 0, 2, 2] = 1.0  # y offset of output (2, 2): h = 3 == H, outside (gate is h < H)
    offset[0, 0, 1, 1] = -2.0  # y offset of output (1, 1): h = -1, outside (gate is h > -1)
    out = modulated_deform_conv2d(x, offset, torch.ones(1, 1, 3, 3), weight, padding=0, backend="torch")
    assert out[0, 0, 0, 0].item() == pytest.approx(0.75)
    assert out[0, 0, 0, 1].item() == pytest.approx(0.5)
    assert out[0, 0, 2, 2].item() == 0.0
    assert out[0, 0, 1, 1].item() == 0.0


@pytest.mark.parametrize("stride,groups,dilation", [(1, 1, 1), (2, 1, 1), (1, 2, 1), (2, 2, 2)])
def test_zero_offset_unit_mask_equals_conv2d(stride: int, groups: int, dilation: int) -> None:
    x, offset, mask, weight, bias = _case(1, groups=groups, stride=stride, dilation=dilation, size=(9, 11))
    out = modulated_deform_conv2d(
        x, torch.zeros_like(offset), torch.ones_like(mask), weight, bias, stride, 1, dilation, groups, backend="torch"
    )
    ref = F.conv2d(x, weight, bias, stride=stride, padding=1, dilation=dilation, groups=groups)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)


@pytest.mark.parametrize("shift", [(1, -2), (-3, 2), (0, 5), (10, 0)])
def test_integer_offset_equals_shifted_conv(shift: tuple[int, int]) -> None:
    x, offset, mask, weight, bias = _case(2, size=(8, 9))
    dy, dx = shift
    offset = torch.zeros_like(offset)
    offset[:, 0::2] = dy
    offset[:, 1::2] = dx
    out = modulated_deform_conv2d(x, offset, torch.ones_like(mask), weight, bias, backend="torch")
    # A plain convolution (padding 1 done by hand) over the window of a zero-padded x moved by (dy, dx).
    pad = 12
    padded = F.pad(x, (pad, pad, pad, pad))
    window = padded[:, :, pad + dy - 1 : pad + dy + x.shape[2] + 1, pad + dx - 1 : pad + dx + x.shape[3] + 1]
    ref = F.conv2d(window, weight, bias, padding=0)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)


def test_gradcheck() -> None:
    x, offset, mask, weight, bias = _case(3, b=1, c_in=2, c_out=2, size=(4, 4), groups=2, dg=2, dtype=torch.float64)
    inputs = tuple(t.requires_grad_() for t in (x, offset, mask, weight, bias))

    def fn(*args: torch.Tensor) -> torch.Tensor:
        return modulated_deform_conv2d(*args, stride=1, padding=1, groups=2, deformable_groups=2, backend="torch")

    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-5)


def test_chunking_does_not_change_the_result(monkeypatch: pytest.MonkeyPatch) -> None:
    x, offset, mask, weight, bias = _case(4, size=(6, 7), dg=2, groups=2)
    full = modulated_deform_conv2d(x, offset, mask, weight, bias, groups=2, deformable_groups=2, backend="torch")
    monkeypatch.setattr(deform_ops, "_MAX_CHUNK_ELEMENTS", 5 * 9 * 4)  # 5 positions: chunks straddle images
    chunked = modulated_deform_conv2d(x, offset, mask, weight, bias, groups=2, deformable_groups=2, backend="torch")
    torch.testing.assert_close(chunked, full, rtol=0, atol=1e-6)


@pytest.mark.parametrize("bias_on", [True, False])
def test_inference_writes_chunks_into_the_result_bitwise(monkeypatch: pytest.MonkeyPatch, bias_on: bool) -> None:
    """Without autograd each chunk goes straight into the [B, Cout, Ho, Wo] result (no [B*L, Cout]
    rows, concatenation or permuted copy): the same bits as the autograd path, also when chunks
    straddle images, and the only output-sized tensor allocated is the result."""
    # Cout = 64 >> K * Cin / 9: nothing but output-sized buffers reach the output's size.
    x, offset, mask, weight, bias = _case(9, b=3, c_in=4, c_out=64, size=(6, 7))
    bias = bias if bias_on else None
    monkeypatch.setattr(deform_ops, "_MAX_CHUNK_ELEMENTS", 5 * 9 * 4)  # 5 positions: chunks straddle images
    leaves = [t.clone().requires_grad_() for t in (x, offset, mask, weight)]
    with_graph = modulated_deform_conv2d(*leaves, bias, backend="torch")
    assert with_graph.grad_fn is not None

    with torch.no_grad(), NewStorages(lambda t: t.untyped_storage().nbytes() >= 4 * with_graph.numel()) as mode:
        direct = modulated_deform_conv2d(x, offset, mask, weight, bias, backend="torch")
    assert torch.equal(direct, with_graph.detach()) and direct.is_contiguous()
    assert mode.count == 1  # the result (before: chunk rows, their cat and the permuted copy)


def test_inference_chunks_share_their_gather_buffers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without autograd the chunks gather into two buffers made once per call (a fresh 4 MiB
    buffer per gather was faulted in anew each time), bit for bit the autograd path's result."""
    x, offset, mask, weight, bias = _case(10, b=3, c_in=4, c_out=6, size=(6, 7))
    monkeypatch.setattr(deform_ops, "_MAX_CHUNK_ELEMENTS", 5 * 9 * 4)  # 5 positions: 26 chunks
    leaves = [t.clone().requires_grad_() for t in (x, offset, mask, weight)]
    with_graph = modulated_deform_conv2d(*leaves, bias, backend="torch")
    chunk_bytes = 5 * 9 * 4 * x.element_size()  # the columns of a 5-position chunk: [5 * K, Cin]
    with torch.no_grad(), NewStorages(lambda t: t.untyped_storage().nbytes() == chunk_bytes) as mode:
        direct = modulated_deform_conv2d(x, offset, mask, weight, bias, backend="torch")
    assert torch.equal(direct, with_graph.detach())
    assert mode.count == 2  # the columns and the corner buffer (before: 4 per full chunk, 100)


@pytest.mark.parametrize("grad", [False, True])
def test_a_channels_last_input_is_copied_once_into_the_table(grad: bool) -> None:
    """GLIP's fusion hands the DyConv channels-last views: the pure path copies such an input once,
    into its padded channels-last table (before: a contiguous copy, a padded one and a transposed
    one), with the same bits as a contiguous input, and the same gradients."""
    x, offset, mask, weight, bias = _case(11, c_in=8, c_out=2, size=(6, 7), dg=2)
    strided = x.to(memory_format=torch.channels_last)
    assert not strided.is_contiguous()
    sizes = {x.numel() * x.element_size(), x.shape[0] * 8 * 8 * 9 * x.element_size()}  # the input, padded by 1
    leaves = [t.clone().requires_grad_(grad) for t in (strided, x)]
    with torch.set_grad_enabled(grad), NewStorages(lambda t: t.untyped_storage().nbytes() in sizes) as mode:
        out = modulated_deform_conv2d(leaves[0], offset, mask, weight, bias, deformable_groups=2, backend="torch")
    ref = modulated_deform_conv2d(leaves[1], offset, mask, weight, bias, deformable_groups=2, backend="torch")
    assert torch.equal(out, ref)
    if grad:
        out.square().sum().backward()
        ref.square().sum().backward()
        assert torch.equal(leaves[0].grad, leaves[1].grad)
    else:
        assert mode.count == 1


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_inputs_are_computed_in_float32(dtype: torch.dtype) -> None:
    x, offset, mask, weight, bias = (t.to(dtype) for t in _case(5))
    out = modulated_deform_conv2d(x, offset, mask, weight, bias, backend="torch")
    ref = modulated_deform_conv2d(*(t.float() for t in (x, offset, mask, weight, bias)), backend="torch")
    assert out.dtype == dtype
    torch.testing.assert_close(out, ref.to(dtype), rtol=0, atol=0)


def test_empty_batch() -> None:
    x, offset, mask, weight, bias = _case(6, b=0)
    out = modulated_deform_conv2d(x, offset, mask, weight, bias, backend="torch")
    assert out.shape == (0, 6, 5, 7)


def test_offset_of_wrong_size_is_rejected() -> None:
    x, offset, mask, weight, bias = _case(7)
    big = torch.zeros(2, 18, 10, 14)  # GLIP's DyConv raw-buffer case: the caller must slice it
    with pytest.raises(ValueError, match="offset should have shape"):
        modulated_deform_conv2d(x, big, mask, weight, bias)
    with pytest.raises(ValueError, match="mask should have shape"):
        modulated_deform_conv2d(x, offset, mask[:, :, :2], weight, bias)


@pytest.mark.skipif(not torchvision_available(), reason=NO_TORCHVISION)
@pytest.mark.parametrize("params", LOOP_CASES)
def test_backends_agree(params: dict) -> None:
    x, offset, mask, weight, bias = _case(8, **params)
    args = (params.get("stride", 1), params.get("padding", 1), params.get("dilation", 1))
    groups, dg = params.get("groups", 1), params.get("dg", 1)
    leaves = [t.clone().requires_grad_() for t in (x, offset, mask, weight, bias)]
    results = {}
    for backend in ("torch", "torchvision"):
        inputs = [t.detach().clone().requires_grad_() for t in leaves]
        out = modulated_deform_conv2d(*inputs, *args, groups, dg, backend=backend)
        out.square().sum().backward()
        results[backend] = (out, *(t.grad for t in inputs))
    for pure, native in zip(results["torch"], results["torchvision"]):
        torch.testing.assert_close(pure, native, rtol=1e-4, atol=1e-4)


def test_module_parameters_and_forward() -> None:
    module = ModulatedDeformConv2d(4, 6, kernel_size=3, groups=2, deformable_groups=2)
    assert {name: tuple(p.shape) for name, p in module.state_dict().items()} == {"weight": (6, 2, 3, 3), "bias": (6,)}
    bound = 1 / math.sqrt(4 * 9)
    assert module.weight.abs().max() <= bound and module.bias.abs().max() == 0
    x, offset, mask, _, _ = _case(9, groups=2, dg=2)
    expected = modulated_deform_conv2d(x, offset, mask, module.weight, module.bias, 1, 1, 1, 2, 2)
    torch.testing.assert_close(module(x, offset, mask), expected, rtol=0, atol=0)
    assert ModulatedDeformConv2d(4, 6, bias=False).bias is None
