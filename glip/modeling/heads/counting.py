"""A counting read-out for the answer head: a density map of the answer's objects.

An attention read-out (:mod:`glip.modeling.heads.readout`) returns a weighted mean over the
locations it attends to: it can find the circles but not say how many there are, since one
large circle and two small ones cover similar areas. Counting by a density map (Lempitsky
and Zisserman, "Learning To Count Objects in Images", NeurIPS 2010; the crowd-counting
heads since) fixes the unit: the map is trained to put a mass of one on each object, so its
sum is the count whatever the objects' sizes.

Here the map is conditioned on the question: one level of the trunk's visual maps goes
through two 3x3 convolutions whose first output is modulated by the slot feature (FiLM:
Perez et al., AAAI 2018), then a 1x1 convolution and a softplus. The count enters the
answer classifier as a soft one-hot over ``0 .. max_count`` (linear interpolation between
the two nearest integers), projected to the slot width and added to the slot feature; the
projection starts at zero, so a head given a counter starts as the head it was.

Its targets are the answer's boxes, which GLIPv2's VQA data carry for every question (the
boxes the divert-boxes rule grounds on the ``[MASK]`` slot, :func:`glip.data.vqa.divert_boxes`):
a normalised Gaussian at each box's centre on the map's grid (standard deviation a quarter
of the box's geometric-mean side, at least half a cell), so "how many circles" puts one unit
on each circle, "what color is the triangle" one on the triangle, "is there a red square"
zero when there is none. Not in GLIPv2; the demo model's small trunk needs it.

Dimension letters: B questions, D text width, C visual channels, E the counter's width,
H and W the map's grid, K = max_count + 1 count bins.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["DENSITY_BIAS_INIT", "AnswerCounter", "count_bins", "density_targets"]

DENSITY_BIAS_INIT = -5.0


def count_bins(count: Tensor, max_count: int) -> Tensor:
    """``Tensor[B, max_count + 1]``: each count as a soft one-hot, split linearly between
    the two nearest integers (``2.25`` -> 0.75 on bin 2, 0.25 on bin 3), clamped to
    ``[0, max_count]``."""
    values = torch.arange(max_count + 1, device=count.device, dtype=count.dtype)  # [K]
    return (1.0 - (count.clamp(0, max_count)[:, None] - values).abs()).clamp(min=0)  # [B, K]


def density_targets(boxes: Sequence[Tensor], centres: Tensor, stride: float) -> Tensor:
    """``Tensor[B, N]``: for each image's boxes (``Tensor[M_b, 4]`` xyxy, the network-input
    frame), a Gaussian at each box's centre over the N grid centres (``Tensor[N, 2]`` xy),
    each normalised to sum to one (so the map of an image sums to its number of boxes);
    standard deviation a quarter of the box's geometric-mean side, at least ``stride / 2``."""
    rows = []
    for b in boxes:
        if b.numel() == 0:
            rows.append(centres.new_zeros(centres.shape[0]))
            continue
        b = b.to(centres)
        middle = (b[:, :2] + b[:, 2:]) / 2  # [M, 2]
        side = ((b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)).sqrt()  # [M]
        sigma = (side / 4).clamp(min=stride / 2)  # [M]
        dist2 = ((centres[None] - middle[:, None]) ** 2).sum(-1)  # [M, N]
        bumps = torch.exp(-dist2 / (2 * sigma[:, None] ** 2))  # [M, N]
        rows.append((bumps / bumps.sum(1, keepdim=True).clamp(min=1e-12)).sum(0))  # [N]
    return torch.stack(rows)


class AnswerCounter(nn.Module):
    """The question-conditioned density map and the count feature it adds to the slot.

    Args:
        text_dim: D.
        visual_dim: C, the trunk's channels.
        dim: E, the convolutions' width.
        max_count: the largest count the feature tells apart (larger ones read as it).
        level: which of the trunk's maps the density lives on (0: the finest).
        stride: that map's pixel stride (the grid of its targets, :func:`density_targets`).

    ``forward(slot, visual)``: ``Tensor[B, D]`` and the trunk's maps (``[B, C, H_l, W_l]``)
    -> ``(feature, density)``: the count feature ``Tensor[B, D]`` to add to the slot, and
    the density ``Tensor[B, H, W]`` of ``visual[level]`` (its sum over the grid is the count).
    Parameters: ``conv1``, ``film``, ``conv2``, ``density`` (its bias at
    :data:`DENSITY_BIAS_INIT`), ``embed`` (zero at the start).
    """

    def __init__(
        self, text_dim: int, visual_dim: int, dim: int = 64, max_count: int = 5, level: int = 0, stride: float = 8.0
    ) -> None:
        super().__init__()
        if max_count < 1:
            raise ValueError(f"the counter's max_count must be at least 1, got {max_count}")
        self.max_count = max_count
        self.level = level
        self.stride = stride
        self.conv1 = nn.Conv2d(visual_dim, dim, 3, padding=1)
        self.film = nn.Linear(text_dim, 2 * dim)
        self.conv2 = nn.Conv2d(dim, dim, 3, padding=1)
        self.density = nn.Conv2d(dim, 1, 1)
        self.embed = nn.Linear(max_count + 1, text_dim)
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)
        nn.init.zeros_(self.embed.weight)
        nn.init.zeros_(self.embed.bias)
        # softplus(-5) = 0.0067 a cell: a few units over a 25 x 25 map, not hundreds, so the
        # first steps do not start from a count hundreds too high.
        nn.init.constant_(self.density.bias, DENSITY_BIAS_INIT)

    def forward(self, slot: Tensor, visual: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        maps = visual[self.level].to(self.conv1.weight.dtype)  # [B, C, H, W]
        gamma, beta = self.film(slot.to(maps.dtype)).chunk(2, dim=1)  # [B, E] each
        x = self.conv1(maps) * (1 + gamma[:, :, None, None]) + beta[:, :, None, None]  # [B, E, H, W]
        x = F.relu(self.conv2(F.relu(x)))
        density = F.softplus(self.density(x))[:, 0]  # [B, H, W]
        count = density.flatten(1).sum(1)  # [B]
        feature = self.embed(count_bins(count, self.max_count))  # [B, D]
        return feature.to(slot.dtype), density
