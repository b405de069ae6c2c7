"""ROIAlign: the pure path against a scalar loop reference and torchvision's kernel, forward and backward;
the FPN level mapper and the multi-level pooler."""

from __future__ import annotations

import math

import pytest
import torch

from glip.ops.backend import torchvision_available
from glip.ops.roi_align import level_of_boxes, multilevel_roi_align, roi_align

NO_TORCHVISION = "torchvision is not usable here, so there is no kernel to compare the pure path with"


def _bilinear(fmap: torch.Tensor, y: float, x: float) -> torch.Tensor:
    """Scalar transcription of the kernel's bilinear_interpolate on one [C, H, W] map."""
    _, height, width = fmap.shape
    if y < -1.0 or y > height or x < -1.0 or x > width:
        return fmap.new_zeros(fmap.shape[0])
    y, x = max(y, 0.0), max(x, 0.0)
    y_low, x_low = int(y), int(x)
    if y_low >= height - 1:
        y_high = y_low = height - 1
        y = float(y_low)
    else:
        y_high = y_low + 1
    if x_low >= width - 1:
        x_high = x_low = width - 1
        x = float(x_low)
    else:
        x_high = x_low + 1
    ly, lx = y - y_low, x - x_low
    hy, hx = 1 - ly, 1 - lx
    return (
        hy * hx * fmap[:, y_low, x_low]
        + hy * lx * fmap[:, y_low, x_high]
        + ly * hx * fmap[:, y_high, x_low]
        + ly * lx * fmap[:, y_high, x_high]
    )


def _roi_align_loop(inp, rois, out_size, scale, ratio, aligned):
    ph, pw = out_size
    out = inp.new_zeros((rois.shape[0], inp.shape[1], ph, pw))
    offset = 0.5 if aligned else 0.0
    for r, (b, x1, y1, x2, y2) in enumerate(rois.tolist()):
        sx, sy = x1 * scale - offset, y1 * scale - offset
        w, h = x2 * scale - offset - sx, y2 * scale - offset - sy
        if not aligned:
            w, h = max(w, 1.0), max(h, 1.0)
        bh, bw = h / ph, w / pw
        gh = ratio if ratio > 0 else math.ceil(h / ph)
        gw = ratio if ratio > 0 else math.ceil(w / pw)
        count = max(gh * gw, 1)
        for i in range(ph):
            for j in range(pw):
                acc = inp.new_zeros(inp.shape[1])
                for iy in range(gh):
                    y = sy + i * bh + (iy + 0.5) * bh / gh
                    for ix in range(gw):
                        x = sx + j * bw + (ix + 0.5) * bw / gw
                        acc = acc + _bilinear(inp[int(b)], y, x)
                out[r, :, i, j] = acc / count
    return out


def _case(seed: int, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    inp = torch.randn(2, 3, 9, 11, generator=gen, dtype=dtype)
    xy = torch.rand(7, 2, generator=gen, dtype=dtype) * 40 - 4  # some start outside the map
    wh = torch.rand(7, 2, generator=gen, dtype=dtype) * 30
    boxes = torch.cat([xy, xy + wh], dim=1)
    boxes[0] = torch.tensor([3.0, 3.0, 3.2, 3.1], dtype=dtype)  # smaller than a map cell
    boxes[1] = torch.tensor([-30.0, -30.0, -10.0, -12.0], dtype=dtype)  # entirely outside
    rois = torch.cat([torch.tensor([0, 1, 0, 1, 1, 0, 1], dtype=dtype)[:, None], boxes], dim=1)
    return inp, rois


@pytest.mark.parametrize(("ratio", "aligned"), [(0, False), (2, False), (0, True), (-1, True)])
def test_pure_path_equals_loop_reference(ratio: int, aligned: bool) -> None:
    inp, rois = _case(0)
    got = roi_align(inp, rois, (3, 4), 0.25, ratio, aligned, backend="torch")
    torch.testing.assert_close(got, _roi_align_loop(inp, rois, (3, 4), 0.25, ratio, aligned), rtol=1e-12, atol=1e-12)


def test_constant_map_pools_to_the_constant_inside() -> None:
    inp = torch.full((1, 2, 8, 8), 3.0, dtype=torch.float64)
    rois = torch.tensor([[0, 1.0, 1.0, 6.0, 5.0]], dtype=torch.float64)
    assert torch.allclose(
        roi_align(inp, rois, 2, 1.0, 0, backend="torch"), torch.full((1, 2, 2, 2), 3.0, dtype=torch.float64)
    )


@pytest.mark.skipif(not torchvision_available(), reason=NO_TORCHVISION)
@pytest.mark.parametrize(("ratio", "aligned"), [(0, False), (2, False), (0, True)])
def test_pure_path_equals_torchvision_forward_and_backward(ratio: int, aligned: bool) -> None:
    inp, rois = _case(1)
    grads = []
    outs = []
    for backend in ("torch", "torchvision"):
        x = inp.clone().requires_grad_(True)
        out = roi_align(x, rois, (5, 4), 0.5, ratio, aligned, backend=backend)
        weight = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).reshape(out.shape)
        (out * weight).sum().backward()
        outs.append(out.detach())
        grads.append(x.grad)
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-12, atol=1e-12)


