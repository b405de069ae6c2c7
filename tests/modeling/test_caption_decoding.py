"""Caption decoding: beam search with one beam is greedy decoding, max length and the end
token are honoured, and a model without the caption head is a one-line error."""

from __future__ import annotations

import pytest
import torch

from glip.modeling.caption_decoding import (
    CaptionUnavailableError,
    _special_ids,
    _Stepper,
    beam_candidates,
    beam_search,
    greedy_decode,
    require_caption_head,
)
from glip.modeling.heads.caption import CAPTION
from glip.structures import ImageBatch
from tests.golden import case


def test_beam_one_is_greedy(captioner) -> None:
    model, features = captioner
    greedy = greedy_decode(model, features, max_length=4)
    beam = beam_search(model, features, beam_size=1, max_length=4)
    assert beam.token_ids == greedy.token_ids and beam.finished == greedy.finished
    assert beam.score == pytest.approx(greedy.score, abs=1e-5)
    # A random model never ends early: the cut is the max length.
    assert len(greedy.token_ids) == 4 and not greedy.finished
    wider = beam_search(model, features, beam_size=3, max_length=4)
    assert wider.score >= greedy.score - 1e-5  # beam search finds at least as likely a caption


def test_greedy_follows_the_step_argmax(captioner) -> None:
    model, features = captioner
    special = _special_ids(model.tokenizer)
    step = _Stepper(model, features, special)
    out = greedy_decode(model, features, max_length=3)
    prefix = [special["cls"]]
    for token in out.token_ids:
        log_probs = step(torch.tensor([prefix]))[0]
        assert int(log_probs.argmax()) == token
        assert log_probs[special["mask"]] == float("-inf") and log_probs[special["cls"]] == float("-inf")
        prefix.append(token)


def test_end_token_stops(captioner, monkeypatch) -> None:
    """Bias the predictor towards [SEP] at the second step: both decoders stop there."""
    model, features = captioner
    special = _special_ids(model.tokenizer)
    original = _Stepper.__call__

    def biased(self, prefixes):
        out = original(self, prefixes)
        if prefixes.shape[1] == 2:
            out[:, special["end"]] = 0.0
        return out

    monkeypatch.setattr(_Stepper, "__call__", biased)
    greedy = greedy_decode(model, features, max_length=10)
    assert greedy.finished and len(greedy.token_ids) == 1
    beam = beam_search(model, features, beam_size=1, max_length=10)
    assert beam.finished and beam.token_ids == greedy.token_ids
    # Wider: the candidates a re-ranker gets are the finished ones, best first, the first
    # of them beam_search's caption.
    wide = beam_candidates(model, features, beam_size=3, max_length=10)
    best = beam_search(model, features, beam_size=3, max_length=10)
    assert 1 < len(wide) <= 3 and all(c.finished for c in wide)
    assert [c.score for c in wide] == sorted((c.score for c in wide), reverse=True)
    assert (wide[0].token_ids, wide[0].score) == (best.token_ids, best.score)


def test_model_without_caption_head_is_a_clear_error() -> None:
    model = case.build_tiny_glip()
    with pytest.raises(CaptionUnavailableError, match="has no caption head") as info:
        require_caption_head(model)
    assert "\n" not in str(info.value)
    tensor, _ = model.preprocessing(case.golden_image())
    features = model.backbone(ImageBatch.from_tensors([tensor], 32).tensor)
    with pytest.raises(CaptionUnavailableError):
        greedy_decode(model, features)
    assert CAPTION not in model.heads
