"""Detections.plot / save: the picture of the detections, sizes that follow the image."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from glip.structures import Detections
from glip.utils.draw import draw_detections, draw_style

GREY = 100


def _one_box(size: int) -> tuple[np.ndarray, Detections]:
    """A flat grey square image with one box in its lower half, tagged "a cat 0.87"."""
    image = np.full((size, size, 3), GREY, dtype=np.uint8)
    box = torch.tensor([[size * 0.25, size * 0.5, size * 0.75, size * 0.9]])
    det = Detections(box, torch.tensor([0.87]), torch.tensor([1]), ["a cat"], (size, size))
    return image, det


def _tag_rows(drawn: np.ndarray, size: int) -> int:
    """Rows above the box (the tag sits there) that the drawing changed."""
    top = int(size * 0.5) - 1  # the box's first row, minus the halo's
    column = drawn[:top, int(size * 0.25) + 1]  # just inside the box's left edge: tag, not text gaps
    return int((column != GREY).any(-1).sum())


def test_tag_height_scales_with_the_image():
    heights = {}
    for size in (128, 160, 800, 1024):
        image, det = _one_box(size)
        heights[size] = _tag_rows(np.asarray(draw_detections(image, det.boxes.tolist(), [1], ["a cat 0.87"])), size)
    # Small images get small tags (a 12-px font, a 12-row tag, used to cover 128-px shapes),
    # big ones big tags, within bounds: never under 8 rows (legible), at most 8% of a
    # thumbnail's height, at most 4% of a large image's.
    assert heights[128] < heights[800] < heights[1024]
    assert 8 <= heights[128] <= 0.08 * 128 and 8 <= heights[160] <= 0.08 * 160
    assert heights[800] <= 0.04 * 800 and heights[1024] <= 0.04 * 1024
    assert draw_style(128, 128).line_width == 1 and draw_style(800, 800).line_width == 3
    assert draw_style(20000, 20000).font_size == 64 and draw_style(10, 10).font_size == 8


def test_plot_draws_boxes_tags_and_masks():
    image, det = _one_box(128)
    drawn = np.asarray(det.plot(image))
    assert drawn.shape == image.shape
    assert tuple(drawn[int(128 * 0.7), 32]) == (255, 127, 14)  # the left edge in label 1's colour
    assert tuple(drawn[int(128 * 0.7), 64]) == (GREY,) * 3  # the box's inside is untouched
    mask = torch.zeros(1, 128, 128, dtype=torch.bool)
    mask[0, 80:90, 50:60] = True
    masked = Detections(det.boxes, det.scores, det.labels, det.phrases, det.image_size, mask)
    filled = np.asarray(masked.plot(image))
    assert tuple(filled[85, 55]) != (GREY,) * 3 and tuple(filled[75, 55]) == (GREY,) * 3
    assert np.array_equal(np.asarray(masked.plot(image, masks=False)), drawn)
    # Without scores the tag is shorter (the phrase alone).
    assert (np.asarray(det.plot(image, scores=False)) != drawn).any()


def test_plot_takes_paths_and_pil_and_refuses_another_image(tmp_path):
    image, det = _one_box(128)
    path = tmp_path / "cat.png"
    Image.fromarray(image).save(path)
    ref = np.asarray(det.plot(image))
    assert np.array_equal(np.asarray(det.plot(path)), ref)
    assert np.array_equal(np.asarray(det.plot(Image.open(path))), ref)
    with pytest.raises(ValueError, match="the image is 64x128 but these detections were found in a 128x128"):
        det.plot(image[:, :64])


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".webp"])
def test_save_writes_the_plot_in_the_suffix_format(tmp_path, suffix):
    image, det = _one_box(128)
    out = det.save(tmp_path / f"out{suffix}", image)
    with Image.open(out) as saved:
        assert saved.format == {".png": "PNG", ".jpg": "JPEG", ".webp": "WEBP"}[suffix]
        pixels = np.asarray(saved.convert("RGB"))
    if suffix == ".png":
        assert np.array_equal(pixels, np.asarray(det.plot(image)))


def test_empty_detections_plot_the_image_unchanged():
    image = np.full((50, 60, 3), 7, dtype=np.uint8)
    assert np.array_equal(np.asarray(Detections.empty((50, 60)).plot(image)), image)


def test_the_best_detection_is_drawn_on_top():
    image = np.full((128, 128, 3), GREY, dtype=np.uint8)
    box = [32.0, 64.0, 96.0, 120.0]
    det = Detections(torch.tensor([box, box]), torch.tensor([0.9, 0.3]), torch.tensor([1, 2]), ["best", "worse"])
    drawn = np.asarray(det.plot(image))
    assert tuple(drawn[90, 32]) == (255, 127, 14)  # the outline in label 1's colour, not label 2's
    assert tuple(drawn[60, 32]) == (255, 127, 14)  # and its tag (its left padding)
