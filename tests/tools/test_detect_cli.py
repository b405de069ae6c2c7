"""`glip detect` and `glip models` end to end on the fixture checkpoint."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from glip.cli import main
from tests.conftest import OFFICIAL, load_case, tiny_text_encoder_dir

CAPTION = "a cat. a remote control. a dog."


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    for case in ("chelsea", "astronaut"):
        Image.fromarray(load_case("tiny_glip_t", case)["image_original_rgb_uint8"].numpy()).save(root / f"{case}.png")
    return root


def _args(tmp_path, *extra):
    return [
        "--weights",
        str(OFFICIAL / "tiny_glip_t" / "model_official.pth"),
        "--config",
        str(OFFICIAL / "tiny_glip_t" / "config.yaml"),
        "--text-encoder",
        str(tiny_text_encoder_dir("tiny_glip_t", tmp_path)),
        "--quiet",
        *extra,
    ]


def test_detect_folder_writes_json_and_images(inputs, tmp_path, capsys, tiny_model_factory):
    out = tmp_path / "out"
    rc = main(["detect", str(inputs), "--prompt", CAPTION, "--threshold", "0.05", "--out", str(out), *_args(tmp_path)])
    assert rc == 0
    entries = json.loads((out / "detections.json").read_text())
    assert [e["file"].rsplit("/", 1)[-1] for e in entries] == ["astronaut.png", "chelsea.png"]
    model = tiny_model_factory("tiny_glip_t")
    for entry in entries:
        ref = model.predict(entry["file"], CAPTION, threshold=0.05)
        assert (entry["height"], entry["width"]) == ref.image_size
        assert [d["phrase"] for d in entry["detections"]] == ref.phrases
        got = torch.tensor([d["box"] for d in entry["detections"]])
        torch.testing.assert_close(got, ref.boxes, atol=1e-4, rtol=0)
        annotated = Image.open(out / entry["file"].rsplit("/", 1)[-1])  # the input's name and format
        assert annotated.format == "PNG" and annotated.size == (entry["width"], entry["height"])
    table = capsys.readouterr().out
    assert "chelsea.png" in table and "astronaut.png" in table


def test_detect_reports_bad_inputs_and_continues(inputs, tmp_path, capsys):
    (tmp_path / "broken.jpg").write_bytes(b"\x89PNG garbage")
    out = tmp_path / "out"
    rc = main(
        [
            "detect",
            str(inputs / "chelsea.png"),
            str(tmp_path / "broken.jpg"),
            str(tmp_path / "nope.png"),
            "--prompt",
            CAPTION,
            "--out",
            str(out),
            *_args(tmp_path),
        ]
    )
    assert rc == 1
    entries = json.loads((out / "detections.json").read_text())
    assert "detections" in entries[0] and "error" in entries[1] and "not found" in entries[2]["error"]
    assert "2 of 3 inputs failed" in capsys.readouterr().err


def test_detect_glob(inputs, tmp_path):
    out = tmp_path / "out"
    assert main(["detect", str(inputs / "*.png"), "--prompt", CAPTION, "--out", str(out), *_args(tmp_path)]) == 0
    assert len(json.loads((out / "detections.json").read_text())) == 2


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--prompt", "  "], "prompt is empty"),
        (["--prompt", ""], "prompt is empty"),  # not "no --prompt" (a tuned model's own prompt)
        (["--prompt", "..."], "names no phrase"),
        (["--prompt", "a cat.", "--threshold", "2"], "--threshold"),
        (["--prompt", "a cat.", "--masks"], "has no mask head"),
    ],
)
def test_detect_argument_errors(inputs, tmp_path, capsys, extra, message):
    rc = main(["detect", str(inputs), *extra, *_args(tmp_path)])
    assert rc != 0
    assert message in capsys.readouterr().err


def test_help_and_models(capsys):
    with pytest.raises(SystemExit) as e:
        main(["detect", "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for flag in (
        "--prompt",
        "--model",
        "--weights",
        "--config",
        "--text-encoder",
        "--threshold",
        "--batch-size",
        "--device",
        "--out",
    ):
        assert flag in text
    assert main(["models"]) == 0
    listing = capsys.readouterr().out
    assert "glip-t" in listing and "glip-l" in listing and "glip_large_model.pth" not in listing


def test_detect_keeps_formats_and_agnostic_nms_keeps_one_label_per_box(tmp_path):
    """The bundled demo model: a .png input gives a PNG picture, a .jpg a JPEG; with
    --agnostic-nms the JSON holds what Predictor(agnostic_nms=True) finds."""
    from glip.api import Predictor
    from glip.data import generate_synthetic

    data = generate_synthetic(tmp_path / "data", num_train=0, num_val=2, image_size=(128, 160), seed=7)
    png = data.image_dir / "val_00001.png"
    jpg = tmp_path / "photo.jpg"
    Image.open(data.image_dir / "val_00000.png").save(jpg)
    prompt = "blue triangle. triangle. blue shape. red circle. circle. blue diamond"
    out = tmp_path / "out"
    common = ["--model", "demo-shapes", "--device", "cpu", "--prompt", prompt, "--threshold", "0.1", "--quiet"]
    assert main(["detect", str(png), str(jpg), "--agnostic-nms", "--out", str(out), *common]) == 0
    assert Image.open(out / "val_00001.png").format == "PNG" and Image.open(out / "photo.jpg").format == "JPEG"
    entries = json.loads((out / "detections.json").read_text())
    model = Predictor("demo-shapes", device="cpu").model
    reference = Predictor(model, agnostic_nms=True).predict([str(png), str(jpg)], prompt, threshold=0.1)
    plain = Predictor(model).predict(str(png), prompt, threshold=0.1)
    assert len(reference[0]) < len(plain)  # the flag changed something
    for entry, ref in zip(entries, reference):
        assert [d["phrase"] for d in entry["detections"]] == ref.phrases


def test_models_lists_the_bundled_model_at_its_measured_size(capsys):
    from glip.hub.zoo import ZOO, bundled_dir

    folder = bundled_dir(ZOO["demo-shapes"])
    size_mb = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6
    assert main(["models"]) == 0
    (row,) = [line for line in capsys.readouterr().out.splitlines() if line.startswith("demo-shapes")]
    assert row.split()[2:4] == [f"{size_mb:.1f}", "MB"]  # 11.6 MB, not the 19 once written by hand
