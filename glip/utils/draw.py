"""Drawing detections on images."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = ["draw_detections"]

# Distinct, saturated colours (tab10-like), cycled by label.
_PALETTE = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
]


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one bitmap size
        return ImageFont.load_default()


def _text_color(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    luminance = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    return (0, 0, 0) if luminance > 140 else (255, 255, 255)


def draw_detections(
    image: np.ndarray,
    boxes: Sequence[Sequence[float]],
    labels: Sequence[int],
    captions: Sequence[str],
    masks: np.ndarray | None = None,
    mask_alpha: float = 0.45,
) -> Image.Image:
    """The image with each box outlined in its label's colour and captioned on a filled tag
    (white or black text by the tag's luminance), legible on any background; with
    ``masks``, each mask first filled translucently in its box's colour.

    Args:
        image: ``[H, W, 3]`` uint8 RGB.
        boxes: N ``(x1, y1, x2, y2)`` in image pixels.
        labels: N integer labels (pick the colour).
        captions: N strings, e.g. ``"a cat 0.87"``.
        masks: optional ``[N, H, W]`` bool masks.
        mask_alpha: opacity of the mask fill.
    """
    if masks is not None and len(masks):
        blended = image.astype(np.float32)
        # Lowest-scored first (detections come sorted by score), so the best mask ends on top.
        for mask, label in reversed(list(zip(masks, labels))):
            color = np.array(_PALETTE[int(label) % len(_PALETTE)], dtype=np.float32)
            m = np.asarray(mask, dtype=bool)
            blended[m] = (1 - mask_alpha) * blended[m] + mask_alpha * color
        image = np.clip(blended.round(), 0, 255).astype(np.uint8)
    canvas = Image.fromarray(image).convert("RGB")
    draw = ImageDraw.Draw(canvas)
    h, w = image.shape[:2]
    line = max(2, round(min(h, w) / 250))
    font = _font(max(12, round(min(h, w) / 40)))
    for box, label, caption in zip(boxes, labels, captions):
        color = _PALETTE[int(label) % len(_PALETTE)]
        x1, y1, x2, y2 = (float(v) for v in box)
        # A dark halo under the coloured outline keeps it visible on bright and dark regions.
        draw.rectangle((x1, y1, x2, y2), outline=(0, 0, 0), width=line + 2)
        draw.rectangle((x1, y1, x2, y2), outline=color, width=line)
        left, top, right, bottom = draw.textbbox((0, 0), caption, font=font)
        tw, th = right - left, bottom - top
        pad = max(2, line)
        ty = y1 - th - 2 * pad if y1 - th - 2 * pad >= 0 else y1
        tx = min(max(0.0, x1), max(0.0, w - tw - 2 * pad))
        draw.rectangle((tx, ty, tx + tw + 2 * pad, ty + th + 2 * pad), fill=color, outline=(0, 0, 0))
        draw.text((tx + pad - left, ty + pad - top), caption, fill=_text_color(color), font=font)
    return canvas
