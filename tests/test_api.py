"""glip.predict / Predictor: equal to model.predict, batching, long prompts, bad inputs, zoo."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import glip
from glip.api import Predictor, chunk_prompt
from glip.hub import fetch, zoo
from glip.structures import Detections
from glip.text import PromptError, parse_prompt
from glip.utils.image import ImageLoadError
from tests.conftest import OFFICIAL, load_case, tiny_text_encoder_dir


@pytest.fixture(scope="module")
def images():
    a = load_case("tiny_glip_t", "chelsea")["image_original_rgb_uint8"].numpy()
    b = load_case("tiny_glip_t", "astronaut")["image_original_rgb_uint8"].numpy()
    return a, b


@pytest.fixture(scope="module")
def predictor(tiny_model_factory):
    return Predictor(tiny_model_factory("tiny_glip_t"), batch_size=4)


CAPTION = "a cat. a remote control. a dog."


def _same(a: Detections, b: Detections, atol: float = 1e-4):
    assert len(a) == len(b)
    torch.testing.assert_close(a.boxes, b.boxes, atol=atol, rtol=0)
    torch.testing.assert_close(a.scores, b.scores, atol=1e-5, rtol=0)
    assert torch.equal(a.labels, b.labels) and a.phrases == b.phrases


def test_predict_equals_model_predict(predictor, images, tiny_model_factory):
    model = tiny_model_factory("tiny_glip_t")
    for image in images:
        _same(predictor.predict(image, CAPTION, threshold=0.05), model.predict(image, CAPTION, threshold=0.05), 0)
    out = glip.predict(images[0], CAPTION, model=model, threshold=0.05)
    _same(out, model.predict(images[0], CAPTION, threshold=0.05), 0)


def test_inputs_path_pil_array_agree(predictor, images, tmp_path):
    path = tmp_path / "a.png"
    Image.fromarray(images[0]).save(path)
    ref = predictor.predict(images[0], CAPTION, threshold=0.0)
    _same(predictor.predict(str(path), CAPTION, threshold=0.0), ref, 0)
    _same(predictor.predict(Image.open(path), CAPTION, threshold=0.0), ref, 0)


@pytest.mark.parametrize("order", ["same_size", "mixed"])
def test_batch_equals_one_by_one(predictor, images, order):
    a, b = images
    flipped = np.ascontiguousarray(a[:, ::-1])
    batch = [a, flipped, a] if order == "same_size" else [a, b, flipped, b, a]
    one = [predictor.predict(im, CAPTION, threshold=0.0) for im in batch]
    many = predictor.predict(batch, CAPTION, threshold=0.0, batch_size=3)
    assert isinstance(many, list) and len(many) == len(batch)
    for x, y in zip(one, many):
        _same(x, y)


def test_long_prompt_is_chunked_and_merged(predictor, images):
    names = [f"object number {i}" for i in range(120)] + ["a cat", "a dog"]
    tok = predictor.model.tokenizer
    assert len(tok(". ".join(names), verbose=False)["input_ids"]) > 256
    chunks = chunk_prompt(parse_prompt(names), tok, 256, 80)
    assert len(chunks) > 1 and all(len(tok(c.caption)["input_ids"]) <= 256 for c in chunks)
    assert [p for c in chunks for p in c.phrases] == names
    merged = predictor.predict(images[0], names, threshold=0.0, max_detections=0)
    last = chunks[-1]
    assert "a cat" in last.phrases  # the class sits in the last chunk and is still found
    cat = merged[[p == "a cat" for p in merged.phrases]]
    assert len(cat) > 0
    assert set(cat.labels.tolist()) == {names.index("a cat") + 1}
    # The same class run in its own chunk alone gives the same boxes and scores.
    alone = predictor.predict(images[0], list(last.phrases), threshold=0.0, max_detections=0)
    alone_cat = alone[[p == "a cat" for p in alone.phrases]]
    torch.testing.assert_close(cat.scores, alone_cat.scores)
    torch.testing.assert_close(cat.boxes, alone_cat.boxes)
    top = predictor.predict(images[0], names, threshold=0.0)
    assert len(top) == 100 and torch.equal(top.scores, merged.scores[:100])


def test_explicit_chunk_size(predictor, images):
    names = ["a cat", "a remote control", "a dog"]
    chunked = predictor.predict(images[0], names, threshold=0.0, chunk_size=1, max_detections=0)
    assert set(chunked.phrases) <= set(names)
    for i, name in enumerate(names):
        alone = predictor.predict(images[0], [name], threshold=0.0, max_detections=0)
        sel = chunked[chunked.labels == i + 1]
        torch.testing.assert_close(sel.scores, alone.scores)


@pytest.mark.parametrize("prompt", ["", "   ", ". . .", "!?"])
def test_empty_prompts_are_clear_errors(predictor, images, prompt):
    with pytest.raises(PromptError):
        predictor.predict(images[0], prompt)


def test_threshold_and_batch_size_are_checked(predictor, images):
    with pytest.raises(ValueError, match="threshold"):
        predictor.predict(images[0], CAPTION, threshold=1.5)
    with pytest.raises(ValueError, match="batch_size"):
        predictor.predict(images[0], CAPTION, batch_size=0)


def test_image_modes_and_exif(predictor, images, tmp_path):
    rgb = Image.fromarray(images[0])
    rgb.convert("L").save(tmp_path / "grey.png")
    rgb.convert("RGBA").save(tmp_path / "rgba.png")
    rgb.convert("P").save(tmp_path / "palette.png")
    Image.fromarray(np.asarray(rgb.convert("L")).astype(np.uint16) * 257).save(tmp_path / "grey16.png")
    for name in ("grey.png", "rgba.png", "palette.png", "grey16.png"):
        det = predictor.predict(str(tmp_path / name), CAPTION, threshold=0.0)
        assert det.image_size == (300, 451), name
    # An EXIF-rotated photo is turned upright: orientation 6 = rotate 90 degrees clockwise.
    exif = Image.Exif()
    exif[0x0112] = 6
    rgb.save(tmp_path / "rotated.jpg", exif=exif.tobytes())
    assert predictor.predict(str(tmp_path / "rotated.jpg"), CAPTION, threshold=0.0).image_size == (451, 300)


def test_bad_images_raise_and_batches_continue(predictor, images, tmp_path):
    (tmp_path / "bad.jpg").write_bytes(b"not an image at all")
    with pytest.raises(ImageLoadError, match="cannot read"):
        predictor.predict(str(tmp_path / "bad.jpg"), CAPTION)
    with pytest.raises(ImageLoadError, match="not found"):
        predictor.predict(str(tmp_path / "missing.jpg"), CAPTION)
    results = dict(predictor.iter_predict([images[0], str(tmp_path / "bad.jpg"), images[1]], CAPTION, threshold=0.0))
    assert isinstance(results[1], ImageLoadError)
    assert isinstance(results[0], Detections) and isinstance(results[2], Detections)


def test_json_and_coco_round_trip(predictor, images):
    det = predictor.predict(images[0], CAPTION, threshold=0.0)
    again = Detections.from_dict(json.loads(json.dumps(det.to_dict())))
    _same(again, det, 1e-6)
    coco = det.to_coco(image_id=7, category_ids={1: 17, 2: 75, 3: 18})
    assert coco[0]["image_id"] == 7 and coco[0]["category_id"] in {17, 75, 18}
    x1, y1, x2, y2 = det.boxes[0].tolist()
    assert coco[0]["bbox"] == pytest.approx([x1, y1, x2 - x1, y2 - y1])


def test_zoo_offline_without_cache_names_file_and_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("GLIP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    with pytest.raises(zoo.ModelNotAvailableError) as e:
        fetch.resolve_weights("glip-t")
    message = str(e.value)
    assert "glip_tiny_model_o365_goldg_cc_sbu.pth" in message and "--weights" in message and "MB" in message


def test_zoo_downloads_once_then_loads_converted(tmp_path, monkeypatch):
    monkeypatch.setenv("GLIP_CACHE", str(tmp_path / "cache"))
    calls = []

    def fake_download(entry):
        calls.append(entry.filename)
        return OFFICIAL / "tiny_glip_a" / "model_official.pth"

    monkeypatch.setattr(fetch, "_download", fake_download)
    monkeypatch.setattr(fetch, "zoo_config", lambda name: OFFICIAL / "tiny_glip_a" / "config.yaml")
    te = tiny_text_encoder_dir("tiny_glip_a", tmp_path)
    out = fetch.resolve_weights("glip-t-a", text_encoder=te)
    assert (out / "model.safetensors").is_file() and zoo.is_cached("glip-t-a")
    assert fetch.resolve_weights("glip-t-a") == out and calls == ["glip_a_tiny_o365.pth"]
    assert [r["cached"] for r in zoo.list_models() if r["name"] == "glip-t-a"] == [True]
    model = glip.load_model(out)
    assert model.config.name == "glip-t-a"


def test_to_supervision_with_a_stand_in_module(predictor, images, monkeypatch):
    import sys
    import types

    captured = {}

    class FakeDetections:
        def __init__(self, xyxy, confidence, class_id, data):
            captured.update(xyxy=xyxy, confidence=confidence, class_id=class_id, data=data)

    monkeypatch.setitem(sys.modules, "supervision", types.SimpleNamespace(Detections=FakeDetections))
    det = predictor.predict(images[0], CAPTION, threshold=0.05)
    det.to_supervision()
    np.testing.assert_allclose(captured["xyxy"], det.boxes.numpy())
    np.testing.assert_allclose(captured["confidence"], det.scores.numpy())
    assert captured["class_id"].tolist() == (det.labels - 1).tolist()
    assert captured["data"]["class_name"].tolist() == det.phrases


# ------------------------------------------------ the bundled demo model (64-token prompts)
OVERLAPPING = "blue triangle. triangle. blue shape. red circle. circle. blue diamond"


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """The demo model and a synthetic image with a blue triangle, a blue diamond and a red circle."""
    from glip.data import generate_synthetic

    root = tmp_path_factory.mktemp("shapes")
    data = generate_synthetic(root, num_train=0, num_val=2, image_size=(128, 160), seed=7)
    return glip.load_model("demo-shapes", device="cpu"), str(data.image_dir / "val_00001.png")


def test_model_predict_splits_a_long_prompt_as_glip_predict_does(shapes):
    model, image = shapes
    names = [f"object number {i}" for i in range(20)] + ["blue triangle", "red circle"]
    chunks = model.prepare_prompt(names)
    assert len(chunks) > 1  # beyond the demo model's 64 tokens: it used to raise PromptError
    assert [p for c in chunks for p in c.phrases] == names
    found = model.predict(image, names, threshold=0.0)
    _same(found, glip.predict(image, names, model=model, threshold=0.0), 0)
    # The later chunks' classes get their global labels.
    assert set(found.labels.tolist()) <= set(range(1, len(names) + 1))
    assert {names[i - 1] for i in found.labels.tolist()} == set(found.phrases)


def _cross_label_overlaps(det: Detections, iou: float) -> int:
    from glip.ops.boxes import box_iou

    ious = box_iou(det.boxes, det.boxes, offset=1.0)  # the +1 areas of GLIP's NMS
    other = det.labels[:, None] != det.labels[None, :]
    return int(((ious > iou) & other).triu(1).sum())


def test_agnostic_nms_keeps_one_label_per_box(shapes):
    model, image = shapes
    plain = glip.predict(image, OVERLAPPING, model=model, threshold=0.1)
    assert _cross_label_overlaps(plain, 0.6) > 0  # the same shape found as "triangle" and "blue triangle"
    for one in (
        glip.predict(image, OVERLAPPING, model=model, threshold=0.1, agnostic_nms=True),
        Predictor(model, agnostic_nms=True).predict(image, OVERLAPPING, threshold=0.1),
        Predictor(model).predict(image, OVERLAPPING, threshold=0.1, agnostic_nms=True),
        model.predict(image, OVERLAPPING, threshold=0.1, agnostic_nms=True),
    ):
        assert 0 < len(one) < len(plain) and _cross_label_overlaps(one, 0.6) == 0
        assert torch.equal(one.scores, torch.sort(one.scores, descending=True).values)
        # Each kept detection is one of the plain ones; the best one is kept.
        assert one.scores[0] == plain.scores[0] and set(one.scores.tolist()) <= set(plain.scores.tolist())
