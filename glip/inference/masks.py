"""Mask pasting: the mask head's per-detection probabilities -> masks in image pixels."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from glip.modeling import low_precision
from glip.modeling.glip import GLIP, MASK
from glip.ops.boxes import rescale_boxes
from glip.ops.masks import box_extent, paste_masks
from glip.structures import Detections

__all__ = ["add_masks"]


def add_masks(
    model: GLIP,
    output: Any,
    dets: list[Detections],
    positive_map: Tensor,
    image_sizes: Sequence[tuple[int, int]],
    original_sizes: Sequence[tuple[int, int]] | None,
    autocast: torch.dtype | None = None,
) -> list[Detections]:
    """Each detection's mask, pasted into its image (``original_sizes`` when given, with the
    boxes rescaled as the grounding post-processor does), threshold 0.5.

    Args:
        model: the network (its mask head predicts the ``[M, M]`` probabilities).
        output: the mask head's output of the pass that found ``dets``.
        dets: B images' detections in the network-input frame (``image_sizes``).
        positive_map: ``Tensor[P, T]``, the prompt's phrases over its tokens.
        autocast: the mask head runs under ``torch.autocast`` in that dtype, the pasting in float32.
    """
    token_maps = [positive_map[det.labels - 1] > 0 for det in dets]  # B x [N_b, T]
    with low_precision.autocast(positive_map.device, autocast):
        probs = model.heads[MASK].postprocess(output, [det.boxes for det in dets], token_maps).probs  # B x [N_b, M, M]
    probs = [p.float() for p in probs]
    out = []
    for b, (det, prob) in enumerate(zip(dets, probs)):
        size, boxes = tuple(image_sizes[b]), det.boxes
        extents = box_extent(boxes)
        if original_sizes is not None:
            size = tuple(original_sizes[b])
            boxes = rescale_boxes(boxes, tuple(image_sizes[b]), size)
            extents = rescale_boxes(extents, tuple(image_sizes[b]), size)
        pasted = paste_masks(prob, extents, size)  # [N_b, H, W]
        out.append(Detections(boxes, det.scores, det.labels, [], size, pasted))
    return out
