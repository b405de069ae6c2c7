"""Transfer modes: what a fine-tuning run trains, and how.

Official counterpart: ``tuning_highlevel_override`` (``tools/finetune.py``) sets the
freeze flags that ``GeneralizedVLRCNN.train()`` applies. Per mode, the trainable set is:

=============  ==============================================================================
``full``       everything (text encoder included; backbone stages below
               ``model.backbone.freeze_at`` stay frozen by the builder)
``linear``     official ``linear_prob``: the head's box, centerness and alignment terms
               (:data:`LINEAR_PROBE_PARAMETERS`); backbone, FPN, text encoder, tower frozen
``prompt``     official ``language_prompt_v2``: only the zero-initialised prompt offset
``prompt_v1``  official ``language_prompt_v1``: only the text encoder
``prompt_v3``  official ``language_prompt_v3``: the text encoder and the linear-probe set
``prompt_v4``  official ``language_prompt_v4``: the prompt offset and the linear-probe set
=============  ==============================================================================

Frozen parts are also kept in eval mode during training, as the official ``train()`` does
(no dropout / drop-path in a frozen backbone, head or text encoder).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from glip.data import build_caption
from glip.data.od_to_grounding import DETECTION_PROMPT
from glip.modeling.glip import GLIP
from glip.text import Prompt, tokenize_prompt

__all__ = [
    "LINEAR_PROBE_PARAMETERS",
    "OFFICIAL_MODE_NAMES",
    "PROMPT_TUNING_SOLVER",
    "TUNING_MODES",
    "TuningMode",
    "apply_tuning",
    "dataset_prompt",
    "record_tuned_prompt",
    "resolve_tuning_mode",
    "set_frozen_eval",
    "trainable_names",
]

# Official LINEAR_PROB keeps the rpn parameters whose names contain bbox_pred, cls_logits,
# centerness, cosine_scale, dot_product_projection_text, head.log_scale, head.bias_lang or
# head.bias0; cls_logits is then frozen again (dot-product token loss) and cosine_scale does
# not exist in GLIP's head. Our names of the rest:
LINEAR_PROBE_PARAMETERS = (
    "head.bbox_pred.",
    "head.centerness.",
    "head.text_proj.",  # official dot_product_projection_text
    "head.log_scale",
    "head.bias_lang",
    "head.bias0",
)

# Official README (ODinW prompt tuning): SOLVER.BASE_LR 0.05, SOLVER.WEIGHT_DECAY 0.25.
PROMPT_TUNING_SOLVER = {"base_lr": 0.05, "weight_decay": 0.25}


@dataclass(frozen=True)
class TuningMode:
    """The official freeze flags of one ``TUNING_HIGHLEVEL_OVERRIDE`` value."""

    name: str
    official: str
    freeze_backbone: bool
    freeze_head: bool  # official RPN.FREEZE
    linear_probe: bool
    prompt_offset: bool  # official ADD_LINEAR_LAYER
    freeze_text: bool


TUNING_MODES: dict[str, TuningMode] = {
    m.name: m
    for m in (
        TuningMode("full", "full", False, False, False, False, False),
        TuningMode("linear", "linear_prob", True, False, True, False, True),
        TuningMode("prompt", "language_prompt_v2", True, True, False, True, True),
        TuningMode("prompt_v1", "language_prompt_v1", True, True, False, False, False),
        TuningMode("prompt_v3", "language_prompt_v3", True, True, True, False, False),
        TuningMode("prompt_v4", "language_prompt_v4", True, True, True, True, True),
    )
}
OFFICIAL_MODE_NAMES = {m.official: m.name for m in TUNING_MODES.values()}


def resolve_tuning_mode(name: str) -> TuningMode | None:
    """Our mode for ``name`` (ours or the official override string); None for ``""``."""
    if not name:
        return None
    key = OFFICIAL_MODE_NAMES.get(name, name)
    if key not in TUNING_MODES:
        raise ValueError(
            f"unknown tuning mode {name!r}: one of {', '.join(TUNING_MODES)} "
            f"(or official {', '.join(OFFICIAL_MODE_NAMES)})"
        )
    return TUNING_MODES[key]


def _is_linear_probe(name: str) -> bool:
    return name.startswith(LINEAR_PROBE_PARAMETERS)


def apply_tuning(model: GLIP, mode: TuningMode | str) -> GLIP:
    """Sets ``requires_grad`` as the official run of ``mode`` does; adds a zero prompt
    offset for the prompt modes. Run after the builder's own freezing (``freeze_at``)
    and the ``cls_logits`` freeze, which it keeps."""
    mode = resolve_tuning_mode(mode) if isinstance(mode, str) else mode
    if mode is None:
        return model
    if mode.prompt_offset:
        model.enable_prompt_offset()
    if mode.name == "full":
        model.text_encoder.requires_grad_(True)
        model.head.requires_grad_(True)
        model.head.cls_logits.requires_grad_(False)  # no loss reaches it (dot-product token loss)
        return model
    for name, param in model.named_parameters():
        if name.startswith("prompt_offset."):
            param.requires_grad_(mode.prompt_offset)
        elif name.startswith("text_encoder."):
            param.requires_grad_(not mode.freeze_text)
        elif name.startswith("backbone."):
            if mode.freeze_backbone:
                param.requires_grad_(False)
        elif name.startswith("head."):
            if mode.linear_probe:
                param.requires_grad_(_is_linear_probe(name) and not name.startswith("head.cls_logits."))
            elif mode.freeze_head:
                param.requires_grad_(False)
    return model


def set_frozen_eval(model: GLIP, mode: TuningMode | str | None, freeze_text: bool) -> None:
    """Puts the frozen parts in eval mode after ``model.train()`` (official ``train()``):
    the backbone when frozen, the head when frozen (official ``RPN.FREEZE``), the text
    encoder when frozen."""
    mode = resolve_tuning_mode(mode) if isinstance(mode, str) else mode
    if mode is not None:
        if mode.freeze_backbone:
            model.backbone.eval()
        if mode.freeze_head:
            model.head.eval()
        freeze_text = mode.freeze_text
    if freeze_text:
        model.text_encoder.eval()


def trainable_names(model: GLIP) -> list[str]:
    """Names of the parameters that will be trained."""
    return [n for n, p in model.named_parameters() if p.requires_grad]


def dataset_prompt(dataset: Any) -> Prompt | None:
    """The caption a fixed-order detection dataset gives every image (all categories in
    contiguous-id order, the official fine-tuning and evaluation prompt), or None when the
    captions vary (shuffled or sampled categories, grounding data)."""
    dataset = getattr(dataset, "dataset", dataset)  # a RepeatDataset's base
    recipe = getattr(dataset, "recipe", None)
    classes = getattr(dataset, "ind_to_class", None)
    if recipe is None or classes is None or recipe.shuffle or recipe.sample_negatives:
        return None
    labels = sorted(classes)
    prefix = DETECTION_PROMPT if recipe.add_detection_prompt else ""
    caption = build_caption(labels, classes, recipe.separator, recipe.caption_prompt, prefix)
    return Prompt.from_spans(caption.caption, [caption.label_to_span[label] for label in labels])


def record_tuned_prompt(model: GLIP, dataset: Any, max_query_len: int) -> None:
    """Records on ``model`` the prompt of a fixed-caption training set: ``model.tuned_prompt``
    and, with a prompt offset, the token ids it will be applied to at inference."""
    prompt = dataset_prompt(dataset)
    if prompt is None or model.tokenizer is None:
        return
    model.tuned_prompt = prompt
    if model.prompt_offset is not None:
        tokens = tokenize_prompt(model.tokenizer, prompt, max_query_len)
        n = int(tokens.attention_mask[0].sum())
        model.prompt_offset.token_ids = tuple(int(t) for t in tokens.input_ids[0, :n].tolist())
