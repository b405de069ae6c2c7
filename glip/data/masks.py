"""Instance masks of COCO-format annotations: polygons and RLE to dense masks, dense
masks to exact pixel-outline polygons, and mask resizing for the training transforms.

COCO conventions: pixel ``(i, j)`` covers ``[j, j + 1) x [i, i + 1)``; a polygon is a
flat ``[x0, y0, x1, y1, ...]`` list in those continuous coordinates and an annotation's
``segmentation`` is a list of polygons (their union), or an RLE dict (``counts`` as a
list: uncompressed, or a string: compressed; ``size`` ``[h, w]``). Rasterising is
pycocotools' (``frPyObjects`` / ``decode``), as the COCO evaluation does.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["annotation_mask", "has_segmentation", "outline_polygons", "resize_masks", "segmentation_from_mask"]


def has_segmentation(ann: Mapping[str, Any]) -> bool:
    """Whether an annotation carries a usable mask (a non-empty polygon list or an RLE)."""
    seg = ann.get("segmentation")
    if isinstance(seg, Mapping):
        return "counts" in seg and "size" in seg
    return isinstance(seg, Sequence) and any(isinstance(p, Sequence) and len(p) >= 6 for p in seg)


def annotation_mask(ann: Mapping[str, Any], height: int, width: int) -> np.ndarray:
    """``bool [H, W]``: the annotation's segmentation rasterised (pycocotools ``annToMask``).

    Polygons with fewer than 3 points are ignored (pycocotools rejects them). An RLE
    whose ``size`` differs from ``(height, width)`` raises ``ValueError``.
    """
    from pycocotools import mask as mask_utils

    seg = ann["segmentation"]
    if isinstance(seg, Mapping):
        if [int(v) for v in seg["size"]] != [height, width]:
            raise ValueError(f"annotation {ann.get('id')}: RLE size {seg['size']} != image size {[height, width]}")
        rle = mask_utils.frPyObjects(dict(seg), height, width) if isinstance(seg["counts"], list) else dict(seg)
        if isinstance(rle.get("counts"), str):
            rle = {"size": rle["size"], "counts": rle["counts"].encode("ascii")}
    else:
        polys = [[float(v) for v in p] for p in seg if len(p) >= 6]
        if not polys:
            return np.zeros((height, width), dtype=bool)
        rle = mask_utils.merge(mask_utils.frPyObjects(polys, height, width))
    with warnings.catch_warnings():
        # pycocotools' decode trips numpy 2's __array__(copy=...) deprecation; the result is unaffected.
        warnings.simplefilter("ignore", DeprecationWarning)
        return mask_utils.decode(rle).astype(bool)


def outline_polygons(mask: np.ndarray) -> list[list[int]] | None:
    """The exact outline of a binary mask along pixel edges, as COCO polygons.

    Each 4-connected piece becomes one rectilinear polygon whose vertices are pixel
    corners (collinear vertices dropped); pycocotools rasterises their union back to
    exactly ``mask``. Pieces touching only at a corner are separate polygons. Returns
    None when the mask has a hole (COCO polygons cannot express one: use RLE).

    Args:
        mask: ``bool [H, W]``.

    Returns:
        polygons as flat ``[x0, y0, x1, y1, ...]`` integer lists, in a deterministic order
        (by their top-left-most vertex), or None.
    """
    m = np.asarray(mask, dtype=bool)
    padded = np.pad(m, 1)
    # Directed boundary edges, clockwise on screen (y down): interior on the right.
    edges: dict[tuple[int, int], list[tuple[int, int]]] = {}
    rows, cols = np.nonzero(m)
    for r, c in zip(rows.tolist(), cols.tolist()):
        pr, pc = r + 1, c + 1
        if not padded[pr - 1, pc]:
            edges.setdefault((c, r), []).append((c + 1, r))
        if not padded[pr, pc + 1]:
            edges.setdefault((c + 1, r), []).append((c + 1, r + 1))
        if not padded[pr + 1, pc]:
            edges.setdefault((c + 1, r + 1), []).append((c, r + 1))
        if not padded[pr, pc - 1]:
            edges.setdefault((c, r + 1), []).append((c, r))
    polygons: list[list[int]] = []
    while edges:
        start = min(edges)
        loop = [start]
        cur, direction = start, None
        while True:
            outs = edges[cur]
            if direction is None:
                nxt = outs[0]
            else:
                # At a corner shared with a diagonal piece, turn right (stay on this piece), else go on.
                dx, dy = direction
                preferences = ((-dy, dx), (dx, dy), (dy, -dx))
                nxt = next(o for want in preferences for o in outs if (o[0] - cur[0], o[1] - cur[1]) == want)
            outs.remove(nxt)
            if not outs:
                del edges[cur]
            direction = (nxt[0] - cur[0], nxt[1] - cur[1])
            cur = nxt
            if cur == start:
                break
            loop.append(cur)
        pts = np.array(loop, dtype=np.int64)
        # Shoelace (y down): a clockwise outer loop has a positive area, a hole's is negative.
        area = 0.5 * float(np.sum(pts[:, 0] * np.roll(pts[:, 1], -1) - np.roll(pts[:, 0], -1) * pts[:, 1]))
        if area < 0:
            return None
        prev, nxt_pts = np.roll(pts, 1, axis=0), np.roll(pts, -1, axis=0)
        turn = (pts[:, 0] - prev[:, 0]) * (nxt_pts[:, 1] - pts[:, 1]) - (pts[:, 1] - prev[:, 1]) * (
            nxt_pts[:, 0] - pts[:, 0]
        )
        corners = pts[turn != 0]  # [K, 2]
        polygons.append([int(v) for v in corners.reshape(-1)])
    return polygons


def segmentation_from_mask(mask: np.ndarray) -> list[list[int]] | dict[str, Any]:
    """A COCO ``segmentation`` that rasterises exactly to ``mask``: its outline polygons,
    or a compressed RLE (``counts`` a string) when the mask has holes."""
    polygons = outline_polygons(mask)
    if polygons is not None:
        return polygons
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(np.asarray(mask, dtype=np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def resize_masks(masks: Tensor, size_hw: tuple[int, int], flip: bool = False) -> Tensor:
    """``bool [G, H, W]`` -> ``bool [G, h, w]``: bilinear resampling of the 0/1 masks
    thresholded at 0.5 (the pixel centres' coverage), then the horizontal flip if asked.
    The training transform resizes the image with the same ratios (PIL bilinear)."""
    if masks.shape[0] == 0 or tuple(masks.shape[-2:]) == tuple(size_hw):
        out = masks.reshape(masks.shape[0], *size_hw) if masks.shape[0] == 0 else masks.clone()
    else:
        dense = masks[:, None].to(torch.float32)  # [G, 1, H, W]
        out = F.interpolate(dense, size=tuple(size_hw), mode="bilinear", align_corners=False)[:, 0] >= 0.5
    return out.flip(-1) if flip else out
