"""Final detections of one image."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

if TYPE_CHECKING:
    from PIL.Image import Image

    from glip.utils.image import ImageInput

# Quality of the JPEG / WebP pictures that save() writes (Pillow's default, 75, blurs the tags).
_SAVE_QUALITY = 92


@dataclass
class Detections:
    """Boxes found in one image, sorted by descending score.

    Attributes:
        boxes: ``Tensor[N, 4]`` float, ``(x1, y1, x2, y2)`` in the pixels of the image
            ``image_size`` describes (the original image for ``predict``).
        scores: ``Tensor[N]`` float in [0, 1].
        labels: ``Tensor[N]`` int64, 1-based index of the phrase in the prompt
            (label ``j`` is the ``j``-th phrase, as in the official code).
        phrases: the ``N`` phrase strings, ``phrases[i]`` naming ``labels[i]``.
        image_size: ``(height, width)`` of the original image.
        masks: ``Tensor[N, H, W]`` bool instance masks in the same pixels as ``boxes``
            (``H, W = image_size``), or None when masks were not asked for.
    """

    boxes: Tensor
    scores: Tensor
    labels: Tensor
    phrases: list[str] = field(default_factory=list)
    image_size: tuple[int, int] = (0, 0)
    masks: Tensor | None = None

    def __post_init__(self) -> None:
        n = self.boxes.shape[0]
        if self.boxes.shape != (n, 4) or self.scores.shape != (n,) or self.labels.shape != (n,):
            raise ValueError(
                "Detections needs boxes [N, 4], scores [N] and labels [N]; got "
                f"{tuple(self.boxes.shape)}, {tuple(self.scores.shape)}, {tuple(self.labels.shape)}"
            )
        if self.phrases and len(self.phrases) != n:
            raise ValueError(f"Detections has {n} boxes but {len(self.phrases)} phrases")
        if self.masks is not None and (self.masks.ndim != 3 or self.masks.shape[0] != n):
            raise ValueError(
                f"Detections has {n} boxes but masks of shape {tuple(self.masks.shape)} (expected [N, H, W])"
            )

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    def __getitem__(self, index: Any) -> Detections:
        """Selects detections by index, slice or boolean/integer tensor."""
        if isinstance(index, int):
            index = slice(index, index + 1 if index != -1 else None)
        keep = torch.arange(len(self))[index]
        idx = keep.tolist() if keep.ndim else [int(keep)]
        phrases = [self.phrases[i] for i in idx] if self.phrases else []
        masks = None if self.masks is None else self.masks[keep.to(self.masks.device)]
        return Detections(self.boxes[keep], self.scores[keep], self.labels[keep], phrases, self.image_size, masks)

    @staticmethod
    def empty(image_size: tuple[int, int] = (0, 0)) -> Detections:
        return Detections(torch.zeros((0, 4)), torch.zeros((0,)), torch.zeros((0,), dtype=torch.int64), [], image_size)

    def to(self, device: torch.device | str) -> Detections:
        return Detections(
            self.boxes.to(device),
            self.scores.to(device),
            self.labels.to(device),
            list(self.phrases),
            self.image_size,
            None if self.masks is None else self.masks.to(device),
        )

    def above(self, threshold: float) -> Detections:
        """Detections whose score is strictly greater than ``threshold``."""
        return self[self.scores > threshold]

    def sorted(self) -> Detections:
        """A copy sorted by descending score (stable)."""
        order = torch.sort(self.scores, descending=True, stable=True).indices
        return self[order]

    def rles(self) -> list[dict[str, Any]]:
        """The masks as COCO compressed RLE (``{"size": [H, W], "counts": str}``, pycocotools),
        one per detection; ``[]`` without masks."""
        if self.masks is None:
            return []
        import numpy as np
        from pycocotools import mask as mask_utils

        out = []
        for m in self.masks.cpu().numpy():
            rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
            out.append({"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")})
        return out

    def to_list(self) -> list[dict[str, Any]]:
        """One plain dict per detection: ``box`` (xyxy), ``score``, ``label``, ``phrase``, and
        ``mask`` (COCO compressed RLE, see :meth:`rles`) when there are masks."""
        rles = self.rles()
        out = []
        for i in range(len(self)):
            entry: dict[str, Any] = {
                "box": [float(v) for v in self.boxes[i].tolist()],
                "score": float(self.scores[i]),
                "label": int(self.labels[i]),
                "phrase": self.phrases[i] if self.phrases else "",
            }
            if rles:
                entry["mask"] = rles[i]
            out.append(entry)
        return out

    def to_coco(self, image_id: int, category_ids: Any = None) -> list[dict[str, Any]]:
        """COCO results entries (``bbox`` as ``[x, y, w, h]``, and ``segmentation`` as
        compressed RLE when there are masks). ``category_ids`` maps a label to a category id
        (a dict or a sequence indexed by ``label - 1``); by default the label itself."""
        rles = self.rles()
        out = []
        for i, (box, score, label) in enumerate(zip(self.boxes.tolist(), self.scores.tolist(), self.labels.tolist())):
            if category_ids is None:
                cat = int(label)
            elif isinstance(category_ids, dict):
                cat = int(category_ids[int(label)])
            else:
                cat = int(category_ids[int(label) - 1])
            x1, y1, x2, y2 = box
            entry = {"image_id": image_id, "category_id": cat, "bbox": [x1, y1, x2 - x1, y2 - y1], "score": score}
            if rles:
                entry["segmentation"] = rles[i]
            out.append(entry)
        return out

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; :meth:`from_dict` reads it back."""
        return {"image_size": list(self.image_size), "detections": self.to_list()}

    @staticmethod
    def from_dict(data: dict[str, Any]) -> Detections:
        dets = data.get("detections", [])
        if not dets:
            return Detections.empty(tuple(data.get("image_size", (0, 0))))
        masks = None
        if all("mask" in d for d in dets):
            import warnings

            import numpy as np
            from pycocotools import mask as mask_utils

            with warnings.catch_warnings():  # pycocotools vs numpy 2's __array__(copy=...) deprecation
                warnings.simplefilter("ignore", DeprecationWarning)
                decoded = [
                    mask_utils.decode({"size": d["mask"]["size"], "counts": d["mask"]["counts"].encode("ascii")})
                    for d in dets
                ]
            masks = torch.from_numpy(np.stack(decoded).astype(bool))
        return Detections(
            torch.tensor([d["box"] for d in dets], dtype=torch.float32),
            torch.tensor([d["score"] for d in dets], dtype=torch.float32),
            torch.tensor([d["label"] for d in dets], dtype=torch.int64),
            [d.get("phrase", "") for d in dets],
            tuple(data.get("image_size", (0, 0))),
            masks,
        )

    def to_supervision(self) -> Any:
        """A ``supervision.Detections`` (``class_id`` = label - 1, phrases in ``data["class_name"]``,
        ``mask`` when there are masks)."""
        try:
            import supervision as sv
        except ImportError as e:
            raise ImportError("to_supervision() needs the supervision package: pip install supervision") from e
        import numpy as np

        extra = {} if self.masks is None else {"mask": self.masks.numpy()}  # [N, H, W] bool, as supervision's
        return sv.Detections(
            xyxy=self.boxes.numpy().astype(np.float32),
            confidence=self.scores.numpy().astype(np.float32),
            class_id=(self.labels - 1).numpy().astype(int),
            data={"class_name": np.array(self.phrases if self.phrases else [""] * len(self))},
            **extra,
        )

    def plot(self, image: ImageInput, *, scores: bool = True, masks: bool = True) -> Image:
        """The picture of these detections: ``image`` with each box outlined in its label's
        colour and tagged ``"phrase score"``, and each mask filled translucently (when there
        are masks). Labels and lines scale with the image size (see
        :func:`glip.utils.draw.draw_style`). ``glip detect`` and ``glip demo`` draw with this.

        Args:
            image: the image the detections were found in: a path, a PIL image or an
                ``[H, W, 3]`` uint8 RGB array (as :func:`glip.predict` takes).
            scores: show the score after the phrase.
            masks: fill the masks (when the detections have them).

        Returns:
            a ``PIL.Image.Image`` (RGB) of the image's size; ``.show()`` opens it, and in a
            notebook it displays itself.

        Raises:
            ValueError: the image's size is not :attr:`image_size` (another image).
        """
        from glip.utils.draw import draw_detections
        from glip.utils.image import load_image

        pixels = load_image(image)
        size = tuple(pixels.shape[:2])
        if self.image_size != (0, 0) and size != tuple(self.image_size):
            raise ValueError(
                f"the image is {size[1]}x{size[0]} but these detections were found in a "
                f"{self.image_size[1]}x{self.image_size[0]} image: pass the image given to predict()"
            )
        phrases = self.phrases or [""] * len(self)
        captions = [f"{p} {s:.2f}".strip() if scores else p for p, s in zip(phrases, self.scores.tolist())]
        fill = self.masks.cpu().numpy() if masks and self.masks is not None else None
        return draw_detections(pixels, self.boxes.tolist(), self.labels.tolist(), captions, fill)

    def save(self, path: str | Path, image: ImageInput, **plot_options: Any) -> Path:
        """Writes :meth:`plot` of ``image`` to ``path``; the format follows the suffix
        (``.jpg``, ``.png``, ``.webp``...; JPEG and WebP at quality 92). ``plot_options``:
        ``scores``, ``masks`` as in :meth:`plot`. Returns ``path``."""
        path = Path(path)
        picture = self.plot(image, **plot_options)
        lossy = path.suffix.lower() in (".jpg", ".jpeg", ".webp")
        picture.save(path, **({"quality": _SAVE_QUALITY} if lossy else {}))
        return path

    def __repr__(self) -> str:
        return f"Detections(n={len(self)}, image_size={self.image_size})"
