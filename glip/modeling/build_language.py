"""Builders of the GLIPv2 language heads (MLM, inter-image contrastive, VQA, captioning),
rows of the head table :data:`glip.modeling.build.HEADS` after the detection heads; like
every builder, the only code that reads these heads' config sections."""

from __future__ import annotations

from typing import Any

from glip.config import GLIPConfig
from glip.modeling.heads import NO_TOKEN_IDS, CaptionHead, InterImageHead, MaskedLMHead, TokenIds
from glip.modeling.heads.base import TEXT_SOURCES
from glip.modeling.heads.caption import CausalTextContext
from glip.modeling.heads.counting import AnswerCounter
from glip.modeling.heads.mlm import BERT_MASK_TOKEN_ID
from glip.modeling.heads.readout import VisualReadout
from glip.modeling.heads.vqa import VQAHead
from glip.modeling.losses.inter_image import InterImageContrastiveLoss
from glip.text.vqa import normalize_answer

__all__ = ["build_caption", "build_inter_image", "build_mlm", "build_vqa"]


def build_mlm(cfg: GLIPConfig, bert_config: Any, ids: TokenIds = NO_TOKEN_IDS) -> MaskedLMHead | None:
    h = cfg.model.heads.mlm
    if not h.enabled:
        return None
    return MaskedLMHead(
        hidden_dim=cfg.model.text.dim,
        vocab_size=int(bert_config.vocab_size),
        layer_norm_eps=float(bert_config.layer_norm_eps),
        mask_token_id=_mask_id(ids),
        only_positives=h.only_positives,
        no_mask_for_od=h.no_mask_for_od,
        no_mask_for_gold=h.no_mask_for_gold,
    )


def build_inter_image(cfg: GLIPConfig, bert_config: Any, ids: TokenIds = NO_TOKEN_IDS) -> InterImageHead | None:
    h = cfg.model.heads.inter_image
    if not h.enabled:
        return None
    if h.variant not in ("fpn", "backbone"):
        raise ValueError(f"model.heads.inter_image.variant must be 'fpn' or 'backbone', got {h.variant!r}")
    if h.text_source not in TEXT_SOURCES:
        raise ValueError(f"model.heads.inter_image.text_source must be 'fused' or 'encoder', got {h.text_source!r}")
    a = cfg.model.anchors
    if len(a.aspect_ratios) * a.scales_per_octave != 1:
        raise ValueError("model.heads.inter_image needs one anchor per location (as every GLIP config)")
    return InterImageHead(
        InterImageContrastiveLoss(
            image_dim=_inter_image_dim(cfg, h.variant),
            text_dim=cfg.model.text.dim,
            hidden_dim=h.hidden_dim,
            max_positive=h.max_positive,
            zero_pad=h.zero_pad,
            log_scale_init=h.log_scale,
            text_source=h.text_source,  # type: ignore[arg-type]
            variant=h.variant,  # type: ignore[arg-type]
        )
    )


def build_vqa(cfg: GLIPConfig, bert_config: Any, ids: TokenIds = NO_TOKEN_IDS) -> VQAHead | None:
    h = cfg.model.heads.vqa
    if not h.enabled:
        return None
    if not h.answers:
        raise ValueError(
            "model.heads.vqa.answers is empty: `glip train` builds the answer vocabulary from data.train_json, "
            "or list the answers in the config"
        )
    odd = [a for a in h.answers if normalize_answer(str(a)) != a]
    if odd:
        raise ValueError(
            f"model.heads.vqa.answers must be normalised answers (glip.text.vqa.normalize_answer), got {odd[:5]} "
            "(YAML reads an unquoted yes/no/on/off as a boolean: quote them)"
        )
    return VQAHead(
        hidden_dim=cfg.model.text.dim,
        answers=list(h.answers),
        mlp_dim=h.mlp_dim or None,
        layer_norm_eps=float(bert_config.layer_norm_eps),
        readout=_readout(cfg, h.readout_dim, h.readout_heads, bert_config),
        counter=AnswerCounter(
            cfg.model.text.dim,
            cfg.model.trunk.channels,
            h.counter_dim,
            h.counter_max,
            h.counter_level,
            stride=float(cfg.model.anchors.strides[h.counter_level]),
        )
        if h.counter_dim > 0
        else None,
        counter_weight=h.counter_weight,
        text_source=h.text_source,
    )


def _mask_id(ids: TokenIds) -> int:
    """The tokenizer's ``[MASK]`` id, BERT's when there is no tokenizer (a model built
    without one, whose checkpoint brings its own)."""
    return BERT_MASK_TOKEN_ID if ids.mask is None else ids.mask


def _readout(cfg: GLIPConfig, dim: int, heads: int, bert_config: Any) -> VisualReadout | None:
    """A language head's visual read-out (``readout_dim`` 0: none)."""
    if dim <= 0:
        return None
    return VisualReadout(
        text_dim=cfg.model.text.dim,
        visual_dim=cfg.model.trunk.channels,
        num_levels=len(cfg.model.anchors.strides),
        dim=dim,
        num_heads=heads,
        layer_norm_eps=float(bert_config.layer_norm_eps),
    )


def build_caption(cfg: GLIPConfig, bert_config: Any, ids: TokenIds = NO_TOKEN_IDS) -> CaptionHead | None:
    h = cfg.model.heads.caption
    if not h.enabled:
        return None
    return CaptionHead(
        hidden_dim=cfg.model.text.dim,
        vocab_size=int(bert_config.vocab_size),
        layer_norm_eps=float(bert_config.layer_norm_eps),
        mask_token_id=_mask_id(ids),
        mask_prob=h.mask_prob,
        max_masked=h.max_masked,
        label_smoothing=h.label_smoothing,
        max_length=h.max_length,
        beam_size=h.beam_size,
        rerank=h.rerank,
        box_threshold=h.box_threshold,
        readout=_readout(cfg, h.readout_dim, h.readout_heads, bert_config),
        vocab=list(h.vocab) or None,
        text_source=h.text_source,
        context=CausalTextContext(
            cfg.model.text.dim,
            h.context_layers,
            h.context_heads,
            float(bert_config.layer_norm_eps),
            max_positions=h.context_positions,
        )
        if h.context_layers > 0
        else None,
    )


def _inter_image_dim(cfg: GLIPConfig, variant: str) -> int:
    """The width of L_inter's region features: the pre-fusion FPN width (x 1 anchor per
    location) or, in the backbone variant, the body's stride-16 map (official
    ``SWINT.OUT_CHANNELS[-2]``: Swin stage 3, 4 x embed_dim; ResNet C4, 1024)."""
    b = cfg.model.backbone
    if variant == "fpn":
        return b.out_channels
    if b.type == "timm":
        raise ValueError("model.heads.inter_image.variant 'backbone' needs a swin or resnet body, not timm")
    return 4 * b.swin.embed_dim if b.type == "swin" else 1024
