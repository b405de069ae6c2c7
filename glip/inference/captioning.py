"""Grounded captioning on a loaded model: :func:`caption_image` (behind
:meth:`glip.inference.Predictor.caption` and :func:`glip.caption`).

A caption is decoded with the captioning head on the causal trunk
(:mod:`glip.modeling.caption_decoding`; with ``rerank="grounding"`` or ``"contrastive"``
the beam's finished captions are ranked by how well the grounding head finds their noun
phrases). Its noun phrases (the offline chunker of :mod:`glip.text.noun_phrases`) are then
grounded by the grounding head in a second, bi-directional pass with the caption itself as
the prompt, so each phrase comes with its best box.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from glip.modeling.caption_decoding import GeneratedCaption, beam_candidates, greedy_decode, require_caption_head
from glip.modeling.glip import GLIP
from glip.modeling.heads.caption import RERANKERS
from glip.structures import Detections, ImageBatch
from glip.text import Prompt
from glip.text.noun_phrases import find_noun_phrases
from glip.utils.image import ImageInput

from .detection import detect_chunks, detect_prompts
from .processor import Processor

__all__ = ["Caption", "caption_image"]


@dataclass
class Caption:
    """A generated caption and its grounded noun phrases.

    Attributes:
        text: the caption (lower case for an uncased tokenizer; no special tokens).
        phrases: the P noun phrases of ``text`` that got a box, in caption order.
        boxes: ``Tensor[P, 4]`` float32 ``(x1, y1, x2, y2)`` in original-image pixels: each
            phrase's highest-scoring detection.
        scores: ``Tensor[P]``, those detections' scores.
        spans: P ``(start, end)`` character spans of ``phrases`` in ``text``.
        log_prob: the summed log-probability of the generated tokens.
        finished: whether decoding produced the end token (else ``max_length`` cut it).
        detections: every detection of the noun phrases (labels index all the chunker's
            phrases, 1-based), or None when grounding was skipped or found no phrase.
    """

    text: str
    phrases: list[str] = field(default_factory=list)
    boxes: Tensor = field(default_factory=lambda: torch.zeros(0, 4))
    scores: Tensor = field(default_factory=lambda: torch.zeros(0))
    spans: list[tuple[int, int]] = field(default_factory=list)
    log_prob: float = 0.0
    finished: bool = True
    detections: Detections | None = None


def _detect_noun_phrases(
    model: GLIP, processor: Processor, features: list[Tensor], batch: ImageBatch, text: str, size: tuple[int, int]
) -> tuple[list[tuple[str, tuple[int, int]]], Detections | None]:
    """``text``'s noun phrases (the offline chunker's ``(phrase, span)``) and every detection
    of them with ``text`` as the prompt (labels: 1-based phrase indices), or None when it
    has no noun phrase."""
    found = find_noun_phrases(text)
    if not found:
        return found, None
    prompt = Prompt(text, tuple(p for p, _ in found), tuple((span,) for _, span in found))
    ((det,),) = detect_prompts(model, batch, [processor.tokenize(prompt)], [size], features=features)
    return found, det


def _best_boxes(found: list[tuple[str, tuple[int, int]]], det: Detections | None, thr: float):
    """(phrases, spans, boxes, scores) of the phrases of ``found`` with a detection scoring
    ``thr`` or more in ``det``: each one's best, in caption order."""
    phrases, spans, boxes, scores = [], [], [], []
    for j, (phrase, span) in enumerate(found if det is not None else []):
        hits = (det.labels == j + 1) & (det.scores >= thr)
        if bool(hits.any()):
            best = int(torch.nonzero(hits)[det.scores[hits].argmax()])
            phrases.append(phrase)
            spans.append(span)
            boxes.append(det.boxes[best])
            scores.append(det.scores[best])
    if not boxes:
        return [], [], torch.zeros(0, 4), torch.zeros(0)
    return phrases, spans, torch.stack(boxes), torch.stack(scores)


def _grounding_support(found: list[tuple[str, tuple[int, int]]], det: Detections | None) -> float:
    """The score of the least grounded of the noun phrases ``found``: each phrase's best
    box score in ``det`` (0 for a phrase without a box, and when there is no phrase). A
    caption naming something the image lacks scores low."""
    phrases, _, _, scores = _best_boxes(found, det, 0.0)
    return float(scores.min()) if found and len(phrases) == len(found) else 0.0


