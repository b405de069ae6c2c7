"""Builds a :class:`GLIP` from a :class:`GLIPConfig`: the only place that reads the config."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from glip.config import GLIPConfig
from glip.modeling.anchors import AnchorGenerator
from glip.modeling.assigner import ATSSAssigner
from glip.modeling.backbone import VisionBackbone, build_resnet, build_swin, build_timm
from glip.modeling.box_coder import BoxCoder
from glip.modeling.criterion import Criterion
from glip.modeling.glip import GLIP, Preprocessing
from glip.modeling.heads import (
    CaptionHead,
    GroundingHead,
    GroundingLoss,
    Head,
    InterImageHead,
    MaskedLMHead,
    MDETRAlignHead,
    MDETRTokenHead,
)
from glip.modeling.heads.mask import HourglassExtractor, MaskConvExtractor, MaskHead, VLMaskPredictor
from glip.modeling.heads.readout import VisualReadout
from glip.modeling.heads.vqa import VQAHead
from glip.modeling.losses.inter_image import InterImageContrastiveLoss
from glip.modeling.losses.region_distill import RegionConceptDistillation
from glip.modeling.postprocess import GroundingPostProcessor
from glip.modeling.text_encoder import build_text_encoder, in_head_layer_sizes
from glip.modeling.trunk import FusionTrunk
from glip.text.vqa import normalize_answer

__all__ = [
    "HEAD_BUILDERS",
    "build_backbone",
    "build_heads",
    "build_loss",
    "build_model",
    "build_trunk",
    "loss_weights",
    "register_head",
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


def build_trunk(cfg: GLIPConfig, bert_config: Any) -> FusionTrunk:
    """The fused DyHead tower of ``cfg.model.trunk``; the in-head text layers follow
    ``bert_config`` (the text encoder's BERT or CLIP config)."""
    h, t = cfg.model.trunk, cfg.model.text
    return FusionTrunk(
        in_channels=cfg.model.backbone.out_channels,
        channels=h.channels,
        text_dim=t.dim,
        num_blocks=h.num_blocks,
        early_fusion=h.early_fusion,
        fused_dot_product=h.fused_dot_product,
        use_gn=h.use_gn,
        gn_groups=h.gn_groups,
        use_dyrelu=h.use_dyrelu,
        use_dyfuse=h.use_dyfuse,
        use_dfconv=h.use_dfconv,
        **in_head_layer_sizes(bert_config),
        clamp_min_for_underflow=h.clamp_min_for_underflow,
        clamp_max_for_overflow=h.clamp_max_for_overflow,
        clamp_bertattn_min_for_underflow=h.clamp_bertattn_min_for_underflow,
        clamp_bertattn_max_for_overflow=h.clamp_bertattn_max_for_overflow,
        use_checkpoint=h.use_checkpoint,
        fusion_dropout=h.fusion_dropout,
        fusion_embed_dim=h.fusion_embed_dim,
        fusion_num_heads=h.fusion_num_heads,
    )


# name -> builder(cfg, bert_config) -> the head module, or None when the config leaves it out.
HeadBuilder = Callable[[GLIPConfig, Any], Head | None]
HEAD_BUILDERS: dict[str, HeadBuilder] = {}


def register_head(name: str) -> Callable[[HeadBuilder], HeadBuilder]:
    """Registers the builder of the head ``name`` (the model's ``heads[name]``, checkpoint
    keys ``heads.<name>.*``). Heads are built, and run, in registration order; a head
    that reads another's output registers after it. The builder is the only code that
    reads the head's config section."""

    def decorator(fn: HeadBuilder) -> HeadBuilder:
        if name in HEAD_BUILDERS:
            raise ValueError(f"a head named {name!r} is already registered")
        HEAD_BUILDERS[name] = fn
        return fn

    return decorator


@register_head("grounding")
def _build_grounding(cfg: GLIPConfig, bert_config: Any) -> GroundingHead:
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


@register_head("mdetr_token")
def _build_mdetr_token(cfg: GLIPConfig, bert_config: Any) -> MDETRTokenHead | None:
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


@register_head("mdetr_align")
def _build_mdetr_align(cfg: GLIPConfig, bert_config: Any) -> MDETRAlignHead | None:
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


@register_head("mask")
def _build_mask(cfg: GLIPConfig, bert_config: Any) -> MaskHead | None:
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


@register_head("mlm")
def _build_mlm(cfg: GLIPConfig, bert_config: Any) -> MaskedLMHead | None:
    h = cfg.model.heads.mlm
    if not h.enabled:
        return None
    return MaskedLMHead(
        hidden_dim=cfg.model.text.dim,
        vocab_size=int(bert_config.vocab_size),
        layer_norm_eps=float(bert_config.layer_norm_eps),
        only_positives=h.only_positives,
        no_mask_for_od=h.no_mask_for_od,
        no_mask_for_gold=h.no_mask_for_gold,
    )


@register_head("inter_image")
def _build_inter_image(cfg: GLIPConfig, bert_config: Any) -> InterImageHead | None:
    h = cfg.model.heads.inter_image
    if not h.enabled:
        return None
    if h.variant not in ("fpn", "backbone"):
        raise ValueError(f"model.heads.inter_image.variant must be 'fpn' or 'backbone', got {h.variant!r}")
    if h.text_source not in ("fused", "encoder"):
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


@register_head("vqa")
def _build_vqa(cfg: GLIPConfig, bert_config: Any) -> VQAHead | None:
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
    )


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


