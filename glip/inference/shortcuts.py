"""One-call entry points: :func:`predict`, :func:`answer`, :func:`caption` (``glip.predict``,
``glip.answer``, ``glip.caption``), thin calls on one shared :class:`Predictor`.

A model given by name or path is loaded once and kept (with its predictor) for the next
call of any of the three; a loaded :class:`GLIP` is wrapped as it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from glip.modeling.glip import GLIP
from glip.modeling.low_precision import parse_autocast_dtype
from glip.structures import Detections
from glip.utils.image import ImageInput

from .captioning import Caption
from .predictor import ModelLike, Predictor, default_device
from .prompts import PromptLike
from .vqa import Answer

__all__ = ["answer", "caption", "predict", "shared_predictor"]

# The last predictor of a model given by name or path, keyed by (model, device).
_CACHE: dict[tuple[str, str], Predictor] = {}


def shared_predictor(
    model: ModelLike,
    *,
    device: str | torch.device | None = None,
    config: str | Path | None = None,
    text_encoder: str | Path | None = None,
    trust_pickle: bool = False,
    batch_size: int = 4,
) -> Predictor:
    """The predictor of ``model``: a new one around a loaded :class:`GLIP`; for a name or a
    path, the one kept from the last call with the same model, device, ``config``,
    ``text_encoder`` and ``batch_size``, else a new one (which replaces it). ``config``,
    ``text_encoder``, ``trust_pickle``: used when loading."""
    if isinstance(model, GLIP):
        return Predictor(model, device=device, batch_size=batch_size)
    # Everything that changes the loaded model or its outputs; trust_pickle only permits a load.
    key = (str(model), str(device or default_device()), str(config), str(text_encoder), batch_size)
    predictor = _CACHE.get(key)
    if predictor is None:
        _CACHE.clear()
        predictor = Predictor(
            model, config=config, text_encoder=text_encoder, device=device, batch_size=batch_size,
            trust_pickle=trust_pickle,
        )  # fmt: skip
        _CACHE[key] = predictor
    return predictor


def predict(
    images: ImageInput | Sequence[ImageInput],
    prompt: PromptLike | None = None,
    *,
    model: ModelLike = "glip-t",
    threshold: float = 0.5,
    device: str | None = None,
    batch_size: int = 4,
    chunk_size: int | None = None,
    config: str | Path | None = None,
    text_encoder: str | Path | None = None,
    masks: bool = False,
    autocast: str | torch.dtype | None = None,
    agnostic_nms: bool = False,
) -> Detections | list[Detections]:
    """One-call zero-shot detection (see :meth:`Predictor.predict`; ``prompt`` None: the
    classes of a fine-tuned model).

    ``model`` is a zoo name, a weights path or a loaded :class:`GLIP`; the last model
    loaded by name or path is kept for the next call. ``masks``: also each detection's
    mask (``Detections.masks``, original-image pixels; the model needs a mask head).
    ``autocast``: ``"bfloat16"`` / ``"float16"`` mixed-precision compute (see :class:`Predictor`).
    ``agnostic_nms``: one label per box (see :class:`Predictor`).
    """
    compute = parse_autocast_dtype(autocast)  # a bad value fails before any model is loaded
    predictor = shared_predictor(model, device=device, config=config, text_encoder=text_encoder, batch_size=batch_size)
    predictor.autocast = compute
    return predictor.predict(
        images, prompt, threshold=threshold, batch_size=batch_size, chunk_size=chunk_size, masks=masks,
        agnostic_nms=agnostic_nms,
    )  # fmt: skip


def answer(
    image: ImageInput,
    question: str,
    model: ModelLike,
    *,
    config: str | Path | None = None,
    text_encoder: str | Path | None = None,
    device: str | torch.device | None = None,
    box_threshold: float = 0.3,
    topk: int = 5,
    trust_pickle: bool = False,
) -> Answer:
    """Answers one question about one image, with the answer's boxes (:meth:`Predictor.answer`).

    Args:
        image: a path, a PIL image or an ``[H, W, 3]`` uint8 RGB array.
        question: e.g. ``"What color is the circle?"``.
        model: a model with an answer head: a loaded :class:`GLIP` (reused as is), a
            folder written by ``glip train`` (``OUT/model``), or a zoo name (kept for the
            next call, as :func:`predict` keeps it).
        config, text_encoder, device, trust_pickle: as :func:`glip.load_model`.
        box_threshold, topk: see :func:`glip.inference.vqa.answer_questions`.

    Example::

        a = glip.answer("shapes/images/val_00000.png", "What color is the circle?", model="runs/vqa/model")
        a.answer, a.score, a.boxes
    """
    if not question or not question.strip():
        raise ValueError("the question is empty")
    predictor = shared_predictor(
        model, config=config, text_encoder=text_encoder, device=device, trust_pickle=trust_pickle
    )
    return predictor.answer(image, question, box_threshold=box_threshold, topk=topk)  # type: ignore[return-value]


def caption(
    images: ImageInput | Sequence[ImageInput],
    *,
    model: ModelLike = "demo-shapes",
    device: str | None = None,
    beam_size: int | None = None,
    max_length: int | None = None,
    box_threshold: float | None = None,
    ground: bool = True,
    rerank: str | None = None,
    config: str | Path | None = None,
    text_encoder: str | Path | None = None,
) -> Caption | list[Caption]:
    """One-call grounded captioning (:meth:`Predictor.caption`).

    ``model`` is a zoo name, a weights path or a loaded :class:`GLIP` (with a captioning
    head); the last model loaded by name or path is kept for the next call. One image in,
    one :class:`Caption` out; a list in, a list out.
    """
    predictor = shared_predictor(model, device=device, config=config, text_encoder=text_encoder)
    return predictor.caption(
        images, beam_size=beam_size, max_length=max_length, box_threshold=box_threshold, ground=ground, rerank=rerank
    )
