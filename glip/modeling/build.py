"""Builds a :class:`GLIP` from a :class:`GLIPConfig`: the only place that reads the config."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from glip.config import GLIPConfig
from glip.modeling.backbone import VisionBackbone, build_resnet, build_swin, build_timm
from glip.modeling.build_language import build_caption, build_inter_image, build_mlm, build_vqa
from glip.modeling.criterion import Criterion
from glip.modeling.fusion.trunk import FusionSpec, FusionTrunk, TextLayerSpec, TrunkSpec
from glip.modeling.glip import GLIP
from glip.modeling.heads import (
    NO_TOKEN_IDS,
    CaptionHead,
    GroundingHead,
    GroundingLoss,
    Head,
    InterImageHead,
    MaskedLMHead,
    MDETRAlignHead,
    MDETRTokenHead,
    TokenIds,
    VQAHead,
)
from glip.modeling.heads.grounding.anchors import AnchorGenerator
from glip.modeling.heads.grounding.assigner import ATSSAssigner
from glip.modeling.heads.grounding.box_coder import BoxCoder
from glip.modeling.heads.grounding.postprocess import GroundingPostProcessor
from glip.modeling.heads.grounding.region_distill import RegionConceptDistillation
from glip.modeling.heads.mask import HourglassExtractor, MaskConvExtractor, MaskHead, VLMaskPredictor
from glip.modeling.language.text_encoder import build_text_encoder, in_head_layer_sizes

__all__ = [
    "HEADS",
    "HEAD_BUILDERS",
    "HeadEntry",
    "build_backbone",
    "build_heads",
    "build_loss",
    "build_model",
    "build_trunk",
    "loss_weights",
    "trunk_spec",
]


def build_backbone(cfg: GLIPConfig, pretrained: bool = False) -> VisionBackbone:
    """The body + FPN of ``cfg.model.backbone``; ``pretrained``: a timm body loads its
    pretrained weights when ``model.backbone.timm.pretrained`` (local files only)."""
    b = cfg.model.backbone
    drop_prob = b.fpn_drop_prob if b.fpn_drop_block else 0.0
    if b.type == "swin":
        s = b.swin
        return build_swin(
            embed_dim=s.embed_dim,
            depths=s.depths,
            num_heads=s.num_heads,
            window_size=s.window_size,
            out_channels=b.out_channels,
            mlp_ratio=s.mlp_ratio,
            drop_path_rate=s.drop_path_rate,
            frozen_stages=b.freeze_at,
            use_checkpoint=s.use_checkpoint,
            fpn_drop_prob=drop_prob,
            fpn_drop_size=b.fpn_drop_size,
        )
    if b.type == "resnet":
        r = b.resnet
        return build_resnet(
            depth=r.depth,
            out_channels=b.out_channels,
            stride_in_1x1=r.stride_in_1x1,
            freeze_at=r.freeze_at,
            fpn_drop_prob=drop_prob,
            fpn_drop_size=b.fpn_drop_size,
        )
    if b.type == "timm":
        t = b.timm
        return build_timm(
            t.name,
            out_channels=b.out_channels,
            pretrained=pretrained and t.pretrained,
            checkpoint=t.checkpoint,
            kwargs=dict(t.kwargs),
            fpn_drop_prob=drop_prob,
            fpn_drop_size=b.fpn_drop_size,
        )
    raise ValueError(f"unknown backbone type {b.type!r} (expected 'swin', 'resnet' or 'timm')")


def trunk_spec(cfg: GLIPConfig, bert_config: Any) -> TrunkSpec:
    """The :class:`TrunkSpec` of ``cfg.model.trunk``; the in-head text layers follow
    ``bert_config`` (the text encoder's BERT or CLIP config)."""
    h = cfg.model.trunk
    sizes = {k.removeprefix("text_"): v for k, v in in_head_layer_sizes(bert_config).items()}
    return TrunkSpec(
        in_channels=cfg.model.backbone.out_channels,
        channels=h.channels,
        text_dim=cfg.model.text.dim,
        num_blocks=h.num_blocks,
        early_fusion=h.early_fusion,
        fused_dot_product=h.fused_dot_product,
        use_gn=h.use_gn,
        gn_groups=h.gn_groups,
        use_dyrelu=h.use_dyrelu,
        use_dyfuse=h.use_dyfuse,
        use_dfconv=h.use_dfconv,
        fusion=FusionSpec(
            embed_dim=h.fusion_embed_dim,
            num_heads=h.fusion_num_heads,
            dropout=h.fusion_dropout,
            clamp_min_for_underflow=h.clamp_min_for_underflow,
            clamp_max_for_overflow=h.clamp_max_for_overflow,
        ),
        text_layer=TextLayerSpec(
            **sizes,
            clamp_min_for_underflow=h.clamp_bertattn_min_for_underflow,
            clamp_max_for_overflow=h.clamp_bertattn_max_for_overflow,
        ),
        use_checkpoint=h.use_checkpoint,
    )


def build_trunk(cfg: GLIPConfig, bert_config: Any) -> FusionTrunk:
    """The fused DyHead tower of ``cfg.model.trunk`` (:func:`trunk_spec`)."""
    return FusionTrunk(trunk_spec(cfg, bert_config))


# builder(cfg, text_config, ids) -> the head module, or None when the config leaves it out.
HeadBuilder = Callable[[GLIPConfig, Any, TokenIds], Head | None]


def _build_grounding(cfg: GLIPConfig, bert_config: Any, ids: TokenIds = NO_TOKEN_IDS) -> GroundingHead:
    h, inf = cfg.model.heads.grounding, cfg.inference
    if not (h.distill_weight >= 0 and h.distill_temperature > 0):
        raise ValueError(
            "model.heads.grounding.distill_weight must be >= 0 and distill_temperature > 0, got "
            f"{h.distill_weight} and {h.distill_temperature}"
        )
    distill = RegionConceptDistillation(h.distill_temperature) if h.distill_weight > 0 else None
    return GroundingHead(
        channels=cfg.model.trunk.channels,
        text_dim=cfg.model.text.dim,
        num_classes=h.num_classes - 1,  # the official score tensor drops the background slot
        num_levels=len(cfg.model.anchors.strides),
        log_scale=h.log_scale,
        prior_prob=h.prior_prob,
        clamp_dot_product=h.clamp_dot_product,
        loss=GroundingLoss(
            reg_weight=h.reg_weight,
            token_weight=h.token_weight,
            token_alpha=h.token_alpha,
            token_gamma=h.token_gamma,
            distill=distill,
            distill_weight=h.distill_weight,
        ),
        postprocessor=GroundingPostProcessor(
            pre_nms_thresh=inf.pre_nms_thresh,
            pre_nms_top_n=inf.pre_nms_top_n,
            nms_thresh=inf.nms_thresh,
            detections_per_img=inf.detections_per_img,
            score_agg=inf.score_agg,
        ),
    )


def _build_mdetr_token(cfg: GLIPConfig, bert_config: Any, ids: TokenIds = NO_TOKEN_IDS) -> MDETRTokenHead | None:
    if not cfg.model.heads.mdetr_token.enabled:
        return None
    g = cfg.model.heads.grounding  # official: the same prior and focal parameters
    return MDETRTokenHead(
        channels=cfg.model.trunk.channels,
        max_query_len=cfg.model.text.max_query_len,
        prior_prob=g.prior_prob,
        alpha=g.token_alpha,
        gamma=g.token_gamma,
    )


def _build_mdetr_align(cfg: GLIPConfig, bert_config: Any, ids: TokenIds = NO_TOKEN_IDS) -> MDETRAlignHead | None:
    h = cfg.model.heads.mdetr_align
    if not h.enabled:
        return None
    return MDETRAlignHead(
        channels=cfg.model.trunk.channels,
        text_dim=cfg.model.text.dim,
        fused_dot_product=cfg.model.trunk.fused_dot_product,
        hidden_dim=h.hidden_dim,
        dropout=h.dropout,
    )


def _build_mask(cfg: GLIPConfig, bert_config: Any, ids: TokenIds = NO_TOKEN_IDS) -> MaskHead | None:
    h = cfg.model.heads.mask
    if not h.enabled:
        return None
    channels = cfg.model.trunk.channels
    layers = list(h.conv_layers) or [channels] * 4
    if h.feature_extractor == "MaskRCNNFPNFeatureExtractor":
        extractor: MaskConvExtractor | HourglassExtractor = MaskConvExtractor(channels, layers, h.dilation, h.use_gn)
    elif h.feature_extractor == "HourglassFPNFeatureExtractor":
        extractor = HourglassExtractor(channels, layers, h.hg_scale, h.pooler_resolution, h.use_gn)
    else:
        raise ValueError(
            f"unknown model.heads.mask.feature_extractor {h.feature_extractor!r} "
            "(expected 'MaskRCNNFPNFeatureExtractor' or 'HourglassFPNFeatureExtractor')"
        )
    scales = list(h.pooler_scales) or [1.0 / s for s in cfg.model.anchors.strides]
    return MaskHead(
        extractor=extractor,
        predictor=VLMaskPredictor(
            extractor.out_channels, layers[-1], cfg.model.text.dim, log_scale=cfg.model.heads.grounding.log_scale
        ),
        scales=scales,
        pooler_resolution=h.pooler_resolution,
        sampling_ratio=h.pooler_sampling_ratio,
        resolution=h.resolution,
        fg_iou_threshold=h.fg_iou_threshold,
        detections=h.detections,
        pre_nms_top_n=h.pre_nms_top_n,
        nms_thresh=h.nms_thresh,
    )


@dataclass(frozen=True)
class HeadEntry:
    """One row of the head table.

    Attributes:
        name: the model's ``heads[name]`` (checkpoint keys ``heads.<name>.*``), and its
            config section ``model.heads.<name>``.
        kind: the head class its builder returns.
        build: ``(cfg, text_config, ids) -> the head, or None when its section is off``;
            the only code that reads the head's config section.
    """

    name: str
    kind: type[Head]
    build: HeadBuilder


# Every head, in the order heads are built and run (a head that reads another's output
# comes after it): the detection heads, then GLIPv2's language heads. A new head is one
# new row here (and its config section).
HEADS: tuple[HeadEntry, ...] = (
    HeadEntry("grounding", GroundingHead, _build_grounding),
    HeadEntry("mdetr_token", MDETRTokenHead, _build_mdetr_token),
    HeadEntry("mdetr_align", MDETRAlignHead, _build_mdetr_align),
    HeadEntry("mask", MaskHead, _build_mask),
    HeadEntry("mlm", MaskedLMHead, build_mlm),
    HeadEntry("inter_image", InterImageHead, build_inter_image),
    HeadEntry("vqa", VQAHead, build_vqa),
    HeadEntry("caption", CaptionHead, build_caption),
)
# name -> builder, read-only, in table order.
HEAD_BUILDERS: Mapping[str, HeadBuilder] = MappingProxyType({e.name: e.build for e in HEADS})


def build_heads(cfg: GLIPConfig, bert_config: Any, ids: TokenIds = NO_TOKEN_IDS) -> dict[str, Head]:
    """Every head of :data:`HEADS` the config switches on, by name, in table order
    (``ids``: the tokenizer's special ids, e.g. the ``[MASK]`` of the MLM and caption heads)."""
    heads = {}
    for entry in HEADS:
        head = entry.build(cfg, bert_config, ids)
        if head is not None:
            heads[entry.name] = head
    return heads


def loss_weights(cfg: GLIPConfig) -> dict[str, float]:
    """Each head's weight in the criterion: the ``weight`` of its ``model.heads`` section."""
    return {name: float(section.weight) for name, section in vars(cfg.model.heads).items()}


def build_loss(cfg: GLIPConfig) -> Criterion:
    """The training criterion: ATSS assignment over one anchor per location, and each
    head's weight."""
    a = cfg.model.anchors
    anchors_per_location = len(a.aspect_ratios) * a.scales_per_octave
    topk = cfg.model.heads.grounding.atss_topk
    assigner = ATSSAssigner(BoxCoder(), topk=topk, anchors_per_location=anchors_per_location)
    return Criterion(assigner, loss_weights(cfg))


def build_model(
    cfg: GLIPConfig,
    bert_config: Any,
    tokenizer: Any = None,
    pretrained_text: str | Path | None = None,
    pretrained_backbone: bool = False,
) -> GLIP:
    """A GLIP for ``cfg``, randomly initialised except for the text encoder when
    ``pretrained_text`` is given.

    Args:
        cfg: the model configuration.
        bert_config: the transformers config of the text encoder (``BertConfig``, or
            ``CLIPTextConfig`` when ``model.text.type`` is ``clip``); its hidden size must
            equal ``cfg.model.text.dim`` (official ``LANG_DIM``).
        tokenizer: the prompt tokenizer, carried on the model for its processor (:mod:`glip.inference`).
        pretrained_text: a local folder (or cached Hugging Face name) whose weights
            initialise the text encoder, as official training does; None: random weights
            (checkpoints bring their own).
        pretrained_backbone: a timm body loads its pretrained weights when the config asks
            (``model.backbone.timm.pretrained``), as training from scratch does.
    """
    if int(bert_config.hidden_size) != cfg.model.text.dim:
        raise ValueError(
            f"the text encoder's hidden size ({bert_config.hidden_size}) differs from "
            f"model.text.dim / LANG_DIM ({cfg.model.text.dim})"
        )
    t = cfg.model.text
    masked = [n for n in ("mlm", "caption") if t.type == "clip" and getattr(cfg.model.heads, n).enabled]
    if masked:  # both mask tokens with [MASK] and predict BERT's vocabulary; CLIP's tokenizer has no mask token
        raise ValueError(
            f"model.heads.{masked[0]} needs a BERT text encoder (a [MASK] token), not model.text.type clip"
        )
    a = cfg.model.anchors
    model = GLIP(
        backbone=build_backbone(cfg, pretrained=pretrained_backbone),
        text_encoder=build_text_encoder(t.type, bert_config, t.num_layers, pretrained_text, t.max_query_len),
        trunk=build_trunk(cfg, bert_config),
        heads=build_heads(cfg, bert_config, TokenIds.from_tokenizer(tokenizer)),
        anchor_generator=AnchorGenerator(
            sizes=a.sizes,
            strides=a.strides,
            aspect_ratios=a.aspect_ratios,
            scales_per_octave=a.scales_per_octave,
            octave=a.octave,
            straddle_thresh=a.straddle_thresh,
        ),
        tokenizer=tokenizer,
        max_query_len=cfg.model.text.max_query_len,
    )
    model.config = cfg
    return model
