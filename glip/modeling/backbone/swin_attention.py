"""Window attention of the Swin Transformer: window partitioning, shift mask, attention.

Dimension letters: B images, H x W a token grid (padded to window multiples), C
channels, ws the window side, N = ws * ws tokens per window, nW windows per image,
nH heads.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "SHIFT_MASK_VALUE",
    "WindowAttention",
    "relative_position_index",
    "shifted_window_mask",
    "window_merge",
    "window_partition",
]

# Added to attention logits between tokens that the cyclic shift brought from
# different image regions (official swint.py BasicLayer.forward).
SHIFT_MASK_VALUE = -100.0


def window_partition(x: Tensor, window_size: int) -> Tensor:
    """Cuts ``Tensor[B, H, W, C]`` (H, W multiples of ``window_size``) into windows.

    Returns:
        ``Tensor[B * nW, ws * ws, C]``, windows in row-major order inside each image.
    """
    b, h, w, c = x.shape
    ws = window_size
    x = x.view(b, h // ws, ws, w // ws, ws, c)  # [B, H/ws, ws, W/ws, ws, C]
    x = x.permute(0, 1, 3, 2, 4, 5)  # [B, H/ws, W/ws, ws, ws, C]
    return x.reshape(-1, ws * ws, c)  # [B*nW, N, C]


def window_merge(windows: Tensor, window_size: int, height: int, width: int) -> Tensor:
    """Inverse of :func:`window_partition`: ``Tensor[B * nW, N, C] -> Tensor[B, H, W, C]``."""
    ws = window_size
    c = windows.shape[-1]
    x = windows.view(-1, height // ws, width // ws, ws, ws, c)  # [B, H/ws, W/ws, ws, ws, C]
    x = x.permute(0, 1, 3, 2, 4, 5)  # [B, H/ws, ws, W/ws, ws, C]
    return x.reshape(-1, height, width, c)  # [B, H, W, C]


def relative_position_index(window_size: int) -> Tensor:
    """Index into the relative-position bias table for every pair of window tokens.

    Token ``i`` at ``(r_i, c_i)`` and token ``j`` at ``(r_j, c_j)`` read row
    ``(r_i - r_j + ws - 1) * (2 ws - 1) + (c_i - c_j + ws - 1)``.

    Returns:
        ``Tensor[N, N]`` int64, values in ``[0, (2 ws - 1)**2)``.
    """
    ws = window_size
    rows, cols = torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij")
    rows, cols = rows.flatten(), cols.flatten()  # [N], [N]
    d_rows = rows[:, None] - rows[None, :] + (ws - 1)  # [N, N], in [0, 2ws-2]
    d_cols = cols[:, None] - cols[None, :] + (ws - 1)  # [N, N]
    return d_rows * (2 * ws - 1) + d_cols


def shifted_window_mask(
    padded_hw: tuple[int, int], window_size: int, shift: int, device: torch.device | None = None
) -> Tensor:
    """Additive mask for shifted-window attention on a ``Hp x Wp`` padded grid.

    After the cyclic shift by ``-shift`` the last window row/column holds tokens
    from up to three regions along each axis: ``[0, Hp - ws)``, ``[Hp - ws, Hp - shift)``
    and ``[Hp - shift, Hp)``. Tokens of different regions must not attend to
    each other.

    Returns:
        ``Tensor[nW, N, N]`` float32: 0 within a region, ``SHIFT_MASK_VALUE`` across.
    """
    hp, wp = padded_hw

    def region_ids(size: int) -> Tensor:
        ids = torch.zeros(size, dtype=torch.long, device=device)
        ids[size - window_size :] = 1
        ids[size - shift :] = 2
        return ids

    region = region_ids(hp)[:, None] * 3 + region_ids(wp)[None, :]  # [Hp, Wp]
    region = window_partition(region[None, :, :, None], window_size).squeeze(-1)  # [nW, N]
    differs = region[:, :, None] != region[:, None, :]  # [nW, N, N]
    mask = torch.zeros(differs.shape, dtype=torch.float32, device=device)
    return mask.masked_fill_(differs, SHIFT_MASK_VALUE)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside windows with a learned relative-position bias.

    Args:
        dim: channels C.
        num_heads: heads nH; ``dim`` must be divisible by it.
        window_size: window side ws.
        fused: use ``F.scaled_dot_product_attention``; False runs the explicit
            softmax(q k^T * scale + bias) v, kept beside it as the reference path.
    """

    def __init__(self, dim: int, num_heads: int, window_size: int, fused: bool = True) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.dim = dim
        self.num_heads = num_heads
        self.window_size = window_size
        self.scale = (dim // num_heads) ** -0.5
        self.fused = fused
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        # Persistent: the official checkpoints store it (int64 [N, N]).
        self.register_buffer("relative_position_index", relative_position_index(window_size))
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def relative_position_bias(self) -> Tensor:
        """``Tensor[nH, N, N]``: the bias added to every window's attention logits."""
        n = self.window_size**2
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]  # [N*N, nH]
        return bias.view(n, n, self.num_heads).permute(2, 0, 1)  # [nH, N, N]

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """Attention within each window.

        Args:
            x: ``Tensor[B * nW, N, C]``, windows grouped by image (image-major).
            mask: ``Tensor[nW, N, N]`` additive mask shared by all images, or None.

        Returns:
            ``Tensor[B * nW, N, C]``.
        """
        bw, n, c = x.shape
        qkv = self.qkv(x).view(bw, n, 3, self.num_heads, c // self.num_heads)  # [B*nW, N, 3, nH, d]
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B*nW, nH, N, d]
        bias = self.relative_position_bias()  # [nH, N, N]
        if self.fused:
            if mask is not None:
                nw = mask.shape[0]
                # Split images from windows so that the mask broadcasts over images.
                q, k, v = (t.reshape(bw // nw, nw, self.num_heads, n, -1) for t in (q, k, v))  # [B, nW, nH, N, d]
                bias = bias.unsqueeze(0) + mask.unsqueeze(1).to(bias.dtype)  # [nW, nH, N, N]
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype), scale=self.scale)
        else:
            # Same operation order as the official code: bias first, then the mask.
            logits = (q * self.scale) @ k.transpose(-2, -1) + bias  # [B*nW, nH, N, N]
            if mask is not None:
                nw = mask.shape[0]
                logits = logits.view(bw // nw, nw, self.num_heads, n, n) + mask.unsqueeze(1)  # [B, nW, nH, N, N]
                logits = logits.view(bw, self.num_heads, n, n)  # [B*nW, nH, N, N]
            out = logits.softmax(dim=-1).to(v.dtype) @ v  # [B*nW, nH, N, d]
        out = out.reshape(bw, self.num_heads, n, -1).transpose(1, 2).reshape(bw, n, c)  # [B*nW, N, C]
        return self.proj(out)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_heads={self.num_heads}, window_size={self.window_size}, fused={self.fused}"
