"""Line charts drawn with Pillow (no plotting library): training curves as a PNG."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from PIL import Image, ImageDraw

from glip.utils.draw import PALETTE, load_font

__all__ = ["Panel", "Series", "draw_panels", "nice_ticks"]

# Pixel sizes of one panel and its margins (room for the tick labels and the title).
_PANEL_W, _PANEL_H = 520, 360
_LEFT, _RIGHT, _TOP, _BOTTOM = 64, 16, 34, 40
_FONT_SIZE = 13


@dataclass
class Series:
    """One line: ``xs`` and ``ys`` of equal length; ``markers``: also a dot at each point
    (for sparse series such as validation results)."""

    name: str
    xs: Sequence[float]
    ys: Sequence[float]
    markers: bool = False


@dataclass
class Panel:
    """One chart: a title, an x-axis label and its lines. ``log_y``: logarithmic y axis
    (used when every value is positive); ``x_range``: the x axis covers at least this
    (charts of one run share their steps)."""

    title: str
    series: list[Series] = field(default_factory=list)
    x_label: str = "step"
    log_y: bool = False
    x_range: tuple[float, float] | None = None


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About ``count`` round values (steps of 1, 2 or 5 x 10^k) covering ``[low, high]``."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return []
    if high <= low:  # one value: a unit around it
        low, high = low - 1.0, high + 1.0
    raw = (high - low) / max(1, count)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.floor(low / step) * step
    ticks, value = [], first
    while value <= high + step * 1e-9:
        ticks.append(round(value, 12))
        value += step
    if ticks[-1] < high:
        ticks.append(round(value, 12))
    return ticks


def _log_ticks(low: float, high: float) -> list[float]:
    """log10 of the 1-2-5 values around ``[10^low, 10^high]`` (powers of ten alone when
    that gives more than 8)."""
    values = [m * 10.0**k for k in range(math.floor(low), math.ceil(high) + 1) for m in (1, 2, 5)]
    inside = [v for v in values if 10**low <= v <= 10**high]
    below = [v for v in values if v < 10**low][-1:] or [10 ** math.floor(low)]
    above = [v for v in values if v > 10**high][:1] or [10 ** math.ceil(high)]
    ticks = [math.log10(v) for v in below + inside + above]
    if len(ticks) > 8:
        ticks = [float(k) for k in range(math.floor(low), math.ceil(high) + 1)]
    return ticks


def _format(value: float) -> str:
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 1e5 or magnitude < 1e-3:
        return f"{value:.0e}"
    return f"{value:.4g}"


def _draw_panel(canvas: Image.Image, left: int, panel: Panel) -> None:
    draw = ImageDraw.Draw(canvas)
    font = load_font(_FONT_SIZE)
    x0, y0, x1, y1 = left + _LEFT, _TOP, left + _PANEL_W - _RIGHT, _PANEL_H - _BOTTOM
    draw.text((x0, 8), panel.title, fill=(0, 0, 0), font=font)
    points = [
        (float(x), float(y))
        for s in panel.series
        for x, y in zip(s.xs, s.ys)
        if math.isfinite(float(x)) and math.isfinite(float(y))
    ]
    if not points:
        draw.rectangle((x0, y0, x1, y1), outline=(0, 0, 0))
        draw.text((x0 + 10, (y0 + y1) // 2), "no values", fill=(120, 120, 120), font=font)
        return
    log_y = panel.log_y and all(y > 0 for _, y in points)
    fy = (lambda v: math.log10(v)) if log_y else (lambda v: v)
    xs = [x for x, _ in points]
    ys = [fy(y) for _, y in points]
    x_min, x_max = min(xs), max(xs)
    if panel.x_range is not None:
        x_min, x_max = min(x_min, panel.x_range[0]), max(x_max, panel.x_range[1])
    x_ticks = nice_ticks(x_min, x_max)
    y_ticks = _log_ticks(min(ys), max(ys)) if log_y else nice_ticks(min(ys), max(ys))
    x_lo, x_hi = x_ticks[0], x_ticks[-1]
    y_lo, y_hi = y_ticks[0], y_ticks[-1]

    def px(x: float) -> float:
        return x0 + (x - x_lo) / ((x_hi - x_lo) or 1.0) * (x1 - x0)

    def py(y: float) -> float:
        return y1 - (y - y_lo) / ((y_hi - y_lo) or 1.0) * (y1 - y0)

    for t in x_ticks:
        draw.line((px(t), y1, px(t), y1 + 4), fill=(0, 0, 0))
        label = _format(t)
        width = draw.textlength(label, font=font)
        draw.text((px(t) - width / 2, y1 + 6), label, fill=(0, 0, 0), font=font)
    for t in y_ticks:
        draw.line((x0 + 1, py(t), x1 - 1, py(t)), fill=(230, 230, 230))
        draw.line((x0 - 4, py(t), x0, py(t)), fill=(0, 0, 0))
        label = _format(10**t if log_y else t)
        width = draw.textlength(label, font=font)
        draw.text((x0 - 6 - width, py(t) - _FONT_SIZE / 2 - 1), label, fill=(0, 0, 0), font=font)
    draw.rectangle((x0, y0, x1, y1), outline=(0, 0, 0))
    x_label_width = draw.textlength(panel.x_label, font=font)
    draw.text(((x0 + x1 - x_label_width) / 2, y1 + 22), panel.x_label, fill=(80, 80, 80), font=font)
    legend_y = y0 + 6
    for i, s in enumerate(panel.series):
        color = PALETTE[i % len(PALETTE)]
        line = [
            (px(float(x)), py(fy(float(y))))
            for x, y in zip(s.xs, s.ys)
            if math.isfinite(float(x)) and math.isfinite(float(y)) and (not log_y or float(y) > 0)
        ]
        if len(line) > 1:
            draw.line(line, fill=color, width=2)
        if s.markers or len(line) == 1:
            for cx, cy in line:
                draw.ellipse((cx - 3, cy - 3, cx + 3, cy + 3), fill=color)
        # The legend, top right: a coloured bar and the name.
        name_width = draw.textlength(s.name, font=font)
        lx = x1 - 10 - name_width
        draw.rectangle(
            (lx - 24, legend_y - 1, lx - 4 + name_width + 8, legend_y + _FONT_SIZE + 3), fill=(255, 255, 255)
        )
        draw.line((lx - 20, legend_y + _FONT_SIZE / 2 + 1, lx - 6, legend_y + _FONT_SIZE / 2 + 1), fill=color, width=3)
        draw.text((lx, legend_y), s.name, fill=(0, 0, 0), font=font)
        legend_y += _FONT_SIZE + 6


def draw_panels(panels: Sequence[Panel]) -> Image.Image:
    """The panels side by side on a white RGB image (``520 * len(panels)`` x 360 px)."""
    canvas = Image.new("RGB", (_PANEL_W * max(1, len(panels)), _PANEL_H), (255, 255, 255))
    for i, panel in enumerate(panels):
        _draw_panel(canvas, i * _PANEL_W, panel)
    return canvas
