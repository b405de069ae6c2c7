"""ONNX Runtime as a Predictor backend: the same detections as PyTorch, exported once, from the CLI too."""

from __future__ import annotations

import copy
import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

import glip
from glip.cli import main
from glip.export.runtime import parse_backend
from glip.structures import Detections
from tests.conftest import load_case

ATOL = 1e-3
PROMPT = ["red circle", "blue square", "green triangle", "yellow star", "a purple hexagon"]


def _close(a: Detections, b: Detections) -> None:
    assert len(a) == len(b) > 0 and a.phrases == b.phrases and torch.equal(a.labels, b.labels)
    torch.testing.assert_close(a.scores, b.scores, atol=ATOL, rtol=0)
    torch.testing.assert_close(a.boxes, b.boxes, atol=ATOL, rtol=0)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One ONNX cache for the module (each model is exported once)."""
    return tmp_path_factory.mktemp("glip-cache")


@pytest.fixture
def glip_cache(cache, monkeypatch):
    monkeypatch.setenv("GLIP_CACHE", str(cache))
    return cache


@pytest.fixture(scope="module")
def demo():
    return glip.Predictor("demo-shapes", device="cpu").model


def _shapes(seed: int, size: tuple[int, int]) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 255, (*size, 3), dtype=np.uint8)


def test_demo_model_onnxruntime_equals_pytorch(demo, glip_cache):
    images = [_shapes(0, (96, 128)), _shapes(1, (150, 100))]  # two padded sizes: dynamic axes
    torch_out = glip.Predictor(demo).predict(images, PROMPT, threshold=0.0, chunk_size=2, max_detections=0)
    ort = glip.Predictor(demo, backend="onnxruntime")
    ort_out = ort.predict(images, PROMPT, threshold=0.0, chunk_size=2, max_detections=0)
    for a, b in zip(torch_out, ort_out):
        _close(a, b)
    # Exported on first use, then reused: a second predictor exports nothing.
    (folder,) = (glip_cache / "onnx").iterdir()
    assert sorted(p.name for p in folder.iterdir()) == ["backbone.onnx", "head.onnx"]
    stamp = (folder / "head.onnx").stat().st_mtime_ns
    glip.Predictor(demo, backend="onnxruntime").predict(images[0], PROMPT)
    assert (folder / "head.onnx").stat().st_mtime_ns == stamp
    # int8 is opt-in, a quantised copy beside the float graphs; its scores move but stay near.
    int8 = glip.Predictor(demo, backend="onnxruntime-int8").predict(images[0], PROMPT, threshold=0.0)
    assert (folder / "head.int8.onnx").is_file()
    assert not torch.equal(int8.scores[:5], torch_out[0].scores[:5])
    assert abs(float(int8.scores[0]) - float(torch_out[0].scores[0])) < 0.1


def test_backend_names_and_unsupported_modes(demo):
    assert parse_backend(None) == "torch" and parse_backend("ONNXRuntime") == "onnxruntime"
    with pytest.raises(ValueError, match="unknown backend 'tensorrt': choose one of torch, onnxruntime"):
        glip.Predictor(demo, backend="tensorrt")
    with pytest.raises(ValueError, match="no masks"):
        glip.Predictor(demo, backend="onnxruntime", autocast="bfloat16")


def test_cli_backend_flag(demo, glip_cache, tmp_path, capsys):
    path = tmp_path / "shapes.png"
    Image.fromarray(_shapes(0, (96, 128))).save(path)
    prompt = ". ".join(PROMPT)
    found = {}
    for backend in ("torch", "onnxruntime"):
        out = tmp_path / backend
        args = ["detect", str(path), "--model", "demo-shapes", "--prompt", prompt, "--threshold", "0.05"]
        assert main([*args, "--out", str(out), "--quiet", "--backend", backend]) == 0
        found[backend] = json.loads((out / "detections.json").read_text())
    capsys.readouterr()
    (a,), (b,) = found["torch"], found["onnxruntime"]
    assert [d["phrase"] for d in a["detections"]] == [d["phrase"] for d in b["detections"]]
    for x, y in zip(a["detections"], b["detections"]):
        np.testing.assert_allclose(x["box"], y["box"], atol=ATOL)
        assert abs(x["score"] - y["score"]) < ATOL
    assert main(["detect", str(path), "--model", "demo-shapes", "--prompt", prompt, "--backend", "tensorrt"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unknown backend 'tensorrt'" in err


@pytest.mark.slow  # export + onnxruntime of the GLIP-T-layout fixture, as tests/export/test_onnx.py (pytest -m slow)
def test_official_fixture_onnxruntime_equals_pytorch(tiny_model_factory, glip_cache):
    model = copy.copy(tiny_model_factory("tiny_glip_t"))  # at a smaller input size (shared weights)
    model.preprocessing = replace(model.preprocessing, min_size=320, max_size=512)
    case = load_case("tiny_glip_t", "chelsea")
    image = case["image_original_rgb_uint8"].numpy()
    ref = glip.Predictor(model).predict(image, case["caption"], threshold=0.0)
    _close(ref, glip.Predictor(model, backend="onnxruntime").predict(image, case["caption"], threshold=0.0))
