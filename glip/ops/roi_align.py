"""ROIAlign with torchvision semantics: torchvision's kernel when usable, else pure PyTorch.

Semantics (those of ``torchvision.ops.roi_align``, which the official GLIP's ``ROIAlign``
calls with ``aligned=False``; ``maskrcnn_benchmark/layers/roi_align.py``):

- a region ``(b, x1, y1, x2, y2)`` is scaled by ``spatial_scale``; with ``aligned`` its
  corners are shifted by -0.5 (pixel centres), without it its width and height are at
  least 1;
- the region is split into ``PH x PW`` bins; each bin averages ``GH x GW`` bilinear
  samples at the centres of a regular sub-grid, ``GH = sampling_ratio`` when positive,
  else ``ceil(region height / PH)`` (adaptive, per region; same for ``GW``);
- a sample outside ``[-1, H] x [-1, W]`` counts as 0; inside, its coordinates are
  clamped to ``[0, H - 1] x [0, W - 1]`` before the bilinear weights are taken.

The pure path gathers every sample at once (over the largest sub-grid of the batch, the
samples beyond a region's own grid masked out), so autograd gives the kernel's backward:
the same bilinear weights scattered back (no gradient reaches the boxes, as in the
kernel). Dimension letters: N images, C channels, H x W map, R regions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from glip.ops.backend import resolve_backend
from glip.utils.imports import import_torchvision

__all__ = ["level_of_boxes", "multilevel_roi_align", "roi_align"]

# FPN paper eq. (1), official LevelMapper defaults: a 224 x 224 box (ImageNet size) maps to level 4.
CANONICAL_SCALE = 224
CANONICAL_LEVEL = 4
_LEVEL_EPS = 1e-6


def _check_inputs(input: Tensor, rois: Tensor) -> None:
    if input.dim() != 4:
        raise ValueError(f"input should have shape [N, C, H, W], got {tuple(input.shape)}")
    if rois.dim() != 2 or rois.shape[-1] != 5:
        raise ValueError(f"rois should have shape [R, 5] (batch index, x1, y1, x2, y2), got {tuple(rois.shape)}")


def _axis_samples(
    start: Tensor, length: Tensor, pooled: int, sampling_ratio: int, size: int
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Sample positions along one axis for every region.

    Args:
        start, length: ``Tensor[R]``, the scaled region's start and extent on this axis.
        pooled: P, the number of bins.
        sampling_ratio: samples per bin (<= 0: adaptive, ``ceil(length / P)``).
        size: the map's extent on this axis (H or W).

    Returns:
        low, high (``Tensor[R, P, G]`` int64), the neighbouring pixel indices;
        frac (``Tensor[R, P, G]``), the weight of ``high``; valid (``Tensor[R, P, G]`` bool),
        the sample is inside the map's range and inside the region's own grid;
        grid (``Tensor[R]``), the region's sample count per bin.
    """
    bin_size = length / pooled  # [R]
    if sampling_ratio > 0:
        grid = torch.full_like(length, sampling_ratio, dtype=torch.int64)  # [R]
    else:
        grid = torch.ceil(length / pooled).to(torch.int64)  # [R]
    g_max = max(int(grid.max()), 1) if grid.numel() else 1
    bins = torch.arange(pooled, device=start.device, dtype=start.dtype)  # [P]
    sub = torch.arange(g_max, device=start.device, dtype=start.dtype)  # [G]
    g = grid.clamp(min=1).to(start.dtype)  # [R]
    # pos = start + p * bin + (i + 0.5) * bin / grid
    pos = (
        start[:, None, None]
        + bins[None, :, None] * bin_size[:, None, None]
        + (sub[None, None, :] + 0.5) * (bin_size / g)[:, None, None]
    )  # [R, P, G]
    in_grid = sub[None, None, :] < grid[:, None, None]  # [R, 1, G] broadcast to [R, P, G]
    valid = (pos >= -1.0) & (pos <= size) & in_grid  # [R, P, G]
    pos = pos.clamp(min=0)
    low = pos.floor().to(torch.int64)  # [R, P, G]
    at_edge = low >= size - 1
    low = torch.where(at_edge, torch.full_like(low, size - 1), low)
    high = torch.where(at_edge, low, low + 1)
    pos = torch.where(at_edge, low.to(pos.dtype), pos)
    frac = pos - low.to(pos.dtype)  # [R, P, G]
    return low, high, frac, valid, grid


