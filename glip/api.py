"""Zero-shot detection for users: :func:`predict` and the reusable :class:`Predictor`."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Union

import torch

from glip.hub.checkpoint import load_model
from glip.modeling.glip import GLIP
from glip.modeling.low_precision import parse_autocast_dtype, parse_weights_dtype, store_weights, stored_weights_dtype
from glip.ops.multiclass_nms import multiclass_nms
from glip.structures import Detections, ImageBatch
from glip.text import Prompt, PromptError, TokenizedPrompt, parse_prompt, tokenize_prompt
from glip.text.prompt import from_class_names
from glip.utils.allocator import map_large_blocks
from glip.utils.image import ImageInput, ImageLoadError

__all__ = ["ModelLike", "PromptLike", "Predictor", "chunk_prompt", "predict"]

PromptLike = Union[str, Sequence[str], Prompt]
ModelLike = Union[str, Path, GLIP]


def _default_device() -> str:
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
    :func:`glip.hub.zoo.resolve_model_source`, as in :func:`glip.load_model`.
    ``weights_dtype`` (``"bfloat16"``): see :func:`glip.load_model`; a given model is
    converted in place (unless its weights are stored so already)."""
    if isinstance(model, GLIP):
        storage = parse_weights_dtype(weights_dtype)
        if storage is not None and stored_weights_dtype(model) != storage:
            store_weights(model, storage)
        return model.to(device).eval() if device is not None else model.eval()
    device = device or _default_device()
    return load_model(
        model,
        config,
        text_encoder=text_encoder,
        device=device,
        trust_pickle=trust_pickle,
        weights_dtype=weights_dtype,
    )


def chunk_prompt(
    prompt: Prompt, tokenizer: Any, max_len: int, max_phrases: int, chunk_size: int | None = None
) -> list[Prompt]:
    """Splits a prompt whose phrases do not fit one pass into several prompts.

    A prompt that fits (its caption within ``max_len`` tokens, at most ``max_phrases``
    phrases, no ``chunk_size``) is returned unchanged. Otherwise phrases are packed, in
    order, into captions ``"p1. p2. ..."`` of at most ``max_len`` tokens and at most
    ``min(chunk_size, max_phrases)`` phrases, as the official chunked LVIS evaluation builds
    its queries.
    """
    limit = max_phrases if chunk_size is None else min(chunk_size, max_phrases)
    n_tokens = len(tokenizer(prompt.caption, add_special_tokens=True, verbose=False)["input_ids"])
    if chunk_size is None and n_tokens <= max_len and len(prompt.phrases) <= max_phrases:
        return [prompt]
    budget = max_len - 2  # [CLS] and [SEP]
    chunks: list[list[str]] = [[]]
    used = 0
    for phrase in prompt.phrases:
        cost = len(tokenizer(phrase, add_special_tokens=False, verbose=False)["input_ids"]) + 1  # + the "." separator
        if cost > budget:
            raise PromptError(f"the phrase {phrase[:60]!r} alone is longer than {max_len} tokens")
        if chunks[-1] and (used + cost > budget or len(chunks[-1]) >= limit):
            chunks.append([])
            used = 0
        chunks[-1].append(phrase)
        used += cost
    return [from_class_names(names) for names in chunks]


