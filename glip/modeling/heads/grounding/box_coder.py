"""The box coder of the official GLIP/ATSS head (``BoxCoder`` in ``vldyhead.py``).

Conventions (all from the official code):

- Boxes are ``(x1, y1, x2, y2)`` with inclusive pixel corners: width ``x2 - x1 + 1``
  (``TO_REMOVE = 1``); the centre is ``(x1 + x2) / 2``.
- Deltas are ``(dx, dy, dw, dh)`` scaled by ``weights = (10, 10, 5, 5)``:
  ``dx = wx * (gx - ax) / aw``, ``dw = ww * log(gw / aw)``.
- Decoding clamps ``dw / ww`` and ``dh / wh`` from above at ``log(1000 / 16)`` (a box
  can grow at most 62.5x; from Detectron's ``BBOX_XFORM_CLIP``) before ``exp``, and
  places the corners at ``centre -/+ 0.5 * (size - 1)``, so ``decode(encode(b), a) == b``.

The order of operations follows the official code so float32 results are bitwise
identical to it.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["BoxCoder"]

# Detectron's BBOX_XFORM_CLIP: the largest dw, dh (after dividing by the weights).
_SCALE_CLAMP = math.log(1000.0 / 16)


class BoxCoder:
    """Encodes boxes as deltas from anchors and decodes them back.

    Args:
        weights: ``(wx, wy, ww, wh)``, the official ``(10, 10, 5, 5)``.
        scale_clamp: upper bound of ``dw / ww`` and ``dh / wh`` when decoding.
        offset: the inclusive-pixel ``+1`` of widths and heights (official: 1).
    """

    def __init__(
        self,
        weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0),
        scale_clamp: float = _SCALE_CLAMP,
        offset: float = 1.0,
    ) -> None:
        self.weights = tuple(float(w) for w in weights)
        self.scale_clamp = scale_clamp
        self.offset = offset

    def encode(self, gt_boxes: Tensor, anchors: Tensor) -> Tensor:
        """Regression targets of ``gt_boxes`` relative to ``anchors``.

        Args:
            gt_boxes (Tensor[N, 4]): target boxes, ``(x1, y1, x2, y2)``.
            anchors (Tensor[N, 4]): the matching anchors, ``(x1, y1, x2, y2)``.

        Returns:
            Tensor[N, 4]: ``(dx, dy, dw, dh)``.
        """
        wx, wy, ww, wh = self.weights
        ex_w = anchors[:, 2] - anchors[:, 0] + self.offset
        ex_h = anchors[:, 3] - anchors[:, 1] + self.offset
        ex_cx = (anchors[:, 2] + anchors[:, 0]) / 2
        ex_cy = (anchors[:, 3] + anchors[:, 1]) / 2
        gt_w = gt_boxes[:, 2] - gt_boxes[:, 0] + self.offset
        gt_h = gt_boxes[:, 3] - gt_boxes[:, 1] + self.offset
        gt_cx = (gt_boxes[:, 2] + gt_boxes[:, 0]) / 2
        gt_cy = (gt_boxes[:, 3] + gt_boxes[:, 1]) / 2
        dx = wx * (gt_cx - ex_cx) / ex_w
        dy = wy * (gt_cy - ex_cy) / ex_h
        dw = ww * torch.log(gt_w / ex_w)
        dh = wh * torch.log(gt_h / ex_h)
        return torch.stack((dx, dy, dw, dh), dim=1)

    def decode(self, deltas: Tensor, anchors: Tensor) -> Tensor:
        """Boxes from regression deltas.

        Args:
            deltas (Tensor[N, 4]): ``(dx, dy, dw, dh)``.
            anchors (Tensor[N, 4]): the anchors, ``(x1, y1, x2, y2)``; cast to ``deltas``'s dtype.

        Returns:
            Tensor[N, 4]: decoded ``(x1, y1, x2, y2)`` boxes.
        """
        anchors = anchors.to(deltas.dtype)
        wx, wy, ww, wh = self.weights
        widths = anchors[:, 2] - anchors[:, 0] + self.offset
        heights = anchors[:, 3] - anchors[:, 1] + self.offset
        ctr_x = (anchors[:, 2] + anchors[:, 0]) / 2
        ctr_y = (anchors[:, 3] + anchors[:, 1]) / 2
        dx = deltas[:, 0] / wx
        dy = deltas[:, 1] / wy
        dw = (deltas[:, 2] / ww).clamp(max=self.scale_clamp)
        dh = (deltas[:, 3] / wh).clamp(max=self.scale_clamp)
        pred_cx = dx * widths + ctr_x
        pred_cy = dy * heights + ctr_y
        pred_w = torch.exp(dw) * widths
        pred_h = torch.exp(dh) * heights
        return torch.stack(
            (
                pred_cx - 0.5 * (pred_w - self.offset),
                pred_cy - 0.5 * (pred_h - self.offset),
                pred_cx + 0.5 * (pred_w - self.offset),
                pred_cy + 0.5 * (pred_h - self.offset),
            ),
            dim=1,
        )