def _roi_align_torch(
    input: Tensor, rois: Tensor, output_size: tuple[int, int], spatial_scale: float, sampling_ratio: int, aligned: bool
) -> Tensor:
    ph, pw = output_size
    _, channels, height, width = input.shape
    num = rois.shape[0]
    if num == 0:
        return input.new_zeros((0, channels, ph, pw))
    rois = rois.detach().to(input.dtype)
    offset = 0.5 if aligned else 0.0
    batch_idx = rois[:, 0].to(torch.int64)  # [R]
    x1, y1 = rois[:, 1] * spatial_scale - offset, rois[:, 2] * spatial_scale - offset  # [R]
    w, h = rois[:, 3] * spatial_scale - offset - x1, rois[:, 4] * spatial_scale - offset - y1  # [R]
    if not aligned:  # the legacy kernel forces regions to at least 1 x 1 (map units)
        w, h = w.clamp(min=1.0), h.clamp(min=1.0)

    y_lo, y_hi, fy, vy, gh = _axis_samples(y1, h, ph, sampling_ratio, height)  # [R, PH, GH]
    x_lo, x_hi, fx, vx, gw = _axis_samples(x1, w, pw, sampling_ratio, width)  # [R, PW, GW]
    count = (gh * gw).clamp(min=1).to(input.dtype)  # [R]

    # The four neighbours of every sample: [R, C, PH, GH, PW, GW].
    b = batch_idx[:, None, None, None, None, None]
    c = torch.arange(channels, device=input.device)[None, :, None, None, None, None]

    def gather(yi: Tensor, xi: Tensor) -> Tensor:
        return input[b, c, yi[:, None, :, :, None, None], xi[:, None, None, None, :, :]]

    wy1, wy0 = fy[:, None, :, :, None, None], 1.0 - fy[:, None, :, :, None, None]  # [R, 1, PH, GH, 1, 1]
    wx1, wx0 = fx[:, None, None, None, :, :], 1.0 - fx[:, None, None, None, :, :]  # [R, 1, 1, 1, PW, GW]
    value = (
        wy0 * wx0 * gather(y_lo, x_lo)
        + wy0 * wx1 * gather(y_lo, x_hi)
        + wy1 * wx0 * gather(y_hi, x_lo)
        + wy1 * wx1 * gather(y_hi, x_hi)
    )  # [R, C, PH, GH, PW, GW]
    valid = vy[:, None, :, :, None, None] & vx[:, None, None, None, :, :]  # [R, 1, PH, GH, PW, GW]
    value = value * valid.to(value.dtype)
    return value.sum(dim=(3, 5)) / count[:, None, None, None]  # [R, C, PH, PW]


def roi_align(
    input: Tensor,
    rois: Tensor,
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
    *,
    backend: str | None = None,
) -> Tensor:
    """ROIAlign with ``torchvision.ops.roi_align`` semantics (see the module docstring).

    Args:
        input (Tensor[N, C, H, W]): feature maps.
        rois (Tensor[R, 5]): ``(batch index, x1, y1, x2, y2)`` per region, in the pixels
            of the image (``spatial_scale`` maps them onto the map).
        output_size: ``(PH, PW)`` or one int for both.
        spatial_scale: map size / image size (1/8 for P3).
        sampling_ratio: samples per bin and axis; <= 0: adaptive (official: 0).
        aligned: shift by half a pixel (detectron2's ROIAlignV2); official GLIP: False.
        backend (str, optional): ``"torch"`` or ``"torchvision"``; default: see
            :func:`glip.ops.backend.resolve_backend`.

    Returns:
        Tensor[R, C, PH, PW]: the pooled features (differentiable in ``input`` only).
        fp16/bf16 inputs are pooled in float32 by the pure path (bilinear sums) and cast back.
    """
    _check_inputs(input, rois)
    size = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
    if resolve_backend(backend, op="roi_align", device=input.device) == "torchvision":
        rois = rois.to(input.dtype)
        if torch.is_grad_enabled() and input.requires_grad:
            import_torchvision()  # the backward formula is registered by torchvision's Python package
        return torch.ops.torchvision.roi_align(
            input, rois, float(spatial_scale), size[0], size[1], int(sampling_ratio), bool(aligned)
        )
    if input.is_floating_point() and input.element_size() < 4:
        # Half precision loses the bilinear weights' precision; same upcast as the NMS path.
        return _roi_align_torch(input.float(), rois, size, spatial_scale, sampling_ratio, aligned).to(input.dtype)
    return _roi_align_torch(input, rois, size, spatial_scale, sampling_ratio, aligned)