@torch.no_grad()
def caption_image(
    model: GLIP,
    image: ImageInput,
    *,
    beam_size: int | None = None,
    max_length: int | None = None,
    box_threshold: float | None = None,
    ground: bool = True,
    rerank: str | None = None,
) -> Caption:
    """Captions one image and grounds the caption's noun phrases.

    Args:
        model: a GLIP with a captioning head and a tokenizer (eval mode is set).
        image: a path, a PIL image or an ``[H, W, 3]`` uint8 RGB array.
        beam_size: 1 = greedy (default: the head's ``beam_size``).
        max_length: the most generated tokens, the end token counted (default: the head's).
        box_threshold: the least score of a phrase's box (default: the head's).
        ground: False skips the grounding pass (``phrases`` and ``boxes`` stay empty).
        rerank: ``"none"``: the beam's most likely caption; ``"grounding"``: of the beam's
            finished captions, the one whose least grounded noun phrase scores highest
            (ties: the more likely), which drops captions naming what the grounding head
            does not find (one grounding pass per candidate; greedy decoding has one
            candidate); ``"contrastive"``: the same rule, with each phrase's best box
            score from one pass whose prompt is the distinct noun phrases of all the
            candidates (:func:`_best_contrastive`). Default: the head's ``rerank``.

    Raises:
        CaptionUnavailableError: the model has no captioning head.
        ImageLoadError: the image cannot be read.
    """
    head = require_caption_head(model)
    beams = head.beam_size if beam_size is None else int(beam_size)
    length = head.max_length if max_length is None else int(max_length)
    thr = head.box_threshold if box_threshold is None else float(box_threshold)
    reranker = head.rerank if rerank is None else rerank
    if beams < 1 or length < 1:
        raise ValueError(f"beam size ({beams}) and max length ({length}) must be at least 1")
    if reranker not in RERANKERS:
        raise ValueError(f"rerank must be one of {RERANKERS}, got {reranker!r}")
    model.eval()
    processor = Processor.of(model)
    tensor, size = processor(image)
    batch = processor.batch([tensor]).to(model.device)
    features = model.backbone(batch.tensor)
    grounded = None  # the chosen caption's (noun phrases, detections), when the re-rank found them
    if beams == 1:
        generated = greedy_decode(model, features, max_length=length)
    else:
        candidates = beam_candidates(model, features, beam_size=beams, max_length=length)
        generated = candidates[0]
        if reranker == "grounding" and len(candidates) > 1:
            generated, grounded = _best_grounded(model, processor, features, batch, size, candidates)
        elif reranker == "contrastive" and len(candidates) > 1:
            generated = _best_contrastive(model, processor, features, batch, size, candidates)
    text = processor.decode(generated.token_ids)
    result = Caption(text=text, log_prob=generated.score, finished=generated.finished)
    if ground and result.text:
        found, det = (
            grounded
            if grounded is not None
            else _detect_noun_phrases(model, processor, features, batch, result.text, size)
        )
        result.phrases, result.spans, result.boxes, result.scores = _best_boxes(found, det, thr)
        result.detections = det
    return result


def _best_grounded(
    model: GLIP,
    processor: Processor,
    features: list[Tensor],
    batch: ImageBatch,
    size: tuple[int, int],
    candidates: list[GeneratedCaption],
) -> tuple[GeneratedCaption, tuple[list[tuple[str, tuple[int, int]]], Detections | None]]:
    """The candidate with the highest :func:`_grounding_support`, the likelier (higher
    summed log-probability) on a tie, with its noun phrases and their detections."""
    grounded = [
        _detect_noun_phrases(model, processor, features, batch, processor.decode(c.token_ids), size) for c in candidates
    ]
    best = _most_supported(candidates, [_grounding_support(found, det) for found, det in grounded])
    return candidates[best], grounded[best]


def _best_contrastive(
    model: GLIP,
    processor: Processor,
    features: list[Tensor],
    batch: ImageBatch,
    size: tuple[int, int],
    candidates: list[GeneratedCaption],
) -> GeneratedCaption:
    """The candidate whose least supported noun phrase has the highest best-box score, the
    likelier on a tie, where the scores come from one detection pass whose prompt lists the
    distinct noun phrases of all the candidates (chunked when long).

    Beam candidates tend to differ in the phrase the decoder is unsure of ("a red circle"
    against "a red square"); with the caption alone as the prompt the grounding head may put
    a wrong phrase on the shape it resembles, while with the alternatives beside it the
    phrase that fits the shape takes the box's score. A candidate without a noun phrase
    scores 0."""
    found = [[phrase for phrase, _ in find_noun_phrases(processor.decode(c.token_ids))] for c in candidates]
    phrases = list(dict.fromkeys(p for f in found for p in f))
    best_score: dict[str, float] = dict.fromkeys(phrases, 0.0)
    if phrases:
        chunks = processor.prepare_prompt(phrases)
        (det,) = detect_chunks(model, batch, chunks, [size], max_detections=0, features=features)
        for phrase, score in zip(det.phrases, det.scores.tolist()):
            best_score[phrase] = max(best_score[phrase], score)
    return candidates[_most_supported(candidates, [min(best_score[p] for p in f) if f else 0.0 for f in found])]


def _most_supported(candidates: list[GeneratedCaption], support: list[float]) -> int:
    """The index of the highest ``support``, the likelier candidate on a tie."""
    return max(range(len(candidates)), key=lambda i: (support[i], candidates[i].score))