@pytest.mark.skipif(not torchvision_available(), reason=NO_TORCHVISION)
def test_float32_and_empty_rois_agree_with_torchvision() -> None:
    inp, rois = _case(2, torch.float32)
    torch.testing.assert_close(
        roi_align(inp, rois, 7, 0.25, 0, backend="torch"), roi_align(inp, rois, 7, 0.25, 0, backend="torchvision")
    )
    empty = rois[:0]
    assert roi_align(inp, empty, 7, 0.25, backend="torch").shape == (0, 3, 7, 7)
    assert roi_align(inp, empty, 7, 0.25, backend="torchvision").shape == (0, 3, 7, 7)


def test_pure_path_gradcheck() -> None:
    inp, rois = _case(3)
    x = inp[:, :1, :5, :6].clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: roi_align(t, rois[:4] / 3, 2, 1.0, 0, backend="torch"), (x,))


def test_level_mapper_official_canonical_level() -> None:
    # sqrt((x2 - x1 + 1) * (y2 - y1 + 1)): 223 -> 224 px is level 4; 111 -> 112 px is level 3 (exactly,
    # thanks to the eps); 447 -> 448 is 5; tiny boxes clamp to 3, huge ones to 7.
    boxes = torch.tensor(
        [[0, 0, 223, 223], [0, 0, 111, 111], [0, 0, 110, 110], [0, 0, 447, 447], [0, 0, 2, 2], [0, 0, 5000, 5000.0]]
    )
    assert level_of_boxes(boxes, 3, 7).tolist() == [1, 0, 0, 2, 0, 4]


def test_multilevel_pooler_pools_each_box_on_its_level() -> None:
    gen = torch.Generator().manual_seed(4)
    strides = (8, 16, 32, 64, 128)
    feats = [torch.randn(2, 3, 256 // s, 320 // s, generator=gen, dtype=torch.float64) for s in strides]
    boxes = [torch.tensor([[10.0, 10.0, 60.0, 50.0], [0.0, 0.0, 250.0, 200.0]]), torch.tensor([[10.0, 10, 470, 470]])]
    boxes = [b.double() for b in boxes]
    out = multilevel_roi_align(feats, boxes, 4, [1 / s for s in strides], 0, backend="torch")
    assert out.shape == (3, 3, 4, 4)
    rois = torch.cat([torch.tensor([[0.0], [0.0], [1.0]], dtype=torch.float64), torch.cat(boxes)], dim=1)
    levels = level_of_boxes(rois[:, 1:], 3, 7).tolist()
    assert levels == [0, 1, 2]
    for r, lvl in enumerate(levels):
        expected = roi_align(feats[lvl], rois[r : r + 1], 4, 1 / strides[lvl], 0, backend="torch")
        torch.testing.assert_close(out[r : r + 1], expected)


@pytest.mark.skipif(not torchvision_available(), reason="torchvision's compiled ops are not usable")
def test_torchvision_backward_in_a_process_that_never_imported_torchvision() -> None:
    """glip loads torchvision's compiled library alone (no ``import torchvision``); its
    ROIAlign backward formula is registered by the Python package, which a gradient
    through the kernel must therefore import first."""
    import subprocess
    import sys
    import textwrap
    from pathlib import Path

    code = textwrap.dedent(
        """
        import sys, torch
        from glip.ops.roi_align import roi_align
        x = torch.randn(1, 2, 8, 8, requires_grad=True)
        rois = torch.tensor([[0, 1.0, 1.0, 6.0, 5.0]])
        with torch.no_grad():
            roi_align(x, rois, 3, 1.0, 2, True, backend="torchvision")
        imported_for_inference = "torchvision" in sys.modules
        roi_align(x, rois, 3, 1.0, 2, True, backend="torchvision").square().sum().backward()
        ours = x.grad.clone()
        x.grad = None
        roi_align(x, rois, 3, 1.0, 2, True, backend="torch").square().sum().backward()
        torch.testing.assert_close(ours, x.grad)
        print(imported_for_inference, "torchvision" in sys.modules)
        """
    )
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["False", "True"]
