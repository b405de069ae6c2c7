"""Teachers for pseudo-labelling captions: noun-phrase chunkers and the GLIP teacher.

A teacher takes one image and the prompts of its captions (each caption with the
character spans of its noun phrases) and returns, per prompt, the boxes it believes in:
:class:`PseudoBox` ``(x1, y1, x2, y2)`` in the image's stored pixels (inclusive corners,
the convention of the GLIP post-processor and of the grounding reader), a score in
``[0, 1]`` and the index of the phrase the box grounds. :class:`GlipTeacher` grounds the
phrases with a GLIP model; the CLIP teacher is in :mod:`glip.tools.clip_teacher`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from glip.api import Predictor
from glip.modeling.heads.grounding.postprocess import merge_chunks
from glip.structures import Detections, ImageBatch
from glip.text import Prompt
from glip.text.noun_phrases import find_noun_phrases

__all__ = ["CHUNKERS", "Chunker", "GlipTeacher", "PseudoBox", "Teacher", "build_chunker", "caption_prompt"]

# A caption -> its noun phrases with their (start, end) character spans (end exclusive).
Chunker = Callable[[str], list[tuple[str, tuple[int, int]]]]
CHUNKERS = ("offline", "spacy")
# spaCy's small English pipeline: the one its documentation installs first.
SPACY_MODEL = "en_core_web_sm"


@dataclass(frozen=True)
class PseudoBox:
    """One box a teacher keeps.

    Attributes:
        box: ``(x1, y1, x2, y2)`` in the stored pixels of the image, inclusive corners
            (width ``x2 - x1 + 1``).
        score: the teacher's confidence in ``[0, 1]``.
        phrase: 0-based index of the phrase of the prompt that the box grounds.
        concept_scores: the teacher's logits of the box against each phrase of the prompt
            (in ``prompt.phrases`` order; the CLIP teacher's region-concept scores, which
            the distillation loss reads), or None.
    """

    box: tuple[float, float, float, float]
    score: float
    phrase: int
    concept_scores: tuple[float, ...] | None = None


class Teacher(Protocol):
    """What the pseudo-labelling loop needs from a teacher."""

    def label(self, image: np.ndarray, prompts: Sequence[Prompt], image_id: Any = None) -> list[list[PseudoBox]]:
        """``image``: ``uint8 [H, W, 3]`` RGB, its json id ``image_id``; returns one box
        list per prompt."""
        ...


def _spacy_chunker(model: str = SPACY_MODEL) -> Chunker:
    try:
        import spacy
    except ImportError:
        raise ValueError(
            f"--chunker spacy needs spaCy: pip install spacy && python -m spacy download {model}"
        ) from None
    try:
        nlp = spacy.load(model)
    except OSError:
        raise ValueError(f"spaCy's {model} pipeline is not installed: python -m spacy download {model}") from None

    def chunk(caption: str) -> list[tuple[str, tuple[int, int]]]:
        return [(c.text, (int(c.start_char), int(c.end_char))) for c in nlp(caption).noun_chunks]

    return chunk


def build_chunker(name: str) -> Chunker:
    """``"offline"``: the rule-based chunker (:func:`glip.text.noun_phrases.find_noun_phrases`,
    no data files); ``"spacy"``: spaCy's noun chunks (a one-line ``ValueError`` when spaCy or
    its English pipeline is missing)."""
    if name == "offline":
        return find_noun_phrases
    if name == "spacy":
        return _spacy_chunker()
    raise ValueError(f"unknown chunker {name!r} (expected {' or '.join(CHUNKERS)})")


def caption_prompt(caption: str, chunker: Chunker) -> Prompt | None:
    """The caption as a prompt whose phrases are its noun phrases; None when it has none."""
    found = [(p, s) for p, s in chunker(caption) if p.strip() and s[1] > s[0]]
    if not found:
        return None
    return Prompt(caption, tuple(p for p, _ in found), tuple((s,) for _, s in found))


class GlipTeacher:
    """Grounds each prompt's phrases with a GLIP model.

    The image goes through the backbone once for all the prompts of an image. Prompts too
    long for one pass are split as :meth:`glip.Predictor.predict` splits them, and the
    labels stay indices into the prompt's own phrases.

    Args:
        predictor: the loaded teacher.
        threshold: keep boxes scoring strictly above this.
        max_detections: per prompt (default: the model's ``detections_per_img``); 0 keeps all.
    """

    def __init__(self, predictor: Predictor, threshold: float = 0.5, max_detections: int | None = None) -> None:
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"the threshold must be in [0, 1], got {threshold}")
        self.predictor = predictor
        self.threshold = threshold
        self.max_detections = max_detections

    def detections(self, image: np.ndarray, prompts: Sequence[Prompt]) -> list[Detections]:
        """Every detection of each prompt (labels: 1-based phrase index), in the image's pixels."""
        if not prompts:
            return []
        model = self.predictor.model
        top_k = model.postprocessor.detections_per_img if self.max_detections is None else self.max_detections
        tensor, size = model.preprocessing(image)
        batch = ImageBatch.from_tensors([tensor], model.preprocessing.size_divisibility)
        chunks = [self.predictor.prepare_prompt(p) for p in prompts]
        flat = [c for group in chunks for c in group]
        per_chunk = model.detect_prompts(batch, flat, original_sizes=[size])  # [chunk][image]
        out: list[Detections] = []
        start = 0
        for group in chunks:
            dets = [per_chunk[start + j][0] for j in range(len(group))]
            start += len(group)
            out.append(merge_chunks(dets, group, model.postprocessor.nms_thresh, top_k))  # as Predictor.predict
        return out

    def label(self, image: np.ndarray, prompts: Sequence[Prompt], image_id: Any = None) -> list[list[PseudoBox]]:
        result = []
        for det in self.detections(image, prompts):
            det = det.above(self.threshold)
            result.append(
                [
                    PseudoBox(tuple(float(v) for v in box), float(score), int(label) - 1)  # type: ignore[arg-type]
                    for box, score, label in zip(det.boxes.tolist(), det.scores.tolist(), det.labels.tolist())
                ]
            )
        return result
