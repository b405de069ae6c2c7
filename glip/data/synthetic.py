"""A deterministic synthetic detection dataset: coloured shapes on noisy backgrounds.

Categories are colour x shape ("red circle", "blue square", ...). Some combinations can
be held out of training (they appear only in validation) for a zero-shot check: the
model has seen "red" and "circle" separately, never "red circle".

Everything comes from one seed through numpy's PCG64 and PIL drawing, so the same seed
gives byte-identical json files and PNGs. Only numpy and PIL are used (and pycocotools
for the rare mask with a hole, written as RLE).

Every annotation carries the exact ``segmentation`` of its shape: the outline of the
drawn pixels along pixel edges (:func:`glip.data.masks.outline_polygons`), which
rasterises back to exactly those pixels. Like ``bbox`` and ``area`` it describes the
whole shape, including the parts a shape drawn later covers.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from glip.data.captions import write_synthetic_captions
from glip.data.masks import segmentation_from_mask
from glip.data.phrasecut import phrasecut_from_coco
from glip.data.vqa_synthetic import write_synthetic_vqa

__all__ = ["COLORS", "PHRASECUT_NAME", "SHAPES", "SyntheticDataset", "generate_synthetic", "synthetic_categories"]

# RGB centres of the colour names; each object's colour is jittered by up to +-JITTER.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (40, 165, 55),
    "blue": (35, 75, 215),
    "yellow": (235, 215, 35),
    "purple": (135, 50, 185),
    "orange": (245, 135, 25),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "star")
DEFAULT_COLORS = ("red", "green", "blue", "yellow")
DEFAULT_SHAPES = ("circle", "square", "triangle", "diamond")
JITTER = 20
# The validation split as PhraseCut-style referring-segmentation tasks (glip.data.phrasecut).
PHRASECUT_NAME = "phrasecut_val.json"
# Objects: side between these fractions of the image's short side, at least MIN_SIDE px.
SIZE_RANGE = (0.15, 0.5)
MIN_SIDE = 12
# Two objects may overlap by at most this fraction of either one's box (so none is hidden).
MAX_COVER = 0.45


@dataclass(frozen=True)
class SyntheticDataset:
    """Where :func:`generate_synthetic` wrote the data.

    Attributes:
        root: the output folder.
        train_json, val_json: COCO jsons (``bbox`` ``[x, y, w, h]`` with ``x2 = x + w - 1``
            the last pixel of the shape, ``area`` the shape's pixel count, ``segmentation``
            the shape's exact pixel outline as COCO polygons).
        image_dir: folder of the PNGs (``file_name`` is relative to it).
        categories: all category names, json id ``i + 1`` for ``categories[i]``.
        held_out: names that appear only in ``val_json`` (``train_json`` does not list them).
    """

    root: Path
    train_json: Path
    val_json: Path
    image_dir: Path
    categories: tuple[str, ...]
    held_out: tuple[str, ...]

    @property
    def phrasecut_json(self) -> Path:
        """The validation split as PhraseCut tasks (one per image and category present)."""
        return self.root / PHRASECUT_NAME


def synthetic_categories(colors: Sequence[str] = DEFAULT_COLORS, shapes: Sequence[str] = DEFAULT_SHAPES) -> list[str]:
    """``"<colour> <shape>"`` names, colour-major."""
    for c in colors:
        if c not in COLORS:
            raise ValueError(f"unknown colour {c!r}; known: {sorted(COLORS)}")
    for s in shapes:
        if s not in SHAPES:
            raise ValueError(f"unknown shape {s!r}; known: {list(SHAPES)}")
    return [f"{c} {s}" for c in colors for s in shapes]


def _choose_held_out(names: list[str], count: int, rng: np.random.Generator) -> list[str]:
    """``count`` combinations such that every colour and shape keeps at least two training
    combinations (so each word is still learned)."""
    colors = {n.split(" ")[0] for n in names}
    shapes = {n.split(" ")[1] for n in names}
    held: list[str] = []
    for i in rng.permutation(len(names)).tolist():
        if len(held) == count:
            break
        name = names[i]
        color, shape = name.split(" ")
        rest = [n for n in names if n not in held and n != name]
        if sum(n.startswith(color + " ") for n in rest) >= 2 and sum(n.endswith(" " + shape) for n in rest) >= 2:
            held.append(name)
    if len(held) < count:
        raise ValueError(f"cannot hold out {count} of {len(colors)}x{len(shapes)} combinations and keep each word")
    return sorted(held, key=names.index)


def _background(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """``uint8 [H, W, 3]``: a low-saturation base, smooth blotches, a faint texture and noise."""
    base = rng.uniform(70, 190)
    tint = rng.uniform(-12, 12, size=3)
    grid = rng.normal(0.0, 25.0, size=(int(rng.integers(3, 8)), int(rng.integers(3, 8))))
    grid_img = Image.fromarray(((grid - grid.min()) / (np.ptp(grid) + 1e-6) * 255).astype(np.uint8))
    smooth = np.asarray(grid_img.resize((width, height), Image.BILINEAR), dtype=np.float64) / 255.0 * 50 - 25
    yy, xx = np.mgrid[0:height, 0:width]
    period, angle = rng.uniform(6, 20), rng.uniform(0, np.pi)
    stripes = 6.0 * np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period)
    noise = rng.normal(0.0, 8.0, size=(height, width, 3))
    img = base + tint[None, None, :] + (smooth + stripes)[:, :, None] + noise
    return np.clip(img, 0, 255).astype(np.uint8)


def _shape_mask(shape: str, box: tuple[int, int, int, int], height: int, width: int) -> Image.Image:
    """An ``L`` mask of ``shape`` drawn in the pixel box ``(x0, y0, x1, y1)`` (inclusive)."""
    mask = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(mask)
    x0, y0, x1, y1 = box
    cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    if shape == "circle":
        draw.ellipse([x0, y0, x1, y1], fill=255)
    elif shape == "square":
        draw.rectangle([x0, y0, x1, y1], fill=255)
    elif shape == "triangle":
        draw.polygon([(cx, y0), (x1, y1), (x0, y1)], fill=255)
    elif shape == "diamond":
        draw.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=255)
    elif shape == "star":
        r_out, r_in = (x1 - x0) / 2.0, (x1 - x0) / 5.0
        pts = []
        for k in range(10):
            r = r_out if k % 2 == 0 else r_in
            a = -np.pi / 2 + k * np.pi / 5
            pts.append((cx + r * np.cos(a), cy + r * np.sin(a)))
        draw.polygon(pts, fill=255)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return mask


def _covers_too_much(box: tuple[int, int, int, int], others: list[tuple[int, int, int, int]]) -> bool:
    x0, y0, x1, y1 = box
    area = (x1 - x0 + 1) * (y1 - y0 + 1)
    for a0, b0, a1, b1 in others:
        iw = min(x1, a1) - max(x0, a0) + 1
        ih = min(y1, b1) - max(y0, b0) + 1
        if iw <= 0 or ih <= 0:
            continue
        inter = iw * ih
        if inter > MAX_COVER * area or inter > MAX_COVER * (a1 - a0 + 1) * (b1 - b0 + 1):
            return True
    return False


def _draw_image(
    height: int,
    width: int,
    names: list[str],
    rng: np.random.Generator,
) -> tuple[np.ndarray, list[tuple[str, list[int], int, Any]]]:
    """Draws the objects ``names`` (those that find room); returns the image and
    ``(name, [x, y, w, h], area, segmentation)`` per drawn object."""
    img = Image.fromarray(_background(height, width, rng))
    placed: list[tuple[int, int, int, int]] = []
    objects: list[tuple[str, list[int], int, Any]] = []
    short = min(height, width)
    for name in names:
        color, shape = name.split(" ")
        for _ in range(20):
            side = int(max(MIN_SIDE, rng.uniform(*SIZE_RANGE) * short))
            side_y = side if shape in ("circle", "square", "star") else int(side * rng.uniform(0.8, 1.2))
            side_y = min(max(side_y, MIN_SIDE), height)
            x0 = int(rng.integers(0, width - side + 1))
            y0 = int(rng.integers(0, height - side_y + 1))
            box = (x0, y0, x0 + side - 1, y0 + side_y - 1)
            if not _covers_too_much(box, placed):
                break
        else:
            continue
        mask = _shape_mask(shape, box, height, width)
        m = np.asarray(mask) > 0
        if not m.any():
            continue
        ys, xs = np.nonzero(m)
        rgb = np.clip(np.array(COLORS[color]) + rng.integers(-JITTER, JITTER + 1, size=3), 0, 255)
        layer = Image.new("RGB", (width, height), tuple(int(v) for v in rgb))
        img = Image.composite(layer, img, mask)
        xa, ya, xb, yb = int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())
        placed.append((xa, ya, xb, yb))
        objects.append((name, [xa, ya, xb - xa + 1, yb - ya + 1], int(m.sum()), segmentation_from_mask(m)))
    return np.asarray(img), objects


def _split(
    split: str,
    count: int,
    names: list[str],
    allowed: list[str],
    forced: list[str],
    size_range: tuple[int, int],
    max_objects: int,
    image_dir: Path,
    rng: np.random.Generator,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for i in range(count):
        height = int(rng.integers(size_range[0], size_range[1] + 1))
        width = int(rng.integers(size_range[0], size_range[1] + 1))
        num = int(rng.integers(1, max_objects + 1))
        chosen = [allowed[int(j)] for j in rng.integers(0, len(allowed), size=num)]
        if i < len(forced):  # every held-out combination shows up in validation
            chosen[0] = forced[i]
        pixels, objects = _draw_image(height, width, chosen, rng)
        file_name = f"{split}_{i:05d}.png"
        Image.fromarray(pixels).save(image_dir / file_name, format="PNG", compress_level=1)
        image_id = i + 1
        images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
        for name, bbox, area, segmentation in objects:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": names.index(name) + 1,
                    "bbox": bbox,
                    "area": area,
                    "iscrowd": 0,
                    "segmentation": segmentation,
                }
            )
    return images, annotations


def generate_synthetic(
    out_dir: str | Path,
    num_train: int = 160,
    num_val: int = 40,
    image_size: int | tuple[int, int] = (128, 256),
    seed: int = 0,
    held_out: int | Sequence[str] = 0,
    colors: Sequence[str] = DEFAULT_COLORS,
    shapes: Sequence[str] = DEFAULT_SHAPES,
    max_objects: int = 5,
) -> SyntheticDataset:
    """Writes ``out_dir/train.json``, ``out_dir/val.json``, ``out_dir/images/*.png``,
    ``out_dir/phrasecut_val.json`` (the validation split as PhraseCut tasks), VQA
    questions about the images (``out_dir/vqa_train.json``, ``out_dir/vqa_val.json``) and
    ``out_dir/captions_{train,val}.json`` with their grounded copies
    ``out_dir/grounding_{train,val}.json`` (MDETR layout: a noun phrase per named shape;
    :func:`glip.data.captions.write_synthetic_captions`).

    Args:
        image_size: side length, or ``(min, max)``: each image's height and width are
            drawn uniformly in that range.
        held_out: category names to keep out of training, or how many to choose (from
            the seed, keeping every colour and shape in at least two training categories).
            They are absent from ``train.json`` (images, annotations and category list)
            and each appears in ``val.json`` when ``num_val`` allows.
        max_objects: up to this many objects per image (1 at least; some may not fit).

    Returns:
        the paths and category lists (:class:`SyntheticDataset`).
    """
    lo, hi = (image_size, image_size) if isinstance(image_size, int) else image_size
    if lo < 2 * MIN_SIDE or hi < lo:
        raise ValueError(f"image_size {image_size} must be at least {2 * MIN_SIDE} and (min, max) ordered")
    names = synthetic_categories(colors, shapes)
    rng = np.random.Generator(np.random.PCG64(seed))
    if isinstance(held_out, int):
        held = _choose_held_out(names, held_out, rng)
    else:
        held = [str(n) for n in held_out]
        unknown = [n for n in held if n not in names]
        if unknown:
            raise ValueError(f"held-out names {unknown} are not categories {names}")
    train_names = [n for n in names if n not in held]
    if not train_names:
        raise ValueError("every category is held out")

    root = Path(out_dir)
    image_dir = root / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    train_rng, val_rng = (np.random.Generator(np.random.PCG64(s)) for s in rng.integers(0, 2**63, size=2))
    train_images, train_anns = _split(
        "train", num_train, names, train_names, [], (lo, hi), max_objects, image_dir, train_rng
    )
    val_images, val_anns = _split("val", num_val, names, names, held, (lo, hi), max_objects, image_dir, val_rng)

    all_categories = [{"id": i + 1, "name": n, "supercategory": "shape"} for i, n in enumerate(names)]
    train_json, val_json = root / "train.json", root / "val.json"
    for path, images, anns, cats in (
        (train_json, train_images, train_anns, [c for c in all_categories if c["name"] not in held]),
        (val_json, val_images, val_anns, all_categories),
    ):
        text = json.dumps({"images": images, "annotations": anns, "categories": cats}, sort_keys=True, indent=1)
        path.write_text(text + "\n", encoding="utf-8")
    # VQA questions about the same images: root/vqa_train.json, root/vqa_val.json (glip.data.vqa_synthetic).
    write_synthetic_vqa(root, train_json, val_json, seed)
    val = {"images": val_images, "annotations": val_anns, "categories": all_categories}
    text = json.dumps(phrasecut_from_coco(val), sort_keys=True, indent=1)
    (root / PHRASECUT_NAME).write_text(text + "\n", encoding="utf-8")
    # Captioning (GLIPv2): captions_train.json / captions_val.json beside the detection jsons,
    # and the same captions grounded (MDETR layout): grounding_train.json / grounding_val.json.
    write_synthetic_captions(root, {"train": train_json, "val": val_json}, seed)
    return SyntheticDataset(root, train_json, val_json, image_dir, tuple(names), tuple(held))
