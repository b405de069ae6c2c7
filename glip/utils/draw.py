"""Drawing detections on images."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = ["PALETTE", "DrawStyle", "draw_detections", "draw_style", "load_font"]

# Distinct, saturated colours (tab10-like), cycled by label.
PALETTE = [
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


# Label font height in pixels per pixel of the image's shorter side: 20 px on an 800 px image,
# as before this scaled; bounded so that tags stay legible on thumbnails (8 px: the smallest
# size at which Pillow's default font stays readable) and stay small beside huge images.
_FONT_PER_PIXEL = 1 / 40
_FONT_MIN, _FONT_MAX = 8, 64
# Box outline width per pixel of the shorter side (3 px at 800 px), at least 1.
_LINE_PER_PIXEL = 1 / 250


@dataclass(frozen=True)
class DrawStyle:
    """Sizes of the drawing, in pixels, for one image size.

    Attributes:
        font_size: label font size.
        line_width: width of the coloured box outline (a dark halo adds ``halo`` inside).
        halo: width of the dark line drawn under the outline.
        pad: padding around the label text inside its tag.
    """

    font_size: int
    line_width: int
    halo: int
    pad: int


def draw_style(height: int, width: int) -> DrawStyle:
    """The sizes used on a ``height x width`` image: they grow with the shorter side, so a
    128 px thumbnail gets 8 px labels and 1 px outlines and an 800 px photo 20 px labels
    and 3 px outlines (the labels stay within [8, 64] px)."""
    side = max(1, min(height, width))
    line = max(1, round(side * _LINE_PER_PIXEL))
    font = min(_FONT_MAX, max(_FONT_MIN, round(side * _FONT_PER_PIXEL)))
    return DrawStyle(font_size=font, line_width=line, halo=max(1, round(line / 2)), pad=max(1, round(font / 8)))


def load_font(size: int) -> ImageFont.ImageFont:
    """Pillow's bundled font at ``size`` pixels (its one bitmap size before Pillow 10.1)."""
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
            color = np.array(PALETTE[int(label) % len(PALETTE)], dtype=np.float32)
            m = np.asarray(mask, dtype=bool)
            blended[m] = (1 - mask_alpha) * blended[m] + mask_alpha * color
        image = np.clip(blended.round(), 0, 255).astype(np.uint8)
    canvas = Image.fromarray(image).convert("RGB")
    draw = ImageDraw.Draw(canvas)
    h, w = image.shape[:2]
    style = draw_style(h, w)
    line, pad = style.line_width, style.pad
    font = load_font(style.font_size)
    # One tag height for every caption (from a tall-and-deep sample), so tags line up.
    _, text_top, _, text_bottom = draw.textbbox((0, 0), "Ag|", font=font)
    th = text_bottom - text_top
    # Lowest-scored first (detections come sorted by score): where boxes share a place, the
    # best one's outline and tag end on top.
    for box, label, caption in reversed(list(zip(boxes, labels, captions))):
        color = PALETTE[int(label) % len(PALETTE)]
        x1, y1, x2, y2 = (float(v) for v in box)
        # A dark halo under the coloured outline keeps it visible on bright and dark regions.
        draw.rectangle((x1, y1, x2, y2), outline=(0, 0, 0), width=line + style.halo)
        draw.rectangle((x1, y1, x2, y2), outline=color, width=line)
        if not caption:
            continue
        left, _, right, _ = draw.textbbox((0, 0), caption, font=font)
        tw, tag_h = right - left, th + 2 * pad
        # Above the box when it fits, else inside its top edge.
        ty = y1 - tag_h if y1 - tag_h >= 0 else y1
        tx = min(max(0.0, x1), max(0.0, w - tw - 2 * pad))
        draw.rectangle((tx, ty, tx + tw + 2 * pad - 1, ty + tag_h - 1), fill=color)
        draw.text((tx + pad - left, ty + pad - text_top), caption, fill=_text_color(color), font=font)
    return canvas
