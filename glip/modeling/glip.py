"""The GLIP model: visual backbone + text encoder + fused trunk + named heads.

The grounding head (``heads["grounding"]``) detects; GLIPv2's other heads (MDETR
branches, inter-image contrastive, MLM...) share the same trunk (see
:mod:`glip.modeling.heads` for how a head is added).

:class:`GLIP` is the network: tensors in (:meth:`GLIP.forward`), :class:`GLIPOutput` out.
Reading and resizing images, tokenizing prompts and decoding outputs into detections,
answers or captions belong to :mod:`glip.inference` (the processor and the predictor);
the methods users call on a model (:meth:`GLIP.predict`, :meth:`GLIP.detect`...) delegate
there through :func:`register_inference`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from glip.modeling.backbone import VisionBackbone
from glip.modeling.fusion.trunk import FusionTrunk, TrunkOutput
from glip.modeling.heads import GroundingHead, Head
from glip.modeling.heads.grounding.anchors import AnchorGenerator
from glip.modeling.heads.grounding.postprocess import GroundingPostProcessor
from glip.modeling.heads.require import MasksUnavailableError, require_head
from glip.modeling.language.prompt_offset import PromptOffset
from glip.modeling.language.text_encoder import BertTextEncoder
from glip.structures import Detections, HeadOutputs, ImageBatch, TextFeatures
from glip.text import Prompt, TokenizedPrompt

# An image a user gives (a path, a PIL image or an [H, W, 3] uint8 RGB array): the
# processor's input type (glip.utils.image.ImageInput), named here without importing it.
ImageInput = Any

__all__ = [
    "GLIP",
    "GROUNDING",
    "MASK",
    "GLIPOutput",
    "MasksUnavailableError",
    "register_inference",
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


# The processor / predictor side behind GLIP's convenience methods (predict, tokenize,
# detect...), registered by glip.inference (imported by `import glip`): the network never
# imports upward.
_INFERENCE: dict[str, Callable[..., Any]] = {}


def register_inference(**functions: Callable[..., Any]) -> None:
    """Installs the functions behind :attr:`GLIP.preprocessing`, :meth:`GLIP.tokenize`,
    :meth:`GLIP.prepare_prompt`, :meth:`GLIP.detect`, :meth:`GLIP.detect_prompts`,
    :meth:`GLIP.detect_chunks`, :meth:`GLIP.encode_prompts` and :meth:`GLIP.predict`."""
    _INFERENCE.update(functions)


def _inference(name: str) -> Callable[..., Any]:
    if name not in _INFERENCE:
        raise RuntimeError(f"GLIP.{name} needs glip.inference: import glip first")
    return _INFERENCE[name]


class GLIP(nn.Module):
    """Grounded language-image detector: the network (no file reads, no tokenizer calls).

    Besides its modules it carries metadata that the processor and the checkpoint writers
    read: ``tokenizer``, ``config`` (the :class:`GLIPConfig` it was built from; its
    ``input`` section is :attr:`preprocessing`) and ``tuned_prompt`` (the classes a
    fine-tuning recorded).

    Args:
        backbone: images -> L FPN maps.
        text_encoder: token ids -> :class:`TextFeatures`.
        trunk: FPN maps + text -> :class:`TrunkOutput` (the fused tower).
        heads: the heads by name, run in this order on the trunk's output; one named
            ``"grounding"`` (a :class:`GroundingHead`) detects. A head may read the
            outputs of the heads before it.
        anchor_generator: one anchor per location and level.
        tokenizer: a Hugging Face fast BERT tokenizer, carried for the processor
            (:class:`glip.inference.processor.Processor`) and the checkpoint writers; the
            network never calls it.
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
        self._preprocessing: Any = None  # an assigned preprocessing (see the property)
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

    # Convenience methods users call today (README, docs): thin delegations to the processor
    # and predictor side (glip.inference, registered with register_inference), so that the
    # network itself reads no file, tokenizes nothing and decodes nothing.

    @property
    def preprocessing(self) -> Any:
        """The test-time image preprocessing (:class:`glip.inference.processor.Preprocessing`):
        the config's ``input`` section, unless one was assigned. The network never calls it."""
        if self._preprocessing is not None:
            return self._preprocessing
        return _inference("preprocessing")(self.config)

    @preprocessing.setter
    def preprocessing(self, value: Any) -> None:
        self._preprocessing = value

    def tokenize(self, prompt: str | Sequence[str] | Prompt) -> TokenizedPrompt:
        """``Processor.tokenize`` of this model (:class:`glip.inference.processor.Processor`)."""
        return _inference("processor")(self).tokenize(prompt)

    def prepare_prompt(
        self, prompt: str | Sequence[str] | Prompt, chunk_size: int | None = None
    ) -> list[TokenizedPrompt]:
        """``Processor.prepare_prompt`` of this model: the tokenized passes of a prompt (one,
        or several when it is too long for one pass; :func:`glip.text.chunks.chunk_prompt`)."""
        return _inference("processor")(self).prepare_prompt(prompt, chunk_size)

    def detect_chunks(self, images: ImageBatch, chunks: Sequence[TokenizedPrompt], *args: Any, **kwargs: Any) -> Any:
        """:func:`glip.inference.detection.detect_chunks` on this model: one prompt's
        detections per image, its chunks merged."""
        return _inference("detect_chunks")(self, images, chunks, *args, **kwargs)

    def detect(self, images: ImageBatch, tokens: TokenizedPrompt, *args: Any, **kwargs: Any) -> Any:
        """:func:`glip.inference.detection.detect` on this model: one prompt's detections in
        every image of a batch."""
        return _inference("detect")(self, images, tokens, *args, **kwargs)

    def encode_prompts(self, prompts: Sequence[TokenizedPrompt], *args: Any, **kwargs: Any) -> Any:
        """:func:`glip.inference.detection.encode_prompts` on this model: each prompt's text features."""
        return _inference("encode_prompts")(self, prompts, *args, **kwargs)

    def detect_prompts(self, images: ImageBatch, prompts: Sequence[TokenizedPrompt], *args: Any, **kwargs: Any) -> Any:
        """:func:`glip.inference.detection.detect_prompts` on this model: ``[prompt][image]``
        detections, the backbone run once."""
        return _inference("detect_prompts")(self, images, prompts, *args, **kwargs)

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
        long for one pass is split as :meth:`glip.Predictor.predict` splits it (the same code:
        :func:`glip.inference.predictor.predict_image`).

        Args:
            image: a path, a PIL image or an ``[H, W, 3]`` uint8 RGB array.
            prompt: ``"a cat. a dog."``, a list of class names, or a :class:`Prompt`.
            threshold: keep detections whose final score is above this.
            masks: also return each detection's mask (``Detections.masks``; needs a mask head).
            agnostic_nms: one label per box (see :func:`glip.inference.detection.detect_chunks`).

        Returns:
            :class:`Detections` in original-image pixels, sorted by descending score.
        """
        return _inference("predict")(self, image, prompt, threshold, masks, agnostic_nms=agnostic_nms)
