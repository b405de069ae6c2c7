"""The heads' configuration sections (``model.heads.<name>``), one dataclass per head.

Part of the schema (:mod:`glip.config.schema`, which re-exports them); defaults as there:
the official GLIP-T where the official code has the setting.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class GroundingHeadConfig:
    """The grounding (detection) head and its ATSS loss (official ``MODEL.DYHEAD``,
    ``MODEL.ATSS`` and the token-loss keys of ``FUSE_CONFIG``)."""

    weight: float = 1.0  # the criterion's weight of this head's losses
    num_classes: int = 81  # official DYHEAD.NUM_CLASSES; the score tensor has num_classes - 1 slots
    log_scale: float = 0.0
    prior_prob: float = 0.01
    clamp_dot_product: bool = True
    reg_weight: float = 2.0  # official ATSS.REG_LOSS_WEIGHT
    atss_topk: int = 9  # official ATSS.TOPK (the assignment every head's loss shares)
    token_weight: float = 1.0  # official FUSE_CONFIG.DOT_PRODUCT_TOKEN_LOSS_WEIGHT
    token_alpha: float = 0.25  # official FUSE_CONFIG.TOKEN_ALPHA (also the soft-token loss's)
    token_gamma: float = 2.0  # official FUSE_CONFIG.TOKEN_GAMMA (also the soft-token loss's)
    # RegionCLIP's region-concept distillation (not official; glip.modeling.heads.grounding.region_distill):
    # loss_distill = distill_weight x T^2 x KL(teacher || student) over each pseudo box's caption
    # concepts, at its ATSS positives. > 0 needs training data with the teacher's concept_scores
    # (glip pseudo-label --teacher clip); 0: off (the loss is not computed).
    distill_weight: float = 0.0
    distill_temperature: float = 1.0  # T, dividing the teacher's and the student's logits


@dataclass
class MDETRTokenHeadConfig:
    """The MDETR soft-token head (official ``FUSE_CONFIG.USE_TOKEN_LOSS``)."""

    enabled: bool = False  # official USE_TOKEN_LOSS
    weight: float = 1.0  # official TOKEN_LOSS_WEIGHT


@dataclass
class MDETRAlignHeadConfig:
    """The MDETR contrastive-alignment head (official ``FUSE_CONFIG.USE_CONTRASTIVE_ALIGN_LOSS``)."""

    enabled: bool = False  # official USE_CONTRASTIVE_ALIGN_LOSS
    weight: float = 1.0  # official CONTRASTIVE_ALIGN_LOSS_WEIGHT
    hidden_dim: int = 64  # official CONTRASTIVE_HIDDEN_DIM
    dropout: float = 0.1  # official JOINT_EMB_DROPOUT (the text resizer)


@dataclass
class MaskHeadConfig:
    """The vision-language mask head (official ``MODEL.MASK_ON`` and ``MODEL.ROI_MASK_HEAD``
    with ``PREDICTOR: VLMaskRCNNC4Predictor``; GLIPv2, no official config)."""

    enabled: bool = False  # official MASK_ON
    weight: float = 1.0  # the criterion's weight of loss_mask
    feature_extractor: str = "MaskRCNNFPNFeatureExtractor"  # or "HourglassFPNFeatureExtractor"
    pooler_resolution: int = 14  # official POOLER_RESOLUTION
    pooler_sampling_ratio: int = 0  # official POOLER_SAMPLING_RATIO (0: adaptive)
    pooler_scales: list[float] = field(default_factory=list)  # official POOLER_SCALES; []: 1 / model.anchors.strides
    conv_layers: list[int] = field(default_factory=list)  # official CONV_LAYERS; []: 4 x model.trunk.channels
    resolution: int = 28  # official RESOLUTION (twice the pooler resolution)
    dilation: int = 1  # official DILATION (4-conv extractor)
    use_gn: bool = False  # official USE_GN
    hg_scale: int = 1  # official HG_SCALE (hourglass depth; 1 is the only one that runs on 14x14)
    fg_iou_threshold: float = 0.5  # official ROI_HEADS.FG_IOU_THRESHOLD
    detections: int = 100  # detector boxes per image added to the ground truth as proposals (official 1000)
    pre_nms_top_n: int = 3000  # official ATSS.PRE_NMS_TOP_N_TRAIN
    nms_thresh: float = 0.6  # official ATSS.NMS_TH


@dataclass
class MLMHeadConfig:
    """GLIPv2's masked-language-modelling head (official ``FUSE_CONFIG.MLM_LOSS`` family).
    When enabled, training prompts are corrupted (15% of the tokens) and the whole model
    runs on the corrupted text, as the official model does."""

    enabled: bool = False  # official MLM_LOSS
    weight: float = 1.0  # official MLM_LOSS_COEF
    only_positives: bool = True  # official MLM_LOSS_FOR_ONLY_POSITIVES
    no_mask_for_od: bool = False  # official NO_MASK_FOR_OD: detection prompts never masked
    no_mask_for_gold: bool = False  # official NO_MASK_FOR_GOLD: gold grounding prompts never masked


@dataclass
class InterImageHeadConfig:
    """GLIPv2's inter-image region-word contrastive loss, L_inter (official
    ``FUSE_CONFIG.USE_SHALLOW_CONTRASTIVE_LOSS`` and ``SHALLOW_*``)."""

    enabled: bool = False  # official USE_SHALLOW_CONTRASTIVE_LOSS
    weight: float = 1.0  # official SHALLOW_CONTRASTIVE_LOSS_WEIGHT
    # "fpn": pre-fusion FPN features at the ATSS positives (official USE_SHALLOW_CONTRASTIVE_LOSS);
    # "backbone" (official USE_BACKBONE_SHALLOW_CONTRASTIVE_LOSS): the body's stride-16 map ROI-aligned at them.
    variant: str = "fpn"
    max_positive: int = 100  # official SHALLOW_MAX_POSITIVE_ANCHORS
    zero_pad: bool = False  # official USE_SHALLOW_ZERO_PADS
    hidden_dim: int = 64  # official SHALLOW_CONTRASTIVE_HIDDEN_DIM
    log_scale: float = 0.0  # official DYHEAD.SHALLOW_LOG_SCALE (initial log-temperature)
    # "fused": the post-fusion text (the official code); "encoder": the text encoder's output (the paper).
    text_source: str = "fused"


@dataclass
class VQAHeadConfig:
    """GLIPv2's answer head (:mod:`glip.modeling.heads.vqa`; no official config): a
    classifier over ``answers`` at the ``[MASK]`` slot of ``question [MASK]``."""

    enabled: bool = False
    weight: float = 1.0  # the criterion's weight of loss_vqa
    # The answer vocabulary (normalised). Empty: `glip train` builds it from data.train_json
    # (answers given at least min_answer_count times) and saves it in the model's config.
    answers: list[str] = field(default_factory=list)
    min_answer_count: int = 9  # VQAv2: 9 -> 3129 answers
    mlp_dim: int = 0  # the classifier's hidden width; 0: twice model.text.dim
    # A cross-attention of the slot to the trunk's visual maps before the classifier
    # (glip.modeling.heads.readout): its width, 0 = none (the fused slot feature alone, as
    # GLIPv2 describes); the demo model's small trunk needs it.
    readout_dim: int = 0
    readout_heads: int = 4
    # A density map of the answer's objects whose count is added to the slot feature
    # (glip.modeling.heads.counting), trained against the answer's boxes: its width, 0 = none.
    counter_dim: int = 0
    counter_max: int = 5  # the largest count its feature tells apart
    counter_level: int = 0  # the trunk map it lives on (0: the finest)
    counter_weight: float = 1.0  # the weight of loss_count
    # The slot feature the head reads: "fused" (post-fusion, GLIPv2) or "encoder" (the text
    # encoder's, before the fusion: unchanged when the fusion is trained after the head).
    text_source: str = "fused"


@dataclass
class CaptionHeadConfig:
    """GLIPv2 captioning: a language-modelling head on the causal (uni-directional) fused text,
    trained by predicting masked caption tokens (no official code; see
    :mod:`glip.modeling.heads.caption`)."""

    enabled: bool = False
    weight: float = 1.0
    # Tokens masked per caption: round(mask_prob x caption tokens), at least 1, at most
    # max_masked (the OSCAR/VinVL captioning recipe: 0.15 and 3).
    mask_prob: float = 0.15
    max_masked: int = 3
    label_smoothing: float = 0.1  # GLIPv2 / OSCAR captioning fine-tuning
    max_length: int = 20  # decoding: most generated tokens, the end token included
    beam_size: int = 1  # decoding: 1 = greedy
    # How a beam's finished captions are chosen: "none" (the likeliest, GLIPv2), "grounding"
    # (the one whose least grounded noun phrase scores highest, each caption its own prompt)
    # or "contrastive" (the same, all the candidates' phrases in one prompt):
    # glip.inference.captioning.
    rerank: str = "none"
    box_threshold: float = 0.3  # grounded captioning: a noun phrase's box needs this score
    # Each token's cross-attention to the trunk's visual maps before the predictor
    # (glip.modeling.heads.readout; causal-safe): its width, 0 = none.
    readout_dim: int = 0
    readout_heads: int = 4
    # Causal self-attention layers over the fused text before the read-out
    # (glip.modeling.heads.caption.CausalTextContext): a frozen trunk's captioner needs
    # them to see the words it wrote; 0 = none.
    context_layers: int = 0
    context_heads: int = 4
    # Learned position embeddings added before the context layers, for this many tokens (0: none).
    context_positions: int = 0
    # The text the head reads: "fused" (post-fusion, GLIPv2) or "encoder" (the causal text
    # encoder's, before the fusion: unchanged when the fusion is trained after the head).
    text_source: str = "fused"
    # The token ids the decoder scores ([]: the whole vocabulary); a closed-domain model
    # lists its captions' words (glip.modeling.heads.caption.restrict_vocabulary).
    vocab: list[int] = field(default_factory=list)


@dataclass
class HeadsConfig:
    """One section per head on the trunk; a head with ``enabled: false`` is not built.
    A new head adds its section here and a builder in :mod:`glip.modeling.build`."""

    grounding: GroundingHeadConfig = field(default_factory=GroundingHeadConfig)
    mdetr_token: MDETRTokenHeadConfig = field(default_factory=MDETRTokenHeadConfig)
    mdetr_align: MDETRAlignHeadConfig = field(default_factory=MDETRAlignHeadConfig)
    mask: MaskHeadConfig = field(default_factory=MaskHeadConfig)
    mlm: MLMHeadConfig = field(default_factory=MLMHeadConfig)
    inter_image: InterImageHeadConfig = field(default_factory=InterImageHeadConfig)
    vqa: VQAHeadConfig = field(default_factory=VQAHeadConfig)
    caption: CaptionHeadConfig = field(default_factory=CaptionHeadConfig)