# --- captioning (GLIPv2) ---
@register_head("caption")
def _build_caption(cfg: GLIPConfig, bert_config: Any) -> CaptionHead | None:
    h = cfg.model.heads.caption
    if not h.enabled:
        return None
    return CaptionHead(
        hidden_dim=cfg.model.text.dim,
        vocab_size=int(bert_config.vocab_size),
        layer_norm_eps=float(bert_config.layer_norm_eps),
        mask_prob=h.mask_prob,
        max_masked=h.max_masked,
        label_smoothing=h.label_smoothing,
        max_length=h.max_length,
        beam_size=h.beam_size,
        box_threshold=h.box_threshold,
        readout=_readout(cfg, h.readout_dim, h.readout_heads, bert_config),
        vocab=list(h.vocab) or None,
    )


# --- end captioning ---


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


def build_heads(cfg: GLIPConfig, bert_config: Any) -> dict[str, Head]:
    """Every registered head the config switches on, by name, in registration order."""
    heads = {}
    for name, builder in HEAD_BUILDERS.items():
        head = builder(cfg, bert_config)
        if head is not None:
            heads[name] = head
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
        tokenizer: the prompt tokenizer, kept on the model for :meth:`GLIP.predict`.
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
    inp = cfg.input
    model = GLIP(
        backbone=build_backbone(cfg, pretrained=pretrained_backbone),
        text_encoder=build_text_encoder(t.type, bert_config, t.num_layers, pretrained_text, t.max_query_len),
        trunk=build_trunk(cfg, bert_config),
        heads=build_heads(cfg, bert_config),
        anchor_generator=AnchorGenerator(
            sizes=a.sizes,
            strides=a.strides,
            aspect_ratios=a.aspect_ratios,
            scales_per_octave=a.scales_per_octave,
            octave=a.octave,
            straddle_thresh=a.straddle_thresh,
        ),
        preprocessing=Preprocessing(
            min_size=inp.min_size_test,
            max_size=inp.max_size_test,
            pixel_mean=tuple(inp.pixel_mean),
            pixel_std=tuple(inp.pixel_std),
            to_bgr255=inp.to_bgr255,
            size_divisibility=inp.size_divisibility,
        ),
        tokenizer=tokenizer,
        max_query_len=cfg.model.text.max_query_len,
    )
    mlm = model.heads["mlm"] if "mlm" in model.heads else None
    if isinstance(mlm, MaskedLMHead) and tokenizer is not None and tokenizer.mask_token_id is not None:
        mlm.mask_token_id = int(tokenizer.mask_token_id)
    caption = model.heads["caption"] if "caption" in model.heads else None  # captioning (GLIPv2)
    if isinstance(caption, CaptionHead) and tokenizer is not None and tokenizer.mask_token_id is not None:
        caption.mask_token_id = int(tokenizer.mask_token_id)
    model.config = cfg
    return model
