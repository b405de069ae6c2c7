"""Instance masks: pasting fixed-size mask probabilities into the image, cropping image
masks to boxes, and the mask IoU.

Frames: a box's *extent* is the continuous rectangle ``[x1, x2) x [y1, y2)`` in image
pixels (pixel ``(i, j)`` covers ``[j, j + 1) x [i, i + 1)`` and its centre is
``(j + 0.5, i + 0.5)``). Boxes with inclusive corners (the official ``x2 = x + w - 1``)
have the extent ``(x1, y1, x2 + 1, y2 + 1)``: :func:`box_extent`. An ``M x M`` mask
covers its box's extent, mask cell ``(a, b)`` the ``1 / M`` sub-rectangle ``(a, b)``.

Pasting samples the mask bilinearly at every pixel centre (zero beyond the mask's outer
cell centres fading to its border, as ``grid_sample(align_corners=False, padding="zeros")``)
and thresholds (detectron2's ``paste_masks_in_image``). The official maskrcnn_benchmark
``Masker`` pads the mask by one cell and resizes it to the box's integer pixel size; it
places masks to the nearest pixel, this to the sub-pixel. Dimension letters: N masks,
M the mask resolution, H x W the image.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from glip.ops.roi_align import roi_align

__all__ = ["box_extent", "crop_masks", "mask_iou", "paste_masks"]


def box_extent(boxes: Tensor) -> Tensor:
    """Inclusive-corner boxes ``Tensor[N, 4]`` -> their continuous extents ``(x1, y1, x2 + 1, y2 + 1)``."""
    return torch.cat([boxes[:, :2], boxes[:, 2:] + 1], dim=1)


def paste_masks(masks: Tensor, extents: Tensor, image_size: tuple[int, int], threshold: float = 0.5) -> Tensor:
    """Pastes mask probabilities into an image.

    Args:
        masks (Tensor[N, M, M]): probabilities (or any values thresholded at ``threshold``).
        extents (Tensor[N, 4]): each mask's box extent ``(x1, y1, x2, y2)`` in image pixels.
        image_size: ``(H, W)``.
        threshold: a pixel is in the mask when its sampled value is ``>= threshold``.

    Returns:
        Tensor[N, H, W] bool. Only the pixels whose centre lies inside the extent's
        integer window are sampled (the rest are outside the box: False).
    """
    height, width = int(image_size[0]), int(image_size[1])
    out = torch.zeros((masks.shape[0], height, width), dtype=torch.bool, device=masks.device)
    probs = masks.float()
    for n, (x1, y1, x2, y2) in enumerate(extents.double().tolist()):
        if not (x2 > x1 and y2 > y1):
            continue
        c0, c1 = max(math.floor(x1), 0), min(math.ceil(x2), width)
        r0, r1 = max(math.floor(y1), 0), min(math.ceil(y2), height)
        if c1 <= c0 or r1 <= r0:
            continue
        cols = torch.arange(c0, c1, device=masks.device, dtype=torch.float64) + 0.5
        rows = torch.arange(r0, r1, device=masks.device, dtype=torch.float64) + 0.5
        gx = ((cols - x1) / (x2 - x1) * 2 - 1).float()  # [w], grid_sample's [-1, 1] over the mask
        gy = ((rows - y1) / (y2 - y1) * 2 - 1).float()  # [h]
        grid = torch.stack(torch.broadcast_tensors(gx[None, :], gy[:, None]), dim=-1)  # [h, w, 2] (x, y)
        sampled = F.grid_sample(probs[n][None, None], grid[None], mode="bilinear", align_corners=False)  # [1,1,h,w]
        out[n, r0:r1, c0:c1] = sampled[0, 0] >= threshold
    return out


@torch.no_grad()
def crop_masks(masks: Tensor, index: Tensor, extents: Tensor, resolution: int) -> Tensor:
    """Crops image masks to boxes and resizes them (the mask head's training targets).

    Each output cell is the fraction of its sub-rectangle of the box covered by the mask
    (ROIAlign with half-pixel alignment and adaptive sampling on the 0/1 mask),
    thresholded at 0.5: detectron2's ``BitMasks.crop_and_resize``. The official crops
    and rasterises polygons; dense masks (RLE, or polygons rasterised once) need this.

    Args:
        masks (Tensor[G, H, W]): bool or 0/1 image masks.
        index (Tensor[R]): the mask of each box.
        extents (Tensor[R, 4]): box extents (continuous ``x1, y1, x2, y2``) in the masks' pixels.
        resolution: M.

    Returns:
        Tensor[R, M, M] float32 in {0, 1}.
    """
    if index.numel() == 0:
        return masks.new_zeros((0, resolution, resolution), dtype=torch.float32)
    rois = torch.cat([index[:, None].to(torch.float32), extents.to(torch.float32)], dim=1)  # [R, 5]
    # Only the masks some box uses are converted; the ROI's batch index is remapped to them.
    used, inverse = torch.unique(index, return_inverse=True)
    rois[:, 0] = inverse.to(torch.float32)
    dense = masks[used].to(torch.float32)[:, None]  # [G', 1, H, W]
    return (roi_align(dense, rois, resolution, 1.0, 0, aligned=True)[:, 0] >= 0.5).to(torch.float32)


def mask_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of matching masks: ``Tensor[N, H, W]`` bool twice -> ``Tensor[N]`` (0 when both are empty)."""
    inter = (a & b).flatten(1).sum(1).double()
    union = (a | b).flatten(1).sum(1).double()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.zeros_like(union))
