"""The predictor: one loaded model + its processor, the one path of every user entry point.

:class:`Predictor` detects (boxes, masks; long prompts chunked, images batched), answers
questions and captions images; :func:`glip.predict`, :func:`glip.answer`,
:func:`glip.caption` (:mod:`glip.inference.shortcuts`), ``GLIP.predict``, the CLI and the
transformers pipeline all run through it. The network itself
(:class:`~glip.modeling.glip.GLIP`) only maps tensors to outputs.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Union

import torch

from glip.export.runtime import parse_backend
from glip.hub.loading import load_model
from glip.modeling.caption_decoding import require_caption_head
from glip.modeling.glip import GLIP
from glip.modeling.low_precision import parse_autocast_dtype, parse_weights_dtype, store_weights, stored_weights_dtype
from glip.modeling.prompt_batch import PROMPTS_PER_PASS
from glip.structures import Detections
from glip.text import Prompt, TokenizedPrompt
from glip.utils.allocator import map_large_blocks, uncache_onednn_primitives
from glip.utils.image import ImageInput, ImageLoadError

from . import detection
from .captioning import Caption, caption_image
from .processor import Processor
from .prompts import EncodedPrompt, PromptLike, resolve_prompt
from .vqa import Answer, answer_questions, require_vqa

__all__ = ["ModelLike", "Predictor", "default_device", "predict_image", "resolve_model"]


ModelLike = Union[str, Path, GLIP]


def default_device() -> str:
    """CUDA when available, else the CPU."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_model(
    model: ModelLike,
    *,
    config: str | Path | None = None,
    text_encoder: str | Path | None = None,
    device: str | torch.device | None = None,
    trust_pickle: bool = False,
    weights_dtype: str | torch.dtype | None = None,
) -> GLIP:
    """A model-zoo name, a weights path (official ``.pth``, converted or tuned folder) or a
    model -> the model in eval mode. Names and paths are interpreted by
    :func:`glip.hub.sources.resolve_model_source`, as in :func:`glip.load_model`.
    ``weights_dtype`` (``"bfloat16"``): see :func:`glip.load_model`; a given model is
    converted in place (unless its weights are stored so already)."""
    if isinstance(model, GLIP):
        storage = parse_weights_dtype(weights_dtype)
        if storage is not None and stored_weights_dtype(model) != storage:
            store_weights(model, storage)
        return model.to(device).eval() if device is not None else model.eval()
    device = device or default_device()
    return load_model(
        model,
        config,
        text_encoder=text_encoder,
        device=device,
        trust_pickle=trust_pickle,
        weights_dtype=weights_dtype,
    )


