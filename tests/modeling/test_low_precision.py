"""The opt-in bfloat16 weight storage (``weights_dtype="bfloat16"``): parameters stored in
bfloat16 (half their memory), compute in float32, outputs within the stated tolerance of
float32, and the default path untouched."""

from __future__ import annotations

import json

import pytest
import torch

import glip
from glip.data import generate_synthetic
from glip.hub.loading import load_model
from glip.modeling.low_precision import parse_weights_dtype, store_weights, stored_weights_dtype
from glip.ops.boxes import box_iou
from glip.structures import ImageBatch
from glip.text import Prompt
from glip.tools.common import ArgumentParser, add_model_args
from tests.conftest import OFFICIAL, load_case, require_fixtures, tiny_text_encoder_dir

# The README's stated effect of bfloat16 weights on the official tiny GLIP-T fixture model
# (both cases; measured: logits 0.013, regressions 9.3e-4, scores 1.5e-4, boxes 0.007 px
# where no near-tie swaps through NMS): the tolerances against float32.
LOGIT_TOL = 0.03
REGRESSION_TOL = 3e-3
SCORE_TOL = 5e-4
BOX_TOL_PX = 0.1


def _param_bytes(model: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


@pytest.fixture(scope="module")
def demo_pair():
    return load_model("demo-shapes"), load_model("demo-shapes", weights_dtype="bf16")


def test_parameters_are_stored_in_bfloat16_and_take_half_the_memory(demo_pair):
    fp32, bf16 = demo_pair
    assert stored_weights_dtype(fp32) is None
    assert all(p.dtype == torch.float32 for p in fp32.parameters())
    assert all(p.dtype == torch.bfloat16 for p in bf16.parameters())
    assert stored_weights_dtype(bf16) == torch.bfloat16
    assert _param_bytes(bf16) * 2 == _param_bytes(fp32)
    params = dict(fp32.named_parameters())
    reference = fp32.state_dict()
    for key, value in bf16.state_dict().items():
        if key in params:  # the float32 weights rounded to bfloat16, nothing else
            assert torch.equal(value, reference[key].to(torch.bfloat16)), key
        else:  # buffers (anchors, BERT position ids) stay exactly as loaded
            assert value.dtype == reference[key].dtype and torch.equal(value, reference[key]), key


def test_forward_computes_in_float32_and_restores_the_stored_weights(demo_pair):
    fp32, bf16 = demo_pair
    image = torch.rand(3, 96, 128) * 255
    tokens = bf16.tokenize("red circle. blue square.")
    batch = ImageBatch.from_tensors([image], 32)
    with torch.no_grad():
        out = bf16(batch, tokens.input_ids, tokens.attention_mask)
        ref = fp32(batch, tokens.input_ids, tokens.attention_mask)
    assert all(t.dtype == torch.float32 for t in out.head.dot_product_logits + out.trunk.visual)
    assert all(p.dtype == torch.bfloat16 for p in bf16.parameters())  # the float32 copies are gone
    assert all(isinstance(p, torch.nn.Parameter) for p in bf16.parameters())
    for ours, theirs in zip(out.head.dot_product_logits, ref.head.dot_product_logits):
        # bf16 weights move the logits of the noise image by up to 0.57 (9 %) through the demo
        # model trained on 2026-12-07 (its fusion text layers are trained), 0.05 before.
        torch.testing.assert_close(ours, theirs, atol=0.6, rtol=0.1)
        assert not torch.equal(ours, theirs)  # the weights really are rounded


def test_predictor_detections_stay_close_to_float32(tmp_path):
    data = generate_synthetic(tmp_path, num_train=0, num_val=2, image_size=(128, 192), seed=7)
    record = json.loads(data.val_json.read_text())
    names = [c["name"] for c in sorted(record["categories"], key=lambda c: c["id"])]
    files = [str(data.image_dir / image["file_name"]) for image in record["images"]]
    fp32 = glip.Predictor("demo-shapes", device="cpu").predict(files, names, threshold=0.0)
    bf16 = glip.Predictor("demo-shapes", device="cpu", weights_dtype="bfloat16").predict(files, names, threshold=0.0)
    for a, b in zip(fp32, bf16):
        top = min(5, len(a))  # the best detections of the trained model: each has its bf16 twin
        assert top > 0
        iou = box_iou(a.boxes[:top], b.boxes)
        iou[a.labels[:top, None] != b.labels[None, :]] = -1
        best = iou.argmax(1)
        assert (iou.max(1).values > 0.95).all()
        torch.testing.assert_close(b.scores[best], a.scores[:top], atol=0.02, rtol=0)


def test_official_fixture_model_within_the_stated_tolerance(tmp_path):
    require_fixtures()
    config = "tiny_glip_t"
    kwargs = dict(text_encoder=tiny_text_encoder_dir(config, tmp_path))
    path, yaml = OFFICIAL / config / "model_official.pth", OFFICIAL / config / "config.yaml"
    fp32, bf16 = load_model(path, yaml, **kwargs), load_model(path, yaml, weights_dtype="bfloat16", **kwargs)
    assert _param_bytes(bf16) * 2 == _param_bytes(fp32)
    for case in ("chelsea", "astronaut"):
        c = load_case(config, case)
        images = ImageBatch(c["image_tensor"], [tuple(s) for s in c["image_sizes_field_hw"]])
        with torch.no_grad():
            a = fp32(images, c["input_ids"], c["attention_mask"]).head
            b = bf16(images, c["input_ids"], c["attention_mask"]).head
        for ours, theirs in zip(b.dot_product_logits, a.dot_product_logits):
            torch.testing.assert_close(ours, theirs, atol=LOGIT_TOL, rtol=0)
        for ours, theirs in zip(b.box_regression, a.box_regression):
            torch.testing.assert_close(ours, theirs, atol=REGRESSION_TOL, rtol=0)
        tokens = fp32.tokenize(Prompt.from_spans(c["caption"], c["tokens_positive_char_spans"]))
        (a,) = fp32.detect(images, tokens)
        (b,) = bf16.detect(images, tokens)
        ref = c["predictions"]["gpu_ml_nms_emulated"]["final_resized_image_coords"]
        assert len(a) == len(b) == ref["bbox"].shape[0]  # the float32 path still matches the official one
        top = len(a) - 10  # away from the top-100 cut, where a near-tied box may drop out
        iou = box_iou(a.boxes[:top], b.boxes)
        iou[a.labels[:top, None] != b.labels[None, :]] = -1
        best = iou.argmax(1)
        torch.testing.assert_close(b.scores[best], a.scores[:top], atol=SCORE_TOL, rtol=0)
        # Random weights put all 100 scores within 0.01: near-tied boxes may swap through NMS,
        # so the typical box, not every box, is held to the tolerance.
        assert (b.boxes[best] - a.boxes[:top]).abs().amax(1).median() < BOX_TOL_PX


def test_weights_dtype_names_and_errors():
    assert parse_weights_dtype(None) is None
    assert parse_weights_dtype("float32") is None and parse_weights_dtype("fp32") is None
    assert parse_weights_dtype("bf16") == parse_weights_dtype("BFloat16") == torch.bfloat16
    with pytest.raises(ValueError, match="weights dtype must be one of"):
        parse_weights_dtype("int8")
    with pytest.raises(ValueError, match="narrower than float32"):
        store_weights(torch.nn.Linear(2, 2), torch.float64)
    model = store_weights(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="already"):
        store_weights(model)


def test_cli_option_is_opt_in():
    p = ArgumentParser(prog="x")
    add_model_args(p, weights_dtype=True)
    assert p.parse_args([]).weights_dtype == "float32"
    assert p.parse_args(["--weights-dtype", "bf16"]).weights_dtype == "bf16"
    plain = ArgumentParser(prog="y")
    add_model_args(plain)
    assert not hasattr(plain.parse_args([]), "weights_dtype")
