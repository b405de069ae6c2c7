"""Inference trims the prompt padding: same detections, far fewer text columns."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import glip
from glip.structures import ImageBatch
from glip.text import BUNDLED_TEXT_ENCODERS, Prompt, load_tokenizer, parse_prompt, tokenize_prompt
from glip.text.tokenize import trim_padding
from tests.conftest import CASES, load_case


def test_trim_cuts_padding_to_a_multiple_of_8():
    tokenizer = load_tokenizer(BUNDLED_TEXT_ENCODERS["bert-base-uncased"])
    full = tokenize_prompt(tokenizer, parse_prompt("a cat. a remote control. a dog."), 256)
    real = int(full.attention_mask.sum())
    assert real == 12  # [CLS] a cat . a remote control . a dog . [SEP]
    trimmed = trim_padding(full)
    assert trimmed.input_ids.shape == (1, 16) and trimmed.positive_map.shape == (len(full.phrases), 16)
    assert torch.equal(trimmed.input_ids, full.input_ids[:, :16])
    assert torch.equal(trimmed.attention_mask, full.attention_mask[:, :16])
    assert torch.equal(trimmed.positive_map, full.positive_map[:, :16])
    assert trimmed.label_to_token == full.label_to_token
    assert trim_padding(full, multiple=1).input_ids.shape == (1, 12)
    assert trim_padding(trimmed) is trimmed  # nothing left to cut
    assert trim_padding(full, multiple=512) is full  # never longer than it was


def _detect_widths(model, images, tokens, trim: bool):
    """Detections and the text widths the text encoder saw."""
    widths: list[int] = []
    hook = model.text_encoder.register_forward_hook(lambda m, args, out: widths.append(args[0].shape[1]))
    model.trim_text = trim
    try:
        dets = model.detect(images, tokens)
    finally:
        model.trim_text = True
        hook.remove()
    return dets, widths


def _assert_same(dets_a, dets_b, min_score: float = 0.0) -> None:
    """Same detections as sets: every box of ``a`` has one of ``b`` with its label, box
    within 1e-3 px and score within 1e-5 (the order of near-tied scores may differ)."""
    assert len(dets_a) == len(dets_b)
    for a, b in zip(dets_a, dets_b):
        a, b = a.above(min_score), b.above(min_score)
        assert len(a) == len(b) > 0
        match = [
            int(torch.argmin((b.boxes - box).abs().amax(1) + 1e9 * (b.labels != label)))
            for box, label in zip(a.boxes, a.labels)
        ]
        assert len(set(match)) == len(match)
        assert torch.equal(a.labels, b.labels[match])
        torch.testing.assert_close(a.boxes, b.boxes[match], atol=1e-3, rtol=0)
        torch.testing.assert_close(a.scores, b.scores[match], atol=1e-5, rtol=0)


@pytest.mark.parametrize("case", CASES[:1])  # one case: each costs two forward passes
def test_trimmed_equals_padded_on_official_fixture_model(fixtures_dir, tiny_model_factory, case):
    model = tiny_model_factory("tiny_glip_t")
    c = load_case("tiny_glip_t", case)
    images = ImageBatch(c["image_tensor"], [tuple(s) for s in c["image_sizes_field_hw"]])
    tokens = model.tokenize(Prompt.from_spans(c["caption"], c["tokens_positive_char_spans"]))
    full, full_widths = _detect_widths(model, images, tokens, trim=False)
    trimmed, trimmed_widths = _detect_widths(model, images, tokens, trim=True)
    assert full_widths == [256] and trimmed_widths[0] < 256 and trimmed_widths[0] % 8 == 0
    _assert_same(trimmed, full)


@pytest.mark.parametrize("tuned", [False, True])
def test_trimmed_equals_padded_on_demo_model(tuned):
    model = glip.Predictor("demo-shapes", device="cpu").model
    prompt = "red circle. blue square. green triangle."
    tokens = model.tokenize(prompt)
    if tuned:  # prompt tuning: a per-position offset that must still apply to the same tokens
        offset = model.enable_prompt_offset(token_ids=tokens.input_ids[0, : int(tokens.attention_mask.sum())].tolist())
        torch.nn.init.normal_(offset.weight, std=0.5)
    rgb = np.full((96, 160, 3), 40, dtype=np.uint8)
    rgb[10:50, 20:60] = (30, 60, 220)  # a blue square
    yy, xx = np.mgrid[:96, :160]
    rgb[(yy - 60) ** 2 + (xx - 110) ** 2 < 400] = (220, 40, 30)  # a red circle
    tensor, _ = model.preprocessing(rgb)
    images = ImageBatch.from_tensors([tensor, tensor.flip(-1)], model.preprocessing.size_divisibility)
    try:
        full, full_widths = _detect_widths(model, images, tokens, trim=False)
        trimmed, trimmed_widths = _detect_widths(model, images, tokens, trim=True)
    finally:
        model.prompt_offset = None
    assert full_widths == [model.max_query_len] and trimmed_widths[0] < model.max_query_len
    _assert_same(trimmed, full, min_score=0.05)
