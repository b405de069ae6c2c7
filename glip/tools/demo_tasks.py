"""What each tab of ``glip demo`` computes, without Gradio.

One function per task takes a loaded model (or :class:`~glip.api.Predictor`), an image and
the tab's inputs, and returns a :class:`TaskResult`: the image with the result drawn by
:meth:`Detections.plot <glip.structures.Detections.plot>` (as ``glip detect`` draws), the rows of the
page's table and a JSON-ready ``data`` dict for API clients. A user error (no image, an
unreadable image, an empty prompt or question, a value out of range) raises ``ValueError``
with a one-line message; :mod:`glip.tools.demo_app` shows it on the page.

Tasks (the tabs, in page order): ``detect`` (every model), ``segment`` (a mask head),
``vqa`` (``model.heads.vqa``), ``caption`` (``model.heads.caption``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from glip.api import Predictor
from glip.modeling.glip import GLIP
from glip.structures import Detections
from glip.utils.image import ImageInput, ImageLoadError, load_image

__all__ = [
    "TABLE_HEADERS",
    "TASKS",
    "TaskResult",
    "available_tasks",
    "run_caption",
    "run_detection",
    "run_vqa",
]

# Every task the page knows, in tab order.
TASKS = ("detect", "segment", "vqa", "caption")
# The columns of every tab's table: one row per drawn box, (x1, y1, x2, y2) in image pixels.
TABLE_HEADERS = ["phrase", "score", "x1", "y1", "x2", "y2"]
# A progress callback: (fraction done in [0, 1], what is being done).
Progress = Callable[[float, str], None]


@dataclass
class TaskResult:
    """One tab's answer.

    Attributes:
        image: ``[H, W, 3]`` uint8 RGB, the input image with the result drawn.
        rows: the table, one ``[phrase, score, x1, y1, x2, y2]`` row per drawn box (score
            rounded to 3 decimals, box to 1; the exact values are in ``data``).
        data: JSON-ready result for API clients (``detections`` as
            :meth:`Detections.to_list` gives them, full precision).
        text: the answer (VQA) or the caption; empty for detection.
        note: a remark for the page when there is nothing to draw, else empty.
    """

    image: np.ndarray
    rows: list[list[Any]] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    text: str = ""
    note: str = ""


def available_tasks(model: GLIP) -> list[str]:
    """The tasks ``model`` can do, in tab order: ``detect`` always, then each task whose head
    the model has (``segment``: a mask head; ``vqa``; ``caption``)."""
    from glip.modeling.caption_decoding import CAPTION
    from glip.vqa_api import VQA

    tasks = ["detect"]
    if model.has_masks:
        tasks.append("segment")
    if VQA in model.heads:
        tasks.append("vqa")
    if CAPTION in model.heads:
        tasks.append("caption")
    return tasks


def _no_progress(fraction: float, desc: str) -> None:
    return None


def _read(image: ImageInput | None) -> np.ndarray:
    if image is None or (isinstance(image, str) and not image):
        raise ImageLoadError("no image: upload an image first")
    return load_image(image)


def _check_threshold(name: str, value: float) -> float:
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"the {name} must be in [0, 1], got {value}")
    return value


def _rows(det: Detections) -> list[list[Any]]:
    return [
        [phrase, round(score, 3), *(round(v, 1) for v in box)]
        for phrase, score, box in zip(det.phrases, det.scores.tolist(), det.boxes.tolist())
    ]


def run_detection(
    predictor: Predictor,
    image: ImageInput | None,
    prompt: str,
    threshold: float = 0.5,
    *,
    masks: bool = False,
    progress: Progress = _no_progress,
) -> TaskResult:
    """Detects (with ``masks``: and segments) the prompt's phrases, exactly as
    ``predictor.predict(image, prompt, threshold=threshold, masks=masks)`` and hence
    :func:`glip.predict` on the same model.

    ``data``: ``{"prompt", "threshold", "width", "height", "detections": [{"box", "score",
    "label", "phrase"(, "mask")}]}``.
    """
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError('the prompt is empty: type phrases separated by "." (e.g. "red circle. blue square.")')
    threshold = _check_threshold("threshold", threshold)
    progress(0.0, "reading the image")
    rgb = _read(image)
    progress(0.2, "segmenting" if masks else "detecting")
    det = predictor.predict(rgb, prompt, threshold=threshold, masks=masks)
    progress(0.9, "drawing")
    h, w = det.image_size
    data = {"prompt": prompt, "threshold": threshold, "width": int(w), "height": int(h), "detections": det.to_list()}
    note = "" if len(det) else f"nothing scored above {threshold:g}: lower the threshold or change the prompt"
    return TaskResult(np.asarray(det.plot(rgb)), _rows(det), data, note=note)


def run_vqa(
    model: GLIP,
    image: ImageInput | None,
    question: str,
    box_threshold: float = 0.3,
    *,
    progress: Progress = _no_progress,
) -> TaskResult:
    """Answers ``question`` with the model's answer head (:func:`glip.vqa_api.answer_questions`)
    and draws the answer's boxes. ``text``: ``"ANSWER (SCORE)"``; ``data``: the
    :class:`~glip.vqa_api.Answer` as :meth:`~glip.vqa_api.Answer.to_dict` gives it."""
    from glip.vqa_api import answer_questions

    if not isinstance(question, str) or not question.strip():
        raise ValueError('the question is empty: type a question (e.g. "What color is the circle?")')
    box_threshold = _check_threshold("box threshold", box_threshold)
    progress(0.0, "reading the image")
    rgb = _read(image)
    progress(0.2, "answering")
    (ans,) = answer_questions(model, rgb, [question.strip()], box_threshold=box_threshold)
    n = len(ans.box_scores)
    det = Detections(ans.boxes, ans.box_scores, torch.ones(n, dtype=torch.int64), list(ans.phrases), rgb.shape[:2])
    note = "" if n else f"no box of the answer scored above {box_threshold:g}"
    return TaskResult(np.asarray(det.plot(rgb)), _rows(det), ans.to_dict(), f"{ans.answer} ({ans.score:.2f})", note)


def run_caption(
    model: GLIP,
    image: ImageInput | None,
    beam_size: int = 1,
    max_length: int | None = None,
    box_threshold: float | None = None,
    *,
    progress: Progress = _no_progress,
) -> TaskResult:
    """Captions the image with the caption head and grounds the caption's noun phrases
    (:func:`glip.captioning.caption_image`); draws each phrase's box. ``text``: the caption;
    ``data``: ``{"caption", "phrases": [{"phrase", "box", "score"}]}``."""
    from glip.captioning import caption_image

    if int(beam_size) < 1:
        raise ValueError(f"the beam size must be at least 1, got {beam_size}")
    if max_length is not None and int(max_length) < 1:
        raise ValueError(f"the maximum length must be at least 1, got {max_length}")
    if box_threshold is not None:
        box_threshold = _check_threshold("box threshold", box_threshold)
    progress(0.0, "reading the image")
    rgb = _read(image)
    progress(0.2, "captioning")
    cap = caption_image(
        model, rgb, beam_size=int(beam_size), max_length=None if max_length is None else int(max_length),
        box_threshold=box_threshold,
    )  # fmt: skip
    n = len(cap.phrases)
    det = Detections(
        cap.boxes.reshape(n, 4), cap.scores.reshape(n), torch.arange(1, n + 1), list(cap.phrases), rgb.shape[:2]
    )
    phrases = [
        {"phrase": p, "box": [float(v) for v in b], "score": float(s)}
        for p, b, s in zip(det.phrases, det.boxes.tolist(), det.scores.tolist())
    ]
    note = "" if n else "no phrase of the caption was grounded"
    return TaskResult(np.asarray(det.plot(rgb)), _rows(det), {"caption": cap.text, "phrases": phrases}, cap.text, note)
