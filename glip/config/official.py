"""Reading the official GLIP yaml files (yacs style) into :class:`GLIPConfig`.

An official yaml (e.g. ``configs/pretrain/glip_Swin_T_O365_GoldG.yaml``) only lists the
values that differ from the official defaults (``maskrcnn_benchmark/config/defaults.py``).
The defaults of every key we map are restated below, so a partial yaml and a full
``cfg.dump()`` give the same result. Keys under ``MODEL`` that change the network but
that this package does not implement are errors naming the key; keys that only steer
datasets or unused heads are accepted and ignored here, except the caption options
(``DATASETS.CAPTION_*``, which fill ``data.caption_*``). ``SOLVER`` keys and the loss
weights (``MODEL.ATSS.REG_LOSS_WEIGHT``, ``TOPK``, the ``FUSE_CONFIG`` token-loss keys)
fill the ``solver`` section and the head sections (``model.heads.*``); other ``SOLVER``
keys are ignored.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Mapping
from typing import Any

from glip.config.schema import GLIPConfig

__all__ = ["OfficialConfigError", "flatten_official", "from_official", "is_official_yaml"]


class OfficialConfigError(ValueError):
    """An official config uses a key or value this package does not implement."""


def _tuple(v: Any) -> list:
    return list(v) if isinstance(v, (list, tuple)) else [v]


def _ints(v: Any) -> list[int]:
    return [int(x) for x in _tuple(v)]


def _floats(v: Any) -> list[float]:
    return [float(x) for x in _tuple(v)]


# official key -> (our dotted path, official default, converter)
_MAPPED: dict[str, tuple[str, Any, Callable[[Any], Any]]] = {
    "MODEL.SWINT.EMBED_DIM": ("model.backbone.swin.embed_dim", 96, int),
    "MODEL.SWINT.DEPTHS": ("model.backbone.swin.depths", (2, 2, 6, 2), _ints),
    "MODEL.SWINT.NUM_HEADS": ("model.backbone.swin.num_heads", (3, 6, 12, 24), _ints),
    "MODEL.SWINT.WINDOW_SIZE": ("model.backbone.swin.window_size", 7, int),
    "MODEL.SWINT.MLP_RATIO": ("model.backbone.swin.mlp_ratio", 4, float),
    "MODEL.SWINT.DROP_PATH_RATE": ("model.backbone.swin.drop_path_rate", 0.2, float),
    "MODEL.BACKBONE.USE_CHECKPOINT": ("model.backbone.swin.use_checkpoint", False, bool),
    "MODEL.BACKBONE.OUT_CHANNELS": ("model.backbone.out_channels", 256 * 4, int),
    "MODEL.BACKBONE.FREEZE_CONV_BODY_AT": ("model.backbone.freeze_at", 2, int),
    "MODEL.BACKBONE.FREEZE": ("model.backbone.freeze", False, bool),
    "MODEL.FPN.FREEZE": ("model.backbone.freeze_fpn", False, bool),
    "MODEL.FPN.DROP_BLOCK": ("model.backbone.fpn_drop_block", True, bool),
    "MODEL.FPN.DROP_PROB": ("model.backbone.fpn_drop_prob", 0.3, float),
    "MODEL.FPN.DROP_SIZE": ("model.backbone.fpn_drop_size", 3, int),
    "MODEL.RESNETS.STRIDE_IN_1X1": ("model.backbone.resnet.stride_in_1x1", True, bool),
    "MODEL.LANGUAGE_BACKBONE.MODEL_TYPE": ("model.text.encoder", "bert-base-uncased", str),
    "MODEL.LANGUAGE_BACKBONE.LANG_DIM": ("model.text.dim", 768, int),
    "MODEL.LANGUAGE_BACKBONE.MAX_QUERY_LEN": ("model.text.max_query_len", 256, int),
    "MODEL.LANGUAGE_BACKBONE.N_LAYERS": ("model.text.num_layers", 1, int),
    "MODEL.LANGUAGE_BACKBONE.FREEZE": ("model.text.freeze", False, bool),
    "MODEL.DYHEAD.CHANNELS": ("model.trunk.channels", 128, int),
    "MODEL.DYHEAD.NUM_CONVS": ("model.trunk.num_blocks", 4, int),
    "MODEL.DYHEAD.NUM_CLASSES": ("model.heads.grounding.num_classes", 81, int),
    "MODEL.DYHEAD.USE_GN": ("model.trunk.use_gn", False, bool),
    "MODEL.GROUP_NORM.NUM_GROUPS": ("model.trunk.gn_groups", 16, int),
    "MODEL.DYHEAD.USE_DYRELU": ("model.trunk.use_dyrelu", False, bool),
    "MODEL.DYHEAD.USE_DFCONV": ("model.trunk.use_dfconv", False, bool),
    "MODEL.DYHEAD.USE_DYFUSE": ("model.trunk.use_dyfuse", False, bool),
    "MODEL.DYHEAD.LOG_SCALE": ("model.heads.grounding.log_scale", 0.0, float),
    "MODEL.DYHEAD.PRIOR_PROB": ("model.heads.grounding.prior_prob", 0.01, float),
    "MODEL.DYHEAD.USE_CHECKPOINT": ("model.trunk.use_checkpoint", False, bool),
    "MODEL.DYHEAD.FUSE_CONFIG.EARLY_FUSE_ON": ("model.trunk.early_fusion", False, bool),
    "MODEL.DYHEAD.FUSE_CONFIG.USE_FUSED_FEATURES_DOT_PRODUCT": ("model.trunk.fused_dot_product", False, bool),
    "MODEL.DYHEAD.FUSE_CONFIG.USE_LAYER_SCALE": ("model.trunk.use_layer_scale", False, bool),
    "MODEL.DYHEAD.FUSE_CONFIG.CLAMP_MIN_FOR_UNDERFLOW": ("model.trunk.clamp_min_for_underflow", False, bool),
    "MODEL.DYHEAD.FUSE_CONFIG.CLAMP_MAX_FOR_OVERFLOW": ("model.trunk.clamp_max_for_overflow", False, bool),
    "MODEL.DYHEAD.FUSE_CONFIG.CLAMP_BERTATTN_MIN_FOR_UNDERFLOW": (
        "model.trunk.clamp_bertattn_min_for_underflow",
        False,
        bool,
    ),
    "MODEL.DYHEAD.FUSE_CONFIG.CLAMP_BERTATTN_MAX_FOR_OVERFLOW": (
        "model.trunk.clamp_bertattn_max_for_overflow",
        False,
        bool,
    ),
    "MODEL.DYHEAD.FUSE_CONFIG.CLAMP_DOT_PRODUCT": ("model.heads.grounding.clamp_dot_product", False, bool),
    "MODEL.RPN.ANCHOR_SIZES": ("model.anchors.sizes", (32, 64, 128, 256, 512), _floats),
    "MODEL.RPN.ANCHOR_STRIDE": ("model.anchors.strides", (16,), _ints),
    "MODEL.RPN.ASPECT_RATIOS": ("model.anchors.aspect_ratios", (0.5, 1.0, 2.0), _floats),
    "MODEL.RPN.SCALES_PER_OCTAVE": ("model.anchors.scales_per_octave", 3, int),
    "MODEL.RPN.OCTAVE": ("model.anchors.octave", 2.0, float),
    "MODEL.RPN.STRADDLE_THRESH": ("model.anchors.straddle_thresh", 0, int),
    "MODEL.ATSS.INFERENCE_TH": ("inference.pre_nms_thresh", 0.05, float),
    "MODEL.ATSS.PRE_NMS_TOP_N": ("inference.pre_nms_top_n", 1000, int),
    "MODEL.ATSS.NMS_TH": ("inference.nms_thresh", 0.6, float),
    "MODEL.ATSS.DETECTIONS_PER_IMG": ("inference.detections_per_img", 100, int),
    "MODEL.DYHEAD.SCORE_AGG": ("inference.score_agg", "MEAN", str),
    "INPUT.MIN_SIZE_TEST": ("input.min_size_test", 800, int),
    "INPUT.MAX_SIZE_TEST": ("input.max_size_test", 1333, int),
    "INPUT.MIN_SIZE_TRAIN": ("input.min_size_train", (800,), _ints),
    "INPUT.MAX_SIZE_TRAIN": ("input.max_size_train", 1333, int),
    "INPUT.PIXEL_MEAN": ("input.pixel_mean", (102.9801, 115.9465, 122.7717), _floats),
    "INPUT.PIXEL_STD": ("input.pixel_std", (1.0, 1.0, 1.0), _floats),
    "INPUT.TO_BGR255": ("input.to_bgr255", True, bool),
    "DATALOADER.SIZE_DIVISIBILITY": ("input.size_divisibility", 0, int),
    # Training objective.
    "MODEL.ATSS.REG_LOSS_WEIGHT": ("model.heads.grounding.reg_weight", 2.0, float),
    "MODEL.ATSS.TOPK": ("model.heads.grounding.atss_topk", 9, int),
    "MODEL.DYHEAD.FUSE_CONFIG.DOT_PRODUCT_TOKEN_LOSS_WEIGHT": ("model.heads.grounding.token_weight", 1.0, float),
    "MODEL.DYHEAD.FUSE_CONFIG.TOKEN_ALPHA": ("model.heads.grounding.token_alpha", 0.25, float),
    "MODEL.DYHEAD.FUSE_CONFIG.TOKEN_GAMMA": ("model.heads.grounding.token_gamma", 2.0, float),
    # MDETR-style heads (off in every released config): each switch builds its head.
    "MODEL.DYHEAD.FUSE_CONFIG.USE_TOKEN_LOSS": ("model.heads.mdetr_token.enabled", False, bool),
    "MODEL.DYHEAD.FUSE_CONFIG.TOKEN_LOSS_WEIGHT": ("model.heads.mdetr_token.weight", 1.0, float),
    "MODEL.DYHEAD.FUSE_CONFIG.USE_CONTRASTIVE_ALIGN_LOSS": ("model.heads.mdetr_align.enabled", False, bool),
    "MODEL.DYHEAD.FUSE_CONFIG.CONTRASTIVE_ALIGN_LOSS_WEIGHT": ("model.heads.mdetr_align.weight", 1.0, float),
    "MODEL.DYHEAD.FUSE_CONFIG.CONTRASTIVE_HIDDEN_DIM": ("model.heads.mdetr_align.hidden_dim", 64, int),
    "MODEL.DYHEAD.FUSE_CONFIG.JOINT_EMB_DROPOUT": ("model.heads.mdetr_align.dropout", 0.1, float),
    # GLIPv2's pre-training heads (official defaults.py; off in every released config).
    "MODEL.DYHEAD.FUSE_CONFIG.MLM_LOSS": ("model.heads.mlm.enabled", False, bool),
    "MODEL.DYHEAD.FUSE_CONFIG.MLM_LOSS_COEF": ("model.heads.mlm.weight", 1.0, float),
    "MODEL.DYHEAD.FUSE_CONFIG.MLM_LOSS_FOR_ONLY_POSITIVES": ("model.heads.mlm.only_positives", True, bool),
    "MODEL.DYHEAD.FUSE_CONFIG.NO_MASK_FOR_OD": ("model.heads.mlm.no_mask_for_od", False, bool),
    "MODEL.DYHEAD.FUSE_CONFIG.NO_MASK_FOR_GOLD": ("model.heads.mlm.no_mask_for_gold", False, bool),
    "MODEL.DYHEAD.FUSE_CONFIG.USE_SHALLOW_CONTRASTIVE_LOSS": ("model.heads.inter_image.enabled", False, bool),
    "MODEL.DYHEAD.FUSE_CONFIG.SHALLOW_CONTRASTIVE_LOSS_WEIGHT": ("model.heads.inter_image.weight", 1.0, float),
    "MODEL.DYHEAD.FUSE_CONFIG.SHALLOW_MAX_POSITIVE_ANCHORS": ("model.heads.inter_image.max_positive", 100, int),
    "MODEL.DYHEAD.FUSE_CONFIG.USE_SHALLOW_ZERO_PADS": ("model.heads.inter_image.zero_pad", False, bool),
    "MODEL.DYHEAD.FUSE_CONFIG.SHALLOW_CONTRASTIVE_HIDDEN_DIM": ("model.heads.inter_image.hidden_dim", 64, int),
    "MODEL.DYHEAD.SHALLOW_LOG_SCALE": ("model.heads.inter_image.log_scale", 0.0, float),
    # Optimiser and schedule (maskrcnn_benchmark/solver/build.py, lr_scheduler.py).
    "SOLVER.OPTIMIZER": ("solver.optimizer", "SGD", lambda v: str(v).lower()),
    "SOLVER.BASE_LR": ("solver.base_lr", 0.001, float),
    "SOLVER.LANG_LR": ("solver.lang_lr", 0.00001, float),
    "SOLVER.BACKBONE_BODY_LR_FACTOR": ("solver.backbone_body_lr_factor", 1.0, float),
    "SOLVER.BIAS_LR_FACTOR": ("solver.bias_lr_factor", 2.0, float),
    "SOLVER.WEIGHT_DECAY": ("solver.weight_decay", 0.0005, float),
    "SOLVER.WEIGHT_DECAY_BIAS": ("solver.weight_decay_bias", 0.0, float),
    "SOLVER.WEIGHT_DECAY_NORM_FACTOR": ("solver.weight_decay_norm_factor", 1.0, float),
    "SOLVER.MOMENTUM": ("solver.momentum", 0.9, float),
    "SOLVER.MAX_ITER": ("solver.max_iter", 40000, int),
    "SOLVER.MAX_EPOCH": ("solver.max_epoch", 0, int),
    "SOLVER.IMS_PER_BATCH": ("solver.ims_per_batch", 16, int),
    "SOLVER.STEPS": ("solver.steps", (30000,), _floats),
    "SOLVER.GAMMA": ("solver.gamma", 0.1, float),
    "SOLVER.USE_COSINE": ("solver.use_cosine", False, bool),
    "SOLVER.MIN_LR": ("solver.min_lr", 0.000001, float),
    "SOLVER.WARMUP_FACTOR": ("solver.warmup_factor", 1.0 / 3, float),
    "SOLVER.WARMUP_ITERS": ("solver.warmup_iters", 500, int),
    "SOLVER.WARMUP_METHOD": ("solver.warmup_method", "linear", str),
    "SOLVER.CLIP_GRADIENTS.ENABLED": ("solver.clip_gradients.enabled", False, bool),
    "SOLVER.CLIP_GRADIENTS.CLIP_TYPE": ("solver.clip_gradients.clip_type", "full_model", str),
    "SOLVER.CLIP_GRADIENTS.CLIP_VALUE": ("solver.clip_gradients.clip_value", 0.0, float),
    "SOLVER.CLIP_GRADIENTS.NORM_TYPE": ("solver.clip_gradients.norm_type", 2.0, float),
    "SOLVER.MODEL_EMA": ("solver.model_ema", 0.0, float),
    "SOLVER.USE_AMP": ("solver.use_amp", False, bool),
    "SOLVER.CHECKPOINT_PERIOD": ("solver.checkpoint_period", 2500, int),
    "SOLVER.MAX_NEG_PER_BATCH": ("solver.max_neg_per_batch", 0.1, float),
    "SOLVER.SEED": ("solver.seed", 0, int),
    "SOLVER.FIND_UNUSED_PARAMETERS": ("train.find_unused_parameters", True, bool),
    "MODEL.MASK_ON": ("model.heads.mask.enabled", False, bool),
}

# The VL mask head (GLIPv2; MODEL.MASK_ON): official key -> (our field of model.heads.mask,
# official default, converter). Read only when MASK_ON is true: the official defaults
# (one 1/16 scale, RESOLUTION 14) do not describe a runnable VL mask head.
_MASK_KEYS: dict[str, tuple[str, Any, Callable[[Any], Any]]] = {
    "MODEL.ROI_MASK_HEAD.FEATURE_EXTRACTOR": ("feature_extractor", "ResNet50Conv5ROIFeatureExtractor", str),
    "MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION": ("pooler_resolution", 14, int),
    "MODEL.ROI_MASK_HEAD.POOLER_SAMPLING_RATIO": ("pooler_sampling_ratio", 0, int),
    "MODEL.ROI_MASK_HEAD.POOLER_SCALES": ("pooler_scales", (1.0 / 16,), _floats),
    "MODEL.ROI_MASK_HEAD.CONV_LAYERS": ("conv_layers", (256, 256, 256, 256), _ints),
    "MODEL.ROI_MASK_HEAD.RESOLUTION": ("resolution", 14, int),
    "MODEL.ROI_MASK_HEAD.DILATION": ("dilation", 1, int),
    "MODEL.ROI_MASK_HEAD.USE_GN": ("use_gn", False, bool),
    "MODEL.ROI_MASK_HEAD.HG_SCALE": ("hg_scale", 1, int),
    "MODEL.ROI_HEADS.FG_IOU_THRESHOLD": ("fg_iou_threshold", 0.5, float),
}
# Values the VL mask head needs (official default in brackets where it differs).
_MASK_REQUIRED: dict[str, tuple[Any, Any]] = {
    "MODEL.RPN_ONLY": (False, False),
    "MODEL.BOX_ON": (False, True),
    "MODEL.RPN.RETURN_FUSED_FEATURES": (True, False),
    "MODEL.ROI_HEADS.USE_FPN": (True, False),
    "MODEL.ROI_MASK_HEAD.SHARE_BOX_FEATURE_EXTRACTOR": (False, True),
    "MODEL.ROI_MASK_HEAD.PREDICTOR": ("VLMaskRCNNC4Predictor", "MaskRCNNC4Predictor"),
}
_MASK_EXTRACTORS = ("MaskRCNNFPNFeatureExtractor", "HourglassFPNFeatureExtractor")


def _import_mask_head(flat: Mapping[str, Any], cfg: GLIPConfig, errors: list[str]) -> None:
    """Fills ``model.heads.mask`` from the ``ROI_MASK_HEAD`` keys (MASK_ON true), or checks
    that the keys only the mask head may change are at their detection values (MASK_ON false)."""
    if not cfg.model.heads.mask.enabled:
        for key, detection_value in (("MODEL.RPN_ONLY", True), ("MODEL.RPN.RETURN_FUSED_FEATURES", False)):
            if key in flat and not _same(flat[key], detection_value):
                errors.append(f"{key}={flat[key]!r} (supported only with MODEL.MASK_ON: True)")
        return
    section = cfg.model.heads.mask
    for key, (name, default, convert) in _MASK_KEYS.items():
        setattr(section, name, convert(flat.get(key, _parse_value(default))))
    for key, (needed, default) in _MASK_REQUIRED.items():
        value = flat.get(key, default)
        if not _same(value, needed):
            errors.append(f"{key}={value!r} (MODEL.MASK_ON needs {needed!r})")
    if section.feature_extractor not in _MASK_EXTRACTORS:
        errors.append(
            f"MODEL.ROI_MASK_HEAD.FEATURE_EXTRACTOR={section.feature_extractor!r} (supported: {', '.join(_MASK_EXTRACTORS)})"
        )
    levels = len(cfg.model.anchors.strides)
    if len(section.pooler_scales) != levels:
        errors.append(
            f"MODEL.ROI_MASK_HEAD.POOLER_SCALES={section.pooler_scales!r} (the mask head pools the {levels} "
            "post-fusion levels: one scale per level, e.g. 1/8 .. 1/128)"
        )
    if section.resolution != 2 * section.pooler_resolution:
        errors.append(
            f"MODEL.ROI_MASK_HEAD.RESOLUTION={section.resolution} (the VL predictor doubles POOLER_RESOLUTION="
            f"{section.pooler_resolution}: it must be {2 * section.pooler_resolution})"
        )


# Keys that change the network in ways not implemented here: the value must be one of these.
_REQUIRED: dict[str, tuple[Any, ...]] = {
    "MODEL.META_ARCHITECTURE": ("GeneralizedVLRCNN",),
    "MODEL.RPN_ARCHITECTURE": ("VLDYHEAD",),
    "MODEL.RPN_ONLY": (True, False),  # False only for the mask head (checked in _import_mask_head)
    "MODEL.KEYPOINT_ON": (False,),
    "MODEL.BACKBONE.CONV_BODY": ("SWINT-FPN-RETINANET", "R-50-FPN-RETINANET", "R-101-FPN-RETINANET"),
    "MODEL.SWINT.VERSION": ("v1",),
    "MODEL.SWINT.APE": (False,),
    "MODEL.SWINT.LAYER_SCALE": (0,),
    "MODEL.SWINT.OUT_NORM": (True,),
    "MODEL.RPN.USE_FPN": (True,),
    "MODEL.RPN.ANCHOR_SHIFT": ([0.0, 0.0, 0.0, 0.0],),
    "MODEL.LANGUAGE_BACKBONE.PAD_MAX": (True,),
    "MODEL.LANGUAGE_BACKBONE.MASK_SPECIAL": (False,),  # True: special tokens left out of the text mask
    "MODEL.DYHEAD.FUSE_CONFIG.TYPE": ("MHA-B",),
    "MODEL.DYHEAD.FUSE_CONFIG.USE_CLASSIFICATION_LOSS": (False,),
    "MODEL.DYHEAD.FUSE_CONFIG.USE_DOT_PRODUCT_TOKEN_LOSS": (True,),
    "MODEL.DYHEAD.FUSE_CONFIG.ADD_LINEAR_LAYER": (False,),
    "MODEL.DYHEAD.FUSE_CONFIG.SEPARATE_BIDIRECTIONAL": (False,),
    "MODEL.DYHEAD.FUSE_CONFIG.STABLE_SOFTMAX_2D": (False,),
    "MODEL.DYHEAD.FUSE_CONFIG.DO_LANG_PROJ_OUTSIDE_CHECKPOINT": (False,),
    "MODEL.DYHEAD.COSINE_SCALE": (-1.0,),
    "MODEL.DYHEAD.CONV_FUNC": ("",),
    "MODEL.DYHEAD.GROUPS": (1,),
    "MODEL.DYHEAD.USE_SYNCBN": (False,),
    "MODEL.DYHEAD.USE_NSYNCBN": (False,),
    "MODEL.FPN.USE_GN": (False,),
    "MODEL.FPN.USE_RELU": (False,),
    "MODEL.FPN.USE_DYHEAD": (False,),
    "MODEL.FPN.USE_DYRELU": (False,),
    "MODEL.FPN.USE_PAN": (False,),
    "MODEL.FPN.USE_SPP": (False,),
    "MODEL.FPN.RETURN_SWINT_FEATURE_BEFORE_FUSION": (False,),
    "MODEL.RPN.RETURN_FUSED_FEATURES": (False, True),  # True only for the mask head (idem)
    "MODEL.GROUP_NORM.DIM_PER_GP": (-1,),
    "MODEL.GROUP_NORM.EPSILON": (1e-5,),
    "MODEL.LINEAR_PROB": (False,),
}

# MODEL sections and keys that only matter to training, to other architectures of the
# official code base, or to the runtime (device, weights path): accepted, not used here.
_IGNORED_SECTIONS = (
    "MODEL.ROI_HEADS.",
    "MODEL.ROI_BOX_HEAD.",
    "MODEL.ROI_MASK_HEAD.",
    "MODEL.ROI_KEYPOINT_HEAD.",
    "MODEL.FCOS.",
    "MODEL.RETINANET.",
    "MODEL.FOCAL.",
    "MODEL.CLIP.",
    "MODEL.BIFPN.",
    "MODEL.EVO_NORM.",
    "MODEL.RESNETS.",
    "MODEL.SPEC.",
    "MODEL.MULTITASK.",
    "MODEL.LAYER_SEARCH.",
)
_IGNORED_KEYS = frozenset(
    """MODEL.DEVICE MODEL.WEIGHT MODEL.DEBUG MODEL.ONNX MODEL.PRETRAIN_NAME MODEL.BOX_ON MODEL.SPEC MODEL.MULTITASK
    MODEL.ATSS.CHANNELS MODEL.ATSS.INFERENCE_TH_TRAIN MODEL.ATSS.NUM_CLASSES MODEL.ATSS.NUM_CONVS
    MODEL.ATSS.POST_NMS_TOP_N_TRAIN MODEL.ATSS.PRE_NMS_TOP_N_TRAIN MODEL.ATSS.PRIOR_PROB
    MODEL.ATSS.USE_BN MODEL.ATSS.USE_DFCONV MODEL.ATSS.USE_DYRELU MODEL.ATSS.USE_GN MODEL.ATSS.USE_SE
    MODEL.BACKBONE.EFFICIENT_DET_BIFPN_VERSION MODEL.BACKBONE.EFFICIENT_DET_COMPOUND
    MODEL.BACKBONE.EFFICIENT_DET_START_FROM MODEL.BACKBONE.FPN_LAYER MODEL.BACKBONE.GROUP
    MODEL.BACKBONE.LAYER_SEARCH MODEL.BACKBONE.LAYER_SETUP MODEL.BACKBONE.NORM_LEVEL MODEL.BACKBONE.OUT_FEATURES
    MODEL.BACKBONE.RESET_BN MODEL.BACKBONE.USE_BN MODEL.BACKBONE.USE_DFCONV MODEL.BACKBONE.USE_DYRELU
    MODEL.BACKBONE.USE_EN MODEL.BACKBONE.USE_GN MODEL.BACKBONE.USE_NSYNCBN MODEL.BACKBONE.USE_SE
    MODEL.BACKBONE.USE_SYNCBN MODEL.SWINT.OUT_CHANNELS
    MODEL.DYHEAD.FUSE_CONFIG.JOINT_EMB_SIZE MODEL.DYHEAD.FUSE_CONFIG.JOINT_MLP_LAYERS
    MODEL.DYHEAD.FUSE_CONFIG.JOINT_OUT_SIZE MODEL.DYHEAD.FUSE_CONFIG.MLM_OBJ_FOR_ONLY_POSITIVE MODEL.DYHEAD.TOPK
    MODEL.DYHEAD.FUSE_CONFIG.USE_BACKBONE_SHALLOW_CONTRASTIVE_LOSS
    MODEL.LANGUAGE_BACKBONE.BIDIRECTIONAL MODEL.LANGUAGE_BACKBONE.CORPUS_PATH
    MODEL.LANGUAGE_BACKBONE.DROPOUT_P MODEL.LANGUAGE_BACKBONE.HIDDEN_SIZE MODEL.LANGUAGE_BACKBONE.INPUT_DROPOUT_P
    MODEL.LANGUAGE_BACKBONE.RNN_TYPE MODEL.LANGUAGE_BACKBONE.TOKENIZER_TYPE MODEL.LANGUAGE_BACKBONE.UNUSED_TOKEN
    MODEL.LANGUAGE_BACKBONE.USE_CHECKPOINT MODEL.LANGUAGE_BACKBONE.VARIABLE_LENGTH MODEL.LANGUAGE_BACKBONE.VOCAB_SIZE
    MODEL.LANGUAGE_BACKBONE.WEIGHT MODEL.LANGUAGE_BACKBONE.WORD_EMBEDDING_SIZE MODEL.LANGUAGE_BACKBONE.WORD_VEC_SIZE
    MODEL.RPN.BATCH_SIZE_PER_IMAGE MODEL.RPN.BG_IOU_THRESHOLD MODEL.RPN.FG_IOU_THRESHOLD MODEL.RPN.FORCE_BOXES
    MODEL.RPN.FPN_POST_NMS_TOP_N_TEST MODEL.RPN.FPN_POST_NMS_TOP_N_TRAIN MODEL.RPN.FREEZE MODEL.RPN.MIN_SIZE
    MODEL.RPN.NMS_THRESH MODEL.RPN.POSITIVE_FRACTION MODEL.RPN.POST_NMS_TOP_N_TEST MODEL.RPN.POST_NMS_TOP_N_TRAIN
    MODEL.RPN.PRE_NMS_TOP_N_TEST MODEL.RPN.PRE_NMS_TOP_N_TRAIN MODEL.RPN.RPN_HEAD MODEL.RPN.USE_RELATIVE_SIZE""".split()
)


def _parse_value(value: Any) -> Any:
    """yacs evaluates string literals such as ``"(64, 128)"``; do the same, safely."""
    if isinstance(value, str):
        try:
            parsed = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            return value
        return list(parsed) if isinstance(parsed, tuple) else parsed
    if isinstance(value, tuple):
        return list(value)
    return value


def flatten_official(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested yacs dict -> ``{"MODEL.SWINT.EMBED_DIM": 96, ...}``."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping) and value:
            out.update(flatten_official(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = _parse_value(value)
    return out


def is_official_yaml(tree: Mapping[str, Any]) -> bool:
    """True when a parsed yaml uses the official upper-case layout (``MODEL:``, ``INPUT:``...)."""
    return any(k in tree for k in ("MODEL", "INPUT", "DATASETS", "SOLVER")) and "model" not in tree


def _set(cfg: Any, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = cfg
    for p in parents:
        node = getattr(node, p)
    setattr(node, leaf, value)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return abs(float(a) - float(b)) <= 1e-12 * max(1.0, abs(float(b)))
    return a == b


def from_official(tree: Mapping[str, Any], name: str = "official") -> GLIPConfig:
    """Builds a :class:`GLIPConfig` from a parsed official yaml (partial or full dump).

    Raises :class:`OfficialConfigError` naming every ``MODEL`` key whose value is not
    implemented, or which is unknown.
    """
    flat = flatten_official(tree)
    cfg = GLIPConfig(name=name)
    errors: list[str] = []
    for key, (path, default, convert) in _MAPPED.items():
        _set(cfg, path, convert(flat.get(key, _parse_value(default))))
    for key, allowed in _REQUIRED.items():
        if key in flat and not any(_same(flat[key], a) for a in allowed):
            errors.append(f"{key}={flat[key]!r} (supported: {', '.join(repr(a) for a in allowed)})")
    for key in flat:
        if not key.startswith("MODEL.") or key in _MAPPED or key in _REQUIRED or key in _IGNORED_KEYS:
            continue
        if key.startswith(_IGNORED_SECTIONS):
            continue
        errors.append(f"{key} (unknown to glip)")
    _import_mask_head(flat, cfg, errors)
    # Caption options (official build.py): the score filter and NMS only with FURTHER_SCREEN.
    cfg.data.caption_min_box = int(flat.get("DATASETS.CAPTION_MIN_BOX", 1))
    if bool(flat.get("DATASETS.FURTHER_SCREEN", False)):
        cfg.data.caption_conf = float(flat.get("DATASETS.CAPTION_CONF", 0.9))
        cfg.data.caption_nms = float(flat.get("DATASETS.CAPTION_NMS", 0.9))
    # Caption packing (passed by the official build.py only when > 0; nothing says which data is caption data).
    cfg.data.pack_captions = int(flat.get("DATASETS.PACK_RANDOM_CAPTION_NUMBER", 0))
    pack_prob = float(flat.get("DATASETS.RANDOM_PACK_PROB", -1.0))
    cfg.data.pack_prob = pack_prob if pack_prob > 0 else -1.0
    cfg.data.no_pack_prob = float(flat.get("DATASETS.NO_RANDOM_PACK_PROBABILITY", 0.0))
    if cfg.model.heads.mdetr_align.enabled and not cfg.model.trunk.fused_dot_product:
        # Official: resizer(embedded) -> JOINT_EMB_SIZE feeds a Linear(DYHEAD.CHANNELS, ...).
        joint = int(flat.get("MODEL.DYHEAD.FUSE_CONFIG.JOINT_EMB_SIZE", 256))
        if joint != cfg.model.trunk.channels:
            errors.append(
                f"MODEL.DYHEAD.FUSE_CONFIG.JOINT_EMB_SIZE={joint} (with USE_CONTRASTIVE_ALIGN_LOSS it must equal "
                f"MODEL.DYHEAD.CHANNELS={cfg.model.trunk.channels})"
            )
    backbone_inter = "MODEL.DYHEAD.FUSE_CONFIG.USE_BACKBONE_SHALLOW_CONTRASTIVE_LOSS"
    if bool(flat.get(backbone_inter, False)):
        if cfg.model.heads.inter_image.enabled:
            errors.append(
                f"{backbone_inter}=True together with USE_SHALLOW_CONTRASTIVE_LOSS=True (the official asserts one)"
            )
        # The ROI-pooled backbone variant of the inter-image loss.
        cfg.model.heads.inter_image.enabled = True
        cfg.model.heads.inter_image.variant = "backbone"
    if errors:
        raise OfficialConfigError("official config keys not supported by glip: " + "; ".join(errors))

    body = flat.get("MODEL.BACKBONE.CONV_BODY", "R-50-C4")
    if body.startswith("R-"):
        cfg.model.backbone.type = "resnet"
        cfg.model.backbone.resnet.depth = int(body.split("-")[1])
        cfg.model.backbone.resnet.freeze_at = cfg.model.backbone.freeze_at
    else:
        cfg.model.backbone.type = "swin"
    return cfg
