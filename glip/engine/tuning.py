"""Transfer modes: what a fine-tuning run trains, and how.

The mode table (what each mode trains) and the parameter selection live in
:mod:`glip.modeling.transfer` (re-exported here); this module applies them to a model being
trained.

Frozen parts are also kept in eval mode during training, as the official ``train()`` does
(no dropout / drop-path in a frozen backbone, head or text encoder).
"""

from __future__ import annotations

from typing import Any

from glip.data import build_caption
from glip.data.od_to_grounding import DETECTION_PROMPT
from glip.modeling.glip import GLIP
from glip.modeling.transfer import (
    OFFICIAL_MODE_NAMES,
    TUNING_MODES,
    TuningMode,
    mode_requires_grad,
    resolve_tuning_mode,
)
from glip.text import Prompt, tokenize_prompt

__all__ = [
    "OFFICIAL_MODE_NAMES",
    "PROMPT_TUNING_SOLVER",
    "TUNING_MODES",
    "TuningMode",
    "apply_tuning",
    "class_prompt",
    "dataset_prompt",
    "record_tuned_prompt",
    "resolve_tuning_mode",
    "set_frozen_eval",
    "trainable_names",
]

# Official README (ODinW prompt tuning): SOLVER.BASE_LR 0.05, SOLVER.WEIGHT_DECAY 0.25.
PROMPT_TUNING_SOLVER = {"base_lr": 0.05, "weight_decay": 0.25}


def apply_tuning(model: GLIP, mode: TuningMode | str) -> GLIP:
    """Sets ``requires_grad`` as the official run of ``mode`` does; adds a zero prompt
    offset for the prompt modes. Run after the builder's own freezing (``freeze_at``),
    which it keeps; the heads' ``untrained`` parameters stay frozen. A mode training whole
    heads (``mask``) needs them in the model (``ValueError`` naming the config key)."""
    mode = resolve_tuning_mode(mode) if isinstance(mode, str) else mode
    if mode is None:
        return model
    missing = [h for h in mode.heads if h not in model.heads]
    if missing:
        keys = ", ".join(f"model.heads.{h}.enabled=true" for h in missing)
        raise ValueError(f"the {mode.name!r} transfer mode trains the {', '.join(missing)} head, absent: set {keys}")
    if mode.prompt_offset:
        model.enable_prompt_offset()
    flags = mode_requires_grad(model, mode)
    for name, param in model.named_parameters():
        if name in flags:
            param.requires_grad_(flags[name])
    return model


def set_frozen_eval(
    model: GLIP,
    mode: TuningMode | str | None,
    freeze_text: bool,
    freeze_body: bool = False,
    freeze_fpn: bool = False,
) -> None:
    """Puts the frozen parts in eval mode after ``model.train()`` (official ``train()``):
    the backbone when frozen (by the mode, or its body / FPN by ``freeze_body`` /
    ``freeze_fpn``, official ``BACKBONE.FREEZE`` / ``FPN.FREEZE``), the head when frozen
    (official ``RPN.FREEZE``; the heads a mode trains whole stay in train mode), the text
    encoder when frozen."""
    if freeze_body:
        model.backbone.body.eval()
    if freeze_fpn:
        model.backbone.fpn.eval()
    mode = resolve_tuning_mode(mode) if isinstance(mode, str) else mode
    if mode is not None:
        if mode.freeze_backbone:
            model.backbone.eval()
        if mode.freeze_head:
            model.trunk.eval()
            model.heads.eval()
            for name in mode.heads:
                if name in model.heads:
                    model.heads[name].train()
        freeze_text = mode.freeze_text
    if freeze_text:
        model.text_encoder.eval()


def trainable_names(model: GLIP) -> list[str]:
    """Names of the parameters that will be trained."""
    return [n for n, p in model.named_parameters() if p.requires_grad]


def class_prompt(dataset: Any) -> Prompt | None:
    """The prompt of a detection dataset's classes: all of them in contiguous-id order,
    written as its captions write them (separator, caption prompt, detection prefix); the
    official fine-tuning and evaluation prompt. None for data without categories (grounding)."""
    dataset = getattr(dataset, "dataset", dataset)  # a RepeatDataset's base
    recipe = getattr(dataset, "recipe", None)
    classes = getattr(dataset, "ind_to_class", None)
    if recipe is None or not classes:
        return None
    labels = sorted(classes)
    prefix = DETECTION_PROMPT if recipe.add_detection_prompt else ""
    caption = build_caption(labels, classes, recipe.separator, recipe.caption_prompt, prefix)
    return Prompt.from_spans(caption.caption, [caption.label_to_span[label] for label in labels])


def dataset_prompt(dataset: Any) -> Prompt | None:
    """The caption a fixed-order detection dataset gives every image (:func:`class_prompt`),
    or None when the captions vary (shuffled or sampled categories, grounding data)."""
    recipe = getattr(getattr(dataset, "dataset", dataset), "recipe", None)
    if recipe is None or recipe.shuffle or recipe.sample_negatives:
        return None
    return class_prompt(dataset)


def record_tuned_prompt(model: GLIP, dataset: Any, max_query_len: int) -> None:
    """Records on ``model`` its training set's classes, ``model.tuned_prompt``
    (:func:`class_prompt`; saved with the model, ``glip detect``'s default prompt), and with
    a prompt offset trained on one fixed caption, the token ids of that caption: the only
    prompt the offset is applied to at inference (with varying captions it applies to any)."""
    prompt = class_prompt(dataset)
    if prompt is None or model.tokenizer is None:
        return
    model.tuned_prompt = prompt
    if model.prompt_offset is not None and dataset_prompt(dataset) is not None:
        tokens = tokenize_prompt(model.tokenizer, prompt, max_query_len)
        n = int(tokens.attention_mask[0].sum())
        model.prompt_offset.token_ids = tuple(int(t) for t in tokens.input_ids[0, :n].tolist())
