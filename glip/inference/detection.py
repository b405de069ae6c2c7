"""Detection on preprocessed inputs: text encoding, network passes, decoding, chunk merging.

Every detection entry point (:class:`glip.inference.Predictor`, ``GLIP.predict``,
``glip detect``, the transformers wrappers) ends here: the network runs its heads
(:meth:`GLIP.forward_text_features <glip.modeling.glip.GLIP.forward_text_features>`), the
grounding head's post-processor decodes boxes, masks are pasted (:mod:`glip.inference.masks`)
and a long prompt's chunks are merged (:func:`glip.modeling.heads.grounding.postprocess.merge_chunks`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from glip.modeling import low_precision
from glip.modeling.glip import GLIP, GROUNDING, MASK
from glip.modeling.heads.grounding.postprocess import class_agnostic_nms, merge_chunks
from glip.modeling.prompt_batch import GroundingNetwork, repeat_features, split_head, stack_text
from glip.structures import Detections, ImageBatch, TextFeatures
from glip.text import TokenizedPrompt
from glip.text.tokenize import trim_padding

from .masks import add_masks

__all__ = ["detect", "detect_chunks", "detect_prompts", "encode_prompts"]


@torch.no_grad()
def encode_prompts(
    model: GLIP, prompts: Sequence[TokenizedPrompt], autocast: torch.dtype | None = None
) -> list[TextFeatures]:
    """Each prompt's text features (``B = 1``), as :func:`detect_prompts` computes them:
    padding trimmed (when ``model.trim_text``), the prompt offset added to the prompt it was
    tuned for only. Encode a fixed class list once and pass the result to
    :func:`detect_prompts` for every image batch."""
    device = model.device
    out = []
    for tokens in prompts:
        tokens = trim_padding(tokens) if model.trim_text else tokens
        ids, mask = tokens.input_ids.to(device), tokens.attention_mask.to(device)
        with low_precision.autocast(device, autocast):
            text = model.text_encoder(ids, mask)
            if model.prompt_offset is not None and model.prompt_offset.matches(ids, mask):
                text = model.prompt_offset(text)
        out.append(text)
    return out


@torch.no_grad()
def detect_prompts(
    model: GLIP,
    images: ImageBatch,
    prompts: Sequence[TokenizedPrompt],
    original_sizes: Sequence[tuple[int, int]] | None = None,
    masks: bool = False,
    autocast: torch.dtype | None = None,
    *,
    text: Sequence[TextFeatures] | None = None,
    prompts_per_pass: int = 1,
    network: GroundingNetwork | None = None,
    features: Sequence[Tensor] | None = None,
) -> list[list[Detections]]:
    """Detections of several prompts in every image of a batch, the backbone run once.

    Returns ``[prompt][image]`` detections sorted by score (labels index each prompt's own
    phrases, phrases filled), on the CPU: boxes in resized-image pixels, or in
    ``original_sizes`` pixels when given. A prompt offset (prompt tuning) applies only to the
    prompt it was tuned for (the same token ids); any other prompt runs the base model.

    Args:
        masks: also each detection's mask (needs the mask head), in the same pixels.
        autocast: ``torch.bfloat16`` / ``torch.float16``: the network runs under
            ``torch.autocast`` in that dtype; its outputs are decoded in float32.
        text: the prompts' :func:`encode_prompts` (same autocast), else encoded here.
        prompts_per_pass: prompts run through the trunk and head as one batch
            (:mod:`glip.modeling.prompt_batch`; equal to one at a time up to float rounding;
            with ``masks`` always 1).
        network: another runtime for the backbone, trunk and grounding head (ONNX Runtime,
            :mod:`glip.export.runtime`); no masks, no autocast.
        features: the backbone's L maps of ``images`` (``Tensor[B, C, H_l, W_l]``) when the
            caller has run it already (then it is not run again).
    """
    if prompts_per_pass < 1:
        raise ValueError(f"prompts_per_pass must be at least 1, got {prompts_per_pass}")
    if masks:
        model.require_masks()
    if network is not None and (masks or autocast is not None):
        raise ValueError("masks and autocast need the PyTorch backend")
    device = model.device
    images = images.to(device)
    amp = low_precision.autocast(device, autocast)
    if features is None:
        with amp:
            features = model.backbone(images.tensor) if network is None else network.features(images.tensor)
    prompts = [trim_padding(t) if model.trim_text else t for t in prompts]
    text = encode_prompts(model, prompts, autocast) if text is None else text
    heads = (GROUNDING, MASK) if masks else (GROUNDING,)
    batch, per_pass = images.tensor.shape[0], 1 if masks else prompts_per_pass
    grounding = model.grounding
    results = []
    for start in range(0, len(prompts), per_pass):
        group = range(start, min(start + per_pass, len(prompts)))
        stacked = stack_text([text[i] for i in group], batch)  # [K * B, T, D]
        repeated = repeat_features(features, len(group))  # L x [K * B, C, H_l, W_l]
        with amp:
            if network is None:
                out = model.forward_text_features(repeated, stacked, heads=heads)
                head_all, anchors = out.head, out.anchors
            else:
                head_all = network.grounding(repeated, stacked)
                anchors = model.anchor_generator([tuple(f.shape[-2:]) for f in features], device=device)
        for k, i in enumerate(group):
            tokens = prompts[i]
            head = split_head(head_all, k, batch, tokens.input_ids.shape[1]) if len(group) > 1 else head_all
            head = head.float() if autocast is not None else head
            positive_map = tokens.positive_map.to(device)
            if masks:
                # Decode in the network-input frame (the mask head pools there), then map to the originals.
                dets = grounding.postprocess(head, anchors, positive_map, images.image_sizes)
                dets = add_masks(
                    model, out.heads[MASK], dets, positive_map, images.image_sizes, original_sizes, autocast
                )
            else:
                dets = grounding.postprocess(head, anchors, positive_map, images.image_sizes, original_sizes)
            for det in dets:
                det.phrases = [tokens.phrases[int(label) - 1] for label in det.labels.tolist()]
            results.append([det.to("cpu") for det in dets])
    return results


@torch.no_grad()
def detect_chunks(
    model: GLIP,
    images: ImageBatch,
    chunks: Sequence[TokenizedPrompt],
    original_sizes: Sequence[tuple[int, int]] | None = None,
    *,
    masks: bool = False,
    autocast: torch.dtype | None = None,
    max_detections: int | None = None,
    agnostic_nms: bool = False,
    text: Sequence[TextFeatures] | None = None,
    prompts_per_pass: int = 1,
    network: GroundingNetwork | None = None,
    features: Sequence[Tensor] | None = None,
) -> list[Detections]:
    """One prompt's detections per image, its chunks (:meth:`Processor.prepare_prompt
    <glip.inference.processor.Processor.prepare_prompt>`) merged: global labels, sorted by
    score, at most ``max_detections`` (default the config's ``detections_per_img``; ``0``:
    all). ``agnostic_nms``: one label per box (NMS over all labels at the config's
    ``nms_thresh``). Other arguments: see :func:`detect_prompts`."""
    per_chunk = detect_prompts(
        model, images, chunks, original_sizes, masks=masks, autocast=autocast, text=text,
        prompts_per_pass=prompts_per_pass, network=network, features=features,
    )  # fmt: skip
    post = model.postprocessor
    top_k = post.detections_per_img if max_detections is None else max_detections
    out = []
    for j in range(len(per_chunk[0])):
        det = merge_chunks([dets[j] for dets in per_chunk], chunks, post.nms_thresh, top_k)
        out.append(class_agnostic_nms(det, post.nms_thresh) if agnostic_nms else det)
    return out


@torch.no_grad()
def detect(
    model: GLIP,
    images: ImageBatch,
    tokens: TokenizedPrompt,
    original_sizes: Sequence[tuple[int, int]] | None = None,
    masks: bool = False,
    autocast: torch.dtype | None = None,
) -> list[Detections]:
    """Detections of one prompt in every image of a batch (:func:`detect_prompts` of one prompt)."""
    return detect_prompts(model, images, [tokens], original_sizes, masks=masks, autocast=autocast)[0]
