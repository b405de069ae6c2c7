"""Raw outputs of the grounding head (the GLIP detection head)."""

from __future__ import annotations

from dataclasses import dataclass, replace

from torch import Tensor


@dataclass
class HeadOutputs:
    """Per-level predictions of the grounding head, before decoding.

    Attributes:
        box_regression: L tensors ``Tensor[B, 4, H_l, W_l]``, already multiplied by
            the level's learned scale (box-coder deltas ``dx, dy, dw, dh``).
        centerness: L tensors ``Tensor[B, 1, H_l, W_l]`` (logits).
        dot_product_logits: L tensors ``Tensor[B, H_l*W_l, T]``, region-word
            alignment logits (pixel order is row-major, as ``flatten(2)``).
        num_classes: the width of the score tensor the official post-processor
            builds (``NUM_CLASSES - 1``): at most this many phrases can be scored.
        temperature: ``Tensor[1]``, ``exp(log_scale)``, the learned logit temperature
            (the MDETR contrastive branch shares it), or None.

    The tower's visual maps and fused text are in :class:`glip.modeling.fusion.trunk.TrunkOutput`.
    """

    box_regression: list[Tensor]
    centerness: list[Tensor]
    dot_product_logits: list[Tensor]
    num_classes: int
    temperature: Tensor | None = None

    def float(self) -> HeadOutputs:
        """The same outputs in float32 (after a mixed-precision forward; decoding is float32)."""
        return replace(
            self,
            box_regression=[t.float() for t in self.box_regression],
            centerness=[t.float() for t in self.centerness],
            dot_product_logits=[t.float() for t in self.dot_product_logits],
            temperature=None if self.temperature is None else self.temperature.float(),
        )
