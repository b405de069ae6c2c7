"""Grounded captioning on a loaded model: :func:`caption_image` (behind
:meth:`glip.inference.Predictor.caption` and :func:`glip.caption`).

A caption is decoded with the captioning head on the causal trunk
(:mod:`glip.modeling.caption_decoding`; with ``rerank="grounding"`` the beam's finished
captions are ranked by how well the grounding head finds their noun phrases). Its noun
phrases (the offline chunker of :mod:`glip.text.noun_phrases`) are then grounded by the
grounding head in a second, bi-directional pass with the caption itself as the prompt, so
each phrase comes with its best box.
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
from glip.text.tokenize import trim_padding
from glip.utils.image import ImageInput

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


def _ground(
    model: GLIP,
    processor: Processor,
    features: list[Tensor],
    batch: ImageBatch,
    text: str,
    size: tuple[int, int],
    thr: float,
):
    """(phrases, spans, boxes, scores, detections) of ``text``'s noun phrases in the image."""
    found = find_noun_phrases(text)
    if not found:
        return [], [], torch.zeros(0, 4), torch.zeros(0), None
    prompt = Prompt(text, tuple(p for p, _ in found), tuple((span,) for _, span in found))
    tokens = trim_padding(processor.tokenize(prompt))
    device = features[0].device
    out = model.forward_features(
        features, tokens.input_ids.to(device), tokens.attention_mask.to(device), heads=("grounding",)
    )
    (det,) = model.grounding.postprocess(
        out.head, out.anchors, tokens.positive_map.to(device), batch.image_sizes, [size]
    )
    det = det.to("cpu")
    det.phrases = [prompt.phrases[int(label) - 1] for label in det.labels.tolist()]
    phrases, spans, boxes, scores = [], [], [], []
    for j, (phrase, span) in enumerate(found):
        hits = (det.labels == j + 1) & (det.scores >= thr)
        if bool(hits.any()):
            best = int(torch.nonzero(hits)[det.scores[hits].argmax()])
            phrases.append(phrase)
            spans.append(span)
            boxes.append(det.boxes[best])
            scores.append(det.scores[best])
    if not boxes:
        return [], [], torch.zeros(0, 4), torch.zeros(0), det
    return phrases, spans, torch.stack(boxes), torch.stack(scores), det


def _grounding_support(
    model: GLIP, processor: Processor, features: list[Tensor], batch: ImageBatch, text: str, size: tuple[int, int]
) -> float:
    """The score of ``text``'s least grounded noun phrase: each phrase's best box score
    with the caption as the prompt (0 for a phrase without a box, and for a caption without
    a noun phrase). A caption naming something the image lacks scores low."""
    found = find_noun_phrases(text)
    if not found:
        return 0.0
    det = _ground(model, processor, features, batch, text, size, 0.0)[4]
    if det is None:
        return 0.0
    best = [det.scores[det.labels == j + 1] for j in range(len(found))]  # P score tensors
    return min(float(scores.max()) if scores.numel() else 0.0 for scores in best)


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
            candidate). Default: the head's ``rerank``.

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
    if beams == 1:
        generated = greedy_decode(model, features, max_length=length)
    else:
        candidates = beam_candidates(model, features, beam_size=beams, max_length=length)
        generated = candidates[0]
        if reranker == "grounding" and len(candidates) > 1:
            generated = _best_grounded(model, processor, features, batch, size, candidates)
    text = processor.decode(generated.token_ids)
    result = Caption(text=text, log_prob=generated.score, finished=generated.finished)
    if ground and result.text:
        phrases, spans, boxes, scores, det = _ground(model, processor, features, batch, result.text, size, thr)
        result.phrases, result.spans, result.boxes, result.scores, result.detections = (
            phrases,
            spans,
            boxes,
            scores,
            det,
        )
    return result


def _best_grounded(
    model: GLIP,
    processor: Processor,
    features: list[Tensor],
    batch: ImageBatch,
    size: tuple[int, int],
    candidates: list[GeneratedCaption],
) -> GeneratedCaption:
    """The candidate with the highest :func:`_grounding_support`, the likelier (higher
    summed log-probability) on a tie."""
    support = [
        _grounding_support(model, processor, features, batch, processor.decode(c.token_ids), size) for c in candidates
    ]
    return candidates[max(range(len(candidates)), key=lambda i: (support[i], candidates[i].score))]