class Predictor:
    """A loaded model plus everything to run it on user inputs.

    Args:
        model: a model-zoo name (``"glip-t"``), a weights path, or a :class:`GLIP`.
        config: the config for an official ``.pth`` (an official yaml or ours).
        text_encoder: text-encoder folder or name (see :func:`glip.load_model`).
        device: ``"cpu"``, ``"cuda"``...; default: CUDA when available.
        batch_size: images per forward pass.
        trust_pickle: allow a ``.pth`` that needs unsafe unpickling (see :func:`glip.load_model`).
        masks: also predict each detection's mask (``Detections.masks``, ``[N, H, W]`` bool in
            original-image pixels); the model needs a mask head (else
            :class:`~glip.modeling.glip.MasksUnavailableError`, naming the model).
        weights_dtype: ``"bfloat16"`` keeps the weights in bfloat16 (half their memory) and
            computes in float32 (see :func:`glip.load_model`; results move by the weights'
            rounding only); default float32.
        autocast: ``"bfloat16"`` / ``"float16"`` runs the network under ``torch.autocast`` in
            that dtype (float32 weights; boxes and scores decoded in float32): the fast mode
            on a GPU. Its effect on the results is stated in the README (Speed and memory);
            default off.
        agnostic_nms: one label per box: after GLIP's per-phrase NMS, NMS over all phrases at
            once (the config's ``nms_thresh``, 0.6), so a box found for two phrases keeps only
            its best-scored one, as class-agnostic NMS in other detectors; default off.
        backend: ``"torch"`` (default), ``"onnxruntime"`` (the exported network run by ONNX
            Runtime on the CPU; exported on first use into ``$GLIP_CACHE/onnx``, see
            :mod:`glip.export.runtime`) or ``"onnxruntime-int8"`` (the same, dynamically
            quantised to int8: faster, results move; docs/performance.md). Text encoding,
            chunking and decoding stay in PyTorch in every backend.
        prompts_per_pass: prompt chunks of a long class list run through the trunk and head
            as one batch (equal to one at a time up to float rounding; more chunks per pass
            need more memory).
    """

    def __init__(
        self,
        model: ModelLike = "glip-t",
        *,
        config: str | Path | None = None,
        text_encoder: str | Path | None = None,
        device: str | torch.device | None = None,
        batch_size: int = 4,
        trust_pickle: bool = False,
        masks: bool = False,
        weights_dtype: str | torch.dtype | None = None,
        autocast: str | torch.dtype | None = None,
        agnostic_nms: bool = False,
        backend: str = "torch",
        prompts_per_pass: int = PROMPTS_PER_PASS,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if prompts_per_pass < 1:
            raise ValueError(f"prompts_per_pass must be at least 1, got {prompts_per_pass}")
        self.backend = parse_backend(backend)
        self.autocast = parse_autocast_dtype(autocast)
        if self.backend != "torch" and (masks or self.autocast is not None):
            raise ValueError(f"backend {self.backend!r} gives boxes only, in float32 (no masks, no autocast)")
        self.model = resolve_model(
            model,
            config=config,
            text_encoder=text_encoder,
            device=device,
            trust_pickle=trust_pickle,
            weights_dtype=weights_dtype,
        )
        if masks:
            self.model.require_masks()
        if next(self.model.parameters()).device.type == "cpu":
            map_large_blocks()  # freed activations go back to the system (glip.utils.allocator)
            uncache_onednn_primitives()  # no convolution kept alive between calls
        self.batch_size = batch_size
        self.masks = masks
        self.agnostic_nms = agnostic_nms
        self.prompts_per_pass = prompts_per_pass
        self._network: Any = None  # the ONNX Runtime sessions, made on first use

    def _runtime(self) -> Any:
        """The backend's :class:`~glip.modeling.prompt_batch.GroundingNetwork`, or None (PyTorch)."""
        if self.backend == "torch":
            return None
        if self._network is None:
            from glip.export.runtime import network_for
            from glip.hub.zoo import cache_dir

            log = lambda message: print(message, file=sys.stderr, flush=True)  # noqa: E731
            int8 = self.backend == "onnxruntime-int8"
            self._network = network_for(self.model, int8=int8, cache=cache_dir() / "onnx", log=log)
        return self._network

    def encode_prompt(self, prompt: PromptLike, chunk_size: int | None = None) -> EncodedPrompt:
        """Chunks, tokenizes and text-encodes a prompt once: pass the result as the prompt
        of :meth:`predict` for every image of a fixed class list (the text encoder then
        runs once, not once per call)."""
        if isinstance(prompt, EncodedPrompt):
            return prompt
        chunks = self.prepare_prompt(prompt, chunk_size)
        text = detection.encode_prompts(self.model, chunks, self.autocast)
        return EncodedPrompt(chunks, text, self.model, self.autocast)

    @property
    def processor(self) -> Processor:
        """The model's processor (tokenizer, image preprocessing), read from the model on
        each call so that a changed ``model.preprocessing`` applies."""
        return Processor.of(self.model)

    def resolve_prompt(self, prompt: PromptLike | None) -> Prompt:
        """The prompt to run for ``prompt`` (:func:`glip.inference.prompts.resolve_prompt`:
        None is the model's own classes; a spelling of the tuned prompt is the tuned prompt)."""
        return resolve_prompt(self.model, self.processor, prompt)  # type: ignore[arg-type]

    def prepare_prompt(self, prompt: PromptLike | None, chunk_size: int | None = None) -> list[TokenizedPrompt]:
        """Resolves (:meth:`resolve_prompt`), chunks (when too long) and tokenizes a prompt
        once for many images (:meth:`Processor.prepare_prompt <glip.inference.processor.Processor.prepare_prompt>`)."""
        return self.processor.prepare_prompt(self.resolve_prompt(prompt), chunk_size)

    def iter_predict(
        self,
        images: Sequence[ImageInput],
        prompt: PromptLike | None = None,
        *,
        threshold: float = 0.5,
        batch_size: int | None = None,
        chunk_size: int | None = None,
        max_detections: int | None = None,
        masks: bool | None = None,
        agnostic_nms: bool | None = None,
    ) -> Iterator[tuple[int, Detections | Exception]]:
        """Yields ``(index, Detections or the error)`` for each image, in input order.
        ``prompt``: see :meth:`predict`. ``masks``, ``agnostic_nms``: override the predictor's settings.

        An image that cannot be read, preprocessed or run through the model yields an
        :class:`ImageLoadError`; the others are still processed. Images are batched only with images of the same padded size, so
        batched results equal one-by-one results (the official model attends over padding).
        """
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {threshold}")
        batch_size = self.batch_size if batch_size is None else batch_size
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        with_masks = self.masks if masks is None else masks
        if with_masks:
            self.model.require_masks()
            if self.backend != "torch":
                raise ValueError(f"backend {self.backend!r} gives boxes only (no masks)")
        if isinstance(prompt, EncodedPrompt) and (prompt.model is not self.model or prompt.autocast != self.autocast):
            raise ValueError("this EncodedPrompt was encoded by another model or autocast setting: encode it again")
        encoded = self.encode_prompt(prompt, chunk_size)  # the text encoder runs once for all images
        chunks = encoded.chunks
        network = self._runtime()
        agnostic = self.agnostic_nms if agnostic_nms is None else agnostic_nms
        processor = self.processor
        stride = processor.preprocessing.size_divisibility
        pending: dict[tuple[int, int], list[tuple[int, torch.Tensor, tuple[int, int]]]] = {}

        def run_batch(group: list[tuple[int, torch.Tensor, tuple[int, int]]]) -> list[tuple[int, Detections]]:
            batch = processor.batch([t for _, t, _ in group])
            # From here the batch holds the pixels: the group keeps views of it (a failed batch
            # is rerun image by image from them), not a second copy of every image.
            group[:] = [(i, batch.tensor[k, :, : t.shape[-2], : t.shape[-1]], s) for k, (i, t, s) in enumerate(group)]
            sizes = [s for _, _, s in group]
            dets = detection.detect_chunks(
                self.model, batch, chunks, sizes, masks=with_masks, autocast=self.autocast, max_detections=max_detections,
                agnostic_nms=agnostic, text=encoded.text, prompts_per_pass=self.prompts_per_pass, network=network,
            )  # fmt: skip
            return [(index, det.above(threshold)) for (index, _, _), det in zip(group, dets)]

        def run(group: list[tuple[int, torch.Tensor, tuple[int, int]]]) -> list[tuple[int, Detections | Exception]]:
            # One image that breaks the model (an extreme size...) must not take the others
            # down: a failed batch is rerun image by image, and a failing image is reported.
            try:
                return run_batch(group)
            except Exception as e:
                if len(group) == 1:
                    h, w = group[0][2]
                    error = ImageLoadError(f"cannot run the model on this {w}x{h} image: {type(e).__name__}: {e}")
                    return [(group[0][0], error)]
            return [item for one in group for item in run([one])]

        results: dict[int, Detections | Exception] = {}
        next_out = 0
        for index, image in enumerate(images):
            try:
                tensor, size = processor(image)
            except ImageLoadError as e:
                results[index] = e
            except Exception as e:  # resizing or conversion of an unusual image
                results[index] = ImageLoadError(f"cannot preprocess the image: {type(e).__name__}: {e}")
            else:
                h, w = tensor.shape[-2:]
                key = (-(-h // stride) * stride, -(-w // stride) * stride) if stride > 0 else (h, w)
                pending.setdefault(key, []).append((index, tensor, size))
                del tensor  # held by `pending` alone
                if len(pending[key]) >= batch_size:
                    results.update(run(pending.pop(key)))
            while next_out in results:
                yield next_out, results.pop(next_out)
                next_out += 1
        for group in pending.values():
            results.update(run(group))
        while next_out in results:
            yield next_out, results.pop(next_out)
            next_out += 1

    def predict(
        self,
        images: ImageInput | Sequence[ImageInput],
        prompt: PromptLike | None = None,
        *,
        threshold: float = 0.5,
        batch_size: int | None = None,
        chunk_size: int | None = None,
        max_detections: int | None = None,
        masks: bool | None = None,
        agnostic_nms: bool | None = None,
    ) -> Detections | list[Detections]:
        """Detects the prompt's phrases (and segments them with ``masks``).

        Args:
            images: a path, PIL image or ``[H, W, 3]`` uint8 RGB array, or a list of them.
            prompt: ``"a cat. a dog."``, a free-form caption, a list of class names, or a
                :class:`Prompt` with explicit character spans; None: the classes a
                fine-tuned model records. A prompt-tuned model's offset applies to its own
                prompt, however spelled (:meth:`resolve_prompt`).
            threshold: keep detections scoring above this.
            batch_size: images per forward pass (default: the predictor's).
            chunk_size: phrases per pass; by default a prompt is split only when it
                exceeds the text encoder's 256 tokens or the head's 80 phrases.
            max_detections: per image, after merging chunks (default: the config's
                ``detections_per_img``, 100); ``0`` keeps all.
            masks: also each detection's mask (default: the predictor's setting).
            agnostic_nms: one label per box (default: the predictor's setting): a box found
                for several phrases keeps its best-scored phrase.

        Returns:
            one :class:`Detections` (original-image pixels, sorted by score), or a list
            for a list of images. A bad image raises :class:`ImageLoadError`.
        """
        single = not isinstance(images, (list, tuple))
        batch = [images] if single else list(images)
        out: list[Detections] = []
        for _, result in self.iter_predict(
            batch,
            prompt,
            threshold=threshold,
            batch_size=batch_size,
            chunk_size=chunk_size,
            max_detections=max_detections,
            masks=masks,
            agnostic_nms=agnostic_nms,
        ):
            if isinstance(result, Exception):
                raise result
            out.append(result)
        return out[0] if single else out

    def answer(
        self, image: ImageInput, questions: str | Sequence[str], *, box_threshold: float = 0.3, topk: int = 5
    ) -> Answer | list[Answer]:
        """Answers a question (or several: the backbone runs once) about one image, with the
        answer's boxes (:func:`glip.inference.vqa.answer_questions`); the model needs an
        answer head (else :class:`~glip.inference.vqa.VQAUnavailableError`)."""
        single = isinstance(questions, str)
        asked = [questions] if single else list(questions)
        if any(not q or not q.strip() for q in asked):
            raise ValueError("the question is empty")
        require_vqa(self.model)
        out = answer_questions(self.model, image, asked, box_threshold=box_threshold, topk=topk)
        return out[0] if single else out

    def caption(
        self,
        images: ImageInput | Sequence[ImageInput],
        *,
        beam_size: int | None = None,
        max_length: int | None = None,
        box_threshold: float | None = None,
        ground: bool = True,
        rerank: str | None = None,
    ) -> Caption | list[Caption]:
        """Captions each image and grounds the caption's noun phrases
        (:func:`glip.inference.captioning.caption_image`, whose options these are); one
        image in, one :class:`Caption` out, a list in, a list out. The model needs a
        captioning head."""
        require_caption_head(self.model)
        single = not isinstance(images, (list, tuple))
        batch = [images] if single else list(images)
        options = dict(
            beam_size=beam_size, max_length=max_length, box_threshold=box_threshold, ground=ground, rerank=rerank
        )
        out = [caption_image(self.model, image, **options) for image in batch]  # type: ignore[arg-type]
        return out[0] if single else out


@torch.no_grad()
def predict_image(
    model: GLIP,
    image: ImageInput,
    prompt: str | Sequence[str] | Prompt,
    threshold: float = 0.5,
    masks: bool = False,
    *,
    agnostic_nms: bool = False,
) -> Detections:
    """``GLIP.predict``: the prompt's phrases in one image, as the official demo computes
    them (the prompt as given, the model in its current mode), through the predictor's
    processor and detection code; see :meth:`glip.modeling.glip.GLIP.predict`."""
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    processor = Processor.of(model)
    chunks = processor.prepare_prompt(prompt)
    tensor, original_size = processor(image)
    (det,) = detection.detect_chunks(
        model, processor.batch([tensor]), chunks, [original_size], masks=masks, agnostic_nms=agnostic_nms,
        prompts_per_pass=PROMPTS_PER_PASS,
    )  # fmt: skip
    return det.above(threshold)
