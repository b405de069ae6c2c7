"""Grounded captioning: the generated caption's noun phrases get the grounding head's boxes
(the golden tiny GLIP with a caption head; decoding stubbed to a fixed caption)."""

from __future__ import annotations

import pytest
import torch

import glip
from glip.inference import captioning
from glip.modeling.caption_decoding import CaptionUnavailableError, GeneratedCaption
from glip.text import Prompt
from tests.golden import case

TEXT = "a red square to the left of a blue circle"


def test_noun_phrases_are_grounded(captioner, monkeypatch) -> None:
    model, _ = captioner
    ids = model.tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    monkeypatch.setattr(captioning, "greedy_decode", lambda m, f, max_length: GeneratedCaption(ids, -1.5, True))
    cap = glip.caption(case.golden_image(), model=model, box_threshold=0.0)
    assert cap.text == TEXT and cap.finished and cap.log_prob == -1.5
    assert cap.phrases == ["a red square", "a blue circle"] and cap.spans == [(0, 12), (28, 41)]
    assert cap.boxes.shape == (2, 4) and cap.scores.shape == (2,)
    # Each phrase's box is its best detection with the caption as the prompt.
    prompt = Prompt(TEXT, ("a red square", "a blue circle"), (((0, 12),), ((28, 41),)))
    det = model.predict(case.golden_image(), prompt, threshold=0.0)
    for j in range(2):
        best = det.scores[det.labels == j + 1].argmax()
        torch.testing.assert_close(cap.boxes[j], det.boxes[det.labels == j + 1][best])
    assert cap.detections is not None and set(cap.detections.phrases) <= set(cap.phrases)
    high = glip.caption(case.golden_image(), model=model, box_threshold=1.0)
    assert high.text == TEXT and high.phrases == [] and high.boxes.shape == (0, 4)
    plain = glip.caption(case.golden_image(), model=model, ground=False)
    assert plain.phrases == [] and plain.detections is None


def test_model_without_caption_head() -> None:
    with pytest.raises(CaptionUnavailableError, match="no caption head"):
        glip.caption(case.golden_image(), model=case.build_tiny_glip())