def _phrases_in_several(chunks: Sequence[TokenizedPrompt]) -> set[str]:
    counts = Counter(p for tokens in chunks for p in set(tokens.phrases))
    return {p for p, n in counts.items() if n > 1}


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
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.autocast = parse_autocast_dtype(autocast)
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
        self.batch_size = batch_size
        self.masks = masks

    def prepare_prompt(self, prompt: PromptLike, chunk_size: int | None = None) -> list[TokenizedPrompt]:
        """Parses, chunks (when too long) and tokenizes a prompt once for many images."""
        model = self.model
        parsed = parse_prompt(prompt)
        max_phrases = model.grounding.num_classes
        chunks = chunk_prompt(parsed, model.tokenizer, model.max_query_len, max_phrases, chunk_size)
        return [tokenize_prompt(model.tokenizer, p, model.max_query_len) for p in chunks]

    def _merge_chunks(self, per_chunk: list[Detections], chunks: list[TokenizedPrompt], top_k: int) -> Detections:
        """Chunk results -> one Detections with global 1-based labels."""
        if len(per_chunk) == 1:
            return per_chunk[0]
        offsets = [0]
        for tokens in chunks[:-1]:
            offsets.append(offsets[-1] + len(tokens.phrases))
        boxes = torch.cat([d.boxes for d in per_chunk])
        scores = torch.cat([d.scores for d in per_chunk])
        labels = torch.cat([d.labels + off for d, off in zip(per_chunk, offsets)])
        phrases = [p for d in per_chunk for p in d.phrases]
        masks = None if per_chunk[0].masks is None else torch.cat([d.masks for d in per_chunk])
        keep = torch.arange(len(phrases))
        repeated = {p for p, n in Counter(phrases).items() if n > 1} & _phrases_in_several(chunks)
        if repeated:
            # Per-class NMS across chunks, for a phrase that several chunks contain (each chunk
            # already ran NMS on its own classes, in the resized frame).
            names = {name: i for i, name in enumerate(dict.fromkeys(phrases))}
            keep = multiclass_nms(
                boxes,
                scores,
                torch.tensor([names[p] for p in phrases], dtype=torch.int64),
                self.model.postprocessor.nms_thresh,
            )
        order = keep[torch.sort(scores[keep], descending=True, stable=True).indices]
        if top_k > 0:
            order = order[:top_k]
        return Detections(
            boxes[order],
            scores[order],
            labels[order],
            [phrases[i] for i in order.tolist()],
            per_chunk[0].image_size,
            None if masks is None else masks[order],
        )

    def iter_predict(
        self,
        images: Sequence[ImageInput],
        prompt: PromptLike,
        *,
        threshold: float = 0.5,
        batch_size: int | None = None,
        chunk_size: int | None = None,
        max_detections: int | None = None,
        masks: bool | None = None,
    ) -> Iterator[tuple[int, Detections | Exception]]:
        """Yields ``(index, Detections or the error)`` for each image, in input order.
        ``masks``: override the predictor's ``masks`` setting.

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
        chunks = self.prepare_prompt(prompt, chunk_size)
        top_k = self.model.postprocessor.detections_per_img if max_detections is None else max_detections
        prep = self.model.preprocessing
        stride = prep.size_divisibility
        pending: dict[tuple[int, int], list[tuple[int, torch.Tensor, tuple[int, int]]]] = {}

        def run_batch(group: list[tuple[int, torch.Tensor, tuple[int, int]]]) -> list[tuple[int, Detections]]:
            batch = ImageBatch.from_tensors([t for _, t, _ in group], stride)
            sizes = [s for _, _, s in group]
            per_chunk = self.model.detect_prompts(
                batch, chunks, original_sizes=sizes, masks=with_masks, autocast=self.autocast
            )
            return [
                (index, self._merge_chunks([dets[j] for dets in per_chunk], chunks, top_k).above(threshold))
                for j, (index, _, _) in enumerate(group)
            ]

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
                tensor, size = prep(image)
            except ImageLoadError as e:
                results[index] = e
            except Exception as e:  # resizing or conversion of an unusual image
                results[index] = ImageLoadError(f"cannot preprocess the image: {type(e).__name__}: {e}")
            else:
                h, w = tensor.shape[-2:]
                key = (-(-h // stride) * stride, -(-w // stride) * stride) if stride > 0 else (h, w)
                pending.setdefault(key, []).append((index, tensor, size))
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
        prompt: PromptLike,
        *,
        threshold: float = 0.5,
        batch_size: int | None = None,
        chunk_size: int | None = None,
        max_detections: int | None = None,
        masks: bool | None = None,
    ) -> Detections | list[Detections]:
        """Detects the prompt's phrases (and segments them with ``masks``).

        Args:
            images: a path, PIL image or ``[H, W, 3]`` uint8 RGB array, or a list of them.
            prompt: ``"a cat. a dog."``, a free-form caption, a list of class names, or a
                :class:`Prompt` with explicit character spans.
            threshold: keep detections scoring above this.
            batch_size: images per forward pass (default: the predictor's).
            chunk_size: phrases per pass; by default a prompt is split only when it
                exceeds the text encoder's 256 tokens or the head's 80 phrases.
            max_detections: per image, after merging chunks (default: the config's
                ``detections_per_img``, 100); ``0`` keeps all.
            masks: also each detection's mask (default: the predictor's setting).

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
        ):
            if isinstance(result, Exception):
                raise result
            out.append(result)
        return out[0] if single else out


_CACHE: dict[tuple[str, str], Predictor] = {}


def predict(
    images: ImageInput | Sequence[ImageInput],
    prompt: PromptLike,
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
) -> Detections | list[Detections]:
    """One-call zero-shot detection (see :meth:`Predictor.predict`).

    ``model`` is a zoo name, a weights path or a loaded :class:`GLIP`; the last model
    loaded by name or path is kept for the next call. ``masks``: also each detection's
    mask (``Detections.masks``, original-image pixels; the model needs a mask head).
    ``autocast``: ``"bfloat16"`` / ``"float16"`` mixed-precision compute (see :class:`Predictor`).
    """
    compute = parse_autocast_dtype(autocast)  # a bad value fails before any model is loaded
    if isinstance(model, GLIP):
        predictor = Predictor(model, device=device, batch_size=batch_size)
    else:
        key = (str(model), str(device or _default_device()))
        predictor = _CACHE.get(key)
        if predictor is None:
            _CACHE.clear()
            predictor = Predictor(model, config=config, text_encoder=text_encoder, device=device, batch_size=batch_size)
            _CACHE[key] = predictor
    predictor.autocast = compute
    return predictor.predict(
        images, prompt, threshold=threshold, batch_size=batch_size, chunk_size=chunk_size, masks=masks
    )
