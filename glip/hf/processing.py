"""transformers processors of a glip model: glip's own image preprocessing, prompt
tokenization and box rescaling behind ``AutoImageProcessor`` / ``AutoProcessor``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers import BatchFeature
from transformers.image_processing_utils import BaseImageProcessor
from transformers.processing_utils import ProcessorMixin

from glip.inference.processor import Preprocessing
from glip.modeling.glip import GLIP
from glip.ops.boxes import rescale_boxes
from glip.structures import ImageBatch
from glip.text import PromptError, parse_prompt, tokenize_prompt
from glip.text.chunks import chunk_prompt

__all__ = ["GLIPImageProcessor", "GLIPProcessor"]


def _image_list(images: Any) -> list[Any]:
    return list(images) if isinstance(images, (list, tuple)) else [images]


def _sizes(sizes: Any, n: int, what: str) -> list[tuple[int, int]]:
    rows = sizes.tolist() if isinstance(sizes, torch.Tensor) else list(sizes)
    if len(rows) != n:
        raise ValueError(f"{what}: {len(rows)} sizes for {n} images")
    return [(int(h), int(w)) for h, w in rows]


class GLIPImageProcessor(BaseImageProcessor):
    """glip's test-time preprocessing (:class:`glip.inference.processor.Preprocessing`: shorter
    side to ``min_size`` capped by ``max_size``, BGR 0-255 normalisation as the official
    model) and the rescaling of its boxes to the original images.

    Args:
        min_size, max_size: the resize rule (official ``INPUT.MIN_SIZE_TEST`` / ``MAX_SIZE_TEST``).
        image_mean, image_std: per-channel normalisation, in the channel order the model reads.
        to_bgr255: the model reads BGR in 0-255 (the official convention).
        size_divisibility: images are zero-padded to a multiple of it.
    """

    model_input_names = ["pixel_values", "image_sizes"]

    def __init__(
        self,
        min_size: int = 800,
        max_size: int = 1333,
        image_mean: Sequence[float] = (103.53, 116.28, 123.675),
        image_std: Sequence[float] = (57.375, 57.12, 58.395),
        to_bgr255: bool = True,
        size_divisibility: int = 32,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.min_size = int(min_size)
        self.max_size = int(max_size)
        self.image_mean = [float(v) for v in image_mean]
        self.image_std = [float(v) for v in image_std]
        self.to_bgr255 = bool(to_bgr255)
        self.size_divisibility = int(size_divisibility)

    @classmethod
    def from_preprocessing(cls, prep: Preprocessing) -> GLIPImageProcessor:
        """The image processor of a model's :class:`Preprocessing`."""
        return cls(
            prep.min_size, prep.max_size, prep.pixel_mean, prep.pixel_std, prep.to_bgr255, prep.size_divisibility
        )

    @property
    def preprocessing(self) -> Preprocessing:
        """The same settings as glip's :class:`Preprocessing` (which does the work)."""
        return Preprocessing(
            self.min_size, self.max_size, tuple(self.image_mean), tuple(self.image_std), self.to_bgr255,
            self.size_divisibility,
        )  # fmt: skip

    def __call__(self, images: Any, **kwargs: Any) -> BatchFeature:
        return self.preprocess(images, **kwargs)

    def preprocess(self, images: Any, return_tensors: str | None = "pt", **kwargs: Any) -> BatchFeature:
        """Images (paths, PIL images or ``[H, W, 3]`` uint8 RGB arrays) -> ``pixel_values``
        ``Tensor[B, 3, H, W]`` (zero-padded) and ``image_sizes`` ``Tensor[B, 2]`` (each
        resized ``(h, w)``)."""
        if kwargs:
            raise TypeError(f"unexpected arguments: {', '.join(sorted(kwargs))}")
        if return_tensors not in (None, "pt"):
            raise ValueError(f"glip's processors return PyTorch tensors, not {return_tensors!r}")
        prep = self.preprocessing
        tensors = [prep(image)[0] for image in _image_list(images)]
        batch = ImageBatch.from_tensors(tensors, self.size_divisibility)
        sizes = torch.tensor(batch.image_sizes, dtype=torch.int64).reshape(-1, 2)  # [B, 2]
        return BatchFeature({"pixel_values": batch.tensor, "image_sizes": sizes})

    def post_process_object_detection(
        self, outputs: Any, threshold: float = 0.5, target_sizes: Any = None
    ) -> list[dict[str, torch.Tensor]]:
        """Per image, ``{"scores", "labels", "boxes"}`` scoring above ``threshold``, sorted by
        score; boxes ``(x1, y1, x2, y2)`` in ``target_sizes`` pixels (each ``(h, w)``; the
        original images' sizes), or in the resized images' pixels when None. Rescaled with
        glip's :func:`~glip.ops.boxes.rescale_boxes`, as :func:`glip.predict` does."""
        n = len(outputs.pred_boxes)
        resized = _sizes(outputs.image_sizes, n, "image_sizes")
        targets = resized if target_sizes is None else _sizes(target_sizes, n, "target_sizes")
        results = []
        for boxes, scores, labels, src, dst in zip(
            outputs.pred_boxes, outputs.scores, outputs.labels, resized, targets
        ):
            boxes = rescale_boxes(boxes, src, dst) if target_sizes is not None else boxes
            keep = scores > threshold
            results.append({"scores": scores[keep], "labels": labels[keep], "boxes": boxes[keep]})
        return results


