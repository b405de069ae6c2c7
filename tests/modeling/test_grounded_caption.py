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


def _support(model, text: str) -> float:
    """The least grounded noun phrase's best score, from the predictor with the caption as
    the prompt (the rule ``rerank="grounding"`` ranks by)."""
    from glip.text.noun_phrases import find_noun_phrases

    found = find_noun_phrases(text)
    prompt = Prompt(text, tuple(p for p, _ in found), tuple((s,) for _, s in found))
    det = model.predict(case.golden_image(), prompt, threshold=0.0)
    per_phrase = [det.scores[det.labels == j + 1] for j in range(len(found))]
    return min(float(scores.max()) if scores.numel() else 0.0 for scores in per_phrase)


def test_grounding_rerank_picks_the_best_grounded_caption(captioner, monkeypatch) -> None:
    """Of the beam's finished captions (stubbed), ``rerank="grounding"`` takes the one whose
    least grounded noun phrase scores highest; ``"none"`` the likeliest; a tie goes to the
    likelier; an unknown reranker is a one-line error."""
    model, _ = captioner
    texts = [TEXT, "a green triangle", "a blue circle", "a red square and a green triangle"]

    def cands(*texts_: str) -> list[GeneratedCaption]:
        return [
            GeneratedCaption(model.tokenizer(t, add_special_tokens=False)["input_ids"], -1.0 - i, True)
            for i, t in enumerate(texts_)
        ]

    support = {t: _support(model, t) for t in texts}
    assert len(set(support.values())) == len(texts)  # the case tells the candidates apart
    texts.sort(key=support.__getitem__)  # the likeliest is the least grounded
    best = texts[-1]
    monkeypatch.setattr(captioning, "beam_candidates", lambda m, f, beam_size, max_length: cands(*texts))
    ranked = glip.caption(case.golden_image(), model=model, beam_size=4, rerank="grounding", ground=False)
    assert ranked.text == best and ranked.log_prob == -1.0 - (len(texts) - 1)
    likeliest = glip.caption(case.golden_image(), model=model, beam_size=4, rerank="none", ground=False)
    assert likeliest.text == texts[0]
    model.heads["caption"].rerank = "grounding"  # the head's default is used
    try:
        assert glip.caption(case.golden_image(), model=model, beam_size=4, ground=False).text == best
        monkeypatch.setattr(captioning, "beam_candidates", lambda m, f, beam_size, max_length: cands(best, best))
        tie = captioning.caption_image(model, case.golden_image(), beam_size=2, ground=False)
        assert tie.log_prob == -1.0  # equal support: the likelier
    finally:
        model.heads["caption"].rerank = "none"
    with pytest.raises(ValueError, match="rerank must be one of"):
        glip.caption(case.golden_image(), model=model, beam_size=2, rerank="clip")


def _contrastive_support(model, texts: list[str]) -> dict[str, float]:
    """Each caption's least supported noun phrase's best score, from the predictor with the
    distinct noun phrases of all ``texts`` as one class-name prompt (the rule
    ``rerank="contrastive"`` ranks by)."""
    from glip.text.noun_phrases import find_noun_phrases

    found = {t: [p for p, _ in find_noun_phrases(t)] for t in texts}
    phrases = list(dict.fromkeys(p for t in texts for p in found[t]))
    det = model.predict(case.golden_image(), phrases, threshold=0.0)
    best = {p: max((s for q, s in zip(det.phrases, det.scores.tolist()) if q == p), default=0.0) for p in phrases}
    return {t: min(best[p] for p in found[t]) for t in texts}


def test_contrastive_rerank_grounds_all_candidates_phrases_in_one_prompt(captioner, monkeypatch) -> None:
    """``rerank="contrastive"`` takes the candidate whose least supported noun phrase scores
    highest when the noun phrases of all the candidates share one prompt (a tie goes to the
    likelier); its boxes still come from the chosen caption as the prompt."""
    model, _ = captioner
    texts = ["a red square", "a green triangle", "a blue circle", "a yellow star to the left of a white box"]
    support = _contrastive_support(model, texts)
    assert len(set(support.values())) == len(texts)  # the case tells the candidates apart
    texts.sort(key=support.__getitem__)  # the likeliest is the least supported
    best = texts[-1]

    def cands(*texts_: str) -> list[GeneratedCaption]:
        return [
            GeneratedCaption(model.tokenizer(t, add_special_tokens=False)["input_ids"], -1.0 - i, True)
            for i, t in enumerate(texts_)
        ]

    monkeypatch.setattr(captioning, "beam_candidates", lambda m, f, beam_size, max_length: cands(*texts))
    ranked = glip.caption(case.golden_image(), model=model, beam_size=4, rerank="contrastive", box_threshold=0.0)
    assert ranked.text == best and ranked.log_prob == -1.0 - (len(texts) - 1)
    alone = Prompt(best, tuple(ranked.phrases), tuple((s,) for s in ranked.spans))
    det = model.predict(case.golden_image(), alone, threshold=0.0)
    torch.testing.assert_close(ranked.scores[0], det.scores[det.labels == 1].max())
    monkeypatch.setattr(captioning, "beam_candidates", lambda m, f, beam_size, max_length: cands(best, best))
    tie = glip.caption(case.golden_image(), model=model, beam_size=2, rerank="contrastive", ground=False)
    assert tie.log_prob == -1.0  # equal support: the likelier
    monkeypatch.setattr(captioning, "beam_candidates", lambda m, f, beam_size, max_length: cands("the", best))
    assert glip.caption(case.golden_image(), model=model, beam_size=2, rerank="contrastive", ground=False).text == best
