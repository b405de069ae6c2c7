"""Mask pasting against a scalar reference, cropping to boxes, mask IoU."""

from __future__ import annotations

import math

import torch

from glip.ops.masks import box_extent, crop_masks, mask_iou, paste_masks


def _paste_reference(mask: torch.Tensor, extent, size, threshold=0.5) -> torch.Tensor:
    """Per pixel: the mask sampled bilinearly at the pixel centre, cells beyond the mask read as 0."""
    m = mask.double()
    res = m.shape[0]
    x1, y1, x2, y2 = extent
    out = torch.zeros(size, dtype=torch.bool)

    def cell(a: int, b: int) -> float:
        return float(m[a, b]) if 0 <= a < res and 0 <= b < res else 0.0

    for i in range(size[0]):
        for j in range(size[1]):
            cy, cx = i + 0.5, j + 0.5
            if not (math.floor(x1) <= j < math.ceil(x2) and math.floor(y1) <= i < math.ceil(y2)):
                continue
            u = (cx - x1) / (x2 - x1) * res - 0.5  # mask column coordinate (cell centres at integers)
            v = (cy - y1) / (y2 - y1) * res - 0.5
            u0, v0 = math.floor(u), math.floor(v)
            fu, fv = u - u0, v - v0
            val = (
                (1 - fv) * (1 - fu) * cell(v0, u0)
                + (1 - fv) * fu * cell(v0, u0 + 1)
                + fv * (1 - fu) * cell(v0 + 1, u0)
                + fv * fu * cell(v0 + 1, u0 + 1)
            )
            out[i, j] = val >= threshold
    return out


def test_paste_equals_the_scalar_reference() -> None:
    g = torch.Generator().manual_seed(0)
    masks = torch.rand(4, 6, 6, generator=g)
    extents = torch.tensor(
        [[2.3, 1.7, 15.2, 9.9], [-3.0, 4.0, 8.5, 21.0], [10.0, 10.0, 30.0, 14.0], [5.0, 5.0, 5.0, 9.0]]
    )
    got = paste_masks(masks, extents, (17, 23))
    assert got.shape == (4, 17, 23) and got.dtype == torch.bool
    for n in range(4):
        expected = _paste_reference(masks[n], extents[n].tolist(), (17, 23))
        mismatch = int((got[n] != expected).sum())
        assert mismatch == 0, (n, mismatch)
    assert not got[3].any()  # an empty extent pastes nothing


def test_full_mask_pastes_the_box_interior() -> None:
    # A mask of ones on the extent of an inclusive-corner box fills exactly the box's pixels.
    box = torch.tensor([[3.0, 4.0, 12.0, 9.0]])
    pasted = paste_masks(torch.ones(1, 28, 28), box_extent(box), (16, 16))[0]
    expected = torch.zeros(16, 16, dtype=torch.bool)
    expected[4:10, 3:13] = True
    assert torch.equal(pasted, expected)


def test_crop_masks_hand_case() -> None:
    masks = torch.zeros(2, 10, 10, dtype=torch.bool)
    masks[0, 2:6, 2:8] = True  # rows 2-5, cols 2-7
    masks[1] = True
    extents = box_extent(torch.tensor([[2.0, 2.0, 7.0, 5.0], [2.0, 2.0, 7.0, 9.0], [0.0, 0.0, 9.0, 9.0]]))
    out = crop_masks(masks, torch.tensor([0, 0, 1]), extents, 4)
    assert out.shape == (3, 4, 4)
    assert torch.equal(out[0], torch.ones(4, 4))  # the box is exactly the mask
    assert out[1].tolist() == [[1, 1, 1, 1], [1, 1, 1, 1], [0, 0, 0, 0], [0, 0, 0, 0]]  # top half
    assert torch.equal(out[2], torch.ones(4, 4))
    assert crop_masks(masks, torch.tensor([], dtype=torch.int64), extents[:0], 4).shape == (0, 4, 4)


def test_mask_iou() -> None:
    a = torch.zeros(3, 4, 4, dtype=torch.bool)
    b = torch.zeros(3, 4, 4, dtype=torch.bool)
    a[0, :2] = True
    b[0, 1:3] = True
    a[1] = b[1] = True
    assert mask_iou(a, b).tolist() == [4 / 12, 1.0, 0.0]
