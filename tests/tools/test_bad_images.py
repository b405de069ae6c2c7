"""A bad image never stops a run: every input that cannot be processed becomes a
per-file error, the others complete (bundled demo-shapes model, no fixtures)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from glip.api import Predictor
from glip.cli import main
from glip.inference import detection
from glip.structures import Detections
from glip.utils.image import ImageLoadError, load_image, resize_shape

PROMPT = "red circle. blue square."


@pytest.fixture(scope="module")
def predictor():
    return Predictor("demo-shapes", device="cpu")


def _write_inputs(root):
    rng = np.random.default_rng(0)
    noise = lambda h, w: rng.integers(0, 255, (h, w, 3), dtype=np.uint8)  # noqa: E731
    Image.fromarray(noise(64, 80)).save(root / "one.png")
    Image.fromarray(noise(2, 5000)).save(root / "thin.png")  # 5000 x 2 pixels
    Image.fromarray(noise(40, 50)).convert("CMYK").save(root / "cmyk.jpg")
    frames = [Image.fromarray(noise(30, 40)) for _ in range(3)]
    frames[0].save(root / "anim.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    Image.fromarray(rng.integers(0, 65535, (30, 40), dtype=np.uint16)).save(root / "deep.tif")  # 16-bit
    Image.fromarray(rng.random((30, 40), dtype=np.float32)).save(root / "float.tif")  # 32-bit float
    (root / "empty.jpg").write_bytes(b"")
    (root / "text.png").write_text("a text file renamed .png\n")
    return ["one.png", "thin.png", "cmyk.jpg", "anim.gif", "deep.tif", "float.tif", "empty.jpg", "text.png"]


def test_detect_with_every_kind_of_bad_input(tmp_path, capsys):
    names = _write_inputs(tmp_path)
    out = tmp_path / "out"
    files = [str(tmp_path / n) for n in names]
    rc = main(["detect", *files, "--model", "demo-shapes", "--prompt", PROMPT, "--threshold", "0.0",
               "--batch-size", "3", "--out", str(out), "--quiet", "--device", "cpu"])  # fmt: skip
    captured = capsys.readouterr()
    assert rc == 1  # non-zero at the end, after processing everything
    entries = {e["file"].rsplit("/", 1)[-1]: e for e in json.loads((out / "detections.json").read_text())}
    assert list(entries) == names
    # Each picture in its input's format; a GIF (256 colours) as PNG.
    pictures = {"one.png": "one.png", "thin.png": "thin.png", "cmyk.jpg": "cmyk.jpg", "anim.gif": "anim.png",
                "deep.tif": "deep.tif", "float.tif": "float.tif"}  # fmt: skip
    for name, picture in pictures.items():
        assert "detections" in entries[name] and "error" not in entries[name], entries[name]
        assert (out / picture).is_file()
    assert (entries["thin.png"]["width"], entries["thin.png"]["height"]) == (5000, 2)
    assert "empty" in entries["empty.jpg"]["error"] and "cannot read" in entries["text.png"]["error"]
    assert "2 of 8 inputs failed" in captured.err and "Traceback" not in captured.err
    assert captured.out.count("ERROR") == 2


def test_tiny_and_extreme_sizes_resize_to_at_least_one_pixel():
    assert resize_shape(2, 5000, 128, 256) == (1, 256)
    assert resize_shape(5000, 2, 128, 256) == (256, 1)
    assert resize_shape(1, 1, 800, 1333) == (800, 800)
    assert resize_shape(480, 640, 800, 1333) == (800, 1066)  # the official rule is unchanged
    assert load_image(np.zeros((1, 1, 3), np.uint8)).shape == (1, 1, 3)
    with pytest.raises(ImageLoadError, match="empty"):
        load_image(np.zeros((0, 5, 3), np.uint8))


def test_an_image_that_breaks_the_model_fails_alone(predictor, monkeypatch):
    """A batch whose forward pass raises is rerun image by image: only the culprit fails."""
    images = [np.full((64, 64, 3), value, np.uint8) for value in (0, 50, 255, 100)]  # one batch of 4
    original = detection.detect_prompts
    calls = []

    def fragile(model, batch, chunks, original_sizes, **options):
        calls.append(len(original_sizes))
        if bool((batch.tensor.flatten(1).amax(1) > 2.0).any()):  # the white image (normalised 255)
            raise RuntimeError("simulated kernel failure")
        return original(model, batch, chunks, original_sizes=original_sizes, **options)

    monkeypatch.setattr(detection, "detect_prompts", fragile)
    results = dict(predictor.iter_predict(images, PROMPT, threshold=0.0, batch_size=4))
    assert calls == [4, 1, 1, 1, 1]  # the batch, then each image alone
    assert isinstance(results[2], ImageLoadError) and "simulated kernel failure" in str(results[2])
    assert all(isinstance(results[i], Detections) for i in (0, 1, 3))
