"""The processor: user inputs -> network inputs (tokenizer + image preprocessing).

The network (:class:`glip.modeling.glip.GLIP`) takes tensors; everything that reads a file,
decodes an image, resizes it or tokenizes a prompt is here, as transformers keeps
``GroundingDinoProcessor`` apart from ``GroundingDinoForObjectDetection``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from glip.structures import ImageBatch
from glip.text import Prompt, TokenizedPrompt, parse_prompt, tokenize_prompt
from glip.text.chunks import prepare_prompt
from glip.text.vqa import tokenize_question
from glip.utils.image import ImageInput, load_image, to_model_input

__all__ = ["Preprocessing", "Processor", "preprocessing_for"]


@dataclass(frozen=True)
class Preprocessing:
    """Test-time image preprocessing (official ``INPUT.*`` and ``SIZE_DIVISIBILITY``)."""

    min_size: int = 800
    max_size: int = 1333
    pixel_mean: tuple[float, ...] = (103.53, 116.28, 123.675)
    pixel_std: tuple[float, ...] = (57.375, 57.12, 58.395)
    to_bgr255: bool = True
    size_divisibility: int = 32

    def __call__(self, image: ImageInput) -> tuple[Tensor, tuple[int, int]]:
        """One image (path, PIL image or ``[H, W, 3]`` uint8 RGB array) -> (``Tensor[3, h, w]``
        network input, original ``(H, W)``)."""
        rgb = load_image(image)
        x = to_model_input(rgb, self.min_size, self.max_size, self.pixel_mean, self.pixel_std, self.to_bgr255)
        return x, (int(rgb.shape[0]), int(rgb.shape[1]))


def preprocessing_for(config: Any) -> Preprocessing:
    """The test-time preprocessing of a :class:`~glip.config.GLIPConfig` (its ``input``
    section); the defaults when ``config`` is None."""
    if config is None:
        return Preprocessing()
    inp = config.input
    return Preprocessing(
        min_size=inp.min_size_test,
        max_size=inp.max_size_test,
        pixel_mean=tuple(inp.pixel_mean),
        pixel_std=tuple(inp.pixel_std),
        to_bgr255=inp.to_bgr255,
        size_divisibility=inp.size_divisibility,
    )


@dataclass(frozen=True)
class Processor:
    """A model's tokenizer and image preprocessing: prompts and images -> network inputs.

    Args:
        tokenizer: a Hugging Face fast BERT (or CLIP) tokenizer, or None (then every text
            method raises a one-line :class:`RuntimeError`).
        preprocessing: the test-time image transforms.
        max_query_len: T, the padded prompt length (official ``MAX_QUERY_LEN``).
        max_phrases: the most phrases one pass scores (the grounding head's ``num_classes``).
    """

    tokenizer: Any
    preprocessing: Preprocessing
    max_query_len: int = 256
    max_phrases: int = 80

    @classmethod
    def of(cls, model: Any) -> Processor:
        """The processor of a :class:`~glip.modeling.glip.GLIP` (its tokenizer, its
        ``preprocessing``, its ``max_query_len`` and its grounding head's phrase count)."""
        return cls(model.tokenizer, model.preprocessing, model.max_query_len, model.grounding.num_classes)

    def _text(self) -> Any:
        if self.tokenizer is None:
            raise RuntimeError("this model has no tokenizer; build it with glip.load_model")
        return self.tokenizer

    def tokenize(self, prompt: str | Sequence[str] | Prompt) -> TokenizedPrompt:
        """One prompt -> its token ids ``[1, T]`` and positive map ``[P, T]`` (no chunking)."""
        return tokenize_prompt(self._text(), parse_prompt(prompt), self.max_query_len)

    def prepare_prompt(
        self, prompt: str | Sequence[str] | Prompt, chunk_size: int | None = None
    ) -> list[TokenizedPrompt]:
        """The tokenized passes of a prompt: one, or several when it exceeds ``max_query_len``
        tokens or ``max_phrases`` phrases (or with ``chunk_size`` phrases per pass); see
        :func:`glip.text.chunks.chunk_prompt`."""
        return prepare_prompt(prompt, self._text(), self.max_query_len, self.max_phrases, chunk_size)

    def token_ids(self, caption: str) -> tuple[int, ...]:
        """A caption's unpadded token ids (``[CLS] ... [SEP]``)."""
        return tuple(self._text()(caption, add_special_tokens=True, verbose=False)["input_ids"])

    def tokenize_question(self, question: str) -> Any:
        """``question [MASK]`` encoded for the answer head (:func:`glip.text.vqa.tokenize_question`)."""
        return tokenize_question(self._text(), question, self.max_query_len)

    def decode(self, token_ids: Sequence[int]) -> str:
        """Generated token ids -> text (special tokens dropped, stripped)."""
        text = self._text().decode(token_ids, skip_special_tokens=True, clean_up_tokenization_spaces=True)
        return text.strip()

    def __call__(self, image: ImageInput) -> tuple[Tensor, tuple[int, int]]:
        """One image -> (``Tensor[3, h, w]`` network input, original ``(H, W)``)."""
        return self.preprocessing(image)

    def batch(self, tensors: Sequence[Tensor]) -> ImageBatch:
        """Preprocessed images -> one zero-padded :class:`ImageBatch` (padded to the size divisibility)."""
        return ImageBatch.from_tensors(list(tensors), self.preprocessing.size_divisibility)
