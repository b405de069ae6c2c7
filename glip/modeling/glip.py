"""The GLIP model: visual backbone + text encoder + fused trunk + named heads.

The grounding head (``heads["grounding"]``) detects; GLIPv2's other heads (MDETR
branches, inter-image contrastive, MLM...) share the same trunk (see
:mod:`glip.modeling.heads` for how a head is added).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from glip.modeling import low_precision
from glip.modeling.backbone import VisionBackbone
from glip.modeling.fusion.trunk import FusionTrunk, TrunkOutput
from glip.modeling.heads import GroundingHead, Head
from glip.modeling.heads.grounding.anchors import AnchorGenerator
from glip.modeling.heads.grounding.postprocess import GroundingPostProcessor, class_agnostic_nms, merge_chunks
from glip.modeling.heads.require import MasksUnavailableError, require_head
from glip.modeling.language.prompt_offset import PromptOffset
from glip.modeling.language.text_encoder import BertTextEncoder
from glip.modeling.preprocessing import Preprocessing
from glip.modeling.prompt_batch import PROMPTS_PER_PASS, GroundingNetwork, repeat_features, split_head, stack_text
from glip.ops.boxes import rescale_boxes
from glip.ops.masks import box_extent, paste_masks
from glip.structures import Detections, HeadOutputs, ImageBatch, TextFeatures
from glip.text import Prompt, TokenizedPrompt, parse_prompt, tokenize_prompt
from glip.text.chunks import prepare_prompt
from glip.text.tokenize import trim_padding
from glip.utils.image import ImageInput

__all__ = [
    "GLIP",
    "GROUNDING",
    "MASK",
    "GLIPOutput",
    "MasksUnavailableError",
    "Preprocessing",
    "register_pretrained_writers",
]


# The name of the detection head in ``GLIP.heads``.
GROUNDING = "grounding"
# The name of the mask head (GLIPv2 segmentation) in ``GLIP.heads``.
MASK = "mask"

# Each top-level module of GLIP and the official part it stands for in the freezing and
# learning-rate rules: the official "rpn" (RPN.FREEZE) is our trunk and heads.
_PARTS = {
    "backbone": "backbone",
    "text_encoder": "language",
    "prompt_offset": "prompt",
    "trunk": "head",
    "heads": "head",
    "anchor_generator": "head",
}


@dataclass
class GLIPOutput:
    """Everything one forward pass computes.

    Attributes:
        trunk: the fused trunk's output (post-fusion maps and text, and its pre-fusion inputs).
        heads: each head's output, by head name (the heads that ran).
        anchors: L tensors ``Tensor[H_l * W_l, 4]`` over the padded grid.
    """

    trunk: TrunkOutput
    anchors: list[Tensor]
    heads: dict[str, Any] = field(default_factory=dict)

    @property
    def head(self) -> HeadOutputs:
        """The grounding head's per-level predictions."""
        return self.heads[GROUNDING]

    @property
    def text(self) -> TextFeatures:
        """The language backbone's features (before fusion)."""
        return self.trunk.text_input

    @property
    def features(self) -> list[Tensor]:
        """L FPN maps ``Tensor[B, C, H_l, W_l]`` (before fusion)."""
        return self.trunk.features


# Writers of the Hugging Face folder format, registered by the layer that owns it
# (glip.hf.registration, when transformers is imported): the network never imports upward.
_PRETRAINED_WRITERS: dict[str, Callable[..., Any]] = {}


def register_pretrained_writers(save_pretrained: Callable[..., Any], push_to_hub: Callable[..., Any]) -> None:
    """Installs the functions behind :meth:`GLIP.save_pretrained` and :meth:`GLIP.push_to_hub`."""
    _PRETRAINED_WRITERS.update(save_pretrained=save_pretrained, push_to_hub=push_to_hub)


def _pretrained_writer(name: str) -> Callable[..., Any]:
    if name not in _PRETRAINED_WRITERS:
        raise RuntimeError(f"{name} needs glip's transformers integration: call glip.hf.register() first")
    return _PRETRAINED_WRITERS[name]


