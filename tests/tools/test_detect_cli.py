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
