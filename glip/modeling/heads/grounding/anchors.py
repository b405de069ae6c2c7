"""Anchor boxes of the GLIP (ATSS) head: one set of cell anchors per FPN level.

The cell anchors follow the official ``generate_anchors`` of maskrcnn-benchmark
(Detectron's recipe, inclusive-pixel convention): a reference window
``(0, 0, stride - 1, stride - 1)`` is reshaped to each aspect ratio with rounded
sides, then scaled to each size. GLIP uses one size and one ratio per level, giving
the square cell anchors ``[-28, -28, 35, 35]`` (stride 8, size 64) and so on.

Grid anchors cover the **padded** feature grid: location ``(y, x)`` of level ``l``
shifts the cell anchors by ``(x * stride_l, y * stride_l)``. Rows are ordered
row-major over locations with the cell anchors innermost, matching ``flatten(2)``
of the head's maps.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["AnchorGenerator", "anchor_visibility", "cell_anchors"]


def _sides_and_center(boxes: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Inclusive-pixel width, height and centre of ``(x1, y1, x2, y2)`` boxes."""
    w = boxes[:, 2] - boxes[:, 0] + 1
    h = boxes[:, 3] - boxes[:, 1] + 1
    return w, h, boxes[:, 0] + 0.5 * (w - 1), boxes[:, 1] + 0.5 * (h - 1)


def _windows(ws: Tensor, hs: Tensor, cx: Tensor, cy: Tensor) -> Tensor:
    """``(x1, y1, x2, y2)`` boxes of inclusive-pixel sizes ``ws, hs`` around ``(cx, cy)``."""
    return torch.stack((cx - 0.5 * (ws - 1), cy - 0.5 * (hs - 1), cx + 0.5 * (ws - 1), cy + 0.5 * (hs - 1)), dim=1)


def cell_anchors(stride: int, sizes: Sequence[float], aspect_ratios: Sequence[float]) -> Tensor:
    """The anchors of one feature-map cell, as the official ``generate_anchors``.

    Computed in float64 (the official code uses numpy float64) and returned as float32.

    Args:
        stride (int): the level's stride in pixels; the reference window is
            ``(0, 0, stride - 1, stride - 1)``.
        sizes (Sequence[float]): anchor sizes (square roots of the areas) in pixels.
        aspect_ratios (Sequence[float]): height / width ratios.

    Returns:
        Tensor[A, 4]: ``A = len(aspect_ratios) * len(sizes)`` boxes ``(x1, y1, x2, y2)``,
        ordered ratio-major, size-minor.
    """
    ratios = torch.tensor(aspect_ratios, dtype=torch.float64)
    scales = torch.tensor(sizes, dtype=torch.float64) / stride
    # Reference window (0, 0, stride - 1, stride - 1).
    ref = torch.tensor([[0.0, 0.0, stride - 1.0, stride - 1.0]], dtype=torch.float64)
    w, h, cx, cy = _sides_and_center(ref)  # [1] each
    # Aspect ratios keep the area, with sides rounded to whole pixels (half to even,
    # as numpy.round).
    ws = torch.round(torch.sqrt(w * h / ratios))  # [R]
    hs = torch.round(ws * ratios)  # [R]
    ratio_windows = _windows(ws, hs, cx, cy)  # [R, 4]
    # Each ratio window is then scaled by every size / stride, around its own centre
    # (recomputed from the window, as the official code does).
    w, h, cx, cy = _sides_and_center(ratio_windows)  # [R] each
    ws = (w[:, None] * scales[None, :]).reshape(-1)  # [R * S]
    hs = (h[:, None] * scales[None, :]).reshape(-1)  # [R * S]
    cx = cx[:, None].expand(-1, len(scales)).reshape(-1)  # [R * S]
    cy = cy[:, None].expand(-1, len(scales)).reshape(-1)  # [R * S]
    anchors = _windows(ws, hs, cx, cy)  # [A, 4]
    return anchors.float()