class GLIP(nn.Module):
    """Grounded language-image detector.

    Args:
        backbone: images -> L FPN maps.
        text_encoder: token ids -> :class:`TextFeatures`.
        trunk: FPN maps + text -> :class:`TrunkOutput` (the fused tower).
        heads: the heads by name, run in this order on the trunk's output; one named
            ``"grounding"`` (a :class:`GroundingHead`) detects. A head may read the
            outputs of the heads before it.
        anchor_generator: one anchor per location and level.
        preprocessing: test-time image transforms.
        tokenizer: a Hugging Face fast BERT tokenizer (needed by :meth:`predict`).
        max_query_len: T, the padded prompt length (official ``MAX_QUERY_LEN``, 256).
        prompt_offset: a tuned :class:`PromptOffset` on the text features (prompt tuning,
            official ``tunable_linear``), or None (the default: the model is unchanged).
    """

    def __init__(
        self,
        backbone: VisionBackbone,
        text_encoder: BertTextEncoder,
        trunk: FusionTrunk,
        heads: Mapping[str, Head],
        anchor_generator: AnchorGenerator,
        preprocessing: Preprocessing,
        tokenizer: Any = None,
        max_query_len: int = 256,
        prompt_offset: PromptOffset | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.text_encoder = text_encoder
        if GROUNDING not in heads or not isinstance(heads[GROUNDING], GroundingHead):
            raise ValueError(f"the model needs a GroundingHead named {GROUNDING!r} (got {sorted(heads)})")
        self.trunk = trunk
        self.heads = nn.ModuleDict(dict(heads))
        self.anchor_generator = anchor_generator
        self.preprocessing = preprocessing
        self.tokenizer = tokenizer
        self.max_query_len = max_query_len
        self.prompt_offset = prompt_offset
        self.config: Any = None  # the GLIPConfig it was built from, set by the builder
        # The prompt a transfer run tuned it for (set by glip.hub.tuned); `glip detect`'s default.
        self.tuned_prompt: Prompt | None = None
        # Inference cuts each prompt's padding (same detections, see glip.text.tokenize.trim_padding).
        self.trim_text = True

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def save_pretrained(self, save_directory: str | Path, **kwargs: Any) -> None:
        """Writes a transformers-style folder (``config.json``, ``model.safetensors``, the
        tokenizer files, a ``README.md`` model card) that transformers' Auto classes and
        pipeline and :func:`glip.load_model` read (:mod:`glip.hf`)."""
        _pretrained_writer("save_pretrained")(self, save_directory, **kwargs)

    def push_to_hub(self, repo_id: str, **kwargs: Any) -> Any:
        """:meth:`save_pretrained` into a Hugging Face Hub repository (huggingface_hub)."""
        return _pretrained_writer("push_to_hub")(self, repo_id, **kwargs)

    @property
    def grounding(self) -> GroundingHead:
        """The detection head."""
        return self.heads[GROUNDING]  # type: ignore[return-value]

    @property
    def postprocessor(self) -> GroundingPostProcessor:
        """The grounding head's decoding (thresholds, NMS, detections per image)."""
        return self.grounding.postprocessor

    @property
    def has_masks(self) -> bool:
        """Whether the model has a mask head (can return :attr:`Detections.masks`)."""
        return MASK in self.heads

    def require_masks(self) -> None:
        """Raises :class:`MasksUnavailableError` (one line naming the model) without a mask head."""
        require_head(self, MASK)

    @staticmethod
    def part_of(name: str) -> str:
        """The part a parameter or state name belongs to: ``"backbone"``, ``"language"``
        (the text encoder), ``"prompt"`` (the prompt offset), ``"head"`` (the trunk and the
        heads: the official ``rpn``), or ``""``."""
        return _PARTS.get(name.split(".", 1)[0], "")

    @staticmethod
    def state_prefixes() -> tuple[str, ...]:
        """The first components of every state-dict key of a GLIP (checkpoint recognition)."""
        return tuple(f"{k}." for k in _PARTS)

    def linear_probe_names(self) -> list[str]:
        """Full names of the parameters the heads declare for linear probing."""
        return [f"heads.{name}.{p}" for name, head in self.heads.items() for p in head.linear_probe_names()]

    def untrained_names(self) -> list[str]:
        """Full names of the parameters no loss reaches (e.g. the official ``cls_logits``)."""
        return [f"heads.{name}.{p}" for name, head in self.heads.items() for p in head.untrained_names()]

    def freeze_untrained(self) -> None:
        """Freezes :meth:`untrained_names`, so that no process waits for their gradient."""
        names = set(self.untrained_names())
        for name, param in self.named_parameters():
            if name in names:
                param.requires_grad_(False)

    def enable_prompt_offset(self, num_rows: int | None = None, token_ids: list[int] | None = None) -> PromptOffset:
        """Adds a zero :class:`PromptOffset` (``num_rows`` default ``max_query_len``), or
        returns the one there; the model's outputs are unchanged until it is trained."""
        if self.prompt_offset is None:
            rows = self.max_query_len if num_rows is None else num_rows
            dim = self.text_encoder.dim
            param = next(self.parameters())
            self.prompt_offset = PromptOffset(rows, dim, token_ids).to(param.device)
        elif token_ids is not None:
            self.prompt_offset.token_ids = tuple(token_ids)
        return self.prompt_offset

    def forward(
        self,
        images: ImageBatch,
        input_ids: Tensor,
        attention_mask: Tensor,
        heads: Sequence[str] | None = None,
        causal: bool = False,
    ) -> GLIPOutput:
        """Runs the network (with the prompt offset, when there is one, whatever the prompt,
        as the official training does).

        Args:
            images: ``B`` padded images.
            input_ids, attention_mask: ``Tensor[B, T]``, or ``[1, T]``: one prompt for all
                images, encoded once.
            heads, causal: see :meth:`forward_features`. In training, the visual body's maps
                are kept when a head that runs declares ``needs_backbone``.
        """
        running = self.heads.values() if heads is None else [self.heads[n] for n in heads]
        if self.training and any(h.needs_backbone for h in running):
            features, body = self.backbone.forward_with_body(images.tensor)
            return self.forward_features(features, input_ids, attention_mask, heads=heads, backbone=body, causal=causal)
        return self.forward_features(
            self.backbone(images.tensor), input_ids, attention_mask, heads=heads, causal=causal
        )

    def forward_features(
        self,
        features: list[Tensor],
        input_ids: Tensor,
        attention_mask: Tensor,
        use_prompt_offset: bool = True,
        heads: Sequence[str] | None = None,
        backbone: list[Tensor] | None = None,
        causal: bool = False,
    ) -> GLIPOutput:
        """The text encoder, trunk and heads on precomputed FPN maps (L tensors
        ``[B, C, H_l, W_l]``): several prompts can reuse one backbone pass.
        ``use_prompt_offset`` False skips the prompt offset (the base model's text
        features). ``heads``: the names of the heads to run (default all, in order,
        except the ``training_only`` ones when the model is in eval mode). ``backbone``: the
        visual body's maps, passed on in ``TrunkOutput.backbone`` for the heads that read them.
        ``causal``: uni-directional text encoder and trunk (captioning, :mod:`glip.modeling.language.causal`):
        the fused text at token ``i`` depends on the image and tokens ``<= i`` only."""
        batch = features[0].shape[0]
        if causal:
            text = self.text_encoder(input_ids, attention_mask, causal=True)
        else:
            text = self.text_encoder(input_ids, attention_mask)
        if self.prompt_offset is not None and use_prompt_offset:
            text = self.prompt_offset(text)
        if input_ids.shape[0] == 1 and batch > 1:
            # One prompt for the whole batch: encode it once, share the features.
            text = text.expand(batch)
        return self.forward_text_features(features, text, heads=heads, backbone=backbone)

    def forward_text_features(
        self,
        features: list[Tensor],
        text: TextFeatures,
        heads: Sequence[str] | None = None,
        backbone: list[Tensor] | None = None,
    ) -> GLIPOutput:
        """The trunk and heads on FPN maps (L tensors ``[B, C, H_l, W_l]``) and encoded text
        (``[B, T, D]`` fields): :meth:`forward_features` after its text encoder."""
        trunk = self.trunk(features, text)
        if backbone is not None:
            trunk = replace(trunk, backbone=list(backbone))
        outputs: dict[str, Any] = {}
        for name, head in self.heads.items():
            wanted = (self.training or not getattr(head, "training_only", False)) if heads is None else name in heads
            if wanted:
                outputs[name] = head(trunk, outputs)
        anchors = self.anchor_generator([tuple(f.shape[-2:]) for f in features], device=features[0].device)
        return GLIPOutput(trunk=trunk, anchors=anchors, heads=outputs)

    def tokenize(self, prompt: str | Sequence[str] | Prompt) -> TokenizedPrompt:
        if self.tokenizer is None:
            raise RuntimeError("this model has no tokenizer; build it with glip.load_model")
        return tokenize_prompt(self.tokenizer, parse_prompt(prompt), self.max_query_len)

    def prepare_prompt(
        self, prompt: str | Sequence[str] | Prompt, chunk_size: int | None = None
    ) -> list[TokenizedPrompt]:
        """The tokenized passes of a prompt: one, or several when it exceeds the text encoder's
        ``max_query_len`` tokens or the head's phrases (or with ``chunk_size`` phrases per pass);
        see :func:`glip.text.chunks.chunk_prompt`."""
        if self.tokenizer is None:
            raise RuntimeError("this model has no tokenizer; build it with glip.load_model")
        return prepare_prompt(prompt, self.tokenizer, self.max_query_len, self.grounding.num_classes, chunk_size)

    @torch.no_grad()
    def detect_chunks(
        self,
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
    ) -> list[Detections]:
        """One prompt's detections per image, its chunks (:meth:`prepare_prompt`) merged:
        global labels, sorted by score, at most ``max_detections`` (default the config's
        ``detections_per_img``; ``0``: all). ``agnostic_nms``: one label per box (NMS over
        all labels at the config's ``nms_thresh``). Other arguments: see :meth:`detect_prompts`."""
        per_chunk = self.detect_prompts(
            images, chunks, original_sizes, masks=masks, autocast=autocast, text=text,
            prompts_per_pass=prompts_per_pass, network=network,
        )  # fmt: skip
        post = self.postprocessor
        top_k = post.detections_per_img if max_detections is None else max_detections
        out = []
        for j in range(len(per_chunk[0])):
            det = merge_chunks([dets[j] for dets in per_chunk], chunks, post.nms_thresh, top_k)
            out.append(class_agnostic_nms(det, post.nms_thresh) if agnostic_nms else det)
        return out

    @torch.no_grad()
    def detect(
        self,
        images: ImageBatch,
        tokens: TokenizedPrompt,
        original_sizes: Sequence[tuple[int, int]] | None = None,
        masks: bool = False,
        autocast: torch.dtype | None = None,
    ) -> list[Detections]:
        """Detections of one prompt in every image of a batch, sorted by score.

        Boxes are in resized-image pixels, or in ``original_sizes`` pixels when given.
        Phrases are filled from ``tokens``. ``masks``: also each detection's mask (needs
        the mask head), in the same pixels. ``autocast``: see :meth:`detect_prompts`.
        """
        return self.detect_prompts(images, [tokens], original_sizes, masks=masks, autocast=autocast)[0]

    @torch.no_grad()
    def encode_prompts(
        self, prompts: Sequence[TokenizedPrompt], autocast: torch.dtype | None = None
    ) -> list[TextFeatures]:
        """Each prompt's text features (``B = 1``), as :meth:`detect_prompts` computes them:
        padding trimmed (when ``trim_text``), the prompt offset added to the prompt it was
        tuned for only. Encode a fixed class list once and pass the result to
        :meth:`detect_prompts` for every image batch."""
        device = self.device
        out = []
        for tokens in prompts:
            tokens = trim_padding(tokens) if self.trim_text else tokens
            ids, mask = tokens.input_ids.to(device), tokens.attention_mask.to(device)
            with low_precision.autocast(device, autocast):
                text = self.text_encoder(ids, mask)
                if self.prompt_offset is not None and self.prompt_offset.matches(ids, mask):
                    text = self.prompt_offset(text)
            out.append(text)
        return out

    @torch.no_grad()
    def detect_prompts(
        self,
        images: ImageBatch,
        prompts: Sequence[TokenizedPrompt],
        original_sizes: Sequence[tuple[int, int]] | None = None,
        masks: bool = False,
        autocast: torch.dtype | None = None,
        *,
        text: Sequence[TextFeatures] | None = None,
        prompts_per_pass: int = 1,
        network: GroundingNetwork | None = None,
    ) -> list[list[Detections]]:
        """Like :meth:`detect` for several prompts, running the backbone once.

        Returns ``[prompt][image]`` detections (labels index each prompt's own phrases).
        A prompt offset (prompt tuning) applies only to the prompt it was tuned for (the
        same token ids); any other prompt runs the base model. ``masks``: see :meth:`detect`.
        ``autocast`` (``torch.bfloat16`` / ``torch.float16``): the network runs under
        ``torch.autocast`` in that dtype; its outputs are decoded in float32.
        ``text``: the prompts' :meth:`encode_prompts` (same autocast), else encoded here.
        ``prompts_per_pass``: prompts run through the trunk and head as one batch
        (:mod:`glip.modeling.prompt_batch`; equal to one at a time up to float rounding;
        with ``masks`` always 1). ``network``: another runtime for the backbone, trunk and
        grounding head (ONNX Runtime, :mod:`glip.export.runtime`); no masks, no autocast.
        """
        if prompts_per_pass < 1:
            raise ValueError(f"prompts_per_pass must be at least 1, got {prompts_per_pass}")
        if masks:
            self.require_masks()
        if network is not None and (masks or autocast is not None):
            raise ValueError("masks and autocast need the PyTorch backend")
        device = self.device
        images = images.to(device)
        amp = low_precision.autocast(device, autocast)
        with amp:
            features = self.backbone(images.tensor) if network is None else network.features(images.tensor)
        prompts = [trim_padding(t) if self.trim_text else t for t in prompts]
        text = self.encode_prompts(prompts, autocast) if text is None else text
        heads = (GROUNDING, MASK) if masks else (GROUNDING,)
        batch, per_pass = images.tensor.shape[0], 1 if masks else prompts_per_pass
        results = []
        for start in range(0, len(prompts), per_pass):
            group = range(start, min(start + per_pass, len(prompts)))
            stacked = stack_text([text[i] for i in group], batch)  # [K * B, T, D]
            repeated = repeat_features(features, len(group))  # L x [K * B, C, H_l, W_l]
            with amp:
                if network is None:
                    out = self.forward_text_features(repeated, stacked, heads=heads)
                    head_all, anchors = out.head, out.anchors
                else:
                    head_all = network.grounding(repeated, stacked)
                    anchors = self.anchor_generator([tuple(f.shape[-2:]) for f in features], device=device)
            for k, i in enumerate(group):
                tokens = prompts[i]
                head = split_head(head_all, k, batch, tokens.input_ids.shape[1]) if len(group) > 1 else head_all
                head = head.float() if autocast is not None else head
                positive_map = tokens.positive_map.to(device)
                if masks:
                    # Decode in the network-input frame (the mask head pools there), then map to the originals.
                    dets = self.grounding.postprocess(head, anchors, positive_map, images.image_sizes)
                    dets = self._add_masks(
                        out.heads[MASK], dets, positive_map, images.image_sizes, original_sizes, autocast
                    )
                else:
                    dets = self.grounding.postprocess(head, anchors, positive_map, images.image_sizes, original_sizes)
                for det in dets:
                    det.phrases = [tokens.phrases[int(label) - 1] for label in det.labels.tolist()]
                results.append([det.to("cpu") for det in dets])
        return results

    def _add_masks(
        self,
        output: Any,
        dets: list[Detections],
        positive_map: Tensor,
        image_sizes: Sequence[tuple[int, int]],
        original_sizes: Sequence[tuple[int, int]] | None,
        autocast: torch.dtype | None = None,
    ) -> list[Detections]:
        """Each detection's mask, pasted into its image (``original_sizes`` when given, with
        the boxes rescaled as the grounding post-processor does), threshold 0.5. ``autocast``:
        the mask head runs under ``torch.autocast`` in that dtype, the pasting in float32."""
        token_maps = [positive_map[det.labels - 1] > 0 for det in dets]  # B x [N_b, T]
        with low_precision.autocast(positive_map.device, autocast):
            probs = self.heads[MASK].predict(output, [det.boxes for det in dets], token_maps)  # B x [N_b, M, M]
        probs = [p.float() for p in probs]
        out = []
        for b, (det, prob) in enumerate(zip(dets, probs)):
            size, boxes = tuple(image_sizes[b]), det.boxes
            extents = box_extent(boxes)
            if original_sizes is not None:
                size = tuple(original_sizes[b])
                boxes = rescale_boxes(boxes, tuple(image_sizes[b]), size)
                extents = rescale_boxes(extents, tuple(image_sizes[b]), size)
            pasted = paste_masks(prob, extents, size)  # [N_b, H, W]
            out.append(Detections(boxes, det.scores, det.labels, [], size, pasted))
        return out

    @torch.no_grad()
    def predict(
        self,
        image: ImageInput,
        prompt: str | Sequence[str] | Prompt,
        threshold: float = 0.5,
        masks: bool = False,
        *,
        agnostic_nms: bool = False,
    ) -> Detections:
        """Detects the prompt's phrases in one image, as the official demo does; a prompt too
        long for one pass is split as :meth:`glip.Predictor.predict` splits it (the same code).

        Args:
            image: a path, a PIL image or an ``[H, W, 3]`` uint8 RGB array.
            prompt: ``"a cat. a dog."``, a list of class names, or a :class:`Prompt`.
            threshold: keep detections whose final score is above this.
            masks: also return each detection's mask (``Detections.masks``; needs a mask head).
            agnostic_nms: one label per box (see :meth:`detect_chunks`).

        Returns:
            :class:`Detections` in original-image pixels, sorted by descending score.
        """
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {threshold}")
        chunks = self.prepare_prompt(prompt)
        tensor, original_size = self.preprocessing(image)
        batch = ImageBatch.from_tensors([tensor], self.preprocessing.size_divisibility)
        (det,) = self.detect_chunks(
            batch, chunks, [original_size], masks=masks, agnostic_nms=agnostic_nms, prompts_per_pass=PROMPTS_PER_PASS
        )
        return det.above(threshold)