class GLIPProcessor(ProcessorMixin):
    """Image processor + tokenizer of a glip model (``AutoProcessor``).

    ``processor(images=..., text=labels)`` gives the inputs of
    :meth:`GLIPForZeroShotObjectDetection.forward`: one prompt for the whole batch (GLIP
    scores all labels of a prompt together). :meth:`post_process_grounded_object_detection`
    turns the outputs into boxes in image pixels.

    Args:
        image_processor: a :class:`GLIPImageProcessor`.
        tokenizer: the model's fast BERT (or CLIP) tokenizer.
        max_query_len: T, the padded prompt length (the model's ``max_query_len``).
        max_phrases: the most phrases one pass can score (the grounding head's ``num_classes``).
    """

    def __init__(self, image_processor: Any, tokenizer: Any, max_query_len: int = 256, max_phrases: int = 80) -> None:
        super().__init__(image_processor, tokenizer)
        self.max_query_len = int(max_query_len)
        self.max_phrases = int(max_phrases)

    @classmethod
    def from_model(cls, model: GLIP) -> GLIPProcessor:
        """The processor of a loaded :class:`glip.GLIP`."""
        if model.tokenizer is None:
            raise ValueError("the model has no tokenizer; load it with glip.load_model")
        image_processor = GLIPImageProcessor.from_preprocessing(model.preprocessing)
        return cls(image_processor, model.tokenizer, model.max_query_len, model.grounding.num_classes)

    def __call__(  # type: ignore[override]
        self, images: Any = None, text: Any = None, return_tensors: str | None = "pt", **kwargs: Any
    ) -> BatchFeature:
        """``images`` (one or a list) and ``text``: the labels (``["a cat", "a dog"]``), a
        prompt (``"a cat. a dog."``), or one such list per image, all equal."""
        if kwargs:
            raise TypeError(f"unexpected arguments: {', '.join(sorted(kwargs))}")
        out: dict[str, Any] = {}
        if images is not None:
            out.update(self.image_processor(images, return_tensors=return_tensors))
        if text is not None:
            tokens = self.tokenize(text)
            out.update(
                input_ids=tokens.input_ids, attention_mask=tokens.attention_mask, positive_map=tokens.positive_map
            )
        if not out:
            raise ValueError("give images, text or both")
        return BatchFeature(out)

    def tokenize(self, text: Any) -> Any:
        """The prompt -> glip's ``TokenizedPrompt`` (``input_ids``, ``attention_mask``
        ``[1, T]``, ``positive_map`` ``[P, T]``)."""
        if isinstance(text, (list, tuple)) and text and all(isinstance(t, (list, tuple)) for t in text):
            if any(list(t) != list(text[0]) for t in text):
                raise ValueError("glip runs one prompt per batch: give the same labels for every image")
            text = text[0]
        if isinstance(text, (list, tuple)) and not text:
            raise PromptError("candidate labels are empty: give at least one label")
        prompt = parse_prompt(text)
        chunks = chunk_prompt(prompt, self.tokenizer, self.max_query_len, self.max_phrases)
        if len(chunks) > 1:
            raise ValueError(
                f"{len(prompt.phrases)} labels do not fit one pass ({self.max_query_len} tokens, "
                f"{self.max_phrases} phrases): the pipeline and glip.predict split them, the processor does not"
            )
        return tokenize_prompt(self.tokenizer, prompt, self.max_query_len)

    def post_process_grounded_object_detection(
        self, outputs: Any, threshold: float = 0.5, target_sizes: Any = None, text_labels: Any = None
    ) -> list[dict[str, Any]]:
        """:meth:`GLIPImageProcessor.post_process_object_detection`, plus ``"text_labels"``
        (the label strings) when ``text_labels`` (the labels given to the processor, or
        one list per image) is given."""
        results = self.image_processor.post_process_object_detection(outputs, threshold, target_sizes)
        if text_labels is not None:
            if isinstance(text_labels, str):
                text_labels = list(parse_prompt(text_labels).phrases)
            per_image = text_labels if text_labels and isinstance(text_labels[0], (list, tuple)) else None
            for b, result in enumerate(results):
                names = per_image[b] if per_image is not None else text_labels
                result["text_labels"] = [names[i] for i in result["labels"].tolist()]
        return results
