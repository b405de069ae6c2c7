"""Final detections of one image."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor


@dataclass
class Detections:
    """Boxes found in one image, sorted by descending score.

    Attributes:
        boxes: ``Tensor[N, 4]`` float, ``(x1, y1, x2, y2)`` in original-image pixels.
        scores: ``Tensor[N]`` float in [0, 1].
        labels: ``Tensor[N]`` int64, 1-based index of the phrase in the prompt
            (label ``j`` is the ``j``-th phrase, as in the official code).
        phrases: the ``N`` phrase strings, ``phrases[i]`` naming ``labels[i]``.
        image_size: ``(height, width)`` of the original image.
    """

    boxes: Tensor
    scores: Tensor
    labels: Tensor
    phrases: list[str] = field(default_factory=list)
    image_size: tuple[int, int] = (0, 0)

    def __post_init__(self) -> None:
        n = self.boxes.shape[0]
        if self.boxes.shape != (n, 4) or self.scores.shape != (n,) or self.labels.shape != (n,):
            raise ValueError(
                "Detections needs boxes [N, 4], scores [N] and labels [N]; got "
                f"{tuple(self.boxes.shape)}, {tuple(self.scores.shape)}, {tuple(self.labels.shape)}"
            )
        if self.phrases and len(self.phrases) != n:
            raise ValueError(f"Detections has {n} boxes but {len(self.phrases)} phrases")

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    def __getitem__(self, index: Any) -> "Detections":
        """Selects detections by index, slice or boolean/integer tensor."""
        if isinstance(index, int):
            index = slice(index, index + 1 if index != -1 else None)
        keep = torch.arange(len(self))[index]
        idx = keep.tolist() if keep.ndim else [int(keep)]
        phrases = [self.phrases[i] for i in idx] if self.phrases else []
        return Detections(self.boxes[keep], self.scores[keep], self.labels[keep], phrases, self.image_size)

    @staticmethod
    def empty(image_size: tuple[int, int] = (0, 0)) -> "Detections":
        return Detections(
            torch.zeros((0, 4)), torch.zeros((0,)), torch.zeros((0,), dtype=torch.int64), [], image_size
        )

    def to(self, device: torch.device | str) -> "Detections":
        return Detections(
            self.boxes.to(device), self.scores.to(device), self.labels.to(device), list(self.phrases), self.image_size
        )

    def above(self, threshold: float) -> "Detections":
        """Detections whose score is strictly greater than ``threshold``."""
        return self[self.scores > threshold]

    def sorted(self) -> "Detections":
        """A copy sorted by descending score (stable)."""
        order = torch.sort(self.scores, descending=True, stable=True).indices
        return self[order]

    def to_list(self) -> list[dict[str, Any]]:
        """One plain dict per detection: ``box`` (xyxy), ``score``, ``label``, ``phrase``."""
        out = []
        for i in range(len(self)):
            out.append(
                {
                    "box": [float(v) for v in self.boxes[i].tolist()],
                    "score": float(self.scores[i]),
                    "label": int(self.labels[i]),
                    "phrase": self.phrases[i] if self.phrases else "",
                }
            )
        return out

    def __repr__(self) -> str:
        return f"Detections(n={len(self)}, image_size={self.image_size})"