def level_of_boxes(boxes: Tensor, min_level: int, max_level: int) -> Tensor:
    """The FPN level each box is pooled from (official ``LevelMapper``, FPN paper eq. 1).

    ``level = floor(4 + log2(sqrt(area) / 224 + 1e-6))`` clamped to ``[min_level,
    max_level]``, with the official area ``(x2 - x1 + 1) * (y2 - y1 + 1)`` (inclusive-pixel
    boxes, ``BoxList.area``).

    Args:
        boxes (Tensor[R, 4]): ``(x1, y1, x2, y2)`` in image pixels.
        min_level, max_level: the pyramid's levels (3 and 7 for P3-P7: scales 1/8..1/128).

    Returns:
        Tensor[R] int64: the index into the level list (``level - min_level``).
    """
    area = (boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)  # [R]
    level = torch.floor(CANONICAL_LEVEL + torch.log2(area.sqrt() / CANONICAL_SCALE + _LEVEL_EPS))
    return level.clamp(min=min_level, max=max_level).to(torch.int64) - min_level


def multilevel_roi_align(
    features: Sequence[Tensor],
    boxes: Sequence[Tensor],
    output_size: int | tuple[int, int],
    scales: Sequence[float],
    sampling_ratio: int = 0,
    aligned: bool = False,
    *,
    backend: str | None = None,
) -> Tensor:
    """ROIAlign of each box on the FPN level :func:`level_of_boxes` picks (official ``Pooler``).

    Args:
        features: L maps ``Tensor[N, C, H_l, W_l]``, finest first.
        boxes: N tensors ``Tensor[R_n, 4]``, ``(x1, y1, x2, y2)`` in the pixels of the
            (padded) network input, one per image.
        output_size: ``(PH, PW)`` or one int.
        scales: L spatial scales (``1 / stride``, powers of two: 1/8 .. 1/128).
        sampling_ratio, aligned, backend: as :func:`roi_align` (official: 0, False).

    Returns:
        Tensor[R, C, PH, PW] with ``R = sum R_n``, in the order of the concatenated boxes.
    """
    if len(features) != len(scales):
        raise ValueError(f"got {len(features)} feature maps but {len(scales)} scales")
    size = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
    ref = features[0]
    rois = torch.cat([torch.cat([b.new_full((len(b), 1), float(i)), b], dim=1) for i, b in enumerate(boxes)]).to(
        ref.dtype
    )  # [R, 5]
    if len(features) == 1:
        return roi_align(ref, rois, size, scales[0], sampling_ratio, aligned, backend=backend)
    min_level = round(-math.log2(scales[0]))
    max_level = round(-math.log2(scales[-1]))
    levels = level_of_boxes(rois[:, 1:], min_level, max_level)  # [R]
    out = ref.new_zeros((rois.shape[0], ref.shape[1], *size))  # [R, C, PH, PW]
    for level, (feature, scale) in enumerate(zip(features, scales)):
        idx = torch.nonzero(levels == level).squeeze(1)  # [R_l]
        if idx.numel():
            out = out.index_put(
                (idx,), roi_align(feature, rois[idx], size, scale, sampling_ratio, aligned, backend=backend)
            )
    return out