def anchor_visibility(anchors: Tensor, image_size: tuple[int, int], straddle_thresh: float = 0) -> Tensor:
    """Whether each anchor lies inside the image, as the official ``add_visibility_to``.

    Args:
        anchors (Tensor[N, 4]): ``(x1, y1, x2, y2)`` anchors.
        image_size (tuple[int, int]): ``(height, width)`` of the unpadded image.
        straddle_thresh (float): how far (pixels) an anchor may extend beyond the image;
            a negative value marks every anchor visible.

    Returns:
        Tensor[N]: bool, ``x1 >= -t``, ``y1 >= -t``, ``x2 < w + t`` and ``y2 < h + t``.
    """
    if straddle_thresh < 0:
        return torch.ones(anchors.shape[0], dtype=torch.bool, device=anchors.device)
    height, width = image_size
    t = straddle_thresh
    return (anchors[:, 0] >= -t) & (anchors[:, 1] >= -t) & (anchors[:, 2] < width + t) & (anchors[:, 3] < height + t)


class AnchorGenerator(nn.Module):
    """Anchors over the padded feature grids of the L FPN levels.

    The cell anchors are persistent buffers ``cell_anchors.{l}`` (float32 ``[A, 4]``)
    because the official checkpoints store them (``rpn.anchor_generator.cell_anchors.{l}``);
    they are recomputed here, not learned, and a loaded checkpoint gives the same values.

    Args:
        sizes: one base anchor size per level (pixels).
        strides: one stride per level (pixels).
        aspect_ratios: height / width ratios, shared by all levels.
        scales_per_octave: sizes per level, ``size * octave ** (k / scales_per_octave)``
            for ``k < scales_per_octave`` (the official ``make_anchor_generator_complex``).
        octave: the octave base.
        straddle_thresh: see :func:`anchor_visibility`.
    """

    def __init__(
        self,
        sizes: Sequence[float] = (64, 128, 256, 512, 1024),
        strides: Sequence[int] = (8, 16, 32, 64, 128),
        aspect_ratios: Sequence[float] = (1.0,),
        scales_per_octave: int = 1,
        octave: float = 2.0,
        straddle_thresh: float = 0,
    ) -> None:
        super().__init__()
        if len(sizes) != len(strides):
            raise ValueError(f"AnchorGenerator needs one size per stride; got {len(sizes)} and {len(strides)}")
        self.strides = tuple(int(s) for s in strides)
        self.straddle_thresh = straddle_thresh
        self.cell_anchors = nn.Module()
        for level, (size, stride) in enumerate(zip(sizes, strides)):
            level_sizes = [octave ** (k / float(scales_per_octave)) * size for k in range(scales_per_octave)]
            self.cell_anchors.register_buffer(str(level), cell_anchors(stride, level_sizes, aspect_ratios))

    @property
    def num_anchors_per_location(self) -> list[int]:
        """A: the number of cell anchors of each level."""
        return [int(a.shape[0]) for a in self.cell_anchors.buffers()]

    def forward(
        self, feature_sizes: Sequence[tuple[int, int]], device: torch.device | str | None = None
    ) -> list[Tensor]:
        """Anchors of every location of every level.

        Args:
            feature_sizes: L pairs ``(H_l, W_l)``, the padded feature-map sizes.
            device: where to build the anchors (default: where the buffers are).

        Returns:
            L tensors ``Tensor[H_l * W_l * A, 4]`` float32, ``(x1, y1, x2, y2)`` in the
            padded input image's pixels; row ``(y * W_l + x) * A + a``.
        """
        if len(feature_sizes) != len(self.strides):
            raise ValueError(f"expected {len(self.strides)} feature sizes, got {len(feature_sizes)}")
        anchors = []
        for (height, width), stride, base in zip(feature_sizes, self.strides, self.cell_anchors.buffers()):
            base = base.to(device) if device is not None else base
            shifts_x = torch.arange(width, dtype=torch.float32, device=base.device) * stride  # [W]
            shifts_y = torch.arange(height, dtype=torch.float32, device=base.device) * stride  # [H]
            shift_y, shift_x = torch.meshgrid(shifts_y, shifts_x, indexing="ij")  # [H, W] each
            shifts = torch.stack((shift_x, shift_y, shift_x, shift_y), dim=-1).reshape(-1, 1, 4)  # [HW, 1, 4]
            anchors.append((shifts + base[None]).reshape(-1, 4))  # [HW * A, 4]
        return anchors

    def visibility(self, anchors: Tensor, image_size: tuple[int, int]) -> Tensor:
        """:func:`anchor_visibility` with this generator's ``straddle_thresh``."""
        return anchor_visibility(anchors, image_size, self.straddle_thresh)
