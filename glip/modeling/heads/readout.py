"""A visual read-out for the language heads: text features attend to the trunk's maps.

The answer and captioning heads read the fused text. In a deep trunk (GLIP-T: six fusion
blocks over 256 channels) the text has taken in the image by then; in a small one (the
demo's two blocks over 32 channels) it has not: trained from the demo detector, an answer
head on the fused ``[MASK]`` feature alone stays at chance on colour and shape questions
and the captioning head writes one caption for every image (`scripts/train_demo_vl.py`
measures both). This module gives such a head one cross-attention layer of its own: each
text feature (the query) reads the trunk's post-fusion visual maps, with each location's
position and pyramid level added to its key and value (so ``left`` / ``right`` can be
answered), and the result is added back to the text feature. It is off by default
(``model.heads.vqa.readout_dim`` / ``model.heads.caption.readout_dim`` 0: the head reads
the fused text alone, as GLIPv2 describes).

Causality: the queries do not see one another, and in the causal (captioning) mode the
trunk's visual maps do not read the text (:class:`glip.modeling.fusion.bi_attention.BiAttentionBlock`),
so token ``i``'s output still depends on the image and tokens ``<= i`` only.

Dimension letters: B images, Q queries, D text width, C visual channels, N locations over
all levels, E the read-out width.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["VisualReadout", "location_encoding"]


def location_encoding(shapes: Sequence[tuple[int, int]], bands: int, device: torch.device) -> Tensor:
    """``Tensor[N, 4 * bands + L]``: Fourier features of each location's centre (x and y
    in [0, 1] of its map, ``sin`` / ``cos`` at frequencies ``pi * 2^k``, k < ``bands``)
    and a one-hot of its level, for the L maps of ``shapes`` (``(H_l, W_l)``), flattened
    level by level, row-major (as ``map.flatten(2)``)."""
    rows = []
    freqs = math.pi * 2.0 ** torch.arange(bands, device=device, dtype=torch.float32)  # [K]
    for level, (h, w) in enumerate(shapes):
        y = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) / h  # [H]
        x = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) / w  # [W]
        grid = torch.stack(torch.meshgrid(x, y, indexing="xy"), dim=-1).reshape(-1, 2)  # [H*W, 2] (x, y)
        angles = (grid[:, :, None] * freqs).reshape(grid.shape[0], -1)  # [H*W, 2K]
        onehot = torch.zeros(grid.shape[0], len(shapes), device=device)
        onehot[:, level] = 1.0
        rows.append(torch.cat([angles.sin(), angles.cos(), onehot], dim=1))  # [H*W, 4K + L]
    return torch.cat(rows)


class VisualReadout(nn.Module):
    """One multi-head cross-attention from text features to the trunk's visual maps,
    residual and layer-normalised: ``LayerNorm(q + W_o attn(q, maps + position))``.

    Args:
        text_dim: D.
        visual_dim: C, the trunk's channels.
        num_levels: L, the pyramid levels (for the level one-hot).
        dim: E, the attention width.
        num_heads: attention heads (``dim`` must divide by it).
        bands: Fourier frequencies per coordinate of the location encoding.
        layer_norm_eps: the output LayerNorm's epsilon.

    ``forward(queries, visual)``: ``Tensor[B, Q, D]`` and L maps ``Tensor[B, C, H_l, W_l]``
    -> ``Tensor[B, Q, D]``. Parameters: ``query``, ``key``, ``value``, ``position_key``,
    ``position_value``, ``out`` (linear), ``norm``.
    """

    def __init__(
        self,
        text_dim: int,
        visual_dim: int,
        num_levels: int,
        dim: int = 128,
        num_heads: int = 4,
        bands: int = 4,
        layer_norm_eps: float = 1e-12,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"the read-out width {dim} must divide by its {num_heads} heads")
        self.num_heads = num_heads
        self.num_levels = num_levels
        self.bands = bands
        self.query = nn.Linear(text_dim, dim)
        self.key = nn.Linear(visual_dim, dim)
        self.value = nn.Linear(visual_dim, dim)
        self.position_key = nn.Linear(4 * bands + num_levels, dim)
        self.position_value = nn.Linear(4 * bands + num_levels, dim)
        self.out = nn.Linear(dim, text_dim)
        self.norm = nn.LayerNorm(text_dim, eps=layer_norm_eps)

    def forward(self, queries: Tensor, visual: Sequence[Tensor]) -> Tensor:
        if len(visual) != self.num_levels:
            raise ValueError(f"the read-out was built for {self.num_levels} levels, got {len(visual)}")
        batch, num_queries, _ = queries.shape
        flat = torch.cat([v.flatten(2) for v in visual], dim=2).transpose(1, 2)  # [B, N, C]
        flat = flat.to(self.key.weight.dtype)
        where = location_encoding([tuple(v.shape[-2:]) for v in visual], self.bands, flat.device).to(flat.dtype)
        keys = self.key(flat) + self.position_key(where)  # [B, N, E]
        values = self.value(flat) + self.position_value(where)  # [B, N, E]
        q = self.query(queries.to(flat.dtype))  # [B, Q, E]

        def heads(x: Tensor) -> Tensor:  # [B, *, E] -> [B, heads, *, E / heads]
            return x.reshape(batch, x.shape[1], self.num_heads, -1).transpose(1, 2)

        read = nn.functional.scaled_dot_product_attention(heads(q), heads(keys), heads(values))  # [B, h, Q, E/h]
        read = read.transpose(1, 2).reshape(batch, num_queries, -1)  # [B, Q, E]
        return self.norm(queries + self.out(read).to(queries.dtype))
