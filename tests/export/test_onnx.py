"""ONNX export: onnxruntime reproduces the PyTorch head outputs, at the traced and another image size."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch

import glip
from glip.cli import main
from glip.export import OnnxGLIP, export_onnx
from glip.text.tokenize import trim_padding
from tests.conftest import load_case

ATOL = 1e-3


def _run(session, **inputs: torch.Tensor) -> list[np.ndarray]:
    return session.run(None, {name: t.numpy() for name, t in inputs.items()})


def _assert_close(got: list[np.ndarray], ref: tuple[torch.Tensor, ...]) -> None:
    assert len(got) == len(ref) == 3
    for g, r in zip(got, ref):
        assert g.shape == tuple(r.shape)
        np.testing.assert_allclose(g, r.numpy(), atol=ATOL, rtol=0)


@pytest.fixture(scope="module")
def demo_model():
    return glip.Predictor("demo-shapes", device="cpu").model


def test_cli_export_fixed_prompt_dynamic_size_on_demo_model(demo_model, tmp_path, capsys):
    out = tmp_path / "demo.onnx"
    prompt = "red circle. blue square."
    argv = ["export", "--model", "demo-shapes", "--out", str(out), "--prompt", prompt, "--dynamic", "--quiet"]
    assert main([*argv, "--size", "96", "128"]) == 0
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["phrases"] == ["red circle", "blue square"] and meta["inputs"] == ["image"]
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image"]
    tokens = trim_padding(demo_model.tokenize(prompt))
    assert tokens.input_ids.shape[1] < demo_model.max_query_len
    reference = OnnxGLIP(demo_model, tokens).eval()
    torch.manual_seed(0)
    for size in [(96, 128), (160, 224)]:
        image = torch.randn(1, 3, *size)
        with torch.no_grad():
            _assert_close(_run(session, image=image), reference(image))
    # A user error is one line, no traceback.
    assert main(["export", "demo-shapes", str(tmp_path / "x.onnx")]) == 1
    assert capsys.readouterr().err.strip().count("\n") == 0


def test_prompt_as_input_on_demo_model(demo_model, tmp_path):
    out = tmp_path / "demo_prompt.onnx"
    assert export_onnx(demo_model, out, prompt_input=True, dynamic=True, image_size=(64, 96)) is None
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    reference = OnnxGLIP(demo_model).eval()
    image = torch.randn(1, 3, 96, 128)
    for prompt in ["green triangle.", "red circle. blue square. yellow star. a purple hexagon."]:
        tokens = trim_padding(demo_model.tokenize(prompt))
        ids, mask = tokens.input_ids, tokens.attention_mask
        with torch.no_grad():
            _assert_close(_run(session, image=image, input_ids=ids, attention_mask=mask), reference(image, ids, mask))


@pytest.mark.slow  # export + onnxruntime of the GLIP-T-layout fixture: ~17 s on 2 cores (pytest -m slow)
def test_official_fixture_model(fixtures_dir, tiny_model_factory, tmp_path):
    model = tiny_model_factory("tiny_glip_t")
    case = load_case("tiny_glip_t", "chelsea")
    out = tmp_path / "tiny.onnx"
    tokens = export_onnx(model, out, case["caption"], dynamic=True, image_size=(128, 192))
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    reference = OnnxGLIP(model, tokens).eval()
    image = case["image_tensor"]  # the fixture's 320 x 512 input, another size than traced
    with torch.no_grad():
        ref = reference(image)
    _assert_close(_run(session, image=image), ref)
    # The PyTorch side is the model itself: its head outputs, levels concatenated, trimmed T.
    t = tokens.input_ids.shape[1]
    torch.testing.assert_close(
        ref[2][0, :, :t], torch.cat(case["head_dot_product_logits"], 1)[0, :, :t], atol=1e-4, rtol=1e-4
    )
