"""Modulated deformable convolution (DCNv2) with the exact semantics of GLIP's official CUDA kernel.

Dimension letters: B images, C channels (``Cin`` in, ``Cout`` out), H x W input, Ho x Wo output,
K = kh * kw kernel points, G deformable groups, L = Ho * Wo output positions.

For output pixel ``(ho, wo)``, kernel point ``k = i * kw + j`` and deformable group ``g``:

- ``offset[:, g*2K + 2k]`` is the **row (y)** offset and ``offset[:, g*2K + 2k + 1]`` the **column (x)**
  offset; ``mask[:, g*K + k]`` is the modulation scalar;
- the sampling point is ``h = ho*stride - padding + i*dilation + off_y``, ``w = wo*stride - padding + j*dilation + off_x``;
- it contributes 0 unless ``-1 < h < H`` and ``-1 < w < W``; otherwise it is bilinearly interpolated from
  the corners ``floor(h) + {0, 1}`` x ``floor(w) + {0, 1}``, each corner outside the image counting as 0
  (so samples in the ``(-1, 0)`` and ``(H-1, H)`` bands get partial weights);
- the interpolated value is multiplied by the mask, and the result is an ordinary (grouped) convolution
  of these samples with ``weight``, plus ``bias``.

This is also what ``torchvision.ops.deform_conv2d`` computes (same offset interleave, same boundary
rules); by default it runs on CUDA, while on CPU the pure-PyTorch path below (exact on its own) is
faster and runs instead (see :mod:`glip.ops.backend`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from glip.ops.backend import resolve_backend
from glip.utils.graph import needs_graph

__all__ = ["modulated_deform_conv2d"]

# Elements of one chunk of sampled columns ([n, K, Cin] for n output positions) in the pure path. 2**20
# float32 values (4 MiB) keep the gather -> weighted sum -> matmul chain of a chunk in cache: measured on a
# [1, 256, 100, 152] 3x3 case, 2**19..2**20 run 2.8x faster than 2**24, and 2**16 is slower again (small
# matmuls). It also bounds the temporary memory of inference to a few chunks, whatever the map size.
_MAX_CHUNK_ELEMENTS = 1 << 20


def _pair(value: int | tuple[int, int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def _output_size(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    return (size + 2 * padding - (dilation * (kernel - 1) + 1)) // stride + 1


def _sample_positions(
    offset: Tensor, kh: int, kw: int, stride: tuple[int, int], padding: tuple[int, int], dilation: tuple[int, int]
) -> tuple[Tensor, Tensor]:
    """Absolute sampling coordinates ``(h, w)``, each [B, Ho, Wo, K, G], from offsets [B, 2GK, Ho, Wo]."""
    b, _, ho, wo = offset.shape
    k = kh * kw
    g = offset.shape[1] // (2 * k)
    offset = offset.view(b, g, k, 2, ho, wo).permute(0, 4, 5, 2, 1, 3).contiguous()  # [B, Ho, Wo, K, G, 2]
    dev, dt = offset.device, offset.dtype
    # Integer part of the position, per (output row or column, kernel row or column), as in the kernel.
    base_h = torch.arange(ho, device=dev)[:, None] * stride[0] - padding[0] + torch.arange(kh, device=dev) * dilation[0]
    base_w = torch.arange(wo, device=dev)[:, None] * stride[1] - padding[1] + torch.arange(kw, device=dev) * dilation[1]
    base_h = base_h[:, None, :, None].expand(ho, wo, kh, kw).reshape(ho, wo, k, 1)  # [Ho, Wo, K, 1]
    base_w = base_w[None, :, None, :].expand(ho, wo, kh, kw).reshape(ho, wo, k, 1)  # [Ho, Wo, K, 1]
    h = base_h.to(dt) + offset[..., 0]  # [B, Ho, Wo, K, G]
    w = base_w.to(dt) + offset[..., 1]  # [B, Ho, Wo, K, G]
    return h, w


def _bilinear_corners(h: Tensor, w: Tensor, mask: Tensor, height: int, width: int) -> tuple[list[Tensor], list[Tensor]]:
    """Flat indices into the 1-pixel zero-padded image and modulated weights of the 4 bilinear corners.

    Args:
        h, w (Tensor[...]): sampling coordinates in input pixels.
        mask (Tensor[...]): modulation scalars, same shape.

    Returns:
        indices, weights: 4 tensors each, same shape as ``h``, for corners (low, low), (low, high),
        (high, low), (high, high) in (row, column). Indices address a (H+2) x (W+2) padded plane.
    """
    inside = (h > -1) & (w > -1) & (h < height) & (w < width)  # the kernel's gate on the sampling point
    h_low, w_low = h.floor(), w.floor()
    lh, lw = h - h_low, w - w_low
    hh, hw = 1 - lh, 1 - lw
    # Inside the gate, floor(h) is in [-1, H-1]: shifted by the 1-pixel zero border it indexes [0, H], and
    # every corner outside the image reads the zero border, which is the kernel's per-corner rule.
    row = (h_low.long() + 1).clamp_(0, height)
    col = (w_low.long() + 1).clamp_(0, width)
    top_left = torch.where(inside, row * (width + 2) + col, 0)  # gated-off points read the zero corner (0, 0)
    step_down = torch.where(inside, width + 2, 0)
    step_right = inside.long()
    indices = [top_left, top_left + step_right, top_left + step_down, top_left + step_down + step_right]
    # The kernel computes (sum_c w_c * v_c) * mask; the mask is folded into the 4 weights here (same value
    # up to float rounding, and 4 products per point instead of C). Gated-off points get weight (and so
    # gradient) exactly 0, like the kernel's backward.
    mask = torch.where(inside, mask, 0)
    weights = [hh * hw * mask, hh * lw * mask, lh * hw * mask, lh * lw * mask]
    return indices, weights


def _padded_table(input: Tensor, groups: int) -> Tensor:
    """The gather table: ``input`` (Tensor[B, Cin, H, W], any strides) with a 1-pixel zero border,
    channels last, as Tensor[B * G * (H+2) * (W+2), Cin / G] whose rows are (image, deformable group,
    padded pixel) and columns that group's channels.

    One copy of the input (the border zeroed apart): GLIP's fusion hands the DyConv channels-last views,
    which a contiguous copy, a padded copy and a transposed copy used to move three times.
    """
    b, c_in, height, width = input.shape
    c_dg = c_in // groups
    table = input.new_empty((b, groups, height + 2, width + 2, c_dg))
    for border in (table[:, :, 0], table[:, :, -1], table[:, :, :, 0], table[:, :, :, -1]):
        border.zero_()
    table[:, :, 1:-1, 1:-1] = input.view(b, groups, c_dg, height, width).permute(0, 1, 3, 4, 2)
    return table.view(-1, c_dg)


def _gather(table: Tensor, index: Tensor, into: Tensor | None) -> Tensor:
    """Rows ``index`` (Tensor[...] of row numbers) of ``table`` (Tensor[R, c]) as Tensor[index.numel(), c],
    written into the first rows of ``into`` when given."""
    index = index.reshape(-1)
    if into is None:
        return table.index_select(0, index)
    return torch.index_select(table, 0, index, out=into[: index.numel()])


def _write_rows(result: Tensor, rows: Tensor, start: int) -> None:
    """Copies ``rows`` (Tensor[n, Cout], output positions ``start .. start + n`` of the flat
    ``B * L`` order) into ``result`` (Tensor[B, Cout, L]), splitting at image boundaries."""
    length = result.shape[-1]
    stop = start + rows.shape[0]
    while start < stop:
        image, pos = divmod(start, length)
        n = min(stop - start, length - pos)
        first = rows.shape[0] - (stop - start)
        result[image, :, pos : pos + n] = rows[first : first + n].T  # [Cout, n]
        start += n


def _modulated_deform_conv2d_torch(
    input: Tensor,
    offset: Tensor,
    mask: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
    groups: int,
    deformable_groups: int,
) -> Tensor:
    """Pure-PyTorch path: gather the 4 corners of every sample from a channels-last table, then one matmul."""
    b, c_in, height, width = input.shape
    c_out, c_in_group, kh, kw = weight.shape
    k = kh * kw
    ho, wo = offset.shape[-2:]
    g = deformable_groups
    c_dg = c_in // g

    plane = (height + 2) * (width + 2)
    table = _padded_table(input, g)  # [B*G*P, Cin/G]

    h, w = _sample_positions(offset, kh, kw, stride, padding, dilation)  # 2 x [B, Ho, Wo, K, G]
    mask = mask.view(b, g, k, ho, wo).permute(0, 3, 4, 2, 1).contiguous()  # [B, Ho, Wo, K, G]
    indices, weights = _bilinear_corners(h, w, mask, height, width)  # 4 + 4 x [B, Ho, Wo, K, G]
    row_base = (torch.arange(b, device=input.device)[:, None] * g + torch.arange(g, device=input.device)) * plane
    row_base = row_base.view(b, 1, 1, 1, g)  # [B, 1, 1, 1, G]
    indices = [(idx + row_base).view(-1, k * g) for idx in indices]  # 4 x [B*L, K*G]
    weights = [wt.view(-1, k * g, 1) for wt in weights]  # 4 x [B*L, K*G, 1]

    # Weight as a matrix whose rows follow the column layout (kernel point, input channel).
    c_out_group = c_out // groups
    weight_mat = weight.view(groups, c_out_group, c_in_group, k).permute(0, 3, 2, 1)  # [groups, K, Cin/gr, Cout/gr]
    weight_mat = weight_mat.reshape(groups, k * c_in_group, c_out_group)  # [groups, K*Cin/gr, Cout/gr]

    n_positions = b * ho * wo
    if torch.jit.is_tracing():
        # One chunk while tracing (ONNX export): chunk bounds would freeze the traced map size.
        spans = [slice(None)]
    elif n_positions == 0:  # empty batch
        return input.new_zeros((b, c_out, ho, wo))
    else:
        chunk = max(1, _MAX_CHUNK_ELEMENTS // (k * c_in))
        spans = [slice(start, min(start + chunk, n_positions)) for start in range(0, n_positions, chunk)]
    # Without autograd each chunk is written straight into the [B, Cout, Ho*Wo] result, so the
    # chunks' [B*L, Cout] rows, their concatenation and its permuted copy (3 output-sized
    # buffers) never exist; the same float ops, so the same bits. With autograd (or while
    # tracing) the chunks are concatenated as before.
    direct = not needs_graph(input, offset, mask, weight, bias)
    result = input.new_empty((b, c_out, ho * wo)) if direct else None
    # Without autograd the chunks also share their gathered columns, corner and product buffers
    # (``out=``): the same ops on the same values, but a chunk's 4 MiB buffers are made once per
    # call instead of once per chunk. Freed, each would go back to the system (the heap's top is
    # trimmed, or above the mmap threshold unmapped) and be faulted in anew by the next chunk:
    # that made the gathers 3x slower (glip.utils.allocator).
    gathered = corners = products = None
    if direct:
        most = spans[0].stop - spans[0].start  # the first chunk is the largest
        gathered, corners = (table.new_empty((most * k * g, c_dg)) for _ in range(2))  # [n*K*G, Cin/G]
        products = table.new_empty((most, c_out)) if groups == 1 else None  # [n, Cout]
    outputs = []
    for span in spans:
        # Weighted sum of the 4 corners, accumulated in place (autograd-safe: the gathered tensors are fresh).
        columns = _gather(table, indices[0][span], gathered).view(-1, k * g, c_dg)  # [n, K*G, Cin/G]
        n = columns.shape[0]
        columns.mul_(weights[0][span])
        for idx, wt in zip(indices[1:], weights[1:]):
            corner = _gather(table, idx[span], corners).view(n, k * g, c_dg)  # [n, K*G, Cin/G]
            columns.addcmul_(corner, wt[span])
        # columns: [n, K*G, Cin/G] == [n, K, Cin] with channel c = group * Cin/G + channel-in-group
        if groups == 1:
            into = None if products is None else products[:n]
            out = torch.mm(columns.view(n, k * c_in), weight_mat[0], out=into)  # [n, Cout]
        else:
            cols = columns.view(n, k, groups, c_in_group).permute(2, 0, 1, 3)  # [groups, n, K, Cin/groups]
            out = torch.bmm(cols.reshape(groups, n, k * c_in_group), weight_mat)  # [groups, n, Cout/groups]
            out = out.permute(1, 0, 2).reshape(n, c_out)  # [n, Cout]
        if bias is not None:
            out = out.add_(bias) if direct else out + bias
        if result is not None:
            _write_rows(result, out, span.start)
        else:
            outputs.append(out)
    if result is not None:
        return result.view(b, c_out, ho, wo)  # [B, Cout, Ho, Wo]
    out = torch.cat(outputs) if len(outputs) > 1 else outputs[0]  # [B*L, Cout]
    return out.view(b, ho, wo, c_out).permute(0, 3, 1, 2).contiguous()  # [B, Cout, Ho, Wo]


def modulated_deform_conv2d(
    input: Tensor,
    offset: Tensor,
    mask: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 1,
    dilation: int | tuple[int, int] = 1,
    groups: int = 1,
    deformable_groups: int = 1,
    *,
    backend: str | None = None,
) -> Tensor:
    """Modulated deformable 2-D convolution (DCNv2), exactly as GLIP's official kernel (module docstring).

    Args:
        input (Tensor[B, Cin, H, W]): input features.
        offset (Tensor[B, 2 * G * kh * kw, Ho, Wo]): per deformable group and kernel point, the (row, column)
            offsets interleaved: channel ``g*2K + 2k`` is y, ``g*2K + 2k + 1`` is x.
        mask (Tensor[B, G * kh * kw, Ho, Wo]): modulation scalars (GLIP passes sigmoid outputs).
        weight (Tensor[Cout, Cin / groups, kh, kw]): convolution weights.
        bias (Tensor[Cout], optional): added to every output position.
        stride, padding, dilation (int or (int, int)): as in :func:`torch.nn.functional.conv2d`.
        groups (int): convolution groups.
        deformable_groups (int): G, the number of offset/mask groups, each shared by ``Cin / G`` channels.
        backend (str, optional): ``"torch"`` or ``"torchvision"``; default: see :func:`glip.ops.backend.resolve_backend`
            (pure PyTorch on CPU, torchvision's kernel elsewhere when usable).

    Returns:
        Tensor[B, Cout, Ho, Wo]: with ``Ho = (H + 2*padding - (dilation*(kh-1) + 1)) // stride + 1`` (same for Wo),
        in the dtype of ``input``. Differentiable w.r.t. input, offset, mask, weight and bias.

    Raises:
        ValueError: inconsistent shapes, in particular offset/mask spatial sizes other than ``(Ho, Wo)``
            (the official kernel would silently re-read such a buffer; callers must slice it themselves).
    """
    stride, padding, dilation = _pair(stride), _pair(padding), _pair(dilation)
    if input.dim() != 4:
        raise ValueError(f"input should have shape [B, Cin, H, W], got {tuple(input.shape)}")
    b, c_in, height, width = input.shape
    c_out, c_in_group, kh, kw = weight.shape
    k = kh * kw
    if c_in % groups or c_out % groups or c_in_group * groups != c_in:
        raise ValueError(f"weight {tuple(weight.shape)} does not fit {c_in} input channels in {groups} groups")
    if c_in % deformable_groups:
        raise ValueError(f"{c_in} input channels are not divisible by {deformable_groups} deformable groups")
    ho = _output_size(height, kh, stride[0], padding[0], dilation[0])
    wo = _output_size(width, kw, stride[1], padding[1], dilation[1])
    if ho <= 0 or wo <= 0:
        raise ValueError(f"input {height}x{width} is too small for this kernel: output would be {ho}x{wo}")
    if tuple(offset.shape) != (b, 2 * deformable_groups * k, ho, wo):
        raise ValueError(
            f"offset should have shape {(b, 2 * deformable_groups * k, ho, wo)} (B, 2*G*kh*kw, Ho, Wo), "
            f"got {tuple(offset.shape)}"
        )
    if tuple(mask.shape) != (b, deformable_groups * k, ho, wo):
        raise ValueError(
            f"mask should have shape {(b, deformable_groups * k, ho, wo)} (B, G*kh*kw, Ho, Wo), got {tuple(mask.shape)}"
        )
    if bias is not None and tuple(bias.shape) != (c_out,):
        raise ValueError(f"bias should have shape ({c_out},), got {tuple(bias.shape)}")

    # The official module runs in float32 even under autocast (custom_fwd(cast_inputs=torch.float32)):
    # fp16/bf16 sums of K*Cin products lose precision. Compute in float32 (or float64) and cast back.
    out_dtype = input.dtype
    dtype = torch.promote_types(out_dtype, torch.float32)
    input, offset, mask, weight = (t.to(dtype) for t in (input, offset, mask, weight))
    bias = bias.to(dtype) if bias is not None else None

    resolved = resolve_backend(backend, op="deform_conv2d", device=input.device)
    with torch.autocast(input.device.type, enabled=False):
        if resolved == "torchvision":
            import torchvision.ops  # imported only once the backend probe has found it usable

            out = torchvision.ops.deform_conv2d(
                input, offset, weight, bias, stride=stride, padding=padding, dilation=dilation, mask=mask
            )
        else:
            out = _modulated_deform_conv2d_torch(
                input,  # read once, into the gather table, whatever its strides
                offset.contiguous(),
                mask.contiguous(),
                weight.contiguous(),
                bias,
                stride,
                padding,
                dilation,
                groups,
                deformable_groups,
            )
    return out.to(out_dtype)
